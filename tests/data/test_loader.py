"""Packing, the per-rank and per-worker split of rows, and start-up checks of build_dataloader."""

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from nano.config import Data, Source, load_config
from nano.data.loader import build_dataloader
from nano.data.sources import SourceError
from nano.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer(REPO / "assets/tokenizer/nano_demo.model")
DEMO = load_config(["--config", str(REPO / "train_configs/debug_model.toml")]).data


def loader(cfg: Data, *, seq_len: int, batch: int, rank: int = 0, world: int = 1, workers: int = 0):
    cfg = Data(tokenizer=cfg.tokenizer, num_workers=workers, sources=cfg.sources)
    return build_dataloader(cfg, TOKENIZER, seq_len=seq_len, micro_batch_size=batch, dp_rank=rank,
                            dp_world_size=world, seed=7)


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
    served = [torch.cat([b["input"], b["label"][:, -1:]], dim=1).flatten().tolist() for b in batches]
    for w, epoch in enumerate(epochs):
        assert len(epoch) < per_pipeline * batch_tokens < 3 * len(epoch)  # the source wraps into a second epoch
        assert sum(served[w::pipelines], []) == (epoch * 3)[: per_pipeline * batch_tokens], f"worker {w}"


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
    ("content", "message"), [("", "no rows in {}"), ('{"text":\n', "cannot read {}: ArrowInvalid")]
)
def test_an_unreadable_source_fails_at_start_up(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    cfg = Data(sources={"mine": Source(weight=1, format="text", data_files=[str(path)])})
    with pytest.raises(SourceError, match=f"data.sources.mine: {message.format(path)}"):
        loader(cfg, seq_len=16, batch=2)


def test_an_unknown_source_fails_at_start_up() -> None:
    with pytest.raises(SourceError, match="unknown source 'gsm8kk'"):
        loader(Data(sources={"gsm8kk": Source(weight=1)}), seq_len=16, batch=2)


def test_demo_mix_serves_every_source() -> None:
    demo = loader(DEMO, seq_len=256, batch=8)
    counts = sum(b["source_tokens"].sum(0) for b in islice(demo, 20))
    assert demo.source_names == list(DEMO.sources) and (counts > 0).all()
