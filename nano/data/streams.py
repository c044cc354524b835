"""One source's documents for one (rank, worker) pipeline: files in a seeded order, rows shuffled in blocks,
bad rows skipped and counted, and a position that resumes on the exact next document.

Files (FileRows). A source is a list of files: its local data_files, or the files `datasets` resolves on the
Hub. Local .jsonl/.json files are read line by line through `IterableDataset.from_generator` and each line is
parsed on its own, so a malformed line is one bad row: `datasets`' json builder parses 10 MB blocks with
pyarrow and a bad line ends the stream with ArrowInvalid. Parquet files and Hub sources are read by `datasets`'
own builders. When the number of files divides the number of pipelines (ranks x workers) each pipeline reads
whole files, otherwise every pipeline reads every file keeping every n-th row; we split by rank and worker
ourselves (`IterableDataset.iter()` does not re-split inside a DataLoader worker), so no worker is left
without rows when a source has a single file. Each epoch visits the files in an order seeded by
(seed, source, epoch), the same in every pipeline, so the pipelines stay disjoint and together complete.

The row position is (epoch, file, the `datasets` state before the current read of 64 rows, rows used from
that read). We never ask `datasets` for its state between a `load_state_dict()` and the first read: in that
window it reports the initial state (the "double resume" bug), so the loaded position is kept and reported.

Shuffling (DocumentStream). Rows are formatted and shuffled in blocks: the next `shuffle_buffer` usable
documents (fewer at the end of an epoch) are permuted by a generator seeded with (seed, source, pipeline,
epoch, block). The state is the row position where the block starts, the block's number and how many of its
documents were served, so a resume re-reads one block. A state holding the buffered documents themselves would
be copied into every step's snapshot (torchdata's snapshot_every_n_steps=1), and `datasets`' own shuffle buffer
is not restored on resume at all.

Bad rows. A line that is not a JSON object, or a row its formatter rejects (nano.data.formats.BadRow: a field
missing, null, empty or not text), is skipped, counted (`take_skipped()`, per batch into TensorBoard) and logged
with source, file and row or line: the first few, then one line per 1,000. A part of a Hub or parquet file that
`datasets` cannot parse skips the rest of that file, counted as one bad row. `max_bad_run` unusable rows in a row
stop the run with SourceError naming the source and file. Blocks count usable documents, so the stream after a
bad row equals the stream of the same file without it, shuffled or not.

Validation documents (`hold_out`). A source's held-out set is its first N distinct usable documents in its files'
original order, file by file and row by row. Where it ends, (file index, row index) of the next row, is the same
for any number of ranks and workers, and every training pipeline (FileRows `start`) passes over the rows before
it, so a validation document can never be in a training batch. Files wholly before it are left out of the files
shared among pipelines, so no pipeline is handed only validation rows. A later row whose document is the same
text as a validation document (sources do repeat rows) is passed over too (DocumentStream `exclude`, by digest).
Neither kind of row is counted as skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.distributed import split_dataset_by_node

from nano.data.formats import FORMATTERS, BadRow
from nano.data.sources import SourceError, SourceSpec, check_columns

logger = logging.getLogger("nano")
datasets.logging.set_verbosity_error()
datasets.disable_progress_bars()
# Opening local json/parquet files pings a Hub download counter first; where the Hub is unreachable that
# stalls every open (each source in each worker) for seconds. Hub datasets never ping it.
datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False

ROWS_PER_READ = 64
LINE_FILES = {".jsonl", ".json"}
LOGGED_SKIPS, LOG_SKIPS_EVERY = 5, 1000
# What `datasets` raises for bytes it cannot parse (not for network or disk failures, which should stop a run).
UNPARSEABLE = (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, json.JSONDecodeError)


def json_lines(files: list[str]) -> Iterator[dict[str, Any]]:
    """Every non-blank line of every file, unparsed; a .json file holding one JSON array gives its elements."""
    for path in files:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
            f.seek(0)
            if head.startswith(b"["):
                try:
                    elements = json.load(f)
                except ValueError as err:
                    yield {"raw": None, "at": "the file", "error": f"not a JSON array: {err}"}
                    continue
                for index, element in enumerate(elements):
                    yield {"raw": element, "at": f"element {index}", "error": None}
                continue
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield {"raw": line, "at": f"line {number}", "error": None}


@dataclass
class SourceFiles:
    """A source's rows as one `datasets` stream with one shard per file, and those files' names."""

    spec: SourceSpec
    dataset: datasets.IterableDataset
    names: list[str]
    lines: bool  # rows are raw JSON lines, parsed one by one

    def file(self, index: int) -> datasets.IterableDataset:
        ds = self.dataset.shard(num_shards=self.dataset.num_shards, index=index)
        return ds if self.lines else ds.select_columns(list(self.spec.columns))


def open_files(spec: SourceSpec) -> SourceFiles:
    if spec.data_files and Path(spec.data_files[0]).suffix in LINE_FILES:
        files = list(spec.data_files)
        return SourceFiles(spec, datasets.IterableDataset.from_generator(json_lines, gen_kwargs={"files": files}),
                           files, lines=True)
    if spec.data_files:
        builder, split = datasets.load_dataset_builder("parquet", data_files=list(spec.data_files)), "train"
    else:
        builder, split = datasets.load_dataset_builder(spec.hub_id, spec.subset, data_dir=spec.data_dir), spec.split
    dataset = builder.as_streaming_dataset(split=split)
    names = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    if len(names) != dataset.num_shards:
        names = [f"{spec.origin} shard {i}" for i in range(dataset.num_shards)]
    return SourceFiles(spec, dataset, names, lines=False)


def _source_key(name: str) -> int:
    return zlib.crc32(name.encode())


class FileRows:
    """This pipeline's rows of one source, file after file and epoch after epoch, with a resumable position."""

    def __init__(self, files: SourceFiles, pipeline: int, num_pipelines: int, *, seed: int, shuffle: bool,
                 start: tuple[int, int] = (0, 0)) -> None:
        self.files, self.pipeline, self.num_pipelines = files, pipeline, num_pipelines
        self.seed, self.shuffle = seed, shuffle
        self.start = start  # (file index in the source's file list, row in that file): rows before it are held out
        self.position = (0, -1)  # (file index, row) of the row `next()` returned last
        self.whole_files = (files.dataset.num_shards - start[0]) % num_pipelines == 0
        self.epoch, self.file, self.file_row, self.epoch_rows = 0, 0, 0, 0
        self._order = self._file_order(0)
        self._resume: dict[str, Any] | None = None  # datasets state the next read of the current file starts from
        self._skip = 0  # rows of that read used before the save
        self._dataset: datasets.IterableDataset | None = None
        self._iterator: Iterator[dict[str, list]] | None = None
        self._read_state: dict[str, Any] | None = None  # datasets state before the current read
        self._batch: list[Any] = []
        self._offset = 0
        self._at, self._error = "", ""

    def _file_order(self, epoch: int) -> list[int]:
        first = self.start[0]  # the files before it hold validation rows only
        n = self.files.dataset.num_shards - first
        order = list(range(n))
        if self.shuffle:
            order = np.random.default_rng([self.seed, _source_key(self.files.spec.name), epoch]).permutation(n).tolist()
        order = [first + index for index in order]
        return order[self.pipeline :: self.num_pipelines] if self.whole_files else order

    def _open(self, index: int) -> datasets.IterableDataset:
        ds = self.files.file(index)
        if self.whole_files or self.num_pipelines == 1:
            return ds
        return split_dataset_by_node(ds, rank=self.pipeline, world_size=self.num_pipelines)

    def next(self) -> tuple[dict[str, Any] | None, str | None] | None:
        """(row, None) or (None, why it is unusable); None once at the end of each epoch."""
        while True:
            while self._offset >= len(self._batch):
                if not self._read():
                    return None
            raw = self._batch[self._offset]
            self._offset += 1
            index = self.file_row if self.whole_files else self.file_row * self.num_pipelines + self.pipeline
            self.file_row += 1
            self.position = (self._order[self.file], index)
            if self.position >= self.start:
                break
        self.epoch_rows += 1
        if raw is None:
            self._at = f"after row {index}"
            return None, f"the rest of the file cannot be parsed ({self._error})"
        if not self.files.lines:
            self._at = f"row {index}"
            return raw, None
        self._at = raw["at"]
        if raw["error"]:
            return None, raw["error"]
        value = raw["raw"]
        if isinstance(value, bytes):
            try:
                value = json.loads(value)
            except ValueError as err:
                return None, f"not JSON: {err}"
        return (value, None) if isinstance(value, dict) else (None, f"not a JSON object but {type(value).__name__}")

    def where(self) -> str:
        """The file and row (or line) of the row `next()` returned last."""
        return f"{self.files.names[self._order[self.file]] if self.file < len(self._order) else '?'} {self._at}"

    def _read(self) -> bool:
        """Fetch the next read of rows; False at the end of an epoch, the position then being the next epoch's start."""
        while True:
            if self.file >= len(self._order):
                if self.epoch_rows == 0:
                    held_out = " after the validation documents (validation.documents_per_source)" if any(
                        self.start) else ""
                    raise SourceError(f"data.sources.{self.files.spec.name}: this pipeline's share of "
                                      f"{self.files.spec.origin} has no rows{held_out}")
                self.epoch, self.file, self.epoch_rows = self.epoch + 1, 0, 0
                self._order = self._file_order(self.epoch)
                logger.info("data source %s: starting epoch %d", self.files.spec.name, self.epoch)
                return False
            if self._iterator is None:
                self._dataset = self._open(self._order[self.file])
                if self._resume is not None:
                    self._dataset.load_state_dict(self._resume)
                before = self._resume
                self._iterator = self._dataset.iter(batch_size=ROWS_PER_READ)
            else:
                before = self._dataset.state_dict()  # type: ignore[union-attr]
            try:
                columns = next(self._iterator, None)
            except UNPARSEABLE as err:  # datasets-parsed files only: the rest of this file is one bad row
                self._error, self._iterator = f"{type(err).__name__}: {err}", iter(())
                self._read_state, self._batch = before, [None]
            else:
                if columns is None:
                    self.file, self.file_row = self.file + 1, 0
                    self._iterator, self._resume, self._skip = None, None, 0
                    continue
                self._read_state = before
                self._batch = [dict(zip(columns, values)) for values in zip(*columns.values())]
            self._offset, self._skip = self._skip, 0
            return True

    def state_dict(self) -> dict[str, Any]:
        position = {"epoch": self.epoch, "file": self.file, "file_row": self.file_row, "epoch_rows": self.epoch_rows}
        if self._iterator is None:  # nothing read from this file since its start or the resume
            return {**position, "read_state": self._resume, "offset": self._skip}
        return {**position, "read_state": self._read_state, "offset": self._offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume so that the next row is the one after the last row used when `state` was taken."""
        self.epoch, self.file, self.file_row, self.epoch_rows = (
            state["epoch"], state["file"], state["file_row"], state["epoch_rows"])
        self._order = self._file_order(self.epoch)
        self._resume, self._skip = state["read_state"], state["offset"]
        self._iterator, self._batch, self._offset = None, [], 0


class DocumentStream:
    """Endless documents of one source for one pipeline: formatted, bad rows skipped, shuffled in blocks."""

    def __init__(self, spec: SourceSpec, pipeline: int, num_pipelines: int, *, seed: int, shuffle_buffer: int,
                 max_bad_run: int, start: tuple[int, int] = (0, 0), exclude: frozenset[bytes] = frozenset()) -> None:
        self.spec = spec
        self.exclude = exclude  # digests of the validation documents: never served, wherever they repeat
        self.format = FORMATTERS[spec.format]
        self.rows = FileRows(open_files(spec), pipeline, num_pipelines, seed=seed, shuffle=shuffle_buffer > 0,
                             start=start)
        self.shuffle, self.block_size = shuffle_buffer > 0, shuffle_buffer or ROWS_PER_READ
        self.key = [seed, _source_key(spec.name), pipeline]
        self.max_bad_run = max_bad_run
        self.bad_run = 0  # unusable rows since the last usable one
        self.skipped = 0  # rows skipped since the last take_skipped()
        self.total_skipped = 0
        self._start: dict[str, Any] = {"rows": self.rows.state_dict(), "block": 0, "bad_run": 0}
        self._next: dict[str, Any] | None = None  # where the block after the current one starts
        self._docs: list[str] = []
        self._offset = 0
        self._resume_offset = 0  # documents of the block being re-read that were served before the save
        self._replay = False  # re-reading a block after a resume: its skips were counted before the save

    def next_document(self) -> str:
        while self._offset >= len(self._docs):
            self._read_block()
        doc = self._docs[self._offset]
        self._offset += 1
        return doc

    def take_skipped(self) -> int:
        """Rows skipped since the previous call."""
        skipped, self.skipped = self.skipped, 0
        return skipped

    def _read_block(self) -> None:
        start = self._next or self._start
        self.bad_run = start["bad_run"]
        docs: list[str] = []
        while len(docs) < self.block_size:
            result = self.rows.next()
            if result is None:  # the end of an epoch: blocks never span two
                if docs:
                    break
                start = {"rows": self.rows.state_dict(), "block": 0, "bad_run": self.bad_run}
                continue
            doc = self._document(*result)
            if doc is not None:
                docs.append(doc)
        ended_epoch = len(docs) < self.block_size
        self._start = start
        self._next = {"rows": self.rows.state_dict(), "block": 0 if ended_epoch else start["block"] + 1,
                      "bad_run": self.bad_run}
        if self.shuffle:
            order = np.random.default_rng([*self.key, start["rows"]["epoch"], start["block"]]).permutation(len(docs))
            docs = [docs[i] for i in order]
        self._docs, self._offset = docs, self._resume_offset
        self._resume_offset, self._replay = 0, False

    def _document(self, row: dict[str, Any] | None, problem: str | None) -> str | None:
        held_out = False
        if problem is None:
            try:
                doc = self.format(row)  # type: ignore[arg-type]
            except BadRow as err:
                problem = str(err)
            else:
                if not (self.exclude and digest(doc) in self.exclude):
                    self.bad_run = 0
                    return doc
                held_out, problem = True, "a copy of a validation document"
        self.bad_run += 1  # a copy counts towards the limit too: a share of nothing but copies must not spin forever
        where = self.rows.where()
        if not self._replay and not held_out:
            self.skipped += 1
            self.total_skipped += 1
            if self.total_skipped <= LOGGED_SKIPS or self.total_skipped % LOG_SKIPS_EVERY == 0:
                logger.warning("data source %s: skipped %s: %s (%d skipped so far)", self.spec.name, where, problem,
                               self.total_skipped)
        if self.bad_run >= self.max_bad_run:
            raise SourceError(
                f"data.sources.{self.spec.name}: {self.bad_run} rows in a row could not be used, the last at {where} "
                f"({problem}); fix the file, drop the source (--data.sources.{self.spec.name}.weight 0) "
                f"or raise data.max_consecutive_bad_rows"
            )
        return None

    def state_dict(self) -> dict[str, Any]:
        if self._docs and self._offset >= len(self._docs):  # the block is used up: the next one starts here
            return {**self._next, "offset": 0}  # type: ignore[dict-item]
        offset = self._offset if self._docs else self._resume_offset
        return {**self._start, "offset": offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume on the document after the last one served when `state` was taken (re-reading its block)."""
        self.rows.load_state_dict(state["rows"])
        self._start = {"rows": state["rows"], "block": state["block"], "bad_run": state["bad_run"]}
        self._next, self._docs, self._offset = None, [], 0
        self._resume_offset, self._replay = state["offset"], state["offset"] > 0


def digest(document: str) -> bytes:
    """A document's fingerprint, the same in every process (unlike hash())."""
    return hashlib.blake2b(document.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class HeldOut:
    """A source's validation documents and where training starts reading: (file index, row index)."""

    documents: tuple[str, ...]
    end: tuple[int, int]

    @property
    def digests(self) -> frozenset[bytes]:
        return frozenset(digest(doc) for doc in self.documents)


def hold_out(spec: SourceSpec, count: int) -> HeldOut:
    """The first `count` distinct usable documents of a source in its files' original order, and the position
    after them.

    Fails, naming the source, when fewer than `count` usable documents exist or none would be left to train on.
    """
    rows = FileRows(open_files(spec), 0, 1, seed=0, shuffle=False)
    formatter = FORMATTERS[spec.format]
    documents: list[str] = []
    seen: set[str] = set()
    end: tuple[int, int] | None = None
    while (result := rows.next()) is not None:
        if len(documents) == count and end is None:
            end = rows.position  # the first row after the validation documents
        row, problem = result
        if problem is not None:
            continue
        try:
            document = formatter(row)  # type: ignore[arg-type]
        except BadRow:
            continue
        if document in seen:  # a copy: not a second validation document, not a training one
            continue
        if end is not None:  # a usable document is left for training
            return HeldOut(tuple(documents), end)
        documents.append(document)
        seen.add(document)
    have = f"{len(documents)} distinct usable documents" + (", all held out" if len(documents) == count else "")
    raise SourceError(f"data.sources.{spec.name}: {spec.origin} has {have}, but validation.documents_per_source = "
                      f"{count} must leave some to train on; lower validation.documents_per_source")


def check_source(spec: SourceSpec) -> None:
    """Read the first rows at start-up (each local file, the first Hub file): unreadable or empty files and
    missing columns fail here, naming the file, before any GPU time is spent."""
    try:
        files = open_files(spec)
        for index in range(files.dataset.num_shards if spec.data_files else min(1, files.dataset.num_shards)):
            _check_file(files, index)
    except SourceError:
        raise
    except Exception as err:  # whatever `datasets` raises (no such dataset, no access, malformed file), named once
        gated = spec.gated and not spec.data_files
        hint = f" (gated: accept the terms on {spec.card} and set HF_TOKEN)" if gated else ""
        raise SourceError(
            f"data.sources.{spec.name}: cannot read {spec.origin}{hint}: {type(err).__name__}: {err}"
        ) from err


def _check_file(files: SourceFiles, index: int, limit: int = 1000) -> None:
    rows = FileRows(SourceFiles(files.spec, files.dataset.shard(files.dataset.num_shards, index), [files.names[index]],
                                files.lines), 0, 1, seed=0, shuffle=False)
    first_problem = None
    for _ in range(limit):
        try:
            result = rows.next()
        except SourceError:
            result = None
        if result is None:
            break
        row, problem = result
        if problem is None:
            check_columns(files.spec, row.keys(), where=files.names[index])  # type: ignore[union-attr]
            return
        first_problem = first_problem or f"{rows.where()}: {problem}"
    name = f"data.sources.{files.spec.name}"
    if first_problem:
        raise SourceError(f"{name}: no readable rows in {files.names[index]} (first: {first_problem})")
    raise SourceError(f"{name}: no rows in {files.names[index]}")


def open_rows(spec: SourceSpec, shard: int, num_shards: int) -> Iterator[dict[str, Any]]:
    """One pass over a shard's usable rows in file order (bad rows left out), e.g. to sample text for a tokenizer."""
    rows = FileRows(open_files(spec), shard, num_shards, seed=0, shuffle=False)
    formatter = FORMATTERS[spec.format]
    while (result := rows.next()) is not None:
        row, problem = result
        if problem is None:
            try:
                formatter(row)  # type: ignore[arg-type]
            except BadRow:
                continue
            yield row  # type: ignore[misc]
