"""Progress you can watch: one console line per `log_freq` steps, the same figures in TensorBoard and in a JSONL
file for scripts and plots.

The JSONL file (`metrics.jsonl` in the run folder) gets one line per report: {"step": N, "loss/train": ...}, with
the TensorBoard tag of every scalar written at that step as its key. Validation results are a line of their own
({"step": N, "val/loss": ..., "val/loss/NAME": ...}), so a step can appear on two lines. A resumed run appends,
so steps after the checkpoint it resumed from appear again; the later line is the one that counts.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from nano.config import Metrics

logger = logging.getLogger("nano")

# Dense bf16 tensor-core peak per device, FLOP/s (vendor datasheets, no sparsity). MFU is reported only
# for devices listed here: a guessed peak would make the figure meaningless.
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.1e12,
    "A10G": 70.0e12,
    "RTX 4090": 165.2e12,
    "RTX 3090": 71.0e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def _global_mean(value: torch.Tensor) -> float:
    if dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


class MetricsLogger:
    """Accumulates per-step figures and reports them every `log_freq` steps (only rank 0 writes)."""

    def __init__(
        self,
        cfg: Metrics,
        tensorboard_dir: Path,
        *,
        flops_per_token: int,
        max_steps: int,
        source_names: list[str],
        device: torch.device,
        rank: int,
        dp_degree: int,
        extra_scalars: Callable[[], dict[str, float]] | None = None,
        jsonl_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.extra_scalars = extra_scalars  # more figures for TensorBoard at each report (e.g. the Hub pusher's)
        self.last_loss: float | None = None  # the loss of the latest progress line (for checkpoints' run.json)
        self.flops_per_token = flops_per_token
        self.max_steps = max_steps
        self.source_names = source_names
        self.device = device
        self.dp_degree = dp_degree  # tensor-parallel ranks share their tokens: only dp ranks add throughput
        self.is_writer = rank == 0
        self.peak = peak_flops(device)
        self.writer = None
        if self.is_writer and cfg.enable_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tensorboard_dir))
        self.jsonl = None  # every scalar TensorBoard gets, one JSON object per report (rank 0)
        if self.is_writer and jsonl_path is not None:
            jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self._validation: tuple[int, dict[str, float]] | None = None  # the latest results, for the next progress line
        self.reset_window()
        self.source_tokens = torch.zeros(len(source_names), dtype=torch.long)
        self.source_skipped = torch.zeros(len(source_names), dtype=torch.long)  # unusable rows the loader skipped
        self._skipped_reported = 0

    def reset_window(self) -> None:
        """Restart the throughput clock, e.g. after a checkpoint save so its time isn't counted as training."""
        self._window_start = time.perf_counter()
        self._window_tokens = 0
        self._window_steps = 0
        self._window_loss: torch.Tensor | float = 0.0
        self._window_loss_steps = 0  # steps whose loss counts: a skipped step's (inf, NaN, a spike) does not
        self._window_skipped = 0  # optimizer steps skipped by nano.guards

    def record(
        self, step: int, *, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, tokens: int, tokens_seen: int,
        source_tokens: torch.Tensor, source_skipped: torch.Tensor, skipped: bool = False,
    ) -> None:
        """Add one optimizer step (`tokens`: trained on by this rank; `tokens_seen`: by all ranks since step 0;
        `skipped`: the guard kept the weights, so its loss stays out of the mean)."""
        self._window_tokens += tokens
        self._window_steps += 1
        if skipped:
            self._window_skipped += 1
        else:
            self._window_loss = self._window_loss + loss.detach()  # a tensor sum: no device sync until the report
            self._window_loss_steps += 1
        self.source_tokens += source_tokens.cpu()
        self.source_skipped += source_skipped.cpu()
        if step % self.cfg.log_freq and step != self.max_steps:
            return
        elapsed = time.perf_counter() - self._window_start
        world = dist.get_world_size() if dist.is_initialized() else 1
        tokens_per_s = self._window_tokens / elapsed * self.dp_degree  # the whole job
        # The mean over the steps since the last line (NaN when the guard skipped every one of them).
        loss_value = _global_mean(self._window_loss / self._window_loss_steps) if self._window_loss_steps else math.nan
        self.last_loss = loss_value
        norm_value = float(grad_norm)
        counts = torch.cat([self.source_tokens, self.source_skipped])
        if dist.is_initialized():
            dist.all_reduce(counts)
        sources, skipped = counts.split(len(self.source_names))
        eta = datetime.timedelta(seconds=int(elapsed / self._window_steps * (self.max_steps - step)))
        parts = [
            f"step {step:>{len(str(self.max_steps))}}/{self.max_steps}",
            f"loss {loss_value:.4f}",
            f"lr {lr:.2e}",
            f"grad {norm_value:.3f}",
            f"{tokens_per_s:,.0f} tok/s",
        ]
        mfu = None
        if self.peak:
            mfu = 100.0 * tokens_per_s * self.flops_per_token / (self.peak * world)
            parts.append(f"mfu {mfu:.1f}%")
        if self.device.type == "cuda":
            parts.append(f"mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f}GiB")
        parts.append(f"eta {eta}")
        if int(skipped.sum()) > self._skipped_reported:
            parts.append(f"skipped {int(skipped.sum()) - self._skipped_reported:,} rows")
            self._skipped_reported = int(skipped.sum())
        if self._window_skipped:
            parts.append(f"skipped {self._window_skipped} steps")
        if self._validation is not None:
            parts.append(self._validation_part(step))
        if self.is_writer:
            logger.info(" | ".join(parts))
            self._write_scalars(step, loss_value, norm_value, lr, tokens_per_s, tokens_seen, mfu, sources, skipped)
        self.reset_window()

    def _write_scalars(
        self, step: int, loss: float, grad_norm: float, lr: float, tokens_per_s: float, tokens_seen: int,
        mfu: float | None, sources: torch.Tensor, skipped: torch.Tensor,
    ) -> None:
        scalars = {"loss/train": loss, "optim/lr": lr, "optim/grad_norm": grad_norm,
                   "optim/skipped_steps": self._window_skipped,  # since the last report
                   "throughput/tokens_per_s": tokens_per_s, "throughput/tokens_seen": tokens_seen}
        if mfu is not None:
            scalars["throughput/mfu_percent"] = mfu
        scalars.update({f"data/tokens/{name}": count for name, count in zip(self.source_names, sources.tolist())})
        scalars.update({f"data/skipped/{name}": count for name, count in zip(self.source_names, skipped.tolist())})
        scalars.update(self.extra_scalars() if self.extra_scalars else {})
        self.write(step, scalars)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """The same figures to TensorBoard and to the JSONL file (rank 0 only)."""
        if not self.is_writer:
            return
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
            self.jsonl.flush()

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Keep what runs inside (evaluation, sampling) out of tokens/s, MFU and the ETA."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the training step still running on the device is training time
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._window_start += time.perf_counter() - begin

    def log_validation(self, step: int, results: dict[str, float]) -> None:
        """Held-out losses (nano.evaluate): written now, shown in the next progress line."""
        self.write(step, results)
        self._validation = (step, results)

    def _validation_part(self, step: int) -> str:
        at, results = self._validation  # type: ignore[misc]
        self._validation = None
        prefix = "val/loss/"
        per_source = ", ".join(f"{name[len(prefix):]} {value:.2f}" for name, value in results.items()
                               if name.startswith(prefix))
        return f"val{'' if at == step else f' (step {at})'} {results['val/loss']:.3f} [{per_source}]"

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        """Completions of the [sampling] prompts: to TensorBoard as text, and to the console."""
        if not self.is_writer:
            return
        for index, (prompt, completion) in enumerate(samples):
            logger.info("sample %d at step %d: %r -> %r", index, step, prompt, completion)
            if self.writer is not None:
                self.writer.add_text(f"samples/{index}", f"**{prompt}**\n\n```\n{completion}\n```", step)
        if self.writer is not None:
            self.writer.flush()

    def close(self, step: int) -> None:
        """Write the extra figures once more (they may have changed since the last report) and close."""
        extras = self.extra_scalars() if self.extra_scalars else {}
        if extras:
            self.write(step, extras)
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
