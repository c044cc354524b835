"""Mix -> format -> tokenize -> pack into seq_len + 1 windows -> per-rank batches, resumable to the token.

Each (data-parallel rank, loader worker) runs its own pipeline over a disjoint share of every source's
rows, shuffled in seeded blocks with bad rows skipped (streams.py), with its own mixture generator seeded
from (seed, rank, worker). Documents are packed as BOS + tokens + EOS, concatenated and cut into
seq_len + 1 windows regardless of document boundaries; the remainder starts the next window. A batch is
    input, label      LongTensor[B, S]: the window without its last / first token
    source_tokens     LongTensor[B, num_sources]: each window's label tokens by the source they came from
                      (labels, so every token of the stream is counted once and a batch sums to B * S)
    source_skipped    LongTensor[B, num_sources]: rows each source skipped (unusable) since the pipeline's
                      previous window, so a run's skips, summed over batches, reach TensorBoard

State is exactly what serving the next window needs: each source's block position, the mixture generator
and the packer's leftover tokens (with their sources). Documents are tokenized one at a time as they are
packed; batching them through SentencePiece was no faster on the demo mix (docs/benchmarks.md).
torchdata's StatefulDataLoader collects the worker states with every batch (snapshot_every_n_steps=1;
about 0.4 ms per batch with 2 workers), so a state taken at any step is the exact position, without
replaying batches on resume.

Validation documents (`held_out_per_source` > 0): each source's first N usable documents are set aside at
start-up (streams.hold_out); every pipeline starts reading after them, passes over later copies of them, and
the loader keeps them for the validation reader (`NanoDataLoader.held_out`). A resume with another N is refused:
it would change the stream.

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
from nano.data.mixture import Mixture
from nano.data.sources import SourceSpec, resolve_sources
from nano.data.streams import DocumentStream, HeldOut, check_source, hold_out
from nano.data.tokenizer import Tokenizer


class PackedMixture(IterableDataset):
    """Packed windows of the source mix for one data-parallel rank (split further across its workers)."""

    def __init__(self, specs: list[SourceSpec], tokenizer: Tokenizer, *, seq_len: int, dp_rank: int,
                 dp_world_size: int, seed: int, shuffle_buffer: int, max_bad_run: int,
                 held_out: list[HeldOut] | None = None) -> None:
        self.specs, self.tokenizer_path, self.seq_len = specs, str(tokenizer.path), seq_len
        # Per source: where training rows begin (after the held-out ones), and the held-out documents' digests.
        self.starts = [h.end for h in held_out] if held_out else [(0, 0)] * len(specs)
        self.excluded = [h.digests for h in held_out] if held_out else [frozenset()] * len(specs)
        self.dp_rank, self.dp_world_size, self.seed = dp_rank, dp_world_size, seed
        self.shuffle_buffer, self.max_bad_run = shuffle_buffer, max_bad_run
        self._pending: dict[str, Any] | None = None
        self._ready = False

    def _setup(self) -> None:
        """Open this worker's share of each source; runs inside the worker, after any load_state_dict."""
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shard, num_shards = self.dp_rank * num_workers + worker_id, self.dp_world_size * num_workers
        self.tokenizer = Tokenizer(self.tokenizer_path)
        self.streams = [DocumentStream(spec, shard, num_shards, seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                                       max_bad_run=self.max_bad_run, start=start, exclude=excluded)
                        for spec, start, excluded in zip(self.specs, self.starts, self.excluded, strict=True)]
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
            ids = [bos, *self.tokenizer.encode(self.streams[source].next_document()), eos]
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
                "source_skipped": torch.tensor([stream.take_skipped() for stream in self.streams], dtype=torch.long),
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

    def __init__(self, dataset: PackedMixture, *, micro_batch_size: int, num_workers: int,
                 held_out: dict[str, HeldOut] | None = None) -> None:
        super().__init__(dataset, batch_size=micro_batch_size, num_workers=num_workers,
                         persistent_workers=num_workers > 0, snapshot_every_n_steps=1,
                         prefetch_factor=4 if num_workers > 0 else None)
        self.source_names = [spec.name for spec in dataset.specs]
        self.held_out = held_out or {}
        """Each source's validation documents, which this loader never serves."""
        self.held_out_per_source = len(next(iter(self.held_out.values())).documents) if self.held_out else 0

    def _layout(self) -> dict[str, int]:
        return {"dp_world_size": self.dataset.dp_world_size, "num_workers": self.num_workers}

    def _order(self) -> dict[str, int]:
        """What the block shuffles depend on: the same position means other documents under other values."""
        return {"shuffle_buffer": self.dataset.shuffle_buffer, "seed": self.dataset.seed}

    def state_dict(self) -> dict[str, Any]:
        return {"layout": self._layout(), "sources": self.source_names, "order": self._order(),
                "held_out_per_source": self.held_out_per_source, "loader": super().state_dict()}

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
        saved, now = state_dict.get("order", "no shuffle settings (an older version)"), self._order()
        if saved != now:
            raise ValueError(f"data loader state was saved with {saved}, this run has {now}: resume with the same "
                             f"data.shuffle_buffer and job.seed (they decide the order of the documents)")
        saved = state_dict.get("held_out_per_source", 0)
        if saved != self.held_out_per_source:
            raise ValueError(f"data loader state was saved with {saved} validation documents held out per source, "
                             f"this run holds out {self.held_out_per_source}: resume with the same "
                             f"validation.documents_per_source (training has read the others)")
        super().load_state_dict(state_dict["loader"])


def build_dataloader(cfg: Data, tokenizer: Tokenizer, *, seq_len: int, micro_batch_size: int, dp_rank: int,
                     dp_world_size: int, seed: int, held_out_per_source: int = 0) -> NanoDataLoader:
    """Validate the sources (files, columns) now, at start-up, set the validation documents aside, then build
    the rank's loader."""
    specs = resolve_sources(cfg)
    for spec in specs:
        check_source(spec)
    held_out = {spec.name: hold_out(spec, held_out_per_source) for spec in specs} if held_out_per_source else {}
    dataset = PackedMixture(specs, tokenizer, seq_len=seq_len, dp_rank=dp_rank, dp_world_size=dp_world_size, seed=seed,
                            shuffle_buffer=cfg.shuffle_buffer, max_bad_run=cfg.max_consecutive_bad_rows,
                            held_out=[held_out[spec.name] for spec in specs] if held_out else None)
    return NanoDataLoader(dataset, micro_batch_size=micro_batch_size, num_workers=cfg.num_workers, held_out=held_out)
