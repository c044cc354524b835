"""nano against Hugging Face transformers: the same model shape, batch, optimizer, precision and random tokens,
trained by both in one run, in alternating rounds.

    python benchmarks/vs_transformers.py                            # CPU: the debug shape; CUDA: debug and nano_1b
    python benchmarks/vs_transformers.py --flavors nano_1b --transformers-compile
    python benchmarks/vs_transformers.py --compile.enable           # any nano config key, as in nano.train
    python benchmarks/vs_transformers.py --also-nano="--compile.enable" --also-logits-loss   # more nano sides

nano trains through its own builders (`build_model`: meta -> parallelize -> init; `build_optimizer`;
`forward_backward`; `clip_grad_norm_`), configured by train_configs/debug_model.toml or, for nano_1b, by
train_configs/nano_1b.toml (bf16, compile) with selective activation checkpointing; extra `--section.key value`
arguments override the config. transformers trains a `LlamaForCausalLM` of the same shape (sdpa attention,
fp32 weights) in the loop a user would write: forward with labels, backward, clip, step; on CUDA under bf16
autocast, with gradient checkpointing only if it does not fit without. Both sides use nano's `build_optimizer`
(the same AdamW kernel: fused on CUDA, foreach on CPU) and the same clipping.

Rounds alternate (who goes first rotates from round to round), so drift in the machine's speed slows every
side alike; the first round warms up (and compiles) and is not counted. On CUDA the idle sides wait in host
memory, so each side's peak memory is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nano.config import JobConfig, grad_accum_steps, load_config
from nano.data.formats import SPECIAL_TOKENS
from nano.data.tokenizer import load_tokenizer
from nano.metrics import peak_flops
from nano.models.llama import FLAVORS, ModelArgs, flops_per_token, padded_vocab_size, sdpa_backend
from nano.optim import build_lr_scheduler, build_optimizer
from nano.parallel.dims import ParallelDims
from nano.parallel.parallelize import autocast_context, clip_grad_norm_, loss_context
from nano.train import build_model, forward_backward

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "debug": ["--config", str(REPO / "train_configs/debug_model.toml")],
    "nano_1b": ["--config", str(REPO / "train_configs/nano_1b.toml"), "--activation_checkpoint.mode", "selective_op"],
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
LLAMA_VOCAB = 32000 + len(SPECIAL_TOKENS)  # nano_1b's: LLaMA's (gated, so only its size) + nano's chat tokens
Batch = list[dict[str, torch.Tensor]]


@dataclass
class Side:
    """One trainer under test: its optimizer step, and what to move to host memory while the other runs."""

    name: str
    step: Callable[[Batch], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    settings: str
    on_out_of_memory: Callable[[], bool] = lambda: False  # change something and return True to retry
    rates: list[float] = field(default_factory=list)
    peak_gib: float = 0.0
    _parked: list[tuple[dict, str]] = field(default_factory=list)

    def park(self) -> None:
        self.model.to("cpu")
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                    state[key] = value.to("cpu")
                    self._parked.append((state, key))

    def unpark(self, device: torch.device) -> None:
        self.model.to(device)
        for state, key in self._parked:
            state[key] = state[key].to(device)
        self._parked.clear()


def model_args(cfg: JobConfig) -> ModelArgs:
    """The flavor, with the vocabulary of the config's tokenizer when it is a local file (else LLaMA's)."""
    tokenizer = Path(cfg.data.tokenizer)
    vocab = load_tokenizer(str(tokenizer)).vocab_size if tokenizer.is_file() else LLAMA_VOCAB
    base = FLAVORS[cfg.model.flavor]
    return dataclasses.replace(base, vocab_size=padded_vocab_size(vocab), max_seq_len=cfg.training.seq_len,
                               n_kv_heads=cfg.model.n_kv_heads or base.n_kv_heads, rope_theta=cfg.model.rope_theta)


def build_nano(cfg: JobConfig, args: ModelArgs, device: torch.device, *, name: str = "nano",
               logits_loss: bool = False) -> Side:
    """nano's trainer; `logits_loss` computes the loss from the full logits instead (nano before nano.loss)."""
    dims = ParallelDims.from_config(cfg.parallelism, 1)
    model = build_model(cfg, args, dims, None, device)
    optimizer = build_optimizer(model, cfg.optimizer, device.type)
    scheduler = build_lr_scheduler(optimizer, cfg.lr_scheduler, cfg.training.max_steps)
    compute_ctx, loss_ctx = autocast_context(cfg, dims, device), loss_context(dims, cfg)

    def logits_forward_backward(batches: Batch) -> None:
        for batch in batches:
            with compute_ctx():
                logits = model(batch["input"])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["label"].flatten()) / len(batches)
            loss.backward()

    def step(batches: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        if logits_loss:
            logits_forward_backward(batches)
        else:
            forward_backward(model, batches, device, compute_ctx, loss_ctx, z_loss=cfg.training.z_loss)
        clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
        optimizer.step()
        scheduler.step()

    precision = "bf16" if device.type == "cuda" and cfg.training.mixed_precision == "bf16" else "fp32"
    settings = (f"{precision}, AC {cfg.activation_checkpoint.mode}, {'compile' if cfg.compile.enable else 'eager'}, "
                f"{'loss from the full logits' if logits_loss else 'chunked loss'}")
    return Side(name, step, model, optimizer, settings)


def build_transformers(cfg: JobConfig, args: ModelArgs, device: torch.device, *, compile_model: bool,
                       checkpointing: str) -> Side:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.dim, intermediate_size=args.ffn_hidden_dim, num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab_size,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, tie_word_embeddings=args.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta}, use_cache=False,
        attn_implementation="sdpa",
    )
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.train()
    forward = torch.compile(model) if compile_model else model
    optimizer = build_optimizer(model, cfg.optimizer, device.type)
    bf16 = device.type == "cuda" and cfg.training.mixed_precision == "bf16"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(batches: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            with autocast():
                # The labels are already the next tokens (as nano's are): pass them as shift_labels.
                loss = forward(input_ids=batch["input"], labels=batch["label"], shift_labels=batch["label"]).loss
            (loss / len(batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm, foreach=True)
        optimizer.step()

    def settings() -> str:
        return ", ".join(["bf16 autocast" if bf16 else "fp32", "sdpa", "compile" if compile_model else "eager",
                          "gradient checkpointing" if model.is_activation_checkpointing else "no checkpointing"])

    def checkpoint_instead() -> bool:
        if checkpointing != "auto" or model.is_activation_checkpointing:
            return False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        side.settings = settings()
        return True

    if checkpointing == "on":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    side = Side("transformers", step, model, optimizer, settings(), on_out_of_memory=checkpoint_instead)
    return side


def random_batches(args: ModelArgs, micro: int, seq_len: int, accum: int, device: torch.device, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(accum):
        tokens = torch.randint(0, args.vocab_size, (micro, seq_len + 1), generator=generator)
        batches.append({"input": tokens[:, :-1].contiguous().to(device), "label": tokens[:, 1:].contiguous().to(device)})
    return batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(side: Side, batches: Batch, steps: int, device: torch.device, clock=time.perf_counter) -> float:
    """Seconds for `steps` optimizer steps, the device drained before and after."""
    if device.type == "cuda":
        side.unpark(device)
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = clock()
    for _ in range(steps):
        side.step(batches)
    sync(device)
    elapsed = clock() - start
    if device.type == "cuda":
        side.peak_gib = max(side.peak_gib, torch.cuda.max_memory_allocated(device) / 2**30)
        side.park()
        torch.cuda.empty_cache()
    return elapsed


def warm_up(side: Side, batches: Batch, steps: int, device: torch.device) -> float:
    while True:
        try:
            return timed_round(side, batches, steps, device)
        except torch.OutOfMemoryError:
            side.optimizer.zero_grad(set_to_none=True)
            side.park()
            torch.cuda.empty_cache()
            if not side.on_out_of_memory():
                raise
            print(f"  {side.name}: out of memory, retrying with {side.settings}")


def profile(sides: list[Side], batches: Batch, device: torch.device, folder: Path, flavor: str) -> None:
    """One step of each side under torch.profiler: the top operators, and a trace to open in Perfetto."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    folder.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for side in sides:
        if device.type == "cuda":
            side.unpark(device)
        with torch_profile(activities=activities) as prof:
            side.step(batches)
            sync(device)
        trace = folder / f"{flavor}_{side.name}.json"
        prof.export_chrome_trace(str(trace))
        print(f"\n{side.name}: one step, by {sort_by} (trace: {trace})")
        print(prof.key_averages().table(sort_by=sort_by, row_limit=15))
        if device.type == "cuda":
            side.park()


def compare(flavor: str, overrides: list[str], opts: argparse.Namespace) -> None:
    cfg = load_config(PRESETS[flavor] + overrides)
    use_cuda = cfg.training.device == "cuda" or (cfg.training.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    args = model_args(cfg)
    accum = grad_accum_steps(cfg, 1)
    micro, seq_len = cfg.training.micro_batch_size, cfg.training.seq_len
    batches = random_batches(args, micro, seq_len, accum, device, cfg.job.seed)
    tokens_per_step = micro * seq_len * accum

    torch.manual_seed(cfg.job.seed)
    sides = [build_nano(cfg, args, device),
             build_transformers(cfg, args, device, compile_model=opts.transformers_compile,
                                checkpointing=opts.transformers_checkpointing)]
    if opts.also_logits_loss:
        sides.append(build_nano(cfg, args, device, name="nano-logits", logits_loss=True))
    for index, extra in enumerate(opts.also_nano, start=1):
        sides.append(build_nano(load_config(PRESETS[flavor] + overrides + extra.split()), args, device,
                                name=f"nano-{index}"))
        print(f"  nano-{index}: nano with {extra}")
    if device.type == "cuda":
        for side in sides:
            side.park()
    dtype = torch.bfloat16 if device.type == "cuda" and cfg.training.mixed_precision == "bf16" else torch.float32
    print(f"\n== {flavor}: dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads / {args.kv_heads} kv heads, "
          f"FFN {args.ffn_hidden_dim}, vocab {args.vocab_size}; micro {micro} x seq {seq_len} x accum {accum}; "
          f"AdamW {cfg.optimizer.implementation}; {device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, SDPA {sdpa_backend(args, seq_len, dtype, device)}")
    for side in sides:
        seconds = warm_up(side, batches, opts.warmup_steps, device)
        print(f"  {side.name} ({side.settings}): warm-up {opts.warmup_steps} steps in {seconds:.1f} s")

    hf, ours = sides[1], [sides[0], *sides[2:]]
    print(f"  tokens per {opts.clock} second, per round, and each nano side's ratio to transformers in the same round:")
    print("  round" + "".join(f"{s.name:>14}" for s in sides) + "".join(f"{s.name + '/hf':>18}" for s in ours))
    for index in range(opts.rounds):
        for side in sides[index % len(sides):] + sides[:index % len(sides)]:  # who goes first rotates
            seconds = timed_round(side, batches, opts.steps, device, CLOCKS[opts.clock])
            side.rates.append(opts.steps * tokens_per_step / seconds)
        print(f"  {index + 1:>5}" + "".join(f"{s.rates[-1]:>14,.0f}" for s in sides)
              + "".join(f"{s.rates[-1] / hf.rates[-1]:>18.3f}" for s in ours))
    print("  median" + "".join(f"{statistics.median(s.rates):>13,.0f}" for s in sides)
          + "".join(f"{statistics.median(a / b for a, b in zip(s.rates, hf.rates)):>18.3f}" for s in ours)
          + "   (the ratio column: median of the per-round ratios)")
    nano = statistics.median(sides[0].rates)
    hf_rate = statistics.median(hf.rates)
    if (peak := peak_flops(device)) is not None:
        fpt = flops_per_token(args, seq_len)
        print(f"  MFU at {fpt / 1e9:.2f} GFLOP/token (median rates): nano {100 * nano * fpt / peak:.1f}%, "
              f"transformers {100 * hf_rate * fpt / peak:.1f}%")
    if device.type == "cuda":
        print("  peak memory: " + ", ".join(f"{s.name} {s.peak_gib:.1f} GiB" for s in sides))
    if opts.profile:
        profile(sides, batches, device, opts.profile, flavor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavors", default=None,
                        help="comma-separated, from: " + ", ".join(PRESETS) + " (default: debug on CPU, both on CUDA)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side, after the warm-up round")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per round")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps in the uncounted first round")
    parser.add_argument("--transformers-compile", action="store_true", help="torch.compile the transformers model")
    parser.add_argument("--transformers-checkpointing", choices=["auto", "on", "off"], default="auto",
                        help="gradient checkpointing for transformers; auto: only after running out of memory")
    parser.add_argument("--also-logits-loss", action="store_true",
                        help="add a nano side whose loss comes from the full logits (what nano.loss replaced)")
    parser.add_argument("--also-nano", action="append", default=[], metavar="OVERRIDES",
                        help='add a nano side with more config overrides, e.g. --also-nano="--compile.enable" '
                             "(repeatable; note the =)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, which other processes on a shared "
                             "CPU disturb far less (meaningful with one thread: OMP_NUM_THREADS=1)")
    parser.add_argument("--profile", type=Path, default=None, help="folder for one profiled step of each side")
    opts, overrides = parser.parse_known_args()
    if opts.rounds < 3:
        parser.error("--rounds must be >= 3 for a median that means something")
    if opts.clock == "cpu" and torch.cuda.is_available():
        parser.error("--clock cpu measures host work only; on a GPU use the wall clock")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    flavors = opts.flavors.split(",") if opts.flavors else (list(PRESETS) if torch.cuda.is_available() else ["debug"])
    for flavor in flavors:
        if flavor not in PRESETS:
            parser.error(f"--flavors: unknown flavor {flavor!r}; choose from {', '.join(PRESETS)}")
        compare(flavor, overrides, opts)


if __name__ == "__main__":
    main()
