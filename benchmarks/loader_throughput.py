"""Data loader throughput and realised mixture shares on the bundled demo mix (CPU).

    python benchmarks/loader_throughput.py [--config train_configs/debug_model.toml] [--batches 200]

Prints tokens/s for the loader alone (num_workers 0 and 2, seq_len 256 and 2048) and, for comparison,
the share of tokens and documents each source contributed.
"""

from __future__ import annotations

import argparse
import time
from itertools import islice

import torch

from nano.config import load_config
from nano.data.loader import build_dataloader
from nano.data.mixture import Mixture
from nano.data.tokenizer import load_tokenizer


def throughput(cfg, tokenizer, seq_len: int, workers: int, batches: int) -> tuple[float, torch.Tensor]:
    cfg.num_workers = workers
    loader = build_dataloader(cfg, tokenizer, seq_len=seq_len, micro_batch_size=8, dp_rank=0, dp_world_size=1, seed=0)
    it = iter(loader)
    next(it)  # start-up (worker spawn, file opening) is not throughput
    start, tokens, sources = time.perf_counter(), 0, 0
    for batch in islice(it, batches):
        tokens += batch["input"].numel()
        sources = sources + batch["source_tokens"].sum(0)
    return tokens / (time.perf_counter() - start), sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train_configs/debug_model.toml")
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    cfg = load_config(["--config", args.config])
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    names = list(cfg.data.sources)
    weights = [cfg.data.sources[n].weight for n in names]
    print(f"{'seq_len':>8} {'workers':>8} {'tokens/s':>12}")
    for seq_len in (256, 2048):
        for workers in (0, 2):
            rate, sources = throughput(cfg.data, tokenizer, seq_len, workers, args.batches)
            print(f"{seq_len:>8} {workers:>8} {rate:>12,.0f}")
    mixture = Mixture(weights, seed=(0, 0, 0))
    draws = torch.bincount(torch.tensor([mixture.next_source() for _ in range(20_000)]), minlength=len(names))
    share_tokens = sources / sources.sum()
    print(f"\n{'source':<18} {'weight %':>9} {'docs % (20k)':>13} {'tokens %':>9}")
    for i, name in enumerate(names):
        print(f"{name:<18} {100 * weights[i] / sum(weights):>9.1f} {100 * draws[i] / draws.sum():>13.1f} "
              f"{100 * share_tokens[i]:>9.1f}")


if __name__ == "__main__":
    main()
