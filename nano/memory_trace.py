"""Peak memory of one training step, traced on fake tensors: a real run's shapes and dtypes, no memory used.

The start-up estimate (nano.parallel.memory) is arithmetic; this runs the step itself to check it without a
GPU. Under FakeTensorMode every tensor has its shape, dtype and storage size but no data, so torch's
MemTracker can follow what a GPU would hold through the code nano runs: the model with the config's
policies (activation checkpointing, FSDP/HSDP over a fake process group of the given world size; compile
left out), bf16 as the GPU would run it (autocast on one GPU, FSDP's policy on more), the chunked loss,
backward, gradient clipping and AdamW. nano_1b at micro-batch 8 x 2048 traces in about a minute on a CPU.

The step is traced in steady state: the optimizer's moments exist and, with gradient accumulation, so do the
gradients of the earlier micro-batches. It runs on the CPU, so what it cannot see is the CUDA side: the CUDA
context, the caching allocator's rounding and fragmentation, cuBLAS workspaces, and any op whose CUDA
kernel keeps other tensors for backward than its CPU twin (attention is a flash kernel on both: output and
log-sum-exp). Tensor parallel is not traced.

`trace_block` traces one transformer block alone; `fit_block_bytes` turns such traces into the per-token
table (BLOCK_BYTES) the estimator counts blocks with.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from unittest.mock import patch

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.testing._internal.distributed.fake_pg import FakeStore

from nano.config import ConfigError, JobConfig, grad_accum_steps
from nano.loss import CHUNK_TOKENS, DEFAULT_CHUNK_TOKENS
from nano.models.llama import FLAVORS, ModelArgs, Transformer
from nano.optim import build_optimizer
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import PerToken
from nano.parallel.parallelize import (
    ContextFactory,
    apply_ac,
    bf16_autocast,
    clip_grad_norm_,
    compute_precision,
    parallelize,
)
from nano.train import forward_backward

CPU = torch.device("cpu")


@dataclass(frozen=True)
class TracedPeak:
    """Bytes alive on one device at the traced step's peak, by what holds them."""

    params: int
    """Including FSDP's gathered 16-bit parameters."""
    grads: int
    optimizer: int
    activations: int
    """Everything else: what the forward keeps for backward and what each op allocates while it runs."""

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations


def trace_peak_memory(cfg: JobConfig, args: ModelArgs, world_size: int = 1, *,
                      materialise_logits: bool = False) -> TracedPeak:
    """The peak on one GPU of `world_size` during a steady-state optimizer step of `args` trained as `cfg`
    says. `materialise_logits` computes the loss from the full logits instead (nano before nano.loss)."""
    dims = ParallelDims.from_config(cfg.parallelism, world_size)
    if cfg.float8.enable or dims.tp_enabled:
        raise ConfigError("the memory trace covers data parallel and one GPU; trace with --float8.enable false "
                          "and parallelism.tensor_parallel_degree = 1")
    cfg = dataclasses.replace(cfg, compile=dataclasses.replace(cfg.compile, enable=False))
    # The context a GPU run computes in, entered on the CPU: CPU autocast casts the same ops to bf16.
    autocasts = compute_precision(cfg, dims, "cuda") == "autocast"
    compute_ctx = bf16_autocast(CPU.type) if autocasts else contextlib.nullcontext
    accumulating = grad_accum_steps(cfg, world_size) > 1
    # The loss walks a GPU's chunks of tokens, not the CPU's smaller ones.
    with _fake_process_group(world_size), patch.dict(CHUNK_TOKENS, {CPU.type: DEFAULT_CHUNK_TOKENS}):
        mesh = dims.build_mesh(CPU.type)
        with FakeTensorMode(), CPU:
            model = Transformer(args)
            parallelize(model, dims, mesh, cfg, "cuda")
            optimizer = build_optimizer(model, cfg.optimizer, "cuda")
            tokens = torch.randint(0, args.vocab_size, (cfg.training.micro_batch_size, cfg.training.seq_len))
            micro_batch = [{"input": tokens, "label": tokens}]
            backward = _logits_forward_backward if materialise_logits else forward_backward

            def step() -> None:
                backward(model, micro_batch, CPU, compute_ctx)
                clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
                optimizer.step()

            step()  # creates the optimizer's moments
            optimizer.zero_grad(set_to_none=True)
            if accumulating:  # an earlier micro-batch's gradients are alive while the next one runs
                backward(model, micro_batch, CPU, compute_ctx)
            tracker = MemTracker()
            tracker.track_external(model, optimizer)
            with tracker:
                step()
            peak = tracker.get_tracker_snapshot("peak")
    kinds = {kind.name: size for kind, size in next(iter(peak.values())).items() if kind != "Total"}
    return TracedPeak(params=kinds["PARAM"] + kinds["BUFFER"], grads=kinds["GRAD"], optimizer=kinds["OPT"],
                      activations=_activation_bytes(peak))


def _logits_forward_backward(model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], device: torch.device,
                             compute_ctx: ContextFactory) -> None:
    """The loss from the full logits (16-bit logits, their fp32 copy, log-softmax and its gradient), each
    freed as soon as autograd lets it go, as tensor parallel's head computes it."""
    for batch in micro_batches:
        with compute_ctx():
            loss = F.cross_entropy(model(batch["input"].to(device)).flatten(0, 1).float(),
                                   batch["label"].to(device).flatten())
        (loss / len(micro_batches)).backward()


@contextlib.contextmanager
def _fake_process_group(world_size: int) -> Iterator[None]:
    """A process group of `world_size` whose collectives return at once: this process plays rank 0."""
    if world_size == 1:
        yield
        return
    if dist.is_initialized():
        raise RuntimeError("trace_peak_memory with world_size > 1 makes its own process group; call it outside one")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()



def trace_block(args: ModelArgs, precision: str, mode: str, tokens: int) -> tuple[int, int]:
    """(kept for backward besides its output, needed on top while its backward runs) by one transformer block
    of `args` on `tokens` tokens, in bytes: `precision` is "fp32", "autocast" or "bf16" (FSDP's policy, the
    block's weights in bf16), `mode` the activation-checkpointing mode."""
    block_args = dataclasses.replace(args, n_layers=1, vocab_size=64, max_seq_len=max(tokens, args.max_seq_len))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    compute_ctx = bf16_autocast(CPU.type) if precision == "autocast" else contextlib.nullcontext
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # builds the block in the dtype it computes in
    try:
        with FakeTensorMode(), CPU:
            model = Transformer(block_args)
            if mode != "none":
                apply_ac(model, mode, every_n_layers=1)
            block, rope = model.layers["0"], model.rope[:, :tokens]
            tracker = MemTracker()
            tracker.track_external(block)
            with tracker:
                x = torch.randn(1, tokens, args.dim, dtype=dtype, requires_grad=True)
                with compute_ctx():
                    y = block(x, rope)
                after_forward = _activation_bytes(tracker.get_tracker_snapshot("current"))
                y.backward(torch.ones_like(y))
                peak = _activation_bytes(tracker.get_tracker_snapshot("peak"))
    finally:
        torch.set_default_dtype(default_dtype)
    return after_forward - y.numel() * y.element_size(), peak - after_forward


def fit_block_bytes(precision: str, mode: str) -> tuple[PerToken, PerToken]:
    """nano.parallel.memory.BLOCK_BYTES for one precision and mode, fitted from traces of small blocks: per
    token at two lengths, and for each width (model, FFN, key/value) changed on its own."""
    base = dataclasses.replace(FLAVORS["debug"], dim=256, n_heads=8, n_kv_heads=8, ffn_hidden_dim=688, max_seq_len=512)
    wider_ffn, fewer_kv = dataclasses.replace(base, ffn_hidden_dim=1024), dataclasses.replace(base, n_kv_heads=2)

    def per_token(args: ModelArgs) -> tuple[float, float]:
        (kept_short, work_short), (kept_long, work_long) = (trace_block(args, precision, mode, n) for n in (256, 512))
        return (kept_long - kept_short) / 256, (work_long - work_short) / 256

    def kv_width(args: ModelArgs) -> int:
        return args.kv_heads * args.head_dim

    fits = []
    for b0, b_ffn, b_kv in zip(per_token(base), per_token(wider_ffn), per_token(fewer_kv), strict=True):
        ffn = (b_ffn - b0) / (wider_ffn.ffn_hidden_dim - base.ffn_hidden_dim)
        kv = (b0 - b_kv) / (kv_width(base) - kv_width(fewer_kv))
        dim = (b0 - ffn * base.ffn_hidden_dim - kv * kv_width(base)) / base.dim
        fits.append(PerToken(round(dim), round(ffn), round(kv)))
    return fits[0], fits[1]


def _activation_bytes(snapshot: dict) -> int:
    """Bytes a tracker snapshot holds besides parameters, buffers, gradients and optimizer state."""
    held = next(iter(snapshot.values()))
    return sum(size for kind, size in held.items() if kind != "Total" and kind.name in ("ACT", "TEMP", "OTH"))
