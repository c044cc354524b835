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
from nano.data.streams import ROWS_PER_READ
from nano.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer(REPO / "assets/tokenizer/nano_demo.model")


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Data:
    """A short jsonl source (several epochs per test) and a longer parquet one (several reads per epoch), both with
    unusable rows among the good ones."""
    folder = tmp_path_factory.mktemp("mix")
    short = [json.dumps({"text": f"short {i}"}) if i % 17 else '{"text": null}' for i in range(90)]
    (folder / "short.jsonl").write_text("\n".join(short[:40] + ['{"text": "cut'] + short[40:]) + "\n")
    long = [f"long row {i}" if i % 29 else None for i in range(5 * ROWS_PER_READ)]
    pq.write_table(pa.table({"text": long}), folder / "long.parquet")
    return Data(sources={
        "short": Source(weight=1, format="text", data_files=[str(folder / "short.jsonl")]),
        "long": Source(weight=1, format="text", data_files=[str(folder / "long.parquet")]),
    })


def loader(cfg: Data, *, workers: int = 0, rank: int = 0, world: int = 1, shuffle: int = 0, seed: int = 5):
    cfg = Data(tokenizer=cfg.tokenizer, num_workers=workers, shuffle_buffer=shuffle, sources=cfg.sources)
    return build_dataloader(cfg, TOKENIZER, seq_len=31, micro_batch_size=4, dp_rank=rank, dp_world_size=world,
                            seed=seed)


def take(stream, n: int) -> list[torch.Tensor]:
    return [b["input"] for b in islice(stream, n)]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("shuffle", [0, 50])
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_exactly_and_twice(mix: Data, workers: int, shuffle: int) -> None:
    reference = loader(mix, workers=workers, shuffle=shuffle)
    reference_iter = iter(reference)
    take(reference_iter, 20)
    saved = pickle.loads(pickle.dumps(reference.state_dict()))  # as a checkpoint stores it
    expected = take(reference_iter, 20)

    resumed = loader(mix, workers=workers, shuffle=shuffle)
    resumed.load_state_dict(saved)
    saved_before_iterating = resumed.state_dict()
    resumed_iter = iter(resumed)
    assert_same(take(resumed_iter, 10), expected[:10])
    saved_later = resumed.state_dict()

    for state, want in ((saved_before_iterating, expected), (saved_later, expected[10:])):
        again = loader(mix, workers=workers, shuffle=shuffle)
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


def test_resume_with_another_shuffle_or_seed_is_refused(mix: Data) -> None:
    state = loader(mix, shuffle=50).state_dict()
    with pytest.raises(ValueError, match="saved with {'shuffle_buffer': 50, 'seed': 5}, this run has "
                                         "{'shuffle_buffer': 0, 'seed': 5}: resume with the same data.shuffle_buffer"):
        loader(mix).load_state_dict(state)
    with pytest.raises(ValueError, match="this run has {'shuffle_buffer': 50, 'seed': 6}"):
        loader(mix, shuffle=50, seed=6).load_state_dict(state)
