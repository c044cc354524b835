"""The weighted mixture, measured through the loader: document shares and per-source token counts."""

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from nano.config import SEED_MIX, Data, Source
from nano.data.loader import build_dataloader
from nano.data.mixture import Mixture
from nano.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer(REPO / "assets/tokenizer/nano_demo.model")
SEQ_LEN, BATCH = 255, 8


def single_token_texts(count: int) -> list[str]:
    """Texts that each encode to one distinct id, so a document is exactly BOS, that id, EOS."""
    texts = [t for t in "0123456789abcdefghijklmnopqrstuvwxyz" if len(TOKENIZER.encode(t)) == 1]
    assert len({TOKENIZER.encode(t)[0] for t in texts[:count]}) == count
    return texts[:count]


@pytest.fixture(scope="module")
def seed_mix_stream(tmp_path_factory) -> tuple[list[dict[str, torch.Tensor]], dict[int, int]]:
    """The seed's 11 weights over local sources whose documents name their source in their single token."""
    folder = tmp_path_factory.mktemp("mix")
    sources, source_of_id = {}, {}
    for index, (name, text) in enumerate(zip(SEED_MIX, single_token_texts(len(SEED_MIX)))):
        path = folder / f"{name}.jsonl"
        path.write_text((json.dumps({"text": text}) + "\n") * 500)
        sources[name] = Source(weight=SEED_MIX[name], format="text", data_files=[str(path)])
        source_of_id[TOKENIZER.encode(text)[0]] = index
    loader = build_dataloader(Data(sources=sources), TOKENIZER, seq_len=SEQ_LEN, micro_batch_size=BATCH,
                              dp_rank=0, dp_world_size=1, seed=11)
    assert loader.source_names == list(SEED_MIX)
    # >= 10K documents of 3 tokens; whole groups of 3 batches, so the stream ends on a document boundary.
    groups = -(-10_000 * 3 // (3 * BATCH * (SEQ_LEN + 1)))
    return list(islice(loader, 3 * groups)), source_of_id


def stream_of(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The packed token stream: each window's first input token followed by its labels."""
    windows = [torch.cat([b["input"][:, :1], b["label"]], dim=1) for b in batches]
    return torch.cat(windows).flatten()


def test_document_shares_follow_the_weights(seed_mix_stream) -> None:
    batches, source_of_id = seed_mix_stream
    docs = stream_of(batches).view(-1, 3)
    assert (docs[:, 0] == TOKENIZER.bos_id).all() and (docs[:, 2] == TOKENIZER.eos_id).all()
    counts = torch.bincount(torch.tensor([source_of_id[int(t)] for t in docs[:, 1]]), minlength=len(SEED_MIX))
    assert counts.sum() >= 10_000
    total = sum(SEED_MIX.values())
    for index, (name, weight) in enumerate(SEED_MIX.items()):
        assert abs(counts[index] / counts.sum() - weight / total) < 0.02, name


def test_source_tokens_count_each_label_by_its_document_source(seed_mix_stream) -> None:
    batches, source_of_id = seed_mix_stream
    stream = stream_of(batches)
    token_source = torch.tensor([source_of_id[int(t)] for t in stream[1::3]]).repeat_interleave(3)
    windows = token_source.view(-1, SEQ_LEN + 1)
    expected = torch.stack([torch.bincount(w[1:], minlength=len(SEED_MIX)) for w in windows])
    got = torch.cat([b["source_tokens"] for b in batches])
    assert got.shape == (len(batches) * BATCH, len(SEED_MIX))
    assert torch.equal(got, expected) and (got.sum(1) == SEQ_LEN).all()


def test_mixture_state_continues_the_draws() -> None:
    mixture = Mixture([1, 2, 3], seed=(1, 0, 0))
    [mixture.next_source() for _ in range(10)]
    state = mixture.state_dict()
    expected = [mixture.next_source() for _ in range(50)]
    resumed = Mixture([1, 2, 3], seed=(1, 0, 0))
    resumed.load_state_dict(state)
    assert [resumed.next_source() for _ in range(50)] == expected


def test_ranks_and_workers_draw_different_sequences() -> None:
    mixtures = [Mixture([1, 1], seed=(5, rank, worker)) for rank, worker in ((0, 0), (0, 1), (1, 0))]
    draws = [[m.next_source() for _ in range(64)] for m in mixtures]
    assert draws[0] != draws[1] and draws[0] != draws[2]
