"""Peak memory per device, estimated from the config before any weight is allocated.

Training state: fp32 parameters, fp32 gradients and AdamW's two fp32 moments (16 bytes per parameter),
sharded over the FSDP shard group and tensor parallel.

Activations: what one transformer block keeps for backward, and what it needs on top while its backward
runs (including the re-run of its forward under activation checkpointing), in bytes per token as a linear
form in the block's widths (dim, FFN hidden size, key/value width). The coefficients were traced, not
derived: one block under FakeTensorMode and torch's MemTracker for each precision and checkpointing mode,
at two lengths and two sizes of each width (nano.memory_trace.fit_block_bytes; `python
benchmarks/memory_estimate.py --fit-blocks` prints the table). They depend on the precision because autocast
on one GPU keeps an fp32 residual stream and casts each matmul input to bf16 separately, while FSDP's bf16
policy computes everything in bf16. tests/test_memory_trace.py re-fits the table, and traces whole training
steps to hold the estimate to them.

At the end of the forward the final norm and the chunked loss (nano.loss) keep the head's fp32 gradient and
the hidden states' gradient and work through one chunk of logits at a time; during backward one block re-runs
and differentiates. These do not overlap, so the peak holds the larger. Under FSDP each block's parameters
are gathered (and the next one's prefetched) in bf16, and its gradients are reduced in fp32. Tensor parallel
divides the activations by its degree (sequence parallel) and applies the head as a module, so the logits
exist (b * s * V * 12 bytes, traced: the 16-bit logits, their fp32 copy, log-softmax's output and its
gradient, not all alive at once), divided by the degree under loss parallel.

An estimate, not a measurement: the CUDA context, the allocator's fragmentation and cuBLAS workspaces are
left to the 5% margin of `check_fits` (FIT).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nano.config import ConfigError, JobConfig
from nano.loss import CHUNK_TOKENS, DEFAULT_CHUNK_TOKENS
from nano.models.llama import ModelArgs, analytic_num_params
from nano.parallel.dims import ParallelDims
from nano.parallel.parallelize import compute_precision

GIB = 2**30
FIT = 0.95  # the share of a device a config may plan to use; the rest is for the CUDA context and fragmentation


@dataclass(frozen=True)
class PerToken:
    """Bytes per token: `dim` x model width + `ffn` x FFN hidden size + `kv` x key/value width."""

    dim: int
    ffn: int
    kv: int

    def bytes(self, args: ModelArgs, tokens: int) -> int:
        return tokens * (self.dim * args.dim + self.ffn * args.ffn_hidden_dim + self.kv * args.kv_heads * args.head_dim)


# (precision, checkpointing mode) -> (kept per block for backward, needed on top while its backward runs).
# Traced (see the module docstring); the 16-bit weight copies autocast makes are counted separately.
BLOCK_BYTES: dict[tuple[str, str], tuple[PerToken, PerToken]] = {
    ("fp32", "none"): (PerToken(32, 16, 8), PerToken(4, 8, 0)),
    ("fp32", "selective_op"): (PerToken(20, 8, 8), PerToken(20, 16, 0)),
    ("fp32", "full"): (PerToken(4, 0, 0), PerToken(32, 24, 8)),
    ("autocast", "none"): (PerToken(30, 8, 4), PerToken(4, 4, 0)),
    ("autocast", "selective_op"): (PerToken(12, 4, 4), PerToken(24, 8, 0)),
    ("autocast", "full"): (PerToken(4, 0, 0), PerToken(30, 12, 4)),
    ("bf16", "none"): (PerToken(26, 8, 4), PerToken(2, 4, 0)),
    ("bf16", "selective_op"): (PerToken(10, 4, 4), PerToken(20, 8, 0)),
    ("bf16", "full"): (PerToken(2, 0, 0), PerToken(26, 12, 4)),
}


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int
    """Kept by every block for backward."""
    block: int
    """One block's backward, with its forward re-run under activation checkpointing."""
    loss: int
    """The final norm, the output layer and the loss, at the end of the forward."""
    gathered: int = 0
    """FSDP: one block's parameters gathered and the next one's prefetched, and its gradients being reduced."""

    @property
    def total(self) -> int:
        return (self.params + self.grads + self.optimizer + self.activations + max(self.block, self.loss)
                + self.gathered)

    def __str__(self) -> str:
        gathered = f" + FSDP gathered {self.gathered / GIB:.1f}" if self.gathered else ""
        return (f"{self.total / GIB:.1f} GiB = params {self.params / GIB:.1f} + grads {self.grads / GIB:.1f} "
                f"+ optimizer {self.optimizer / GIB:.1f} + activations {self.activations / GIB:.1f} "
                f"+ max(block backward {self.block / GIB:.1f}, loss {self.loss / GIB:.1f}){gathered}")


def block_params(args: ModelArgs) -> int:
    kv_width = args.kv_heads * args.head_dim
    return args.dim * (2 * args.dim + 2 * kv_width) + 3 * args.dim * args.ffn_hidden_dim + 2 * args.dim


def activation_bytes(args: ModelArgs, cfg: JobConfig, dims: ParallelDims, device_type: str = "cuda") -> tuple[int, int]:
    """(kept by all blocks for backward, the largest single block's backward) in bytes."""
    tokens, tp = cfg.training.micro_batch_size * cfg.training.seq_len, dims.tp
    kind, n = compute_precision(cfg, dims, device_type), args.n_layers
    # Autocast's bf16 copies of a block's weights: kept for backward unless the block is checkpointed.
    weight_copies = 2 * block_params(args) // tp if kind == "autocast" else 0
    plain_kept, plain_work = BLOCK_BYTES[kind, "none"]
    plain = (plain_kept.bytes(args, tokens) // tp + weight_copies, plain_work.bytes(args, tokens) // tp)
    mode = cfg.activation_checkpoint.mode
    if mode == "none":
        return n * plain[0], plain[1]
    kept, work = BLOCK_BYTES[kind, "full" if mode == "selective_layer" else mode]
    checkpointed = (kept.bytes(args, tokens) // tp, work.bytes(args, tokens) // tp + weight_copies)
    if mode == "selective_layer":
        wrapped = (n + cfg.activation_checkpoint.every_n_layers - 1) // cfg.activation_checkpoint.every_n_layers
        return wrapped * checkpointed[0] + (n - wrapped) * plain[0], max(checkpointed[1], plain[1])
    return n * checkpointed[0], checkpointed[1]


def loss_bytes(args: ModelArgs, cfg: JobConfig, dims: ParallelDims, *, chunked: bool | None = None,
               device_type: str = "cuda") -> int:
    """The final norm, output layer and loss at the end of the forward; `chunked` defaults to what nano.loss
    does for the config (chunks unless tensor parallel), False gives the materialised logits for comparison."""
    tokens, vocab, dim, tp = cfg.training.micro_batch_size * cfg.training.seq_len, args.vocab_size, args.dim, dims.tp
    kind = compute_precision(cfg, dims, device_type)
    act, compute = (2, 2) if kind == "bf16" else (4, 2) if kind == "autocast" else (4, 4)
    norm = 3 * act * tokens * dim // tp  # the final norm's input, normalised input and output
    if chunked is None:
        chunked = tp == 1
    if not chunked:
        return norm + tokens * vocab * 12 // (tp if cfg.parallelism.enable_loss_parallel else 1)
    chunk = min(CHUNK_TOKENS.get(device_type, DEFAULT_CHUNK_TOKENS), tokens)
    kept = 4 * vocab * dim + compute * tokens * dim  # the head's fp32 gradient, the hidden states' gradient
    if compute == 4:
        work = 4 * chunk * vocab  # the chunk's logits, turned into their gradient in place
    else:  # the chunk's fp32 softmax and its 16-bit copy; the head's 16-bit gradient per chunk
        work = 6 * chunk * vocab + 2 * vocab * dim
        if kind == "autocast":  # bf16 copies of the head's weight and of the hidden states
            work += 2 * vocab * dim + 2 * tokens * dim
    return norm + kept + work


def fsdp_gathered_bytes(args: ModelArgs, dims: ParallelDims) -> int:
    """FSDP: a block gathered in bf16 with the next prefetched, and its gradients (bf16, then fp32 to reduce)."""
    if not dims.fsdp_enabled:
        return 0
    return block_params(args) * (2 + 2 + 2 + 4) // dims.tp + 2 * args.vocab_size * args.dim // dims.tp


def estimate_peak_memory(args: ModelArgs, cfg: JobConfig, dims: ParallelDims,
                         device_type: str = "cuda") -> MemoryEstimate:
    shard = dims.dp_shard * dims.tp
    n = analytic_num_params(args)
    kept, block = activation_bytes(args, cfg, dims, device_type)
    return MemoryEstimate(params=4 * n // shard, grads=4 * n // shard, optimizer=8 * n // shard,
                          activations=kept, block=block, loss=loss_bytes(args, cfg, dims, device_type=device_type),
                          gathered=fsdp_gathered_bytes(args, dims))


def check_fits(args: ModelArgs, cfg: JobConfig, dims: ParallelDims, device_memory: int,
               device_type: str = "cuda") -> None:
    """Refuse a config whose estimate exceeds 95% of the device, saying what to change (and, when one
    exists, the largest micro-batch that fits with the same global batch)."""
    estimate = estimate_peak_memory(args, cfg, dims, device_type)
    if estimate.total <= FIT * device_memory:
        return
    smaller = [m for m in range(cfg.training.micro_batch_size - 1, 0, -1)
               if cfg.training.global_batch_size % (m * dims.dp_degree) == 0]
    fitting = next(((m, e) for m in smaller
                    if (e := _estimate_with_micro(args, cfg, dims, device_type, m)).total <= FIT * device_memory), None)
    lower = (f"lower --batch-size (training.micro_batch_size {fitting[0]} fits: {fitting[1].total / GIB:.1f} GiB, "
             f"the same global batch in more accumulation steps)" if fitting
             else "lower --batch-size (activations scale with it)")
    raise ConfigError(
        f"estimated peak memory per device {estimate} exceeds 95% of the device's {device_memory / GIB:.1f} GiB: "
        f"{lower}, set --activation_checkpoint.mode full, "
        f"or shard over more GPUs (data_parallel_shard_degree / tensor_parallel_degree)"
    )


def _estimate_with_micro(args: ModelArgs, cfg: JobConfig, dims: ParallelDims, device_type: str,
                         micro: int) -> MemoryEstimate:
    training = dataclasses.replace(cfg.training, micro_batch_size=micro)
    return estimate_peak_memory(args, dataclasses.replace(cfg, training=training), dims, device_type)
