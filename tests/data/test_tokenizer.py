import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from nano.data.formats import SPECIAL_TOKENS
from nano.data.tokenizer import Tokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "assets" / "demo"
BUNDLED = REPO / "assets" / "tokenizer" / "nano_demo.model"


def demo_texts(limit_per_file: int = 40) -> list[str]:
    texts = []
    for path in sorted(DEMO.iterdir()):
        if path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
        elif path.suffix == ".json":
            rows = json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines()]
        else:
            continue
        for row in rows[:limit_per_file]:
            texts += [v for v in row.values() if isinstance(v, str)]
            texts += [t for v in row.values() if isinstance(v, list) for t in v]
    return texts


def test_special_tokens_are_single_ids() -> None:
    tok = Tokenizer(BUNDLED)
    for token in SPECIAL_TOKENS:
        ids = tok.encode(f"a {token} b")
        assert tok.special_ids[token] in ids
        assert tok.encode(token) == [tok.special_ids[token]]
    assert len(set(tok.special_ids.values())) == len(SPECIAL_TOKENS)


def test_round_trip_on_the_demo_corpus() -> None:
    tok = Tokenizer(BUNDLED)
    texts = demo_texts()
    assert len(texts) > 300
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_added_to_a_model_without_them(tmp_path: Path) -> None:
    """The LLaMA tokenizer path: its vocab grows by exactly the missing special tokens."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} with some words and numbers {i * 7}" for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "plain"), vocab_size=120,
                                   model_type="bpe", minloglevel=2, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False)  # as LLaMA's, with its dummy prefix
    plain = spm.SentencePieceProcessor(model_file=str(tmp_path / "plain.model"))
    tok = Tokenizer(tmp_path / "plain.model")
    assert tok.vocab_size == plain.vocab_size() + len(SPECIAL_TOKENS)
    for token in SPECIAL_TOKENS:
        ids = tok.encode(f"line {token} more")
        special = tok.special_ids[token]
        assert ids.count(special) == 1
        rest = tok.decode([i for i in ids if i != special])
        assert "<" not in rest and "|" not in rest and "think" not in rest  # no fragment of the token outside its id
    # The same pieces as the plain model, without its dummy prefix space: a document starts on its first token,
    # as Hugging Face tokenizers (which split on special tokens first) encode it too.
    assert tok.encode(" line 3 with") == plain.encode("line 3 with")
    assert tok.encode("<|user|>\nline 3")[0] == tok.special_ids["<|user|>"]
    assert plain.encode("<|user|>")[0] != plain.piece_to_id("<|user|>")  # the plain model has no such piece


def test_load_tokenizer_names_a_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="data.tokenizer: no tokenizer file at 'missing/tok.model'"):
        load_tokenizer("missing/tok.model")


def test_cli_trains_a_tokenizer_from_a_config(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    proc = subprocess.run(
        [sys.executable, "-m", "nano.data.tokenizer", "train", "--config", "train_configs/debug_model.toml",
         "--output", str(out), "--vocab-size", "600", "--max-documents", "300"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = Tokenizer(out.with_suffix(".model"))
    assert tok.vocab_size == 600
    assert tok.encode("<|assistant|>") == [tok.special_ids["<|assistant|>"]]
