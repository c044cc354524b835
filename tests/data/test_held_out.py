"""Validation documents are set aside at the stream level: each source's first N distinct usable documents in file
order, the same at any world size, never served to training (not even as a repeated row), while training still
reads every other document."""

import json
import pickle
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nano.config import Data, Source
from nano.data.loader import build_dataloader
from nano.data.sources import SourceError, resolve_sources
from nano.data.streams import DocumentStream, hold_out
from tests.data.test_loader import TOKENIZER, documents, token_streams

HELD_OUT = 40
WINDOWS = 1000


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> tuple[Data, dict[str, list[str]]]:
    """Two sources with bad rows and repeated rows: `pair` is two jsonl files (whole files per pipeline at 1 and 2
    ranks) whose held-out part ends inside the second file; `single` is one parquet file (every 2nd row per
    pipeline at 2 ranks). Returns the config and each source's usable documents in file order."""
    folder = tmp_path_factory.mktemp("held_out")
    usable: dict[str, list[str]] = {"pair": [], "single": []}
    for index in range(2):
        lines = []
        for row in range(30):
            if row % 7 == 3:
                lines.append('{"text": null}')
                continue
            text = f"pair file {index} row {row}."
            if (index, row) in ((0, 9), (1, 20)):  # copies of a validation document, inside and after the split
                text = "pair file 0 row 0."
            lines.append(json.dumps({"text": text}))
            usable["pair"].append(text)
        (folder / f"pair{index}.jsonl").write_text("\n".join(lines) + "\n")
    texts = [None if row % 11 == 5 else f"single row {row % 100}." for row in range(120)]  # rows 100+ repeat
    usable["single"] = [t for t in texts if t is not None]
    pq.write_table(pa.table({"text": texts}), folder / "single.parquet")
    cfg = Data(shuffle_buffer=16, sources={
        "pair": Source(weight=1, format="text", data_files=[str(folder / f"pair{i}.jsonl") for i in range(2)]),
        "single": Source(weight=1, format="text", data_files=[str(folder / "single.parquet")]),
    })
    return cfg, usable


def loader(cfg: Data, *, rank: int = 0, world: int = 1, held_out: int = HELD_OUT, workers: int = 0):
    cfg = Data(tokenizer=cfg.tokenizer, num_workers=workers, shuffle_buffer=cfg.shuffle_buffer, sources=cfg.sources)
    return build_dataloader(cfg, TOKENIZER, seq_len=31, micro_batch_size=4, dp_rank=rank, dp_world_size=world,
                            seed=3, held_out_per_source=held_out)


def trained_documents(cfg: Data, world: int, windows: int, held_out: int = HELD_OUT) -> set[str]:
    """The whole documents in `windows` training windows, shared out over `world` ranks."""
    found: set[str] = set()
    for rank in range(world):
        batches = list(islice(iter(loader(cfg, rank=rank, world=world, held_out=held_out)), windows // world // 4))
        (stream,) = token_streams(batches, 1)
        found.update(documents(stream))
    return found


def distinct(docs: list[str]) -> list[str]:
    return list(dict.fromkeys(docs))


def test_the_held_out_documents_are_the_first_distinct_usable_ones_in_file_order(mix) -> None:
    cfg, usable = mix
    for spec in resolve_sources(cfg):
        held = hold_out(spec, HELD_OUT)
        assert list(held.documents) == distinct(usable[spec.name])[:HELD_OUT]
    pair = hold_out(resolve_sources(cfg)[0], HELD_OUT)
    assert pair.end[0] == 1  # the split runs into the second file


@pytest.mark.parametrize("world", [1, 2])
def test_validation_documents_never_reach_a_training_batch(mix, world: int) -> None:
    cfg, usable = mix
    held = {doc for docs in usable.values() for doc in distinct(docs)[:HELD_OUT]}
    rest = {doc for docs in usable.values() for doc in docs} - held
    trained = trained_documents(cfg, world, WINDOWS)
    assert not trained & held  # neither the held-out rows nor later copies of them
    assert trained == rest  # over many epochs, every other document is trained on: nothing else is lost
    # Without the split the same windows hold the validation documents: the check above can fail.
    assert held <= trained_documents(cfg, world, WINDOWS, held_out=0)


def test_a_loader_with_validation_documents_resumes_exactly(mix) -> None:
    cfg, _ = mix
    reference = iter(first := loader(cfg, workers=2))
    list(islice(reference, 15))
    saved = pickle.loads(pickle.dumps(first.state_dict()))
    expected = [b["input"] for b in islice(reference, 15)]
    resumed = loader(cfg, workers=2)
    resumed.load_state_dict(saved)
    got = [b["input"] for b in islice(iter(resumed), 15)]
    assert all((a == b).all() for a, b in zip(got, expected, strict=True))


def test_a_resume_with_another_number_of_validation_documents_is_refused(mix) -> None:
    cfg, _ = mix
    state = loader(cfg).state_dict()
    with pytest.raises(ValueError, match=f"saved with {HELD_OUT} validation documents held out per source, this run "
                                         f"holds out 3: resume with the same validation.documents_per_source"):
        loader(cfg, held_out=3).load_state_dict(state)


def test_a_source_too_small_to_hold_out_from_is_named(mix) -> None:
    cfg, usable = mix
    count = len(distinct(usable["pair"]))
    with pytest.raises(SourceError, match=f"data.sources.pair: .* has {count} distinct usable documents, all held out"):
        loader(cfg, held_out=count)
    with pytest.raises(SourceError, match=f"data.sources.pair: .* has {count} distinct usable documents, but "
                                          f"validation.documents_per_source = 500 must leave some to train on"):
        loader(cfg, held_out=500)


def test_a_share_of_nothing_but_copies_of_validation_documents_stops_naming_the_source(tmp_path: Path) -> None:
    """Row 0 is held out, row 1 is left for training; every other row copies row 0, so the pipeline reading the
    even rows (of 2) never gets a training document: it stops at the bad-row limit (40; each epoch of it holds 31
    copies) instead of spinning, while the odd one trains on its row 1 epoch after epoch."""
    path = tmp_path / "copies.jsonl"
    texts = ["held out", "trained"] + ["held out"] * 60
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (spec,) = resolve_sources(Data(sources={"copies": Source(weight=1, format="text", data_files=[str(path)])}))
    held = hold_out(spec, 1)
    assert held.documents == ("held out",) and held.end == (0, 1)
    odd = DocumentStream(spec, 1, 2, seed=0, shuffle_buffer=0, max_bad_run=40, start=held.end, exclude=held.digests)
    assert [odd.next_document() for _ in range(3)] == ["trained"] * 3 and odd.take_skipped() == 0
    even = DocumentStream(spec, 0, 2, seed=0, shuffle_buffer=0, max_bad_run=40, start=held.end, exclude=held.digests)
    with pytest.raises(SourceError, match="data.sources.copies: 40 rows in a row could not be used, .* "
                                          r"\(a copy of a validation document\)"):
        even.next_document()
