"""Typed run configuration: one dataclass per TOML table, TOML file, then `--section.key value` overrides.

Every field carries a one-line docstring (the string right below it); `--help` is generated from those,
so the help text can never drift from the code. All validation happens here, at load time, before a
model or a GPU is touched.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad config file, key, value or combination; the CLI reports it and exits with code 2."""


@dataclass
class Job:
    name: str = "nano"
    """Run name, shown in logs."""
    dump_folder: str = "outputs"
    """Folder for this run's resolved config, checkpoints and logs (relative paths below are inside it)."""
    seed: int = 42
    """Seed for model init, data order and dropout-free training RNG."""


@dataclass
class Model:
    flavor: str = "debug"
    """Model size from nano.models.llama.FLAVORS: "debug" (CPU, a few M params) or "nano_1b" (1.1B)."""
    n_kv_heads: int = 0
    """Key/value heads for grouped-query attention; 0 keeps the flavor's value."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    tie_embeddings: bool = False
    """Share the token embedding and output head weights."""


@dataclass
class Training:
    seq_len: int = 2048
    """Tokens per training sequence (the model's context length)."""
    micro_batch_size: int = 8
    """Sequences per device per forward/backward (alias: --batch-size)."""
    global_batch_size: int = 128
    """Sequences per optimizer step over all devices; grad accumulation = global / (micro x data-parallel degree)."""
    max_steps: int = 100000
    """Optimizer steps to train for (alias: --max-steps)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    mixed_precision: Literal["bf16", "fp32"] = "bf16"
    """Compute dtype on CUDA; CPU always trains in fp32."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where to train; auto picks CUDA when a GPU is visible."""
    skip_bad_steps: bool = True
    """Skip the optimizer step when the loss or gradient norm is inf/NaN or the loss spikes (one host read per step)."""
    spike_factor: float = 3.0
    """A loss above this many times the mean of the last spike_window steps is a spike and is skipped; 0 = off."""
    spike_window: int = 100
    """Accepted steps whose mean loss the spike check compares against; it starts once the window is full."""
    max_consecutive_skips: int = 5
    """Save a checkpoint and stop when this many steps in a row were skipped (the weights are likely broken)."""
    z_loss: float = 0.0
    """Weight of the z-loss, mean squared log-partition of the logits (PaLM uses 1e-4), added to the loss; 0 = off."""


@dataclass
class Optimizer:
    lr: float = 3e-4
    """Peak learning rate (alias: --learning-rate)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to weight matrices only (not norms or embeddings)."""
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    """AdamW kernel: auto = fused on CUDA, foreach on CPU."""


@dataclass
class LRScheduler:
    warmup_steps: int = 2000
    """Steps of linear warmup from 0 to the peak learning rate."""
    decay_type: Literal["cosine", "linear", "wsd"] = "cosine"
    """Shape after warmup: cosine or linear decay to min_lr_ratio, or warmup-stable-decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    decay_fraction: float = 0.2
    """WSD only: fraction of the post-warmup steps spent in the final linear decay."""


@dataclass
class Source:
    weight: float = 1.0
    """Relative sampling weight of this source in the mix; 0 drops it."""
    hub_id: str = ""
    """Hugging Face dataset id; empty keeps the registry's (required for a source not in the registry)."""
    subset: str = ""
    """Dataset config/subset name; empty keeps the registry's."""
    split: str = ""
    """Dataset split; empty keeps the registry's."""
    format: str = ""
    """Row formatter name from nano.data.formats; empty keeps the registry's."""
    data_files: list[str] = field(default_factory=list)
    """Local parquet/jsonl/json files in the source's Hub schema, read instead of the Hub."""


SEED_MIX: dict[str, float] = {
    "fineweb_edu": 20,
    "culturax_de": 10,
    "the_stack_python": 10,
    "gsm8k": 8,
    "metamathqa": 10,
    "openorca": 12,
    "open_platypus": 8,
    "orca_math": 7,
    "camel_math": 5,
    "ultrachat": 5,
    "openschnabeltier": 5,
}


@dataclass
class Data:
    tokenizer: str = "assets/tokenizer/nano_demo.model"
    """SentencePiece tokenizer.model: a local path or a Hub repo id holding one."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = tokenize in the training process)."""
    shuffle_buffer: int = 10_000
    """Documents per source shuffled together (seeded by job.seed; file order too); 0 = read in file order."""
    max_consecutive_bad_rows: int = 1000
    """Stop the run when a source yields this many unusable rows in a row (fewer are skipped and counted)."""
    sources: dict[str, Source] = field(default_factory=lambda: {n: Source(weight=w) for n, w in SEED_MIX.items()})
    """The mix, one [data.sources.NAME] table per source; a [data.sources] table in TOML replaces the seed mix."""


@dataclass
class Parallelism:
    data_parallel_replicate_degree: int = 1
    """HSDP replicas (groups that each hold a full sharded copy); 1 = plain FSDP."""
    data_parallel_shard_degree: int = -1
    """FSDP2 shard group size; -1 = all remaining ranks."""
    tensor_parallel_degree: int = 1
    """Tensor-parallel group size; must divide the head counts."""
    fsdp_reshard_after_forward: Literal["default", "always", "never"] = "default"
    """Free gathered parameters after forward: default = yes except the root module."""
    enable_loss_parallel: bool = False
    """With tensor parallel: compute the loss on vocab-sharded logits without gathering them."""


@dataclass
class ActivationCheckpoint:
    mode: Literal["none", "full", "selective_layer", "selective_op"] = "none"
    """Recompute activations in backward: none, every block (full), every N-th block, or all but matmuls."""
    every_n_layers: int = 2
    """selective_layer only: checkpoint every N-th transformer block."""


@dataclass
class Compile:
    enable: bool = False
    """torch.compile each transformer block (short compile, rare recompiles)."""


@dataclass
class Float8:
    enable: bool = False
    """Train linear layers in float8 with torchao (needs the [float8] extra and an H100-class GPU)."""
    recipe: Literal["tensorwise", "rowwise"] = "tensorwise"
    """torchao float8 scaling recipe."""
    emulate: bool = False
    """Emulate float8 math in higher precision (for CPU tests; no speed-up)."""


@dataclass
class Checkpoint:
    enable: bool = True
    """Save distributed checkpoints (DCP) during training."""
    folder: str = "checkpoints"
    """Checkpoint folder, inside job.dump_folder."""
    interval: int = 5000
    """Save every N steps (and at the last step)."""
    keep_latest_k: int = 5
    """Keep the newest K complete checkpoints; 0 keeps all."""
    resume: Literal["auto", "required", "never"] = "auto"
    """auto: continue from the folder's newest intact checkpoint, or start at step 0 if there is none;
    required: the same, but stop if there is none (alias: --resume); never: start at step 0."""
    overwrite: bool = False
    """With resume = "never": delete the checkpoints already in the folder (without it such a start is refused)."""
    allow_changes: list[str] = field(default_factory=list)
    """On resume, keys or prefixes (e.g. training.seq_len, data.sources) that may differ from the checkpoint's
    config although they change the model or the data stream."""
    async_mode: Literal["disabled", "async"] = "disabled"
    """"async": write checkpoints in a background thread (DCP async_save), training resumes after staging."""


@dataclass
class Hub:
    push: bool = False
    """Push exported checkpoints to the Hugging Face Hub (alias: --no-push turns it off)."""
    repo_id: str = ""
    """Destination Hub repo, e.g. "user/nano"; the token comes from HF_TOKEN or `hf auth login`."""
    private: bool = True
    """Create the repo as private if it does not exist yet."""
    revision: str = "main"
    """Branch the checkpoint commits go to."""
    path_in_repo: str = "checkpoints/step-{step}"
    """Folder of each pushed checkpoint in the repo ({step} = its step); the newest also goes to the root."""
    every_n_saves: int = 1
    """Push every N-th checkpoint save (the final one is always pushed)."""
    retry_timeout_s: float = 3600.0
    """Give up a push after retrying transient Hub errors for this long; training goes on."""
    final_timeout_s: float = 1800.0
    """At the end of training, wait this long for pushes still in flight before reporting what did not land."""
    license: str = "mit"
    """License id written into the model card's metadata."""


@dataclass
class Metrics:
    log_freq: int = 10
    """Print a progress line every N steps."""
    enable_tensorboard: bool = True
    """Write scalars for TensorBoard."""
    tensorboard_dir: str = "logs/tensorboard"
    """TensorBoard folder, inside job.dump_folder."""


@dataclass
class Comm:
    init_timeout_s: float = 1800.0
    """Collective timeout until the first step is done: start-up, mesh, checkpoint verification and loading, compile."""
    collective_timeout_s: float = 600.0
    """Collective timeout after the first step: how long ranks wait for a hung or lost peer before the job fails;
    must exceed the longest save."""


@dataclass
class Validation:
    enable: bool = False
    """Evaluate the loss on held-out documents, overall and per source, every `interval` steps and at the end."""
    interval: int = 1000
    """Steps between evaluations."""
    steps: int = -1
    """Batches of training.global_batch_size windows per source and evaluation; -1 = all held-out documents."""
    documents_per_source: int = 0
    """Each source's first N distinct usable documents (file order), never trained on while > 0, evaluated or not."""


@dataclass
class Sampling:
    prompts: list[str] = field(default_factory=list)
    """Prompts whose greedy completions go to TensorBoard (text) every `interval` steps; empty = off."""
    interval: int = 1000
    """Steps between samples."""
    max_new_tokens: int = 64
    """Tokens generated per prompt."""
    chat: bool = True
    """Wrap each prompt as a user turn (<|user|> ... <|assistant|>) and cut the completion at <|end|>."""


@dataclass
class Profiling:
    enable: bool = False
    """Record torch.profiler traces (Perfetto / chrome://tracing) into job.dump_folder/profiles."""
    start_step: int = 10
    """First profiled step (later than the first steps, which include warm-up and compilation)."""
    steps: int = 3
    """Steps profiled."""
    memory_snapshot: bool = False
    """On CUDA, also record allocations during those steps (open the .pickle at pytorch.org/memory_viz)."""


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    data: Data = field(default_factory=Data)
    parallelism: Parallelism = field(default_factory=Parallelism)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    compile: Compile = field(default_factory=Compile)
    float8: Float8 = field(default_factory=Float8)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    hub: Hub = field(default_factory=Hub)
    metrics: Metrics = field(default_factory=Metrics)
    comm: Comm = field(default_factory=Comm)
    validation: Validation = field(default_factory=Validation)
    sampling: Sampling = field(default_factory=Sampling)
    profiling: Profiling = field(default_factory=Profiling)

    def output_path(self, relative: str) -> Path:
        """A path inside the run's dump folder (absolute paths pass through)."""
        return Path(self.job.dump_folder) / relative


# The seed's command-line flags, kept so its users' muscle memory still works.
ALIASES: dict[str, tuple[str, str | None]] = {
    "--resume": ("checkpoint.resume", "required"),
    "--max-steps": ("training.max_steps", None),
    "--batch-size": ("training.micro_batch_size", None),
    "--learning-rate": ("optimizer.lr", None),
    "--no-push": ("hub.push", "false"),
}


# ---------------------------------------------------------------------------------------------------------
# Introspection: field types and docstrings


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after a field) of a dataclass, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if typing.get_origin(tp) in (list, dict):
        return str(tp).replace("nano.config.", "")
    return getattr(tp, "__name__", str(tp))


def _closest(name: str, options: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


# ---------------------------------------------------------------------------------------------------------
# Value conversion


def _convert(value: Any, tp: Any, key: str, from_cli: bool) -> Any:
    """Check and convert `value` to the field type `tp`; CLI values arrive as strings."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if tp is bool:
        if from_cli and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {tp.__name__}, got a boolean")
        try:
            if from_cli and tp is int:
                return int(value)
            converted = tp(value) if (from_cli or isinstance(value, (int, float))) else None
        except (TypeError, ValueError):
            converted = None
        if converted is None or (tp is int and isinstance(value, float)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return converted
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is list:
        if from_cli and isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", from_cli) for i, v in enumerate(value)]
    raise ConfigError(f"{key}: unsupported field type {tp}")  # pragma: no cover - a programming error


def _build(cls: type, table: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a TOML table, rejecting unknown keys with the closest valid one."""
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix}: expected a table, got {table!r}")
    types_ = field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in types_:
            valid = [f"{prefix}.{k}" if prefix else k for k in types_]
            raise ConfigError(f"unknown key '{full}'{_closest(full, valid)}")
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full)
        elif typing.get_origin(tp) is dict:
            _, item_cls = typing.get_args(tp)
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a table of tables")
            kwargs[key] = {name: _build(item_cls, item, f"{full}.{name}") for name, item in value.items()}
        else:
            kwargs[key] = _convert(value, tp, full, from_cli=False)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Command line


def _split_cli(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], bool]:
    """Split argv into the config path, (dotted key, raw value) overrides and a help flag."""
    config_path: str | None = None
    overrides: list[tuple[str, str]] = []
    show_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            show_help = True
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options look like --section.key value")
        name, eq, inline = arg.partition("=")
        if name in ALIASES:
            key, fixed = ALIASES[name]
            if fixed is not None:
                if eq:
                    raise ConfigError(f"{name} takes no value")
                overrides.append((key, fixed))
                continue
            name = "--" + key
        if name == "--config":
            if not eq:
                if i >= len(argv):
                    raise ConfigError("--config needs a file path")
                inline, i = argv[i], i + 1
            config_path = inline
            continue
        key = name[2:]
        if eq:
            overrides.append((key, inline))
        elif _is_flag(key):
            overrides.append((key.replace(".no-", "."), "false" if ".no-" in key else "true"))
        else:
            if i >= len(argv):
                _resolve_field(JobConfig(), key.split("."))  # an unknown key is the better message
                raise ConfigError(f"--{key} needs a value")
            overrides.append((key, argv[i]))
            i += 1
    return config_path, overrides, show_help


def _is_flag(key: str) -> bool:
    """True for --section.flag / --section.no-flag of a boolean field (takes no value)."""
    try:
        _, tp = _resolve_field(JobConfig(), key.replace(".no-", ".").split("."))
    except ConfigError:
        return False
    return tp is bool


def _resolve_field(obj: Any, parts: list[str], prefix: str = "") -> tuple[Any, Any]:
    """Walk dotted key parts to (owning object, field type); a new name in a dict table (a new data source)
    creates its entry."""
    head, *rest = parts
    key = f"{prefix}.{head}" if prefix else head
    types_ = field_types(type(obj))
    if head not in types_:
        full = ".".join([key, *rest])
        options = _all_keys(obj) if not prefix else [f"{prefix}.{k}" for k in types_]
        raise ConfigError(f"unknown key '{full}'{_closest(full if not prefix else key, options)}")
    tp = types_[head]
    is_table = dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict
    if not rest:
        if is_table:
            raise ConfigError(f"'{key}' is a table; set one of its keys, e.g. --{key}.<key> value")
        return obj, tp
    if dataclasses.is_dataclass(tp):
        return _resolve_field(getattr(obj, head), rest, key)
    if typing.get_origin(tp) is dict:
        if len(rest) < 2:
            raise ConfigError(f"'{key}.{rest[0]}': name an entry and a key, e.g. --{key}.<name>.weight 1")
        entry = getattr(obj, head).setdefault(rest[0], typing.get_args(tp)[1]())
        return _resolve_field(entry, rest[1:], f"{key}.{rest[0]}")
    raise ConfigError(f"'{key}' is a {type_name(tp)}, not a table: unknown key '{'.'.join([key, *rest])}'")


def _all_keys(cfg: JobConfig) -> list[str]:
    return [f"{section.name}.{f.name}" for section in dataclasses.fields(cfg)
            for f in dataclasses.fields(getattr(cfg, section.name))]


def apply_override(cfg: JobConfig, key: str, raw: str) -> None:
    owner, tp = _resolve_field(cfg, key.split("."))
    setattr(owner, key.rsplit(".", 1)[-1], _convert(raw, tp, key, from_cli=True))


# ---------------------------------------------------------------------------------------------------------
# Validation of combinations


def dp_degree(par: Parallelism, world_size: int) -> int:
    """Data-parallel degree (replicate x shard) for a world size; raises on an impossible mesh."""
    for name in ("data_parallel_replicate_degree", "tensor_parallel_degree"):
        if getattr(par, name) < 1:
            raise ConfigError(f"parallelism.{name} must be >= 1, got {getattr(par, name)}")
    rest, remainder = divmod(world_size, par.data_parallel_replicate_degree * par.tensor_parallel_degree)
    shard = par.data_parallel_shard_degree
    if remainder or (shard != -1 and shard * par.data_parallel_replicate_degree * par.tensor_parallel_degree != world_size):
        raise ConfigError(
            f"parallelism: data_parallel_replicate_degree ({par.data_parallel_replicate_degree}) x "
            f"data_parallel_shard_degree ({shard}) x tensor_parallel_degree ({par.tensor_parallel_degree}) "
            f"must equal the world size ({world_size}); set data_parallel_shard_degree = -1 to use the rest"
        )
    if shard == 0 or shard < -1:
        raise ConfigError(f"parallelism.data_parallel_shard_degree must be -1 or >= 1, got {shard}")
    return par.data_parallel_replicate_degree * (rest if shard == -1 else shard)


def grad_accum_steps(cfg: JobConfig, world_size: int) -> int:
    """Micro-batches per optimizer step so that the global batch stays as configured at any scale."""
    per_step = cfg.training.micro_batch_size * dp_degree(cfg.parallelism, world_size)
    if cfg.training.global_batch_size % per_step:
        raise ConfigError(
            f"training.global_batch_size ({cfg.training.global_batch_size}) must be divisible by "
            f"training.micro_batch_size ({cfg.training.micro_batch_size}) x data-parallel degree "
            f"({per_step // cfg.training.micro_batch_size}) = {per_step}"
        )
    return cfg.training.global_batch_size // per_step


def _positive(cfg: JobConfig, keys: list[str]) -> None:
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")


def validate(cfg: JobConfig, world_size: int) -> None:
    """Reject impossible combinations before anything is built."""
    _positive(cfg, ["training.seq_len", "training.micro_batch_size", "training.global_batch_size",
                    "training.max_steps", "optimizer.lr", "checkpoint.interval", "metrics.log_freq",
                    "activation_checkpoint.every_n_layers"])
    for key in ("lr_scheduler.min_lr_ratio", "lr_scheduler.decay_fraction"):
        section, name = key.split(".")
        if not 0.0 <= getattr(getattr(cfg, section), name) <= 1.0:
            raise ConfigError(f"{key} must be within [0, 1], got {getattr(getattr(cfg, section), name)}")
    if cfg.lr_scheduler.warmup_steps < 0:
        raise ConfigError(f"lr_scheduler.warmup_steps must be >= 0, got {cfg.lr_scheduler.warmup_steps}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    if cfg.data.shuffle_buffer < 0:
        raise ConfigError(f"data.shuffle_buffer must be >= 0 (0 turns shuffling off), got {cfg.data.shuffle_buffer}")
    if cfg.data.max_consecutive_bad_rows < 1:
        raise ConfigError(f"data.max_consecutive_bad_rows must be >= 1, got {cfg.data.max_consecutive_bad_rows}")
    _validate_hub(cfg.hub)
    _validate_resilience(cfg)
    _validate_observers(cfg)
    if cfg.hub.push and not cfg.checkpoint.enable:
        raise ConfigError("hub.push pushes checkpoints, but checkpoint.enable is false: enable checkpoints or pass --no-push")
    grad_accum_steps(cfg, world_size)


def _validate_resilience(cfg: JobConfig) -> None:
    """The bad-step guard, resume and timeouts."""
    _positive(cfg, ["training.spike_window", "training.max_consecutive_skips", "comm.init_timeout_s",
                    "comm.collective_timeout_s"])
    if cfg.training.spike_factor != 0 and cfg.training.spike_factor <= 1:
        raise ConfigError(f"training.spike_factor must be > 1 (a multiple of the running mean loss) or 0 (off), "
                          f"got {cfg.training.spike_factor}")
    if cfg.training.z_loss < 0:
        raise ConfigError(f"training.z_loss must be >= 0, got {cfg.training.z_loss}")
    if cfg.training.z_loss and cfg.parallelism.enable_loss_parallel:
        raise ConfigError("training.z_loss needs the whole logits of a token, which loss parallel never gathers: "
                          "set parallelism.enable_loss_parallel = false or training.z_loss = 0")
    if cfg.checkpoint.overwrite and cfg.checkpoint.resume != "never":
        raise ConfigError(f"checkpoint.overwrite deletes the folder's checkpoints before a fresh start, so it needs "
                          f"checkpoint.resume = \"never\" (got {cfg.checkpoint.resume!r}, which resumes from them)")
    keys = _all_keys(cfg)
    for entry in cfg.checkpoint.allow_changes:
        if not any(k == entry or k.startswith(entry + ".") or entry.startswith(k + ".") for k in keys):
            raise ConfigError(f"checkpoint.allow_changes: unknown key '{entry}'{_closest(entry, keys)}")


def _validate_observers(cfg: JobConfig) -> None:
    """[validation], [sampling], [profiling]."""
    _positive(cfg, ["validation.interval", "sampling.interval", "sampling.max_new_tokens", "profiling.start_step",
                    "profiling.steps"])
    val = cfg.validation
    if val.steps == 0 or val.steps < -1:
        raise ConfigError(f"validation.steps must be -1 (all held-out documents) or >= 1, got {val.steps}")
    if val.documents_per_source < 0:
        raise ConfigError(f"validation.documents_per_source must be >= 0, got {val.documents_per_source}")
    if val.enable and val.documents_per_source == 0:
        raise ConfigError("validation.enable needs documents to evaluate on: set validation.documents_per_source "
                          "(e.g. 100; those documents are then never trained on)")
    for index, prompt in enumerate(cfg.sampling.prompts):
        if not prompt.strip():
            raise ConfigError(f"sampling.prompts[{index}] is empty")


def _validate_hub(hub: Hub) -> None:
    if not hub.push:
        return
    if hub.repo_id.count("/") != 1 or not all(hub.repo_id.split("/")):
        raise ConfigError(f"hub.repo_id must look like 'user/name' when hub.push is on, got {hub.repo_id!r}: "
                          f"set --hub.repo_id user/name or pass --no-push")
    if hub.every_n_saves < 1:
        raise ConfigError(f"hub.every_n_saves must be >= 1, got {hub.every_n_saves}")
    for key in ("retry_timeout_s", "final_timeout_s"):
        if getattr(hub, key) <= 0:
            raise ConfigError(f"hub.{key} must be > 0, got {getattr(hub, key)}")
    try:
        hub.path_in_repo.format(step=0)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"hub.path_in_repo {hub.path_in_repo!r}: only {{step}} may be used ({err})") from err


# ---------------------------------------------------------------------------------------------------------
# Entry points


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """A TOML document as nested dicts; ConfigError naming `where` if it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: invalid TOML: {err}") from err


def load_config(argv: list[str], world_size: int = 1) -> JobConfig:
    """Defaults -> TOML file (--config) -> command-line overrides -> validation."""
    config_path, overrides, show_help = _split_cli(argv)
    if show_help:
        print(help_text())
        raise SystemExit(0)
    cfg = JobConfig()
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        cfg = _build(JobConfig, parse_toml(path.read_text(), str(path)), "")
    for key, raw in overrides:
        apply_override(cfg, key, raw)
    validate(cfg, world_size)
    return cfg


def help_text() -> str:
    lines = [
        "usage: python -m nano.train --config FILE [--section.key VALUE ...]",
        "",
        "Options (TOML [section] key; booleans also as --section.key / --section.no-key):",
    ]
    for section in dataclasses.fields(JobConfig):
        cls = section.type if isinstance(section.type, type) else field_types(JobConfig)[section.name]
        lines.append(f"\n[{section.name}]")
        docs, types_ = field_docs(cls), field_types(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if isinstance(default, dict):
                default = "{" + ", ".join(default) + "}"
            lines.append(f"  --{section.name}.{f.name} {type_name(types_[f.name])} (default: {default!r})")
            lines.append(f"      {docs.get(f.name, '')}")
        for name, item_cls in _dict_item_types(cls):
            item_docs, item_types = field_docs(item_cls), field_types(item_cls)
            for f in dataclasses.fields(item_cls):
                lines.append(f"  --{section.name}.{name}.NAME.{f.name} {type_name(item_types[f.name])}")
                lines.append(f"      {item_docs.get(f.name, '')}")
    lines.append("\nSeed aliases: " + ", ".join(f"{a} -> --{k}" + (f"={v}" if v else "") for a, (k, v) in ALIASES.items()))
    return "\n".join(lines)


def _dict_item_types(cls: type) -> list[tuple[str, type]]:
    return [
        (name, typing.get_args(tp)[1])
        for name, tp in field_types(cls).items()
        if typing.get_origin(tp) is dict
    ]


def to_toml(cfg: JobConfig) -> str:
    """The fully resolved config as TOML, loadable by `load_config` (saved next to the run's outputs)."""
    out: list[str] = []
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        out.append(f"[{section.name}]")
        tables: list[str] = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, dict):
                for name, item in value.items():
                    tables.append(f"\n[{section.name}.{f.name}.{name}]")
                    tables += [f"{k.name} = {_toml_value(getattr(item, k.name))}" for k in dataclasses.fields(item)]
            else:
                out.append(f"{f.name} = {_toml_value(value)}")
        out += tables
        out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string (newlines escaped)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover - only the types above exist


__all__ = [
    "ALIASES", "ConfigError", "JobConfig", "SEED_MIX", "apply_override", "dp_degree", "grad_accum_steps",
    "help_text", "load_config", "to_toml", "validate",
]
