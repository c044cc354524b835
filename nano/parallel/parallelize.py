"""The one place where training policies are applied to the native model, in a fixed order:

    float8 convert -> tensor parallel -> activation checkpointing -> torch.compile per block -> FSDP2

float8 swaps nn.Linear for torchao's Float8Linear first, so that TP plans and FSDP see the final modules.
TP shards weights before AC wraps blocks (AC must recompute the TP collectives too). Compile wraps each
already-checkpointed block, so recomputation is compiled and every block shares one graph. FSDP2 comes
last: it shards whatever modules and parameters the earlier steps produced, block by block.
Only `parallelize()` reads the config; each `apply_*` takes explicit arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from nano.config import ConfigError, Float8, JobConfig
from nano.models.llama import Transformer
from nano.parallel.dims import ParallelDims


def parallelize(
    model: Transformer, dims: ParallelDims, mesh: DeviceMesh | None, cfg: JobConfig, device_type: str
) -> list[str]:
    """Apply every configured policy in place; returns the plan, one line per step, for the start-up log."""
    if model.args.tie_embeddings and (dims.fsdp_enabled or dims.tp_enabled):
        raise ConfigError("model.tie_embeddings works on one process only for now: a matrix shared by the "
                          "embedding and the head cannot be sharded as two modules; set model.tie_embeddings = false")
    plan = [f"mesh: dp_replicate={dims.dp_replicate} dp_shard={dims.dp_shard} tp={dims.tp} "
            f"(world size {dims.world_size})"]
    if cfg.float8.enable:
        plan.append(apply_float8(model, cfg.float8, device_type))
    if dims.tp_enabled:
        assert mesh is not None
        plan.append(apply_tp(model, mesh["tp"], loss_parallel_enabled=cfg.parallelism.enable_loss_parallel))
    if cfg.activation_checkpoint.mode != "none":
        plan.append(apply_ac(model, cfg.activation_checkpoint.mode, cfg.activation_checkpoint.every_n_layers))
    if cfg.compile.enable:
        plan.append(apply_compile(model))
    if dims.fsdp_enabled:
        assert mesh is not None
        bf16 = compute_precision(cfg, dims, device_type) == "bf16"
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]
        plan.append(apply_fsdp(model, dp_mesh, param_dtype=torch.bfloat16 if bf16 else torch.float32,
                               reshard=cfg.parallelism.fsdp_reshard_after_forward, hsdp=dims.dp_replicate > 1))
    if len(plan) == 1:
        plan.append("no policies: plain single-device model")
    return plan


# ---------------------------------------------------------------------------------------------------------
# float8


def float8_module_filter(module: nn.Module, fqn: str) -> bool:
    """Convert linears whose dims suit float8 tensor cores (multiples of 16); keep the output head precise."""
    return (
        isinstance(module, nn.Linear)
        and fqn != "output"
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def apply_float8(model: nn.Module, cfg: Float8, device_type: str) -> str:
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise ConfigError("float8.enable needs torchao: pip install -e '.[float8]'") from err
    if not cfg.emulate:
        if device_type != "cuda" or torch.cuda.get_device_capability() < (8, 9):
            raise ConfigError("float8 training needs an H100-class GPU (compute capability >= 8.9); "
                              "set float8.enable = false, or float8.emulate = true for a functional (slow) run")
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(cfg.recipe), emulate=cfg.emulate)
    convert_to_float8_training(model, config=config, module_filter_fn=float8_module_filter)
    converted = [fqn for fqn, m in model.named_modules() if type(m).__name__ == "Float8Linear"]
    recipe = f"{cfg.recipe}, emulated" if cfg.emulate else cfg.recipe
    return f"float8 ({recipe}): {len(converted)} linears converted, output head kept"


# ---------------------------------------------------------------------------------------------------------
# Tensor parallel


def apply_tp(model: Transformer, tp_mesh: DeviceMesh, loss_parallel_enabled: bool) -> str:
    """Megatron-style colwise/rowwise projections with sequence-parallel norms and residual stream."""
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(
            input_layouts=Shard(1),
            output_layouts=Shard(-1) if loss_parallel_enabled else Replicate(),
            use_local_output=not loss_parallel_enabled,
        ),
    })
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        })
    return (f"tensor parallel {tp_mesh.size()}: attention/FFN colwise+rowwise, sequence-parallel norms"
            + (", loss parallel" if loss_parallel_enabled else ""))


ContextFactory = Callable[[], contextlib.AbstractContextManager]
"""Makes the context a forward (and its backward) runs in: autocast, loss parallel, or nothing."""


def compute_precision(cfg: JobConfig, dims: ParallelDims, device_type: str) -> str:
    """How a step computes: "bf16" (FSDP's mixed-precision policy casts the weights), "autocast" (bf16 matmuls
    over fp32 weights, without FSDP) or "fp32" (CPU runs, or training.mixed_precision = "fp32")."""
    if device_type != "cuda" or cfg.training.mixed_precision == "fp32":
        return "fp32"
    return "bf16" if dims.fsdp_enabled else "autocast"


def autocast_context(cfg: JobConfig, dims: ParallelDims, device: torch.device) -> ContextFactory:
    """bf16 autocast where the step computes in "autocast" precision; nothing otherwise."""
    if compute_precision(cfg, dims, device.type) == "autocast":
        return bf16_autocast(device.type)
    return contextlib.nullcontext


def bf16_autocast(device_type: str) -> ContextFactory:
    """Autocast without its weight cache: the cache would keep a bf16 copy of every weight (2 bytes per
    parameter) alive until the forward ends, although each weight is cast once per forward anyway and
    activation checkpointing recasts it in backward either way, so it saves no work here."""
    return functools.partial(torch.autocast, device_type, dtype=torch.bfloat16, cache_enabled=False)


def loss_context(dims: ParallelDims, cfg: JobConfig) -> ContextFactory:
    """A factory of the context the loss and its backward run in: vocab-sharded logits under loss parallel."""
    if dims.tp_enabled and cfg.parallelism.enable_loss_parallel:
        return loss_parallel
    return contextlib.nullcontext


# ---------------------------------------------------------------------------------------------------------
# Activation checkpointing

# Matmul and attention outputs are the expensive results to recompute; norms and activations are cheap.
_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _save_matmuls_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_op_context():
    return create_selective_checkpoint_contexts(_save_matmuls_policy)


def apply_ac(model: Transformer, mode: str, every_n_layers: int) -> str:
    """Wrap blocks in checkpoint_wrapper; state-dict keys stay the native ones (the wrapper strips its prefix)."""
    wrapped = []
    for index, (name, block) in enumerate(list(model.layers.named_children())):
        if mode == "selective_layer" and index % every_n_layers:
            continue
        kwargs = {"context_fn": _selective_op_context} if mode == "selective_op" else {}
        model.layers.register_module(name, checkpoint_wrapper(block, preserve_rng_state=False, **kwargs))
        wrapped.append(name)
    return f"activation checkpointing {mode}: blocks {', '.join(wrapped)}"


# ---------------------------------------------------------------------------------------------------------
# Compile


def apply_compile(model: Transformer) -> str:
    """Compile each block in place (`Module.compile` keeps parameter names): blocks are identical, so one
    graph is compiled once and reused, which keeps compile time short and recompiles rare."""
    for block in model.layers.values():
        block.compile(fullgraph=True)
    return f"torch.compile: each of {len(model.layers)} blocks"


# ---------------------------------------------------------------------------------------------------------
# FSDP2


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, *, param_dtype: torch.dtype, reshard: str, hsdp: bool) -> str:
    """Shard each block, the embeddings, and the final norm + head as their own groups, then the root.

    Gradients are always reduced in fp32. By default every group but the last block reshards after
    forward (the last block's parameters are needed again at once by backward).
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = list(model.layers.values())

    def reshard_for(is_last: bool) -> bool:
        return {"always": True, "never": False}.get(reshard, not is_last)

    fully_shard(model.tok_embeddings, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_for(False))
    for index, block in enumerate(blocks):
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_for(index == len(blocks) - 1))
    fully_shard([model.norm, model.output], mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_for(True))
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_for(True))
    kind = "HSDP (replicate x shard)" if hsdp else "FSDP2"
    return f"{kind} over {dp_mesh.size()} ranks: params {str(param_dtype).removeprefix('torch.')}, reduce float32"


# ---------------------------------------------------------------------------------------------------------
# Initialisation


def place_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this process's part of `full` into `param`, for `Transformer.init_weights(place=...)`.

    Every rank holds the same full tensor (drawn from the parameter's own seeded generator), so each takes
    its slice as the DTensor placements say (src_data_rank=None: locally, no communication) and the sharded
    model equals the unsharded one bit for bit, whatever the mesh.
    """
    if isinstance(param, DTensor):
        full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(full)


# ---------------------------------------------------------------------------------------------------------
# Gradient clipping


def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm over all (possibly sharded) parameters; clips when max_norm > 0."""
    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, foreach=True)
    if isinstance(total, DTensor):  # a partial norm per shard: reduce it over the mesh
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total, foreach=True)
    return total

