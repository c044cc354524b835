"""A DCP step folder -> a Hugging Face `LlamaForCausalLM` folder that `transformers` loads with no custom code.

    nano-export outputs/debug/checkpoints/step-200 exported/ [--dtype fp32] [--push user/nano]

The folder holds `model.safetensors` (sharded with `model.safetensors.index.json` above `--max-shard-size`),
`config.json`, `generation_config.json`, the tokenizer (`tokenizer.model`, `tokenizer_config.json` with a
chat template for our `<|system|>/<|user|>/<|assistant|>/<|end|>` format, `special_tokens_map.json`) and a
model card. Everything comes from the checkpoint itself: its `run.json` (model shape, step, tokens, loss,
command, data mix), its resolved `config.toml` and its `tokenizer.model`.

Only model weights are read, one tensor at a time (the optimizer is never materialised), and each is
written straight into its safetensors file, so memory stays near the largest single tensor. DCP reassembles
tensors saved as FSDP or tensor-parallel shards, so a checkpoint from any mesh exports on a CPU-only machine.
The native -> Hugging Face weight names live here and nowhere else; our RoPE already uses the Hugging Face
rotate-half layout, so no weight is permuted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from nano.checkpoint.hub import PushFailed, PushTarget, push_folder
from nano.checkpoint.manager import COMPLETE_MARKER, RUN_INFO, single_process_quiet, step_dirs
from nano.models.llama import ModelArgs, Transformer

logger = logging.getLogger("nano")

MODEL_PREFIX = "train.model."  # where the trainer's ModelAndOptimizer state puts the weights in the DCP checkpoint
TOKENIZER_FILE = "tokenizer.model"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9

# Native names -> Hugging Face LlamaForCausalLM names: the one key-map table.
_TOP_LEVEL = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_IN_BLOCK = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.(.+)\.(weight)$")

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_SAFETENSORS_DTYPE = {torch.bfloat16: "BF16", torch.float32: "F32"}

# Our chat format (nano/data/formats.py) as a Jinja chat template: a system turn, user turns, and assistant
# turns closed by <|end|>; turns are joined by a newline and each document starts with BOS.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] | trim + '\n<|end|>' }}{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% elif message['role'] in ['system', 'user'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] | trim + '\n' }}"
    "{% else %}{{ raise_exception('roles are system, user and assistant, got ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked; the CLI prints it and exits with code 2."""


def hf_name(native: str) -> str:
    """The Hugging Face name of a native state-dict key."""
    if native in _TOP_LEVEL:
        return _TOP_LEVEL[native]
    match = _BLOCK_KEY.match(native)
    if match is None or match.group(2) not in _IN_BLOCK:
        raise ExportError(f"no Hugging Face name for weight '{native}'")
    return f"model.layers.{match.group(1)}.{_IN_BLOCK[match.group(2)]}.{match.group(3)}"


_HF_TOP_LEVEL = {hf: native for native, hf in _TOP_LEVEL.items()}
_HF_IN_BLOCK = {hf: native for native, hf in _IN_BLOCK.items()}
_HF_BLOCK_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight)$")


def native_name(hf: str) -> str:
    """The native state-dict key of a Hugging Face weight name (the inverse of `hf_name`)."""
    if hf in _HF_TOP_LEVEL:
        return _HF_TOP_LEVEL[hf]
    match = _HF_BLOCK_KEY.match(hf)
    if match is None or match.group(2) not in _HF_IN_BLOCK:
        raise ExportError(f"no native name for Hugging Face weight '{hf}'")
    return f"layers.{match.group(1)}.{_HF_IN_BLOCK[match.group(2)]}.{match.group(3)}"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a step folder says about itself (written by the trainer as run.json at every save)."""

    path: Path
    args: ModelArgs
    run: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.run["step"])


def resolve_step_dir(path: Path) -> Path:
    """A step folder as given, or the newest complete one inside a checkpoint folder."""
    if (path / ".metadata").is_file():
        return path
    complete = step_dirs(path)
    if not complete:
        raise ExportError(f"{path} is neither a DCP step folder (no .metadata) nor a folder holding complete "
                          f"step-N checkpoints")
    return complete[-1][1]


def read_checkpoint_info(step_dir: Path) -> CheckpointInfo:
    for name in (COMPLETE_MARKER, RUN_INFO, TOKENIZER_FILE):
        if not (step_dir / name).is_file():
            raise ExportError(f"{step_dir}: no {name}: only complete checkpoints written by nano.train can be exported")
    run = json.loads((step_dir / RUN_INFO).read_text())
    return CheckpointInfo(path=step_dir, args=ModelArgs(**run["model_args"]), run=run)


def weight_specs(info: CheckpointInfo) -> list[tuple[str, str, torch.Size, torch.dtype]]:
    """(DCP key, Hugging Face name, shape, saved dtype) of every weight to export, checked against the model shape."""
    metadata = FileSystemReader(str(info.path)).read_metadata().state_dict_metadata
    with torch.device("meta"):
        expected = Transformer(info.args).state_dict()
    specs = []
    for native, tensor in expected.items():
        if info.args.tie_embeddings and native == "output.weight":
            continue  # transformers ties lm_head to embed_tokens (tie_word_embeddings)
        key = MODEL_PREFIX + native
        saved = metadata.get(key)
        if not isinstance(saved, TensorStorageMetadata):
            raise ExportError(f"{info.path}: weight '{native}' is not in the checkpoint")
        if saved.size != tensor.shape:
            raise ExportError(f"{info.path}: weight '{native}' has shape {tuple(saved.size)}, run.json's model "
                              f"args give {tuple(tensor.shape)}")
        specs.append((key, hf_name(native), saved.size, saved.properties.dtype))
    return specs


def plan_shards(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
    """Consecutive tensors grouped into files of at most `max_shard_bytes` (a larger tensor gets its own file)."""
    shards: list[list[int]] = [[]]
    used = 0
    for index, size in enumerate(sizes):
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(index)
        used += size
    return shards


def load_weight(step_dir: Path, key: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """One full tensor from a DCP checkpoint, reassembled from whatever shards the saving mesh wrote."""
    tensor = torch.empty(shape, dtype=dtype)
    with single_process_quiet():
        dcp.load({key: tensor}, checkpoint_id=str(step_dir), no_dist=True)
    return tensor


def write_safetensors(path: Path, names: list[str], shapes: list[torch.Size], dtype: torch.dtype,
                      tensors: Iterator[torch.Tensor]) -> None:
    """Stream tensors into one safetensors file: the header first (all shapes are known), then each tensor's
    bytes as it arrives, so only one tensor is ever in memory. `safetensors` itself only writes from a dict of
    tensors held in memory together; the format is an 8-byte header length, a JSON header and the raw data."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in zip(names, shapes):
        nbytes = itemsize * shape.numel()
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for shape in shapes:
            tensor = next(tensors)
            if tensor.shape != shape:
                raise ExportError(f"{path}: tensor of shape {tuple(tensor.shape)} where {tuple(shape)} was planned")
            out.write(tensor.to(dtype).contiguous().view(torch.uint8).numpy().data)
            del tensor  # before the next one is loaded


def write_weights(info: CheckpointInfo, out: Path, dtype: torch.dtype, max_shard_bytes: int) -> list[str]:
    specs = weight_specs(info)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards = plan_shards([itemsize * shape.numel() for _, _, shape, _ in specs], max_shard_bytes)
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    for filename, shard in zip(files, shards):
        chosen = [specs[i] for i in shard]
        tensors = (load_weight(info.path, key, shape, saved) for key, _, shape, saved in chosen)
        write_safetensors(out / filename, [name for _, name, _, _ in chosen], [shape for _, _, shape, _ in chosen],
                          dtype, tensors)
        weight_map.update({name: filename for _, name, _, _ in chosen})
    if len(files) > 1:
        total = sum(itemsize * shape.numel() for _, _, shape, _ in specs)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files


# ---------------------------------------------------------------------------------------------------------
# config.json, generation_config.json, tokenizer, model card


def special_token_ids(tokenizer_model: Path) -> dict[str, int]:
    """BOS/EOS/UNK, <|end|> and the piece count of the SentencePiece model the run trained with."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    return {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "end": sp.piece_to_id("<|end|>"),
            "pieces": sp.vocab_size()}


def hf_config(args: ModelArgs, ids: dict[str, int], dtype: torch.dtype) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,  # padded; the rows past the tokenizer's pieces are never targets
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": args.init_std,
        "tie_word_embeddings": args.tie_embeddings,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": None,
        "torch_dtype": {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype],
        "use_cache": True,
    }


def args_from_hf_config(config: dict[str, Any]) -> ModelArgs:
    """The model shape of an exported config.json (the inverse of `hf_config`; transformers 5 moves rope_theta
    into rope_parameters when it saves a config again)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if config.get("model_type") != "llama" or rope.get("rope_type", "default") != "default" \
            or config.get("attention_bias") or config.get("mlp_bias") or config.get("hidden_act", "silu") != "silu":
        raise ExportError("config.json does not describe a model nano can run: it needs model_type 'llama' with "
                          "silu, no biases and no rope_scaling (as nano-export writes it)")
    args = ModelArgs(dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
                     n_heads=config["num_attention_heads"], vocab_size=config["vocab_size"],
                     ffn_hidden_dim=config["intermediate_size"], n_kv_heads=config.get("num_key_value_heads"),
                     norm_eps=config["rms_norm_eps"], rope_theta=config.get("rope_theta") or rope.get("rope_theta", 10000.0),
                     max_seq_len=config["max_position_embeddings"],
                     tie_embeddings=config.get("tie_word_embeddings", False),
                     init_std=config.get("initializer_range", 0.02))
    if config.get("head_dim", args.head_dim) != args.head_dim:
        raise ExportError(f"config.json: head_dim {config['head_dim']} is not hidden_size / num_attention_heads "
                          f"({args.head_dim}); nano models need it to be")
    return args


def generation_config(ids: dict[str, int]) -> dict[str, Any]:
    """Generation stops at EOS or at <|end|>, which closes every assistant turn."""
    return {"bos_token_id": ids["bos"], "eos_token_id": [ids["eos"], ids["end"]], "pad_token_id": ids["eos"]}


def write_tokenizer(step_dir: Path, out: Path) -> None:
    """The SentencePiece model the run trained with, and what AutoTokenizer needs to reproduce its ids.

    nano's tokenizer never adds a dummy prefix space (nano/data/tokenizer.py), so neither may transformers.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    shutil.copyfile(step_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    sp = spm.SentencePieceProcessor(model_file=str(step_dir / TOKENIZER_FILE))
    special = {"bos_token": sp.id_to_piece(sp.bos_id()), "eos_token": sp.id_to_piece(sp.eos_id()),
               "unk_token": sp.id_to_piece(sp.unk_id())}
    proto = sp_pb2.ModelProto()
    proto.ParseFromString((step_dir / TOKENIZER_FILE).read_bytes())
    # The chat tokens (<|user|>, <think>, ...) are the model's user-defined pieces: each must stay one id.
    chat_tokens = [p.piece for p in proto.pieces if p.type == sp_pb2.ModelProto.SentencePiece.USER_DEFINED]
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **special,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": chat_tokens,
        "model_max_length": None,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({**special, "additional_special_tokens": chat_tokens}, indent=2) + "\n")


def model_card(info: CheckpointInfo, dtype: torch.dtype, license_id: str, model_id: str) -> str:
    """The README.md of the folder; its usage example loads `model_id` (the Hub repo, or the folder's path)."""
    run, args = info.run, info.args
    mix = run.get("data_mix", [])
    total = sum(source["weight"] for source in mix) or 1.0
    hub_ids = sorted({source["hub_id"] for source in mix if source["hub_id"] and not source["local"]})
    front = ["---", f"license: {license_id}", "library_name: transformers", "pipeline_tag: text-generation",
             "language:", "- en", "- de", "tags:", "- nano", "- llama", "- pretraining"]
    if hub_ids:
        front += ["datasets:", *[f"- {hub_id}" for hub_id in hub_ids]]
    front.append("---")
    loss = run.get("loss")
    rows = [f"| {s['name']} | {s['hub_id'] + (' (local files)' if s['local'] else '')} | {s['weight']:g} | "
            f"{100 * s['weight'] / total:.1f}% |" for s in mix]
    lines = [
        *front, "",
        f"# {run.get('job_name', 'nano')} — step {info.step:,}", "",
        "A LLaMA-style decoder (RoPE, RMSNorm, SwiGLU) pretrained from scratch with nano.", "",
        "| | |", "|---|---|",
        f"| parameters | {run.get('num_params', 0):,} |",
        f"| layers × hidden × heads (kv) | {args.n_layers} × {args.dim} × {args.n_heads} ({args.kv_heads}) |",
        f"| FFN (SwiGLU) | {args.ffn_hidden_dim} |",
        f"| context | {args.max_seq_len} tokens, RoPE θ = {args.rope_theta:g} |",
        f"| vocabulary | {args.vocab_size} (padded to a multiple of 64) |",
        f"| steps | {info.step:,} |",
        f"| tokens seen | {int(run.get('tokens_seen', 0)):,} |",
        f"| last training loss | {'n/a' if loss is None else f'{loss:.4f}'} |",
        f"| weights | {str(dtype).removeprefix('torch.')} |", "",
        "## Training data mix", "",
        "| source | dataset | weight | share of documents |", "|---|---|---|---|", *rows, "",
        "Reasoning sources use `<|user|> … <|assistant|> <think> … </think> The answer is: … <|end|>`; "
        "the tokenizer's chat template renders it.", "",
        "## Trained with", "", "```bash", run.get("command", "(not recorded)"), "```", "",
        "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f"tokenizer = AutoTokenizer.from_pretrained({model_id!r})",
        f"model = AutoModelForCausalLM.from_pretrained({model_id!r})",
        "chat = [{\"role\": \"user\", \"content\": \"What is 15% of 80?\"}]",
        "prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
        "print(tokenizer.decode(model.generate(**prompt, max_new_tokens=64)[0]))", "```", "",
        "The training data keeps the licenses of its sources; check each dataset's card before redistributing.", "",
    ]
    return "\n".join(lines)


def export_checkpoint(checkpoint: Path, out: Path, *, dtype: str = "bf16", license_id: str | None = None,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, repo_id: str | None = None) -> Path:
    """Write the Hugging Face folder for a step folder (or the newest complete one in a checkpoint folder).

    `repo_id`: the Hub repo the folder is for, named in the model card's usage example (default: `out`).
    The folder appears under `out` only once complete: it is written next to it and renamed at the end.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    step_dir = resolve_step_dir(Path(checkpoint))
    info = read_checkpoint_info(step_dir)
    torch_dtype = DTYPES[dtype]
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    files = write_weights(info, partial, torch_dtype, max_shard_bytes)
    ids = special_token_ids(step_dir / TOKENIZER_FILE)
    if ids["pieces"] > info.args.vocab_size:
        raise ExportError(f"{step_dir}: the tokenizer has {ids['pieces']} pieces but the model only "
                          f"{info.args.vocab_size} rows")
    (partial / "config.json").write_text(json.dumps(hf_config(info.args, ids, torch_dtype), indent=2) + "\n")
    (partial / "generation_config.json").write_text(json.dumps(generation_config(ids), indent=2) + "\n")
    write_tokenizer(step_dir, partial)
    card_license = license_id or info.run.get("license") or "mit"
    (partial / "README.md").write_text(model_card(info, torch_dtype, card_license, repo_id or str(out)))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    logger.info("exported %s (step %d) to %s: %s, %s", step_dir, info.step, out, ", ".join(files), dtype)
    return out


# ---------------------------------------------------------------------------------------------------------
# Command line


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)")
    scale = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match.group(2)]
    return int(float(match.group(1)) * scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nano-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a DCP step folder, or a checkpoint folder (its newest complete step)")
    parser.add_argument("out", type=Path, help="the Hugging Face folder to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weight dtype (default bf16)")
    parser.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_MAX_SHARD_BYTES,
                        help="split model.safetensors above this size (default 5GB)")
    parser.add_argument("--license", default=None, help="license id for the model card (default: the run's hub.license)")
    parser.add_argument("--push", metavar="REPO_ID", default=None,
                        help="also push the folder to this Hub repo (token from HF_TOKEN or `hf auth login`)")
    parser.add_argument("--revision", default="main", help="branch to push to (default main)")
    parser.add_argument("--private", action="store_true", help="create the repo as private if it does not exist")
    parser.add_argument("--path-in-repo", default="checkpoints/step-{step}",
                        help="folder for this checkpoint in the repo ({step} is replaced); it also goes to the root")
    parser.add_argument("--no-root", action="store_true", help="do not also update the files at the repo root")
    parser.add_argument("--retry-timeout", type=float, default=3600.0,
                        help="give up pushing after this many seconds of retries (default 3600)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    for noisy in ("httpx", "httpx2", "huggingface_hub"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        out = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype, license_id=args.license,
                                max_shard_bytes=args.max_shard_size, repo_id=args.push)
        if args.push:
            step = read_checkpoint_info(resolve_step_dir(args.checkpoint)).step
            target = PushTarget(repo_id=args.push, revision=args.revision, private=args.private,
                                path_in_repo=args.path_in_repo, update_root=not args.no_root)
            push_folder(out, step, target, retry_timeout_s=args.retry_timeout)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PushFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
