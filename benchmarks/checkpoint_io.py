"""Checkpoint costs the training loop sees, and the export's time and memory, for a model size.

    python benchmarks/checkpoint_io.py --flavor debug
    python benchmarks/checkpoint_io.py --flavor nano_1b --no-async     # 15 GB of state: async needs a second copy in RAM
    python benchmarks/checkpoint_io.py --dim 1024 --layers 12          # ~0.3B parameters

The checkpoint holds the model and AdamW's two moments, as in training (DCP's get_state_dict creates the
moments if no step was taken yet).
Prints: the stall of a sync save (the loop waits for the whole write), the stall of an async save (the loop
waits only for the copy to memory) and its background write time, then `nano-export` (a child process, as
the Hub pusher runs it): wall time, peak resident memory, and the largest single tensor for comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nano.checkpoint.manager import CheckpointManager, ModelAndOptimizer
from nano.config import Checkpoint
from nano.data.tokenizer import Tokenizer
from nano.models.llama import FLAVORS, Transformer, analytic_num_params

REPO = Path(__file__).resolve().parents[1]
GB = 1e9
# The export as the Hub pusher runs it, in its own process, then that process's own peak resident memory
# (VmHWM, Linux): the children figure of getrusage would also count this process's pages at fork time.
EXPORT_AND_REPORT_PEAK = """
import sys
from nano.checkpoint.export import main
code = main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("peak_kib=" + peak.split()[1])
sys.exit(code)
"""


def build(args: argparse.Namespace) -> tuple[Transformer, torch.optim.Optimizer]:
    base = FLAVORS[args.flavor]
    model_args = dataclasses.replace(base, vocab_size=32064 if args.flavor == "nano_1b" else 8192,
                                     dim=args.dim or base.dim, n_layers=args.layers or base.n_layers)
    with torch.device("meta"):
        model = Transformer(model_args)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)


def manager(folder: Path, model: Transformer, optimizer: torch.optim.Optimizer, mode: str) -> CheckpointManager:
    tokenizer = Tokenizer(REPO / "assets" / "tokenizer" / "nano_demo.model")
    return CheckpointManager(
        Checkpoint(keep_latest_k=0, async_mode=mode), folder, {"train": ModelAndOptimizer(model, optimizer)},
        layout={"dp_world_size": 1}, is_rank0=True, files={"tokenizer.model": tokenizer.model_bytes},
        run_info={"model_args": dataclasses.asdict(model.args), "job_name": "bench"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", default="debug", choices=sorted(FLAVORS))
    parser.add_argument("--dim", type=int, default=0)
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--no-async", dest="run_async", action="store_false",
                        help="skip the async save (it keeps a second copy of the state in memory)")
    parser.add_argument("--folder", default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.folder or tempfile.mkdtemp(prefix="nano-ckpt-bench-"))
    model, optimizer = build(args)
    print(f"model: {analytic_num_params(model.args) / 1e6:,.0f}M parameters, dim {model.args.dim}, "
          f"{model.args.n_layers} layers, with AdamW state; torch {torch.__version__}")

    start = time.perf_counter()
    sync_dir = manager(root / "sync", model, optimizer, "disabled").save(1)
    sync_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in sync_dir.iterdir())
    print(f"sync save: the loop waits {sync_s:.2f} s ({size / GB:.2f} GB, {size / GB / sync_s:.2f} GB/s)")

    if args.run_async:
        async_manager = manager(root / "async", model, optimizer, "async")
        start = time.perf_counter()
        async_manager.save(1)
        stall_s = time.perf_counter() - start
        async_manager.wait()
        total_s = time.perf_counter() - start
        print(f"async save: the loop waits {stall_s:.2f} s (copy to memory); written in the background after "
              f"{total_s:.2f} s")
        del async_manager

    largest = max(p.numel() * p.element_size() for p in model.parameters())
    del model, optimizer
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", EXPORT_AND_REPORT_PEAK, str(sync_dir), str(root / "hf")], check=True,
                         capture_output=True, text=True).stdout
    export_s = time.perf_counter() - start
    peak = int(out.split("peak_kib=")[-1]) * 1024
    exported = sum(p.stat().st_size for p in (root / "hf").iterdir())
    print(f"nano-export (bf16): {export_s:.1f} s, {exported / GB:.2f} GB written, peak memory {peak / GB:.2f} GB "
          f"(largest tensor {largest / GB:.2f} GB fp32)")
    if args.folder is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
