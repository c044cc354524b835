"""DocumentStream: one source's documents for one pipeline, bad rows skipped and counted, shuffled in seeded
blocks, resuming on the exact next document (also when saved again right after a resume)."""

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nano.data.sources import SourceError, SourceSpec
from nano.data.streams import ROWS_PER_READ, DocumentStream

GOOD = [f"row {i}" for i in range(3 * ROWS_PER_READ + 5)]
# Unusable rows of every kind, and where each goes (before the good row with that index).
BAD_LINES = {3: '{"text": null}', 40: '{"text": ""}', 41: '{"other": "no text"}', 70: '{"text": "cut off',
             71: "[1, 2]", 150: '{"text": 5}'}


def spec_for(path: Path, name: str = "rows") -> SourceSpec:
    return SourceSpec(name=name, hub_id="", subset=None, split="train", format="text", columns=("text",),
                      gated=False, card="", weight=1.0, data_files=(str(path),))


def write_jsonl(path: Path, good: list[str], bad: dict[int, str]) -> Path:
    lines = []
    for index, text in enumerate(good):
        if index in bad:
            lines.append(bad[index])
        lines.append(json.dumps({"text": text}))
    path.write_text("\n".join(lines) + "\n")
    return path


def stream(path: Path, shard: int = 0, num_shards: int = 1, *, shuffle: int = 0, seed: int = 1,
           max_bad_run: int = 1000) -> DocumentStream:
    return DocumentStream(spec_for(path), shard, num_shards, seed=seed, shuffle_buffer=shuffle, max_bad_run=max_bad_run)


def read(s: DocumentStream, n: int) -> list[str]:
    return [s.next_document() for _ in range(n)]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """The same good rows with and without bad rows between them."""
    return write_jsonl(tmp_path / "bad.jsonl", GOOD, BAD_LINES), write_jsonl(tmp_path / "clean.jsonl", GOOD, {})


@pytest.mark.parametrize("shuffle", [0, 10, 10_000])
def test_bad_rows_change_nothing_but_the_skip_count(files, shuffle: int) -> None:
    bad, clean = (stream(f, shuffle=shuffle) for f in files)
    got = read(bad, 3 * len(GOOD))
    assert got == read(clean, 3 * len(GOOD))
    for epoch in range(3):  # each epoch serves every row exactly once
        assert sorted(got[epoch * len(GOOD) : (epoch + 1) * len(GOOD)]) == sorted(GOOD)
    assert (got[: len(GOOD)] != GOOD) == (shuffle > 0)
    assert bad.take_skipped() == 3 * len(BAD_LINES) and clean.take_skipped() == 0 and bad.take_skipped() == 0


@pytest.mark.parametrize("shuffle", [0, 10])
def test_two_pipelines_split_a_file_with_bad_rows_disjointly_and_completely(files, shuffle: int) -> None:
    bad, _ = files
    lines = bad.read_text().splitlines()
    pipelines = [stream(bad, shard, 2, shuffle=shuffle) for shard in (0, 1)]
    usable = [sum(1 for line in lines[shard::2] if line.startswith('{"text": "row')) for shard in (0, 1)]
    shares = [read(pipeline, n) for pipeline, n in zip(pipelines, usable)]  # one epoch each
    assert sorted(shares[0] + shares[1]) == sorted(GOOD)  # every usable row once, in one pipeline or the other
    assert sum(p.take_skipped() for p in pipelines) == len(BAD_LINES)


def test_skips_are_logged_with_source_file_and_line(files, caplog) -> None:
    bad, _ = files
    with caplog.at_level(logging.WARNING, logger="nano"):
        read(stream(bad), len(GOOD))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # the first five, then one line per 1,000
    assert lines[0] == f"data source rows: skipped {bad} line 4: field 'text' is null (1 skipped so far)"
    assert lines[1] == f"data source rows: skipped {bad} line 42: field 'text' is empty (2 skipped so far)"
    assert lines[2] == f"data source rows: skipped {bad} line 44: field 'text' is missing (3 skipped so far)"
    assert lines[3].startswith(f"data source rows: skipped {bad} line 74: not JSON: ")
    assert lines[4] == f"data source rows: skipped {bad} line 76: not a JSON object but list (5 skipped so far)"


def test_a_run_of_bad_rows_stops_naming_source_and_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", GOOD[:20], {10: "\n".join(['{"text": null}'] * 4)})
    read(stream(path, max_bad_run=5), 100)  # 4 in a row are skipped, epoch after epoch
    path = write_jsonl(tmp_path / "rows.jsonl", GOOD[:20], {10: '{"text": null}\n' * 4 + '{"text": ""}'})
    with pytest.raises(SourceError, match=rf"data.sources.rows: 5 rows in a row could not be used, the last at "
                                          rf"{path} line 15 \(field 'text' is empty\)"):
        read(stream(path, max_bad_run=5), 20)


def test_a_source_of_only_bad_rows_stops_even_when_shorter_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": null}\n' * 3)
    with pytest.raises(SourceError, match="10 rows in a row could not be used"):
        read(stream(path, max_bad_run=10), 1)


@pytest.mark.parametrize("shuffle", [0, 10])
@pytest.mark.parametrize(("shard", "num_shards"), [(0, 1), (1, 2)])
def test_resume_is_exact_and_survives_a_save_before_reading(files, shuffle: int, shard: int, num_shards: int) -> None:
    bad, _ = files
    reference = stream(bad, shard, num_shards, shuffle=shuffle)
    served = read(reference, 399)
    # Saves: inside the first block; right after resuming (the double resume); at a block end; across reads
    # and bad rows; after wrapping into the next epoch.
    saves = [3, 3, 10, 37, 70, 141, 399]
    s = stream(bad, shard, num_shards, shuffle=shuffle)
    read(s, saves[0])
    skipped = s.take_skipped()
    for start, stop in zip(saves, saves[1:]):
        state = json.loads(json.dumps(s.state_dict()))  # what a checkpoint keeps
        s = stream(bad, shard, num_shards, shuffle=shuffle)
        s.load_state_dict(state)
        assert s.state_dict() == state  # saved again before reading: still the resumed position
        assert read(s, stop - start) == served[start:stop]
        skipped += s.take_skipped()
    assert skipped == reference.take_skipped() > 0  # a block re-read on resume does not count its skips again


def test_shuffle_is_seeded(files) -> None:
    _, clean = files
    first = read(stream(clean, shuffle=50, seed=1), 150)
    assert read(stream(clean, shuffle=50, seed=1), 150) == first
    assert read(stream(clean, shuffle=50, seed=2), 150) != first
    assert sorted(first[:50]) == sorted(GOOD[:50]) and first[:50] != GOOD[:50]  # a block: the next 50 rows, permuted


def test_file_order_is_seeded_per_epoch_and_pipelines_get_whole_files(tmp_path: Path) -> None:
    paths = []
    for f in range(6):
        paths.append(tmp_path / f"part{f}.parquet")
        pq.write_table(pa.table({"text": [f"file {f} row {i}" for i in range(5)]}), paths[-1])
    spec = SourceSpec(name="parts", hub_id="", subset=None, split="train", format="text", columns=("text",),
                      gated=False, card="", weight=1.0, data_files=tuple(str(p) for p in paths))

    def file_order(pipeline: int, seed: int) -> list[list[int]]:
        s = DocumentStream(spec, pipeline, 2, seed=seed, shuffle_buffer=1, max_bad_run=10)  # blocks of one row
        docs = read(s, 4 * 15)
        return [[int(d.split()[1]) for d in docs[e * 15 : (e + 1) * 15 : 5]] for e in range(4)]

    orders = [file_order(p, seed=3) for p in (0, 1)]
    for epoch in range(4):
        assert sorted(orders[0][epoch] + orders[1][epoch]) == list(range(6))  # disjoint, complete, whole files
    assert len({tuple(o) for o in orders[0]}) > 1  # a new order each epoch
    assert file_order(0, seed=3) == orders[0] and file_order(0, seed=4) != orders[0]


def test_a_parquet_null_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["a", None, "b", "", "c"]}), path)
    s = DocumentStream(spec_for(path), 0, 1, seed=0, shuffle_buffer=0, max_bad_run=10)
    assert read(s, 6) == ["a", "b", "c", "a", "b", "c"] and s.take_skipped() == 4
