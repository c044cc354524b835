"""Packing, the per-rank and per-worker split of rows, shuffling, bad rows, and start-up checks of
build_dataloader."""

import json
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nano.config import Data, Source, load_config
from nano.data.formats import FORMATTERS
from nano.data.loader import build_dataloader
from nano.data.sources import REGISTRY, SourceError
from nano.data.tokenizer import Tokenizer
from tests.data import real_rows as real
from tests.data.test_formats import TEMPLATE

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer(REPO / "assets/tokenizer/nano_demo.model")
DEMO = load_config(["--config", str(REPO / "train_configs/debug_model.toml")]).data


def loader(cfg: Data, *, seq_len: int, batch: int, rank: int = 0, world: int = 1, workers: int = 0, shuffle: int = 0,
           seed: int = 7, max_bad_run: int = 1000):
    cfg = Data(tokenizer=cfg.tokenizer, num_workers=workers, shuffle_buffer=shuffle,
               max_consecutive_bad_rows=max_bad_run, sources=cfg.sources)
    return build_dataloader(cfg, TOKENIZER, seq_len=seq_len, micro_batch_size=batch, dp_rank=rank,
                            dp_world_size=world, seed=seed)


def token_streams(batches: list[dict[str, torch.Tensor]], pipelines: int) -> list[list[int]]:
    """Each pipeline's packed token stream: the loader serves the pipelines' batches in turn."""
    served = [torch.cat([b["input"], b["label"][:, -1:]], dim=1).flatten().tolist() for b in batches]
    return [sum(served[w::pipelines], []) for w in range(pipelines)]


def documents(stream: list[int]) -> list[str]:
    """The whole documents of a packed stream (BOS ... EOS), decoded."""
    docs, current = [], None
    for token in stream:
        if token == TOKENIZER.bos_id:
            current = []
        elif token == TOKENIZER.eos_id and current is not None:
            docs.append(TOKENIZER.decode(current))
            current = None
        elif current is not None:
            current.append(token)
    return docs


@pytest.fixture(scope="module")
def numbered_source(tmp_path_factory) -> tuple[Data, list[str]]:
    """One source of distinct documents of varied length, so every token's origin is known."""
    path = tmp_path_factory.mktemp("rows") / "docs.jsonl"
    docs = [f"Document number {i}: {' '.join(['word'] * (i % 13))} end {i}." for i in range(60)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return Data(sources={"numbered": Source(weight=1, format="text", data_files=[str(path)])}), docs


def packed(docs: list[str]) -> list[int]:
    """One epoch of documents as the packer lays them out: BOS + tokens + EOS each."""
    return [t for doc in docs for t in (TOKENIZER.bos_id, *TOKENIZER.encode(doc), TOKENIZER.eos_id)]


@pytest.mark.parametrize(("world", "rank", "workers"), [(1, 0, 0), (1, 0, 2), (2, 0, 0), (2, 1, 2)])
def test_windows_are_each_pipelines_rows_packed_and_cut(numbered_source, world: int, rank: int, workers: int) -> None:
    """Pipeline (rank r, worker w) reads exactly the rows i with i % (world * W) == r * W + w, epoch after epoch;
    its windows are consecutive seq_len + 1 slices of BOS + doc + EOS, no token lost or repeated; the loader
    serves the workers' batches in turn; label = input shifted by one."""
    cfg, docs = numbered_source
    seq_len, batch, pipelines = 32, 2, max(workers, 1)
    epochs = [packed(docs[rank * pipelines + w :: world * pipelines]) for w in range(pipelines)]
    batch_tokens = batch * (seq_len + 1)
    per_pipeline = -(-3 * max(map(len, epochs)) // (2 * batch_tokens))  # batches covering 1.5 epochs
    batches = list(islice(loader(cfg, seq_len=seq_len, batch=batch, rank=rank, world=world, workers=workers),
                          per_pipeline * pipelines))

    for b in batches:
        assert b["input"].shape == b["label"].shape == (batch, seq_len)
        assert torch.equal(b["input"][:, 1:], b["label"][:, :-1])
    for w, (epoch, served) in enumerate(zip(epochs, token_streams(batches, pipelines), strict=True)):
        assert len(epoch) < per_pipeline * batch_tokens < 3 * len(epoch)  # the source wraps into a second epoch
        assert served == (epoch * 3)[: per_pipeline * batch_tokens], f"worker {w}"


@pytest.mark.parametrize(("world", "rank", "workers"), [(1, 0, 0), (2, 1, 2)])
def test_shuffled_pipelines_serve_each_of_their_rows_once_per_epoch(numbered_source, world: int, rank: int,
                                                                    workers: int) -> None:
    cfg, docs = numbered_source
    pipelines = max(workers, 1)
    batches = list(islice(loader(cfg, seq_len=32, batch=2, rank=rank, world=world, workers=workers, shuffle=8),
                          60 * pipelines))
    for w, stream in enumerate(token_streams(batches, pipelines)):
        mine, served = docs[rank * pipelines + w :: world * pipelines], documents(stream)
        assert len(served) >= 2 * len(mine)
        for epoch in range(2):
            assert sorted(served[epoch * len(mine) : (epoch + 1) * len(mine)]) == sorted(mine), f"worker {w}"
        assert served[: len(mine)] != mine  # shuffled


def test_shuffling_follows_the_seed(numbered_source) -> None:
    cfg, _ = numbered_source

    def first(seed: int) -> list[torch.Tensor]:
        return [b["input"] for b in islice(loader(cfg, seq_len=32, batch=2, shuffle=100, seed=seed), 8)]

    same, other = first(7), first(8)
    assert all(torch.equal(a, b) for a, b in zip(first(7), same))
    assert not all(torch.equal(a, b) for a, b in zip(other, same))


def test_a_source_with_a_file_per_pipeline_gives_each_pipeline_whole_files(tmp_path: Path) -> None:
    files = [[f"file {f} row {i}" for i in range(30)] for f in range(2)]
    paths = [tmp_path / f"part{f}.jsonl" for f in range(2)]
    for path, docs in zip(paths, files):
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = Data(sources={"parts": Source(weight=1, format="text", data_files=[str(p) for p in paths])})
    batches = list(islice(loader(cfg, seq_len=32, batch=2, workers=2), 8))
    served = [torch.cat([b["input"], b["label"][:, -1:]], dim=1).flatten().tolist() for b in batches]
    for w, docs in enumerate(files):
        assert sum(served[w::2], []) == packed(docs)[: 4 * 2 * 33], f"worker {w}"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("rows.jsonl", "", "no rows in {}"), ("rows.jsonl", "\n\n", "no rows in {}"),
     ("rows.jsonl", '{"text":\n', "no readable rows in {} (first: {} line 1: not JSON: "),
     ("rows.json", '[{"text": "a"}', "no readable rows in {} (first: {} the file: not a JSON array: "),
     ("rows.parquet", "not parquet", "cannot read {}: ")]
)
def test_an_unreadable_source_fails_at_start_up(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    cfg = Data(sources={"mine": Source(weight=1, format="text", data_files=[str(path)])})
    with pytest.raises(SourceError) as err:
        loader(cfg, seq_len=16, batch=2)
    assert str(err.value).startswith(f"data.sources.mine: {message.format(path, path)}")


def test_a_second_local_file_is_checked_at_start_up(tmp_path: Path) -> None:
    good, broken = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    good.write_text('{"text": "fine"}\n')
    broken.write_text('{"words": "no text column"}\n')
    cfg = Data(sources={"mine": Source(weight=1, format="text", data_files=[str(good), str(broken)])})
    with pytest.raises(SourceError, match=f"data.sources.mine: column 'text' missing in {broken}"):
        loader(cfg, seq_len=16, batch=2)


def test_an_unknown_source_fails_at_start_up() -> None:
    with pytest.raises(SourceError, match="unknown source 'gsm8kk'"):
        loader(Data(sources={"gsm8kk": Source(weight=1)}), seq_len=16, batch=2)


def test_demo_mix_serves_every_source() -> None:
    demo = loader(DEMO, seq_len=256, batch=8)
    counts = sum(b["source_tokens"].sum(0) for b in islice(demo, 20))
    assert demo.source_names == list(DEMO.sources) and (counts > 0).all()


# ------------------------------------------------------------------------------------------ bad rows

PAD = "x" * 10_000  # a column the text format does not read: a file of many megabytes, few tokens


def write_rows(path: Path, rows: list[dict], bad: dict[int, str]) -> Path:
    """rows as JSON lines with the `bad` lines put before row index i."""
    with open(path, "w") as f:
        for index, row in enumerate(rows):
            if index in bad:
                f.write(bad[index] + "\n")
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> tuple[Path, Path, int]:
    """1,100 rows of ~10 KB (11 MB): bad rows mid-file and beyond the first 10 MB, and the same file without them."""
    folder = tmp_path_factory.mktemp("big")
    rows = [{"text": f"row {i} says {i * 7}", "pad": PAD} for i in range(1100)]
    bad = {5: '{"text": null, "pad": ""}', 500: '{"pad": "no text"}', 1060: '{"text": "", "pad": ""}',
           1070: '{"text": "broken", "pad": "xx', 1080: '{"text": ["a list"]}', 1090: "not json at all"}
    bad_path = write_rows(folder / "bad.jsonl", rows, bad)
    offset_of_1060 = sum(len(json.dumps(r)) + 1 for r in rows[:1060])
    assert offset_of_1060 > 10 * 2**20 and bad_path.stat().st_size > 11 * 10**6
    return bad_path, write_rows(folder / "clean.jsonl", rows, {}), len(bad)


@pytest.mark.parametrize(("workers", "shuffle"), [(0, 10_000), (2, 10_000), (0, 0)])
def test_bad_rows_beyond_10mb_are_skipped_and_the_stream_is_the_clean_files(big_files, workers: int,
                                                                              shuffle: int) -> None:
    bad_path, clean_path, n_bad = big_files

    def batches(*paths: Path) -> list[dict[str, torch.Tensor]]:
        cfg = Data(sources={"big": Source(weight=1, format="text", data_files=[str(p) for p in paths])})
        return list(islice(loader(cfg, seq_len=64, batch=4, workers=workers, shuffle=shuffle), 120))

    # Two workers read whole files when there are two (one file would be split every other row, and a bad
    # row there moves the rows after it to the other worker).
    got = batches(bad_path) if workers == 0 else batches(bad_path, clean_path)
    want = batches(clean_path) if workers == 0 else batches(clean_path, clean_path)
    assert all(torch.equal(a["input"], b["input"]) for a, b in zip(got, want, strict=True))
    if workers == 0:  # one pipeline reads the whole file: each of its bad rows is counted once per epoch read
        skipped = torch.stack([b["source_skipped"].sum(0) for b in got]).squeeze(1)
        assert n_bad in skipped.cumsum(0).tolist() and sum(b["source_skipped"].sum() for b in want) == 0
        if shuffle:  # the first block reads the whole epoch
            assert skipped[0] == n_bad
    else:
        assert sum(b["source_skipped"].sum() for b in got) >= n_bad


def test_a_source_of_bad_rows_stops_the_run_from_a_worker_naming_source_and_file(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "rows.jsonl", [{"text": "fine"}] + [{"text": None}] * 30, {})
    cfg = Data(sources={"mine": Source(weight=1, format="text", data_files=[str(path)])})
    with pytest.raises(SourceError) as err:
        list(islice(loader(cfg, seq_len=16, batch=2, workers=2, max_bad_run=10), 4))
    assert f"data.sources.mine: 10 rows in a row could not be used, the last at {path} line " in str(err.value)


# ------------------------------------------------------------------------------------------ the 11 sources


def test_real_schema_rows_of_all_11_sources_train_in_the_template(tmp_path: Path) -> None:
    """Rows as each dataset card shows them, from local files in the Hub's file types, through the loader:
    every reasoning document served is in the <think> template, and every row is served."""
    sources = {}
    for name, rows in real.ROWS.items():
        if name in ("the_stack_python", "openorca"):  # parquet on the Hub
            path = tmp_path / f"{name}.parquet"
            pq.write_table(pa.Table.from_pylist(rows), path)
        elif name == "metamathqa":  # one JSON array file on the Hub
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps(rows, indent=1))
        else:
            path = tmp_path / f"{name}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        sources[name] = Source(weight=1, data_files=[str(path)])
    batches = list(islice(loader(Data(sources=sources), seq_len=512, batch=4, shuffle=10_000), 40))
    served = documents(token_streams(batches, 1)[0])
    source_of = {FORMATTERS[REGISTRY[name].format](row): name for name, rows in real.ROWS.items() for row in rows}
    assert set(served) == set(source_of)  # every row of every source, and nothing else
    reasoning = [d for d in served if source_of[d] in real.REASONING]
    assert len(reasoning) > 100 and all(TEMPLATE.match(d) for d in reasoning)
