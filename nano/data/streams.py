"""One source's rows for one (rank, worker) shard, with a position that resumes on the exact next row.

Rows are streamed with `datasets` (from the Hub, or from local files in the same schema) and read in
batches through `IterableDataset.iter()`, which, unlike `__iter__`, does not re-split the rows again
when it runs inside a DataLoader worker (we split by rank and worker ourselves, so that no worker is
left without rows when a source has a single file). `split_dataset_by_node` hands each (rank, worker)
whole files when their count divides the number of pipelines, and every n-th row otherwise.

The position is (epoch, the `datasets` state before the current batch, rows consumed from that batch).
We never ask `datasets` for its state between a `load_state_dict()` and the first batch: in that window
it reports the initial state (the "double resume" bug), so the loaded state is kept and reported instead.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

from nano.data.sources import LOCAL_FORMATS, SourceError, SourceSpec, check_columns

logger = logging.getLogger("nano")
datasets.logging.set_verbosity_error()
datasets.disable_progress_bars()
# Opening local json/parquet files pings a Hub download counter first; where the Hub is unreachable that
# stalls every open (each source in each worker) for seconds. Hub datasets never ping it.
datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False

ROWS_PER_READ = 64


def _load(spec: SourceSpec) -> datasets.IterableDataset:
    if spec.data_files:
        builder = LOCAL_FORMATS[Path(spec.data_files[0]).suffix]
        return datasets.load_dataset(builder, data_files=list(spec.data_files), split="train", streaming=True)
    return datasets.load_dataset(spec.hub_id, spec.subset, split=spec.split, streaming=True, data_dir=spec.data_dir)


def open_rows(spec: SourceSpec, shard: int, num_shards: int) -> datasets.IterableDataset:
    """Stream a source's rows (only the columns its formatter reads), keeping shard `shard` of `num_shards`."""
    ds = _load(spec).select_columns(list(spec.columns))
    return split_dataset_by_node(ds, rank=shard, world_size=num_shards) if num_shards > 1 else ds


def check_source(spec: SourceSpec) -> None:
    """Read a source's first row at start-up: an unreadable or empty source or a missing column fails here."""
    try:
        first = next(_load(spec).iter(batch_size=1), None)
    except StopIteration:  # raised by `datasets` itself when a local file has no rows to infer the schema from
        first = None
    except Exception as err:  # whatever `datasets` raises (no such dataset, no access, malformed file), named once
        gated = spec.gated and not spec.data_files
        hint = f" (gated: accept the terms on {spec.card} and set HF_TOKEN)" if gated else ""
        raise SourceError(
            f"data.sources.{spec.name}: cannot read {spec.origin}{hint}: {type(err).__name__}: {err}"
        ) from err
    if not first or not next(iter(first.values()), None):
        raise SourceError(f"data.sources.{spec.name}: no rows in {spec.origin}")
    check_columns(spec, first.keys())


class RowStream:
    """Endless rows of one source shard: a finished epoch starts the next one."""

    def __init__(self, spec: SourceSpec, shard: int, num_shards: int) -> None:
        self.spec = spec
        self.rows = open_rows(spec, shard, num_shards)
        self.epoch = 0
        self._iterator = None
        self._resume_state: dict[str, Any] | None = None  # datasets state the next iterator starts from
        self._skip = 0  # rows of the first batch after a resume that were consumed before the save
        self._batch_state: dict[str, Any] | None = None  # datasets state before the current batch
        self._batch: list[dict[str, Any]] = []
        self._offset = 0

    def next_row(self) -> dict[str, Any]:
        while self._offset >= len(self._batch):
            self._read_batch()
        row = self._batch[self._offset]
        self._offset += 1
        return row

    def _read_batch(self) -> None:
        if self._iterator is None:  # the start of an epoch, or the first read after a resume
            self.rows.set_epoch(self.epoch)
            if self._resume_state is not None:
                self.rows.load_state_dict(self._resume_state)
            before = self._resume_state
            self._iterator = self.rows.iter(batch_size=ROWS_PER_READ)
        else:
            before = copy.deepcopy(self.rows.state_dict())
        columns = next(self._iterator, None)
        if columns is None:
            if before is None:
                raise SourceError(f"data.sources.{self.spec.name}: this rank's share of {self.spec.origin} has no rows")
            self.epoch += 1
            logger.info("data source %s: starting epoch %d", self.spec.name, self.epoch)
            self._iterator, self._resume_state, self._skip = None, None, 0
            self._batch, self._offset = [], 0
            return
        names = list(columns)
        self._batch_state = before
        self._batch = [dict(zip(names, values)) for values in zip(*columns.values())]
        self._offset, self._skip = self._skip, 0

    def state_dict(self) -> dict[str, Any]:
        if self._iterator is None:  # nothing read since the epoch start or the resume
            return {"epoch": self.epoch, "batch_state": self._resume_state, "offset": self._skip}
        return {"epoch": self.epoch, "batch_state": self._batch_state, "offset": self._offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume so that the next row is the one after the last row consumed when `state` was taken."""
        self.epoch = state["epoch"]
        self._resume_state, self._skip = state["batch_state"], state["offset"]
        self._iterator, self._batch, self._offset = None, [], 0
