"""Start-up memory estimate (nano.parallel.memory) of a config for each activation-checkpointing mode and
micro-batch size, with the chunked loss nano runs and, for comparison, with materialised logits.

    python benchmarks/memory_estimate.py                                   # nano_1b on one GPU
    python benchmarks/memory_estimate.py --config train_configs/nano_1b.toml --world-size 8

An estimate from the config, not a measurement: `python benchmarks/train_step.py` prints the measured peak
next to it on a GPU. "fits" applies the start-up check (95% of the device) to a 24 GiB card.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from nano.config import load_config
from nano.models.llama import FLAVORS, padded_vocab_size
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import GIB, estimate_peak_memory, loss_bytes

REPO = Path(__file__).resolve().parents[1]
CARD = 24 * GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=1, help="GPUs the run would use")
    parser.add_argument("--vocab", type=int, default=32000 + 6, help="tokenizer size (the model pads it)")
    parser.add_argument("--micro", default="4,8,16", help="micro-batch sizes to show")
    opts, overrides = parser.parse_known_args()
    if not any(a == "--config" or a.startswith("--config=") for a in overrides):
        overrides = ["--config", str(REPO / "train_configs/nano_1b.toml"), *overrides]
    base = load_config(overrides, world_size=opts.world_size)
    args = dataclasses.replace(FLAVORS[base.model.flavor], vocab_size=padded_vocab_size(opts.vocab),
                               max_seq_len=base.training.seq_len)
    dims = ParallelDims.from_config(base.parallelism, opts.world_size)
    print(f"{base.model.flavor}, vocab {args.vocab_size}, seq {base.training.seq_len}, "
          f"{base.training.mixed_precision}, world size {opts.world_size} (dp_shard {dims.dp_shard}, tp {dims.tp}); GiB")
    print(f"{'AC mode':<13} {'micro':>5}  {'chunked loss':>12}  {'loss':>6}  {'materialised':>12}  "
          f"{'loss':>6}  {'change':>7}  fits 24 GiB")
    for mode in ("none", "selective_op", "full"):
        for micro in map(int, opts.micro.split(",")):
            cfg = dataclasses.replace(base, training=dataclasses.replace(base.training, micro_batch_size=micro),
                                      activation_checkpoint=dataclasses.replace(base.activation_checkpoint, mode=mode))
            chunked = estimate_peak_memory(args, cfg, dims)
            full = dataclasses.replace(chunked, loss=loss_bytes(args, cfg, dims, chunked=False))
            print(f"{mode:<13} {micro:>5}  {chunked.total / GIB:>12.1f}  {chunked.loss / GIB:>6.2f}  "
                  f"{full.total / GIB:>12.1f}  {full.loss / GIB:>6.2f}  {100 * (chunked.total / full.total - 1):>6.1f}%  "
                  f"{'yes' if chunked.total <= 0.95 * CARD else 'no'}")
    cfg = dataclasses.replace(base, activation_checkpoint=dataclasses.replace(base.activation_checkpoint, mode="full"))
    print(f"\nthe config's own settings with full AC: {estimate_peak_memory(args, cfg, dims)}")


if __name__ == "__main__":
    main()
