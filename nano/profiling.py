"""torch.profiler traces of chosen training steps and, on CUDA, a memory snapshot of them, in the run folder.

    [profiling] enable = true, start_step = 10, steps = 3, memory_snapshot = true

writes, per rank, `profiles/rank0.steps-10-12.pt.trace.json.gz`: a Chrome trace with one `ProfilerStep#N` span per
training step N (operators, CUDA kernels, collectives). Open it at https://ui.perfetto.dev or chrome://tracing, or
point TensorBoard's PyTorch profiler plugin at the folder. `memory_snapshot` adds
`profiles/rank0.steps-10-12.memory.pickle` (every allocation with its stack), to drop onto
https://pytorch.org/memory_viz. The step before the first profiled one warms the profiler up, so its start-up
cost is not in the trace.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from nano.config import Profiling

logger = logging.getLogger("nano")
MEMORY_HISTORY_ENTRIES = 100_000  # allocation events kept; enough for a few steps of the 1.1B model


class StepProfiler:
    """Traces steps start_step .. start_step + steps - 1; `step(n)` is called at the top of every step n."""

    def __init__(self, cfg: Profiling, folder: Path, *, rank: int, device: torch.device) -> None:
        self.enabled = cfg.enable
        self.first, self.last = cfg.start_step, cfg.start_step + cfg.steps - 1
        self.rank = rank
        self.memory = cfg.memory_snapshot and device.type == "cuda"
        name = f"rank{rank}.steps-{self.first}-{self.last}"
        self.trace_path = folder / f"{name}.pt.trace.json.gz"
        self.snapshot_path = folder / f"{name}.memory.pickle"
        self.activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self._profile: profile | None = None
        self._marker: record_function | None = None

    def step(self, step: int) -> None:
        """Start, mark or finish the trace as step `step` (1-based) is about to run."""
        if not self.enabled or step < self.first - 1:
            return
        if step > self.last:
            self.close()
            return
        if self._profile is None:
            self.trace_path.parent.mkdir(parents=True, exist_ok=True)
            self._profile = profile(activities=self.activities, record_shapes=True)
            self._profile.prepare_trace()
        if step < self.first:  # the warm-up step
            return
        if self._marker is None:
            self._profile.start_trace()
            if self.memory:
                torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        else:
            self._marker.__exit__(None, None, None)
        self._marker = record_function(f"ProfilerStep#{step}")
        self._marker.__enter__()

    def close(self) -> None:
        """Write what was traced (also when the run ends inside the window); later steps are not traced."""
        if self._profile is None:
            self.enabled = False
            return
        if self._marker is None:  # the run ended on the warm-up step: nothing traced
            self._profile.stop_trace()
        else:
            self._marker.__exit__(None, None, None)
            self._profile.stop_trace()
            self._profile.export_chrome_trace(str(self.trace_path))
            if self.memory:
                torch.cuda.memory._dump_snapshot(str(self.snapshot_path))
                torch.cuda.memory._record_memory_history(enabled=None)
            if self.rank == 0:
                extra = f" and {self.snapshot_path.name} (pytorch.org/memory_viz)" if self.memory else ""
                logger.info("profiler: steps %d-%d traced in %s%s, one file per rank (open at ui.perfetto.dev)",
                            self.first, self.last, self.trace_path, extra)
        self._profile, self._marker, self.enabled = None, None, False
