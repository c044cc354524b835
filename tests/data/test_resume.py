"""Exact resume: a restored stream or loader continues on the very next row / batch, also when saved again
right after a resume (the "double resume"), and a resume under another layout is refused by name."""

import json
import pickle
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nano.config import Data, Source
from nano.data.loader import build_dataloader
from nano.data.sources import SourceSpec
from nano.data.streams import ROWS_PER_READ, RowStream
from nano.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer(REPO / "assets/tokenizer/nano_demo.model")


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Data:
    """A short jsonl source (several epochs per test) and a longer parquet one (several reads per epoch)."""
    folder = tmp_path_factory.mktemp("mix")
    (folder / "short.jsonl").write_text("".join(json.dumps({"text": f"short {i}"}) + "\n" for i in range(90)))
    pq.write_table(pa.table({"text": [f"long row {i}" for i in range(5 * ROWS_PER_READ)]}), folder / "long.parquet")
    return Data(sources={
        "short": Source(weight=1, format="text", data_files=[str(folder / "short.jsonl")]),
        "long": Source(weight=1, format="text", data_files=[str(folder / "long.parquet")]),
    })


def loader(cfg: Data, *, workers: int = 0, rank: int = 0, world: int = 1):
    cfg = Data(tokenizer=cfg.tokenizer, num_workers=workers, sources=cfg.sources)
    return build_dataloader(cfg, TOKENIZER, seq_len=31, micro_batch_size=4, dp_rank=rank, dp_world_size=world, seed=5)


def take(stream, n: int) -> list[torch.Tensor]:
    return [b["input"] for b in islice(stream, n)]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize(("shard", "num_shards"), [(0, 1), (1, 2)])
def test_row_stream_resumes_on_the_next_row(tmp_path: Path, shard: int, num_shards: int) -> None:
    rows = [f"row {i}" for i in range(3 * ROWS_PER_READ + 5)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    spec = SourceSpec(name="rows", hub_id="", subset=None, split="train", format="text", columns=("text",),
                      gated=False, card="", weight=1.0, data_files=(str(path),))
    mine = rows[shard::num_shards]
    served = mine * 4  # what an uninterrupted stream serves: this shard's rows, epoch after epoch
    # Saves: inside the second `datasets` read; 3 rows after resuming (still inside the resumed read, where
    # `datasets` reports its initial state); 2 reads later; after wrapping into the next epoch.
    saves = [ROWS_PER_READ + 6, ROWS_PER_READ + 9, 3 * ROWS_PER_READ + 9, 3 * ROWS_PER_READ + 9 + len(mine)]

    def read(stream: RowStream, n: int) -> list[str]:
        return [stream.next_row()["text"] for _ in range(n)]

    stream = RowStream(spec, shard, num_shards)
    read(stream, saves[0])
    for start, stop in zip(saves, saves[1:]):
        state = stream.state_dict()
        stream = RowStream(spec, shard, num_shards)
        stream.load_state_dict(state)
        assert stream.state_dict() == state  # saved again before reading: still the resumed position
        assert read(stream, stop - start) == served[start:stop]
    assert stream.epoch == (saves[-1] - 1) // len(mine) > 0


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_exactly_and_twice(mix: Data, workers: int) -> None:
    reference = loader(mix, workers=workers)
    reference_iter = iter(reference)
    take(reference_iter, 20)
    saved = pickle.loads(pickle.dumps(reference.state_dict()))  # as a checkpoint stores it
    expected = take(reference_iter, 20)

    resumed = loader(mix, workers=workers)
    resumed.load_state_dict(saved)
    saved_before_iterating = resumed.state_dict()
    resumed_iter = iter(resumed)
    assert_same(take(resumed_iter, 10), expected[:10])
    saved_later = resumed.state_dict()

    for state, want in ((saved_before_iterating, expected), (saved_later, expected[10:])):
        again = loader(mix, workers=workers)
        again.load_state_dict(state)
        assert_same(take(again, len(want)), want)


def test_resume_with_another_layout_is_refused(mix: Data) -> None:
    state = loader(mix, rank=1, world=2).state_dict()
    with pytest.raises(ValueError, match="saved with 2 data-parallel ranks x 0 workers, this run has 1 x 0"):
        loader(mix).load_state_dict(state)
    with pytest.raises(ValueError, match="saved with 2 data-parallel ranks x 0 workers, this run has 2 x 2"):
        loader(mix, rank=1, world=2, workers=2).load_state_dict(state)


def test_resume_with_other_sources_is_refused(mix: Data) -> None:
    state = loader(mix).state_dict()
    fewer = Data(sources={"short": mix.sources["short"]})
    with pytest.raises(ValueError, match=r"saved for sources \['short', 'long'\], this run mixes \['short'\]"):
        loader(fewer).load_state_dict(state)
