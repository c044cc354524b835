"""Peak memory per device of a config for each activation-checkpointing mode and micro-batch size: the
start-up estimate (nano.parallel.memory) and, with --trace, the training step traced on fake tensors
(nano.memory_trace); each with the chunked loss nano runs and, for comparison, with materialised logits.

    python benchmarks/memory_estimate.py                                   # nano_1b on one GPU, estimate
    python benchmarks/memory_estimate.py --trace --micro 8                 # and traced (about 1 min a trace)
    python benchmarks/memory_estimate.py --config train_configs/nano_1b.toml --world-size 8 --trace
    python benchmarks/memory_estimate.py --fit-blocks                      # the estimator's per-block table

No GPU needed: neither allocates the memory it reports. `python benchmarks/train_step.py` prints the
measured peak next to the estimate on a GPU. "fits" applies the start-up check (95% of the device) to a
24 GiB card, to the traced peak when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from nano.config import load_config
from nano.memory_trace import fit_block_bytes, trace_peak_memory
from nano.models.llama import FLAVORS, padded_vocab_size
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import BLOCK_BYTES, FIT, GIB, estimate_peak_memory, loss_bytes

REPO = Path(__file__).resolve().parents[1]
CARD = 24 * GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=1, help="GPUs the run would use")
    parser.add_argument("--vocab", type=int, default=32000 + 6, help="tokenizer size (the model pads it)")
    parser.add_argument("--micro", default="4,8,16", help="micro-batch sizes to show")
    parser.add_argument("--modes", default="none,selective_op,full", help="activation-checkpointing modes to show")
    parser.add_argument("--trace", action="store_true", help="also trace each step on fake tensors")
    parser.add_argument("--fit-blocks", action="store_true",
                        help="print nano.parallel.memory.BLOCK_BYTES as traced from blocks of today's code, and exit")
    opts, overrides = parser.parse_known_args()
    if opts.fit_blocks:
        for key, current in BLOCK_BYTES.items():
            fitted = fit_block_bytes(*key)
            print(f"    {key}: ({fitted[0]}, {fitted[1]}),{'' if fitted == current else '  # the table differs'}")
        return
    if not any(a == "--config" or a.startswith("--config=") for a in overrides):
        overrides = ["--config", str(REPO / "train_configs/nano_1b.toml"), *overrides]
    base = load_config(overrides, world_size=opts.world_size)
    args = dataclasses.replace(FLAVORS[base.model.flavor], vocab_size=padded_vocab_size(opts.vocab),
                               max_seq_len=base.training.seq_len)
    dims = ParallelDims.from_config(base.parallelism, opts.world_size)
    print(f"{base.model.flavor}, vocab {args.vocab_size}, seq {base.training.seq_len}, "
          f"{base.training.mixed_precision}, world size {opts.world_size} (dp_shard {dims.dp_shard}, tp {dims.tp}); "
          f"GiB per device")
    print(f"{'':<19} {'chunked loss':^23}  {'materialised logits':^23}")
    print(f"{'AC mode':<13} {'micro':>5}  {'estimate':>8} {'traced':>6} {'ratio':>6}  {'estimate':>8} {'traced':>6} "
          f"{'ratio':>6}  {'change':>7}  fits 24 GiB")
    for mode in opts.modes.split(","):
        for micro in map(int, opts.micro.split(",")):
            cfg = dataclasses.replace(base, training=dataclasses.replace(base.training, micro_batch_size=micro),
                                      activation_checkpoint=dataclasses.replace(base.activation_checkpoint, mode=mode))
            estimate = estimate_peak_memory(args, cfg, dims)
            chunked = estimate.total
            logits = dataclasses.replace(estimate, loss=loss_bytes(args, cfg, dims, chunked=False)).total
            row = f"{mode:<13} {micro:>5}  {chunked / GIB:>8.1f} "
            if opts.trace:
                traced = trace_peak_memory(cfg, args, opts.world_size).total
                traced_logits = trace_peak_memory(cfg, args, opts.world_size, materialise_logits=True).total
                row += (f"{traced / GIB:>6.1f} {chunked / traced:>6.2f}  {logits / GIB:>8.1f} "
                        f"{traced_logits / GIB:>6.1f} {logits / traced_logits:>6.2f}  "
                        f"{100 * (traced / traced_logits - 1):>6.1f}%  ")
                peak = traced
            else:
                row += (f"{'-':>6} {'-':>6}  {logits / GIB:>8.1f} {'-':>6} {'-':>6}  "
                        f"{100 * (chunked / logits - 1):>6.1f}%  ")
                peak = chunked
            print(row + ("yes" if peak <= FIT * CARD else "no"), flush=True)
    cfg = dataclasses.replace(base, activation_checkpoint=dataclasses.replace(base.activation_checkpoint, mode="full"))
    print(f"\nthe config's own settings with full AC, estimated: {estimate_peak_memory(args, cfg, dims)}")


if __name__ == "__main__":
    main()
