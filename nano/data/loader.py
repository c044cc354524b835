"""Mix -> format -> tokenize -> pack into seq_len + 1 windows -> per-rank batches, resumable to the token.

Each (data-parallel rank, loader worker) runs its own pipeline over a disjoint share of every source's
rows (streams.py), with its own mixture generator seeded from (seed, rank, worker). Documents are packed
as BOS + tokens + EOS, concatenated and cut into seq_len + 1 windows regardless of document boundaries;
the remainder starts the next window. A batch is
    input, label      LongTensor[B, S]: the window without its last / first token
    source_tokens     LongTensor[B, num_sources]: each window's label tokens by the source they came from
                      (labels, so every token of the stream is counted once and a batch sums to B * S)

State is exactly what serving the next window needs: each source's row position, the mixture generator
and the packer's leftover tokens (with their sources). Documents are tokenized one at a time as they are
packed, so no row is ever read ahead of the state; batching them through SentencePiece was no faster on
the demo mix, which is served at >100x the debug train step's rate (docs/benchmarks.md).
torchdata's StatefulDataLoader collects the worker states with every batch (snapshot_every_n_steps=1;
about 0.4 ms per batch with 2 workers), so a state taken at any step is the exact position, without
replaying batches on resume.

Resuming under another number of data-parallel ranks or workers is refused with both layouts named.
Continuing exactly would need a window order that any split reproduces, i.e. every rank reading and
tokenizing the whole global stream (8x the reading at 8 ranks), because per-rank packer remainders and
generators mean nothing under another split; refusing never repeats or skips data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from nano.config import Data
from nano.data.formats import FORMATTERS
from nano.data.mixture import Mixture
from nano.data.sources import SourceSpec, resolve_sources
from nano.data.streams import RowStream, check_source
from nano.data.tokenizer import Tokenizer


class PackedMixture(IterableDataset):
    """Packed windows of the source mix for one data-parallel rank (split further across its workers)."""

    def __init__(self, specs: list[SourceSpec], tokenizer: Tokenizer, *, seq_len: int, dp_rank: int,
                 dp_world_size: int, seed: int) -> None:
        self.specs, self.tokenizer_path, self.seq_len = specs, str(tokenizer.path), seq_len
        self.dp_rank, self.dp_world_size, self.seed = dp_rank, dp_world_size, seed
        self._pending: dict[str, Any] | None = None
        self._ready = False

    def _setup(self) -> None:
        """Open this worker's share of each source; runs inside the worker, after any load_state_dict."""
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shard, num_shards = self.dp_rank * num_workers + worker_id, self.dp_world_size * num_workers
        self.tokenizer = Tokenizer(self.tokenizer_path)
        self.streams = [RowStream(spec, shard, num_shards) for spec in self.specs]
        self.formatters = [FORMATTERS[spec.format] for spec in self.specs]
        self.mixture = Mixture([spec.weight for spec in self.specs], seed=(self.seed, self.dp_rank, worker_id))
        self.tokens: list[int] = []
        self.token_sources: list[int] = []
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None
        self._ready = True

    def _fill(self, needed: int) -> None:
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        while len(self.tokens) < needed:
            source = self.mixture.next_source()
            text = self.formatters[source](self.streams[source].next_row())
            ids = [bos, *self.tokenizer.encode(text), eos]
            self.tokens.extend(ids)
            self.token_sources.extend([source] * len(ids))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not self._ready:
            self._setup()
        window = self.seq_len + 1
        while True:
            self._fill(window)
            tokens = torch.tensor(self.tokens[:window], dtype=torch.long)
            sources = torch.tensor(self.token_sources[1:window], dtype=torch.long)
            del self.tokens[:window], self.token_sources[:window]
            yield {
                "input": tokens[:-1],
                "label": tokens[1:],
                "source_tokens": torch.bincount(sources, minlength=len(self.specs)),
            }

    def state_dict(self) -> dict[str, Any]:
        if not self._ready:  # loaded but not iterated yet: the loaded state is still the position
            return self._pending or {}
        return {
            "streams": [s.state_dict() for s in self.streams],
            "mixture": self.mixture.state_dict(),
            "tokens": list(self.tokens),
            "token_sources": list(self.token_sources),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._ready:
            self._restore(state)
        else:
            self._pending = state or None

    def _restore(self, state: dict[str, Any]) -> None:
        for stream, stream_state in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(stream_state)
        self.mixture.load_state_dict(state["mixture"])
        self.tokens, self.token_sources = list(state["tokens"]), list(state["token_sources"])


class NanoDataLoader(StatefulDataLoader):
    """StatefulDataLoader that records the layout its state was made under and refuses another."""

    def __init__(self, dataset: PackedMixture, *, micro_batch_size: int, num_workers: int) -> None:
        super().__init__(dataset, batch_size=micro_batch_size, num_workers=num_workers,
                         persistent_workers=num_workers > 0, snapshot_every_n_steps=1,
                         prefetch_factor=4 if num_workers > 0 else None)
        self.source_names = [spec.name for spec in dataset.specs]

    def _layout(self) -> dict[str, int]:
        return {"dp_world_size": self.dataset.dp_world_size, "num_workers": self.num_workers}

    def state_dict(self) -> dict[str, Any]:
        return {"layout": self._layout(), "sources": self.source_names, "loader": super().state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, now = state_dict["layout"], self._layout()
        if saved != now:
            raise ValueError(
                f"data loader state was saved with {saved['dp_world_size']} data-parallel ranks x "
                f"{saved['num_workers']} workers, this run has {now['dp_world_size']} x {now['num_workers']}: "
                f"resume with the same layout (data.num_workers and the data-parallel degree)"
            )
        if state_dict["sources"] != self.source_names:
            raise ValueError(f"data loader state was saved for sources {state_dict['sources']}, "
                             f"this run mixes {self.source_names}: resume with the same [data.sources]")
        super().load_state_dict(state_dict["loader"])


def build_dataloader(cfg: Data, tokenizer: Tokenizer, *, seq_len: int, micro_batch_size: int, dp_rank: int,
                     dp_world_size: int, seed: int) -> NanoDataLoader:
    """Validate the sources (files, columns) now, at start-up, then build the rank's loader."""
    specs = resolve_sources(cfg)
    for spec in specs:
        check_source(spec)
    dataset = PackedMixture(specs, tokenizer, seq_len=seq_len, dp_rank=dp_rank, dp_world_size=dp_world_size, seed=seed)
    return NanoDataLoader(dataset, micro_batch_size=micro_batch_size, num_workers=cfg.num_workers)
