"""SentencePiece tokenizer with the chat special tokens as single ids; `nano-tokenizer train` makes one.

A model that lacks the special tokens (the LLaMA 32000 tokenizer) gets them appended as user-defined
pieces, so each encodes to one id and the vocab grows to 32006 (the model pads it further).
No dummy prefix space is added to a document (the LLaMA tokenizer would add one): Hugging Face tokenizers
split on the special tokens before adding that space, so with it the exported model's tokenizer would
encode every `<|user|>` turn differently from the training stream.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from nano.data.formats import FORMATTERS, SPECIAL_TOKENS


class Tokenizer:
    """A SentencePiece model plus the special tokens."""

    def __init__(self, model_path: str | Path) -> None:
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(Path(model_path).read_bytes())
        present = {piece.piece for piece in proto.pieces}
        for token in SPECIAL_TOKENS:
            if token not in present:
                proto.pieces.add(piece=token, score=0.0, type=sp_pb2.ModelProto.SentencePiece.USER_DEFINED)
        proto.normalizer_spec.add_dummy_prefix = False
        self.path = Path(model_path)
        self.model_bytes = proto.SerializeToString()
        """The SentencePiece model as used (special tokens added): saved with each checkpoint and exported."""
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.special_ids = {token: self.sp.piece_to_id(token) for token in SPECIAL_TOKENS}
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"{model_path}: the tokenizer has no BOS/EOS ids; train it with bos_id/eos_id set")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))


def load_tokenizer(name_or_path: str) -> Tokenizer:
    """A local tokenizer.model, or a Hub repo id that holds one."""
    path = Path(name_or_path)
    if path.is_file():
        return Tokenizer(path)
    if path.suffix == ".model" or name_or_path.count("/") != 1:
        raise FileNotFoundError(f"data.tokenizer: no tokenizer file at '{name_or_path}'")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Tokenizer(hf_hub_download(name_or_path, "tokenizer.model"))
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise FileNotFoundError(
            f"data.tokenizer: could not fetch tokenizer.model from Hub repo '{name_or_path}' ({type(err).__name__}: "
            f"{err}); check the repo id, HF_TOKEN access for gated repos, or give a local path"
        ) from err


def train_tokenizer(texts: Iterable[str], output_prefix: str | Path, vocab_size: int = 32000) -> Path:
    """Train a LLaMA-style BPE model (byte fallback, split digits, no normalisation) with the special tokens."""
    output_prefix = Path(output_prefix)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(output_prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        max_sentence_length=1 << 16,
        character_coverage=0.9999,
        user_defined_symbols=list(SPECIAL_TOKENS),
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return output_prefix.with_suffix(".model")


def sample_documents(config_argv: list[str], max_documents: int) -> Iterator[str]:
    """Formatted documents from the configured mix, one per source in turn, until `max_documents`."""
    from nano.config import load_config
    from nano.data.sources import resolve_sources
    from nano.data.streams import open_rows

    sources = [(FORMATTERS[s.format], iter(open_rows(s, 0, 1))) for s in resolve_sources(load_config(config_argv).data)]
    produced = 0
    while sources and produced < max_documents:
        for source in list(sources):
            row = next(source[1], None)
            if row is None:
                sources.remove(source)
                continue
            yield source[0](row)
            produced += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nano-tokenizer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a SentencePiece model on a sample of a config's data mix")
    train.add_argument("--config", required=True, help="a train config whose [data] mix to sample")
    train.add_argument("--output", default="tokenizer/tokenizer", help="output prefix (.model and .vocab)")
    train.add_argument("--vocab-size", type=int, default=32000)
    train.add_argument("--max-documents", type=int, default=200_000)
    args, config_overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    docs = sample_documents(["--config", args.config, *config_overrides], args.max_documents)
    path = train_tokenizer(docs, args.output, args.vocab_size)
    tok = Tokenizer(path)
    print(f"wrote {path} ({tok.vocab_size} tokens, special tokens {tok.special_ids})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
