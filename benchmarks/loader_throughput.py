"""Data loader throughput and realised mixture shares on the bundled demo mix (CPU).

    python benchmarks/loader_throughput.py [--config train_configs/debug_model.toml] [--batches 200]

Prints tokens/s for the loader alone (num_workers 0 and 2, seq_len 256 and 2048, micro-batch 8), with the
config's block shuffle (data.shuffle_buffer) and without it (0), the two runs alternating so that a busy
machine slows both alike; with 2 workers also without the per-step state snapshot that exact resume needs
(torchdata's snapshot_every_n_steps), to show what it costs. Then the share of documents and tokens per
source.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterable
from itertools import islice

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nano.config import load_config
from nano.data.loader import build_dataloader
from nano.data.mixture import Mixture
from nano.data.tokenizer import load_tokenizer

MICRO_BATCH = 8


def tokens_per_second(loader: Iterable, batches: int) -> tuple[float, torch.Tensor]:
    """Input tokens served per second after the first batch (worker start-up and the first blocks' reads are
    not throughput: a block is read once per shuffle_buffer documents)."""
    it = iter(loader)
    next(it)
    start, tokens, sources = time.perf_counter(), 0, torch.zeros((), dtype=torch.long)
    for batch in islice(it, batches):
        tokens += batch["input"].numel()
        sources = sources + batch["source_tokens"].sum(0)
    return tokens / (time.perf_counter() - start), sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train_configs/debug_model.toml")
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    cfg = load_config(["--config", args.config]).data
    tokenizer = load_tokenizer(cfg.tokenizer)

    print(f"{'seq_len':>8} {'workers':>8} {f'shuffle {cfg.shuffle_buffer}':>14} {'shuffle 0':>12} {'no snapshots':>13}")
    for seq_len in (256, 2048):
        for workers in (0, 2):
            rates = {}
            for shuffle in (cfg.shuffle_buffer, 0):
                loader = build_dataloader(dataclasses.replace(cfg, num_workers=workers, shuffle_buffer=shuffle),
                                          tokenizer, seq_len=seq_len, micro_batch_size=MICRO_BATCH, dp_rank=0,
                                          dp_world_size=1, seed=0)
                rates[shuffle], sources = tokens_per_second(loader, args.batches)
                if shuffle == cfg.shuffle_buffer:
                    shuffled, shuffled_sources = loader, sources
            unsnapshotted = ""
            if workers:
                plain = StatefulDataLoader(shuffled.dataset, batch_size=MICRO_BATCH, num_workers=workers,
                                           prefetch_factor=4, snapshot_every_n_steps=None)
                unsnapshotted = f"{tokens_per_second(plain, args.batches)[0]:,.0f}"
            print(f"{seq_len:>8} {workers:>8} {rates[cfg.shuffle_buffer]:>14,.0f} {rates[0]:>12,.0f} "
                  f"{unsnapshotted:>13}")

    names = shuffled.source_names
    weights = [cfg.sources[name].weight for name in names]
    mixture = Mixture(weights, seed=(0, 0, 0))  # the loader's own draw, as rank 0 / worker 0 makes it
    draws = torch.bincount(torch.tensor([mixture.next_source() for _ in range(20_000)]), minlength=len(names))
    print(f"\n{'source':<18} {'weight %':>9} {'docs % (20k)':>13} {'tokens %':>9}  (tokens: last shuffled run above)")
    for i, name in enumerate(names):
        print(f"{name:<18} {100 * weights[i] / sum(weights):>9.1f} {100 * draws[i] / draws.sum():>13.1f} "
              f"{100 * shuffled_sources[i] / shuffled_sources.sum():>9.1f}")


if __name__ == "__main__":
    main()
