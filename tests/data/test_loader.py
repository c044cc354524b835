import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from nano.config import SEED_MIX, Data, Source, load_config
from nano.data.loader import build_dataloader
from nano.data.mixture import Mixture
from nano.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = Tokenizer(REPO / "assets/tokenizer/nano_demo.model")
DEMO = load_config(["--config", str(REPO / "train_configs/debug_model.toml")]).data


def loader(cfg: Data, *, seq_len: int = 64, batch: int = 4, rank: int = 0, world: int = 1, workers: int = 0):
    cfg = Data(tokenizer=cfg.tokenizer, num_workers=workers, sources=cfg.sources)
    return build_dataloader(cfg, TOKENIZER, seq_len=seq_len, micro_batch_size=batch, dp_rank=rank,
                            dp_world_size=world, seed=7)


def inputs(batches) -> list[torch.Tensor]:
    return [b["input"] for b in batches]


@pytest.fixture(scope="module")
def numbered_source(tmp_path_factory) -> tuple[Data, list[str]]:
    """One source of unique short documents, so every token's origin is known."""
    path = tmp_path_factory.mktemp("rows") / "docs.jsonl"
    docs = [f"Document number {i}: {' '.join(['word'] * (i % 13))} end {i}." for i in range(60)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return Data(sources={"numbered": Source(weight=1, format="text", data_files=[str(path)])}), docs


def token_stream(docs: list[str], repeats: int = 20) -> list[int]:
    out = []
    for _ in range(repeats):  # sources loop over their rows epoch after epoch
        for doc in docs:
            out += [TOKENIZER.bos_id, *TOKENIZER.encode(doc), TOKENIZER.eos_id]
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("rank", [0, 1])
def test_packing_is_the_document_stream_cut_into_windows(numbered_source, workers: int, rank: int) -> None:
    """Windows are seq_len+1 consecutive tokens of BOS+doc+EOS; labels are inputs shifted by one; no token is
    lost or repeated; the two ranks read disjoint rows that together make the source."""
    cfg, docs = numbered_source
    seq = 32
    batches = list(islice(loader(cfg, seq_len=seq, batch=2, rank=rank, world=2, workers=workers), 6))
    windows = [torch.cat([b["input"][i], b["label"][i, -1:]]) for b in batches for i in range(2)]
    for b in batches:
        assert b["input"].shape == b["label"].shape == (2, seq)
        assert torch.equal(b["input"][:, 1:], b["label"][:, :-1])
        assert int(b["source_tokens"].sum()) == 2 * seq
    if workers == 0:
        expected = token_stream(docs[rank::2])
    else:  # worker w of rank r reads rows with index % 4 == 2r + w; the loader alternates workers per batch
        streams = [token_stream(docs[2 * rank + w :: 4]) for w in range(2)]
        expected = [t for k in range(3) for w in range(2) for t in streams[w][k * 2 * (seq + 1) : (k + 1) * 2 * (seq + 1)]]
    assert torch.cat(windows).tolist() == expected[: len(windows) * (seq + 1)]


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_and_double_resume(workers: int) -> None:
    reference = loader(DEMO, workers=workers)
    ref_iter = iter(reference)
    list(islice(ref_iter, 5))
    saved = reference.state_dict()
    expected = inputs(islice(ref_iter, 6))

    resumed = loader(DEMO, workers=workers)
    resumed.load_state_dict(saved)
    saved_again = resumed.state_dict()  # taken before iterating: must still be the resumed position
    res_iter = iter(resumed)
    got = inputs(islice(res_iter, 3))
    saved_later = resumed.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(got, expected[:3]))

    for state, want in ((saved_again, expected), (saved_later, expected[3:])):
        twice = loader(DEMO, workers=workers)
        twice.load_state_dict(state)
        again = inputs(islice(iter(twice), len(want)))
        assert all(torch.equal(a, b) for a, b in zip(again, want))


def test_resume_with_another_layout_is_refused() -> None:
    first = loader(DEMO, rank=0, world=2)
    list(islice(iter(first), 2))
    with pytest.raises(ValueError, match="saved with 2 data-parallel ranks x 0 workers, this run has 1 x 0"):
        loader(DEMO).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="this run has 2 x 2"):
        loader(DEMO, rank=0, world=2, workers=2).load_state_dict(first.state_dict())


def test_mixture_shares_match_the_weights() -> None:
    names, weights = list(SEED_MIX), list(SEED_MIX.values())
    mixture = Mixture(weights, seed=(0, 0, 0))
    draws = [mixture.next_source() for _ in range(20_000)]
    for index, name in enumerate(names):
        share = draws.count(index) / len(draws)
        assert abs(share - weights[index] / sum(weights)) < 0.02, name


def test_mixture_resumes_its_sequence() -> None:
    mixture = Mixture([1, 2, 3], seed=(1, 0, 0))
    [mixture.next_source() for _ in range(10)]
    state = mixture.state_dict()
    expected = [mixture.next_source() for _ in range(50)]
    other = Mixture([1, 2, 3], seed=(1, 0, 0))
    other.load_state_dict(state)
    assert [other.next_source() for _ in range(50)] == expected


def test_demo_mix_serves_every_source() -> None:
    counts = sum(b["source_tokens"].sum(0) for b in islice(iter(loader(DEMO, seq_len=256, batch=8)), 40))
    assert (counts > 0).all()
