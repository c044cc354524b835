"""Peak memory per device, estimated from the config before any weight is allocated.

Training state: fp32 parameters, fp32 gradients and AdamW's two fp32 moments (16 bytes per parameter),
sharded over the FSDP shard group and tensor parallel. Activations per transformer layer follow
Korthikanti et al. 2022 (34 * s * b * h bytes in 16-bit with fused attention, no s^2 term), divided by
the TP degree (sequence parallel), and reduced by activation checkpointing. The logits add
b * s * V * (2 + 4 + 4) bytes (16-bit logits, their fp32 upcast for the loss, and its gradient).
An estimate, not a measurement: it is meant to catch configs that cannot fit, with a margin.
"""

from __future__ import annotations

from dataclasses import dataclass

from nano.config import ConfigError, JobConfig
from nano.models.llama import ModelArgs, analytic_num_params
from nano.parallel.dims import ParallelDims

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def __str__(self) -> str:
        return (f"{self.total / GIB:.1f} GiB = params {self.params / GIB:.1f} + grads {self.grads / GIB:.1f} "
                f"+ optimizer {self.optimizer / GIB:.1f} + activations {self.activations / GIB:.1f}")


def activation_bytes(args: ModelArgs, cfg: JobConfig, tp: int) -> int:
    s, b, h = cfg.training.seq_len, cfg.training.micro_batch_size, args.dim
    scale = 1 if cfg.training.mixed_precision == "bf16" else 2  # fp32 activations are twice as large
    full_layer = 34 * s * b * h * scale // tp
    layer_input = 2 * s * b * h * scale // tp
    mode, n = cfg.activation_checkpoint.mode, args.n_layers
    if mode == "full":  # keep each block's input; one block is live again during its recompute
        layers = n * layer_input + full_layer
    elif mode == "selective_layer":
        checkpointed = (n + cfg.activation_checkpoint.every_n_layers - 1) // cfg.activation_checkpoint.every_n_layers
        layers = checkpointed * layer_input + (n - checkpointed) * full_layer + full_layer
    elif mode == "selective_op":  # matmul and attention outputs stay: about half of a block's activations
        layers = n * full_layer // 2 + full_layer
    else:
        layers = n * full_layer
    logits = b * s * args.vocab_size * 10 // tp
    return layers + logits


def estimate_peak_memory(args: ModelArgs, cfg: JobConfig, dims: ParallelDims) -> MemoryEstimate:
    shard = dims.dp_shard * dims.tp
    n = analytic_num_params(args)
    return MemoryEstimate(params=4 * n // shard, grads=4 * n // shard, optimizer=8 * n // shard,
                          activations=activation_bytes(args, cfg, dims.tp))


def check_fits(estimate: MemoryEstimate, device_memory: int) -> None:
    """Refuse a config whose estimate exceeds 95% of the device, saying what to change."""
    if estimate.total <= 0.95 * device_memory:
        return
    raise ConfigError(
        f"estimated peak memory per device {estimate} exceeds the device's {device_memory / GIB:.1f} GiB: "
        f"lower --batch-size (activations scale with it), set --activation_checkpoint.mode full, "
        f"or shard over more GPUs (data_parallel_shard_degree / tensor_parallel_degree)"
    )
