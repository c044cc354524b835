"""Sample text from a checkpoint: `nano-generate --checkpoint PATH --prompt "..."`.

    nano-generate --checkpoint outputs/debug/checkpoints --prompt "The water cycle"
    nano-generate --checkpoint exported/ --chat --prompt "What is 15% of 80?" --temperature 0

PATH is a DCP step folder, a checkpoint folder (its newest complete step) or a Hugging Face folder written by
`nano-export`; the model shape and the tokenizer come from the folder itself. Tokens are printed as they are
generated (a character split over several byte tokens appears once complete). Plain prompts are continued (the
prompt is printed first) until EOS; `--chat` sends the prompt as a user turn in the chat format the model was
trained on (`<|user|>\\n{prompt}\\n<|assistant|>\\n`, what the exported chat template renders) and prints the
assistant's reply up to `<|end|>`. A KV cache keeps each new token at the cost of one position.

`PromptSampler` runs the same generation during training for `[sampling]`, on every rank (FSDP and tensor
parallel forwards are collectives), greedily and always for `max_new_tokens` steps so every rank takes part in the
same number of forwards; the completion is cut at the stop token afterwards. Tensor parallel shards the sequence
over its ranks, so there each forward recomputes the whole sequence, right-padded to a multiple of the degree
(causal attention: the padding changes nothing before it), instead of feeding one new token to a cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.tensor import DTensor

from nano.checkpoint.export import (
    TOKENIZER_FILE,
    ExportError,
    args_from_hf_config,
    native_name,
    read_checkpoint_info,
    resolve_step_dir,
)
from nano.checkpoint.manager import single_process_quiet
from nano.config import Sampling
from nano.data.formats import chat_prompt
from nano.data.tokenizer import Tokenizer
from nano.models.llama import Transformer

logger = logging.getLogger("nano")


class GenerateError(ValueError):
    """A checkpoint or an option that cannot be used; the CLI prints it and exits with code 2."""


def stop_ids(tokenizer: Tokenizer, chat: bool) -> list[int]:
    """Generation ends at EOS, and in a chat at the <|end|> that closes the assistant's turn."""
    return [tokenizer.eos_id] + ([tokenizer.special_ids["<|end|>"]] if chat else [])


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Every training document starts with BOS, so every prompt does."""
    return [tokenizer.bos_id, *tokenizer.encode(text)]


# ---------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class Loaded:
    model: Transformer
    tokenizer: Tokenizer
    description: str


def load(path: Path, device: torch.device) -> Loaded:
    """A model (fp32, eval mode) and its tokenizer from a DCP step/checkpoint folder or an exported HF folder."""
    if not path.exists():
        raise GenerateError(f"--checkpoint {path}: no such file or folder")
    try:
        if (path / "config.json").is_file():
            return _load_exported(path, device)
        return _load_dcp(resolve_step_dir(path), device)
    except ExportError as err:
        raise GenerateError(str(err)) from err


def _load_dcp(step_dir: Path, device: torch.device) -> Loaded:
    info = read_checkpoint_info(step_dir)
    model = Transformer(info.args)
    state = model.state_dict()
    with single_process_quiet():
        dcp.load({"train": {"model": state}}, checkpoint_id=str(step_dir), no_dist=True)  # any saving mesh
    return Loaded(model.to(device).eval(), Tokenizer(step_dir / TOKENIZER_FILE), f"{step_dir} (step {info.step})")


def _load_exported(folder: Path, device: torch.device) -> Loaded:
    from safetensors.torch import load_file

    if not (folder / TOKENIZER_FILE).is_file():
        raise GenerateError(f"{folder}: no {TOKENIZER_FILE}; export the checkpoint with nano-export")
    args = args_from_hf_config(json.loads((folder / "config.json").read_text()))
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    state = {}
    for name in files:
        if not (folder / name).is_file():
            raise GenerateError(f"{folder}: no {name}")
        state.update({native_name(key): tensor.float() for key, tensor in load_file(folder / name).items()})
    if args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model = Transformer(args)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GenerateError(f"{folder}: weights do not match config.json: missing {missing}, unexpected {unexpected}")
    return Loaded(model.to(device).eval(), Tokenizer(folder / TOKENIZER_FILE), str(folder))


# ---------------------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    """0 = greedy (the most likely token)."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 = all."""
    top_p: float = 1.0
    """Sample among the most likely tokens whose probabilities add up to p; 1 = all."""


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """The next token from one position's logits [vocab] (fp32, on the CPU so a seed gives the same draw anywhere)."""
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        logits = logits.masked_fill(logits < torch.topk(logits, params.top_k).values[-1], float("-inf"))
    if params.top_p < 1.0:
        probs, order = torch.softmax(logits, dim=-1).sort(descending=True)
        outside = probs.cumsum(0) - probs >= params.top_p  # the tokens after the nucleus is full
        logits = logits.masked_fill(outside.scatter(0, order, outside), float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.no_grad()
def generate(model: nn.Module, prompt: Sequence[int], max_new_tokens: int, params: SamplingParams = SamplingParams(),
             *, vocab_size: int, stop_ids: Sequence[int] = (), use_cache: bool = True, pad_to_multiple: int = 1,
             generator: torch.Generator | None = None) -> Iterator[int]:
    """New tokens after `prompt`, one at a time, until a stop id (not yielded), `max_new_tokens` or the model's
    context is full. `vocab_size` (the tokenizer's) keeps the padding rows of the output layer out of reach.
    Without the cache, each forward's sequence is right-padded to a multiple of `pad_to_multiple`."""
    if use_cache and pad_to_multiple > 1:
        raise ValueError("pad_to_multiple needs use_cache=False: padding would fill the cache")
    device = next(model.parameters()).device
    limit = model.args.max_seq_len
    if len(prompt) >= limit:
        raise GenerateError(f"the prompt has {len(prompt)} tokens; the model's context is {limit}")
    max_new_tokens = min(max_new_tokens, (limit - len(prompt)) if pad_to_multiple == 1 else
                         limit // pad_to_multiple * pad_to_multiple - len(prompt))
    cache = model.new_cache(len(prompt) + max_new_tokens) if use_cache else None
    tokens = list(prompt)
    step_input = tokens
    for _ in range(max_new_tokens):
        padding = [tokens[-1]] * (-len(step_input) % pad_to_multiple)
        logits = model(torch.tensor([step_input + padding], device=device), cache=cache)
        logits = logits.full_tensor() if isinstance(logits, DTensor) else logits  # vocab-sharded under loss parallel
        last = logits[0, len(step_input) - 1, :vocab_size].float().cpu()
        token = pick(last, params, generator)
        if token in stop_ids:
            return
        yield token
        tokens.append(token)
        step_input = [token] if use_cache else tokens


class TextStream:
    """Text of the tokens so far, released piece by piece: a character split over several byte tokens is held
    back until it is complete (decoding it half would print a replacement character)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        return self._release(text)

    def finish(self) -> str:
        return self._release(self.tokenizer.decode(self.ids))

    def _release(self, text: str) -> str:
        new, self.shown = text[len(self.shown):], text
        return new


# ---------------------------------------------------------------------------------------------------------
# During training


class PromptSampler:
    """Greedy completions of fixed prompts every `interval` steps: what the model says now."""

    def __init__(self, cfg: Sampling, tokenizer: Tokenizer, tensor_parallel_degree: int = 1) -> None:
        self.cfg, self.tokenizer, self.tp = cfg, tokenizer, tensor_parallel_degree
        self.stop_ids = stop_ids(tokenizer, cfg.chat)

    def due(self, step: int) -> bool:
        return bool(self.cfg.prompts) and step % self.cfg.interval == 0

    def complete(self, model: nn.Module) -> list[tuple[str, str]]:
        """(prompt, completion) for each prompt; call on every rank."""
        was_training = model.training
        model.eval()
        samples = []
        try:
            # Eager: a few short forwards are not worth compiling graphs for every new length.
            with torch.compiler.set_stance("force_eager"):
                for prompt in self.cfg.prompts:
                    ids = encode_prompt(self.tokenizer, chat_prompt(prompt) if self.cfg.chat else prompt)
                    new = list(generate(model, ids, self.cfg.max_new_tokens, vocab_size=self.tokenizer.vocab_size,
                                        use_cache=self.tp == 1, pad_to_multiple=self.tp))
                    stops = [i for i, token in enumerate(new) if token in self.stop_ids]
                    samples.append((prompt, self.tokenizer.decode(new[: stops[0]] if stops else new)))
        finally:
            model.train(was_training)
        return samples


# ---------------------------------------------------------------------------------------------------------
# Command line


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenerateError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nano-generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a DCP step folder, a checkpoint folder (its newest complete step) or an exported folder")
    parser.add_argument("--prompt", required=True, help="the text to continue (with --chat: the user's message)")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as a user turn and print the assistant's reply, up to <|end|>")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate at most (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=50,
                        help="sample among the k most likely tokens; 0 = all (default 50)")
    parser.add_argument("--top-p", type=float, default=0.95,
                        help="sample among the most likely tokens covering this probability; 1 = all (default 0.95)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: a new draw every run)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence for every token")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if visible")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="compute dtype: bf16 runs the matmuls under autocast (default fp32)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        parser.error(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        loaded = load(args.checkpoint, device)
    except GenerateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer = loaded.tokenizer
    text = chat_prompt(args.prompt) if args.chat else args.prompt
    seed = args.seed if args.seed is not None else int(torch.seed() % 2**31)
    generator = torch.Generator().manual_seed(seed)
    params = SamplingParams(args.temperature, args.top_k, args.top_p)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())
    sampled = f", seed {seed}" if args.temperature > 0 else ", greedy"
    print(f"[{loaded.description}{sampled}]", file=sys.stderr, flush=True)
    if not args.chat:
        print(args.prompt, end="", flush=True)
    stream, count, begin = TextStream(tokenizer), 0, time.perf_counter()
    try:
        with autocast:
            for token in generate(loaded.model, encode_prompt(tokenizer, text), args.max_new_tokens, params,
                                  vocab_size=tokenizer.vocab_size, stop_ids=stop_ids(tokenizer, args.chat),
                                  use_cache=not args.no_cache,
                                  generator=generator):
                count += 1
                print(stream.add(token), end="", flush=True)
    except GenerateError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    print(stream.finish(), flush=True)
    seconds = time.perf_counter() - begin
    print(f"[{count} tokens in {seconds:.1f} s, {count / max(seconds, 1e-9):.1f} tokens/s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
