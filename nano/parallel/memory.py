"""Peak memory per device, estimated from the config before any weight is allocated.

Training state: fp32 parameters, fp32 gradients and AdamW's two fp32 moments (16 bytes per parameter),
sharded over the FSDP shard group and tensor parallel.

Activations kept for backward, per transformer layer, follow Korthikanti et al. 2022 (34 * s * b * h bytes
in 16-bit with fused attention, no s^2 term), divided by the TP degree (sequence parallel). Activation
checkpointing keeps only each checkpointed block's input: in bf16 under FSDP's mixed precision, in fp32
otherwise (autocast computes in bf16 but the residual stream it adds into stays fp32).

On top of what is kept, two things need working memory at different times, so the peak holds the larger:
the block that checkpointing re-runs during backward, and the output layer with its loss at the end of the
forward. nano.loss walks the tokens in chunks: one chunk's logits (fp32, plus their 16-bit copy and
gradient under bf16), the fp32 gradient of the head accumulated over the chunks, and the gradient of the
hidden states. Tensor parallel applies the head as a module instead and materialises the logits
(16-bit logits, their fp32 upcast for the loss and its gradient: b * s * V * 10 bytes, divided by the TP
degree under loss parallel).

An estimate, not a measurement: it is meant to catch configs that cannot fit, with a margin. It assumes
autocast does not cache bf16 copies of the weights across a forward (which would add 2 bytes per
parameter on one GPU); the CUDA allocator's fragmentation and the CUDA context are left to that margin.
"""

from __future__ import annotations

from dataclasses import dataclass

from nano.config import ConfigError, JobConfig
from nano.loss import DEFAULT_CHUNK_TOKENS
from nano.models.llama import ModelArgs, analytic_num_params
from nano.parallel.dims import ParallelDims

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int
    """Kept from the forward for backward."""
    recompute: int
    """One block re-run by activation checkpointing during backward."""
    loss: int
    """The output layer and the loss while they run."""

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + max(self.recompute, self.loss)

    def __str__(self) -> str:
        return (f"{self.total / GIB:.1f} GiB = params {self.params / GIB:.1f} + grads {self.grads / GIB:.1f} "
                f"+ optimizer {self.optimizer / GIB:.1f} + activations {self.activations / GIB:.1f} "
                f"+ max(recompute {self.recompute / GIB:.1f}, loss {self.loss / GIB:.1f})")


def activation_bytes(args: ModelArgs, cfg: JobConfig, dims: ParallelDims) -> tuple[int, int]:
    """(kept for backward, one re-run block) in bytes."""
    s, b, h, tp = cfg.training.seq_len, cfg.training.micro_batch_size, args.dim, dims.tp
    bf16 = cfg.training.mixed_precision == "bf16"
    full_layer = 34 * s * b * h * (1 if bf16 else 2) // tp
    layer_input = s * b * h * (2 if bf16 and dims.fsdp_enabled else 4) // tp
    mode, n = cfg.activation_checkpoint.mode, args.n_layers
    if mode == "full":
        return n * layer_input, full_layer
    if mode == "selective_layer":
        checkpointed = (n + cfg.activation_checkpoint.every_n_layers - 1) // cfg.activation_checkpoint.every_n_layers
        return checkpointed * layer_input + (n - checkpointed) * full_layer, full_layer
    if mode == "selective_op":  # matmul and attention outputs stay: about half of a block's activations
        return n * full_layer // 2, full_layer
    return n * full_layer, 0


def loss_bytes(args: ModelArgs, cfg: JobConfig, dims: ParallelDims, *, chunked: bool | None = None) -> int:
    """Working memory of the output layer and the loss; `chunked` defaults to what nano.loss does for the
    config (chunks unless tensor parallel), False gives the materialised logits for comparison."""
    tokens, vocab, dim, tp = cfg.training.micro_batch_size * cfg.training.seq_len, args.vocab_size, args.dim, dims.tp
    if chunked is None:
        chunked = tp == 1
    if not chunked:
        return tokens * vocab * 10 // (tp if cfg.parallelism.enable_loss_parallel else 1)
    half = cfg.training.mixed_precision == "bf16"
    chunk = min(DEFAULT_CHUNK_TOKENS, tokens)
    logits = chunk * vocab * (4 + 2 + 2 if half else 4)  # fp32 softmax (+ 16-bit logits and gradient)
    head_grad = vocab * dim * (4 + 2 + 2 if half else 4)  # fp32 accumulator (+ 16-bit weight and chunk product)
    hidden = tokens * dim * (2 + 2 if half else 4)  # gradient of the hidden states (+ their 16-bit copy)
    return logits + head_grad + hidden


def estimate_peak_memory(args: ModelArgs, cfg: JobConfig, dims: ParallelDims) -> MemoryEstimate:
    shard = dims.dp_shard * dims.tp
    n = analytic_num_params(args)
    kept, recompute = activation_bytes(args, cfg, dims)
    return MemoryEstimate(params=4 * n // shard, grads=4 * n // shard, optimizer=8 * n // shard,
                          activations=kept, recompute=recompute, loss=loss_bytes(args, cfg, dims))


def check_fits(estimate: MemoryEstimate, device_memory: int) -> None:
    """Refuse a config whose estimate exceeds 95% of the device, saying what to change."""
    if estimate.total <= 0.95 * device_memory:
        return
    raise ConfigError(
        f"estimated peak memory per device {estimate} exceeds the device's {device_memory / GIB:.1f} GiB: "
        f"lower --batch-size (activations scale with it), set --activation_checkpoint.mode full, "
        f"or shard over more GPUs (data_parallel_shard_degree / tensor_parallel_degree)"
    )
