"""Entry point: config -> model (meta) -> parallelize -> init -> optimizer -> data -> checkpoint -> loop.

Run with `./run_train.sh --config train_configs/debug_model.toml` or `python -m nano.train --config ...`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.tensor import DTensor

from nano.checkpoint.manager import CheckpointManager, ModelAndOptimizer, PerRankState
from nano.config import ConfigError, JobConfig, grad_accum_steps, load_config, to_toml
from nano.data.loader import build_dataloader
from nano.data.sources import SourceError
from nano.data.tokenizer import Tokenizer, load_tokenizer
from nano.metrics import MetricsLogger
from nano.models.llama import FLAVORS, ModelArgs, Transformer, flops_per_token, num_params, padded_vocab_size
from nano.optim import build_lr_scheduler, build_optimizer
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import check_fits, estimate_peak_memory
from nano.parallel.parallelize import clip_grad_norm_, loss_context, parallelize

logger = logging.getLogger("nano")
ContextFactory = Callable[[], contextlib.AbstractContextManager]


@dataclass
class Runtime:
    """Where this process runs: its device and its place in the job."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


@dataclass
class TrainState(Stateful):
    """Loop counters saved with every checkpoint."""

    step: int = 0
    tokens_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.step, self.tokens_seen = int(state_dict["step"]), int(state_dict["tokens_seen"])


# ---------------------------------------------------------------------------------------------------------
# Builders


def build_runtime(cfg: JobConfig) -> Runtime:
    """Pick the device and join the process group when launched by torchrun."""
    use_cuda = cfg.training.device == "cuda" or (cfg.training.device == "auto" and torch.cuda.is_available())
    if cfg.training.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device = 'cuda' but no CUDA device is visible; use --training.device cpu")
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return Runtime(device=device, rank=rank, world_size=world_size)


def build_model_args(cfg: JobConfig, tokenizer: Tokenizer) -> ModelArgs:
    """The flavor, with the vocab sized from the tokenizer and the context from the training length."""
    if cfg.model.flavor not in FLAVORS:
        raise ConfigError(f"model.flavor: unknown flavor {cfg.model.flavor!r}; choose one of {', '.join(FLAVORS)}")
    base = FLAVORS[cfg.model.flavor]
    return dataclasses.replace(
        base,
        vocab_size=padded_vocab_size(tokenizer.vocab_size),
        n_kv_heads=cfg.model.n_kv_heads or base.n_kv_heads,
        rope_theta=cfg.model.rope_theta,
        tie_embeddings=cfg.model.tie_embeddings,
        max_seq_len=cfg.training.seq_len,
    )


def build_model(cfg: JobConfig, args: ModelArgs, dims: ParallelDims, mesh, device: torch.device) -> nn.Module:
    """meta -> (memory check) -> parallelize -> to_empty -> init_weights: no full-size copy ever exists."""
    estimate = estimate_peak_memory(args, cfg, dims)
    logger.info("estimated peak memory per device: %s", estimate)
    if device.type == "cuda":
        check_fits(estimate, torch.cuda.get_device_properties(device).total_memory)
    with torch.device("meta"):
        model = Transformer(args)
    logger.info(
        "model %s: %.3fB parameters (%.3fB without embeddings and head), %.2f GFLOPs per token (training)",
        cfg.model.flavor, num_params(model) / 1e9, num_params(model, exclude_embeddings=True) / 1e9,
        flops_per_token(args, cfg.training.seq_len) / 1e9,
    )
    for line in parallelize(model, dims, mesh, cfg, device.type):
        logger.info("parallelize: %s", line)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=device)
    model.train()
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_context(cfg: JobConfig, dims: ParallelDims, device: torch.device) -> ContextFactory:
    """bf16 autocast on CUDA when FSDP's mixed-precision policy is not already casting."""
    if device.type == "cuda" and cfg.training.mixed_precision == "bf16" and not dims.fsdp_enabled:
        return functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


# ---------------------------------------------------------------------------------------------------------
# One optimizer step


def forward_backward(
    model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], device: torch.device,
    compute_ctx: ContextFactory = contextlib.nullcontext, loss_ctx: ContextFactory = contextlib.nullcontext,
) -> torch.Tensor:
    """Accumulate gradients over `micro_batches`; returns the mean loss (detached).

    Every micro-batch holds the same number of tokens (packed windows, no padding), so dividing each
    loss by the number of micro-batches gives exactly the gradient of one big batch.
    """
    total = torch.zeros((), device=device)
    for batch in micro_batches:
        inputs = batch["input"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with compute_ctx():
            logits = model(inputs)
        with loss_ctx():
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()) / len(micro_batches)
            loss.backward()
        total += (loss.full_tensor() if isinstance(loss, DTensor) else loss).detach()  # DTensor under loss parallel
    return total


def next_micro_batches(data: Iterator[dict[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    return [next(data) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------
# The run


def train(cfg: JobConfig) -> None:
    runtime = build_runtime(cfg)
    dims = ParallelDims.from_config(cfg.parallelism, runtime.world_size)
    seed_everything(cfg.job.seed)
    resolved = to_toml(cfg)
    dump = Path(cfg.job.dump_folder)
    if runtime.is_rank0:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "config.toml").write_text(resolved)
        logger.info("resolved config (also in %s):\n%s", dump / "config.toml", resolved)

    # Everything that can be wrong with the inputs is found here, before any weight is allocated.
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    args = build_model_args(cfg, tokenizer)
    dims.validate_model(args.n_heads, args.n_kv_heads or args.n_heads)
    mesh = dims.build_mesh(runtime.device.type)
    dp_rank = dims.dp_rank(mesh)
    dataloader = build_dataloader(
        cfg.data, tokenizer, seq_len=cfg.training.seq_len, micro_batch_size=cfg.training.micro_batch_size,
        dp_rank=dp_rank, dp_world_size=dims.dp_degree, seed=cfg.job.seed,
    )
    accum = grad_accum_steps(cfg, runtime.world_size)

    model = build_model(cfg, args, dims, mesh, runtime.device)
    fpt = flops_per_token(args, cfg.training.seq_len)

    optimizer = build_optimizer(model, cfg.optimizer, runtime.device.type)
    scheduler = build_lr_scheduler(optimizer, cfg.lr_scheduler, cfg.training.max_steps)
    state = TrainState()
    checkpointer = CheckpointManager(
        cfg.checkpoint,
        cfg.output_path(cfg.checkpoint.folder),
        {
            "train": ModelAndOptimizer(model, optimizer),
            "lr_scheduler": scheduler,
            "train_state": state,
            "dataloader": PerRankState(dataloader, dp_rank),
        },
        layout={"dp_world_size": dims.dp_degree, "vocab_size": args.vocab_size},
        is_rank0=runtime.is_rank0,
    )
    if cfg.checkpoint.resume:
        checkpointer.load_latest()
    if cfg.hub.push and runtime.is_rank0:
        logger.warning("hub.push: pushing to the Hub is not part of this version yet; checkpoints stay in %s",
                       checkpointer.folder)

    metrics = MetricsLogger(
        cfg.metrics, cfg.output_path(cfg.metrics.tensorboard_dir), flops_per_token=fpt,
        max_steps=cfg.training.max_steps, source_names=dataloader.source_names,
        device=runtime.device, rank=runtime.rank, dp_degree=dims.dp_degree,
    )
    logger.info(
        "training steps %d -> %d: global batch %d = micro %d x accum %d x dp %d, %d tokens per step",
        state.step, cfg.training.max_steps, cfg.training.global_batch_size, cfg.training.micro_batch_size,
        accum, dims.dp_degree, cfg.training.global_batch_size * cfg.training.seq_len,
    )
    run_loop(cfg, model, optimizer, scheduler, dataloader, checkpointer, metrics, state, accum, dp_degree=dims.dp_degree,
             compute_ctx=autocast_context(cfg, dims, runtime.device), loss_ctx=loss_context(dims, cfg),
             device=runtime.device, resolved=resolved)
    metrics.close()
    if dist.is_initialized():
        dist.barrier()  # every rank finished its last step and save before the group goes away


def run_loop(cfg: JobConfig, model: nn.Module, optimizer, scheduler, dataloader, checkpointer: CheckpointManager,
             metrics: MetricsLogger, state: TrainState, accum: int, *, dp_degree: int, compute_ctx, loss_ctx,
             device: torch.device, resolved: str) -> None:
    data = iter(dataloader)
    tokens_per_step = cfg.training.micro_batch_size * cfg.training.seq_len * accum
    while state.step < cfg.training.max_steps:
        micro_batches = next_micro_batches(data, accum)
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(model, micro_batches, device, compute_ctx, loss_ctx)
        grad_norm = clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"step {state.step + 1}: gradient norm is {float(grad_norm)}; "
                                     f"lower optimizer.lr or resume from the last checkpoint")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        state.step += 1
        state.tokens_seen += tokens_per_step * dp_degree
        metrics.record(
            state.step, loss=loss, grad_norm=grad_norm, lr=lr, tokens=tokens_per_step, tokens_seen=state.tokens_seen,
            source_tokens=torch.stack([b["source_tokens"].sum(0) for b in micro_batches]).sum(0),
        )
        if checkpointer.due(state.step, cfg.training.max_steps):
            checkpointer.save(state.step, resolved)
            metrics.reset_window()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not any(a == "--config" or a.startswith("--config=") or a in ("-h", "--help") for a in argv):
            raise ConfigError("--config FILE is required, e.g. --config train_configs/debug_model.toml")
        train(load_config(argv, world_size=int(os.environ.get("WORLD_SIZE", 1))))
    except (ConfigError, SourceError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # gloo with a device mesh can abort in its destructors at interpreter exit; the run is done by now.
    os._exit(code)
