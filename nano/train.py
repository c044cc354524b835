"""Entry point: config -> model (meta) -> parallelize -> init -> optimizer -> data -> checkpoint -> loop.

Run with `./run_train.sh --config train_configs/debug_model.toml` or `python -m nano.train --config ...`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.tensor import DTensor

from nano.checkpoint.hub import HubPusher, build_pusher
from nano.checkpoint.manager import CheckpointManager, ModelAndOptimizer, PerRankState, find_resume_point
from nano.config import ConfigError, JobConfig, grad_accum_steps, load_config, to_toml
from nano.data.loader import build_dataloader
from nano.data.sources import SourceError, resolve_sources
from nano.data.tokenizer import Tokenizer, load_tokenizer
from nano.evaluate import Validator
from nano.generate import PromptSampler
from nano.guards import Guards, TrainingStopped
from nano.metrics import MetricsLogger
from nano.models.llama import (
    FLAVORS,
    ModelArgs,
    Transformer,
    analytic_num_params,
    flops_per_token,
    num_params,
    padded_vocab_size,
)
from nano.optim import build_lr_scheduler, build_optimizer
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import check_fits, estimate_peak_memory
from nano.parallel.parallelize import (
    ContextFactory,
    autocast_context,
    clip_grad_norm_,
    loss_context,
    parallelize,
    place_shard,
)
from nano.profiling import StepProfiler

logger = logging.getLogger("nano")


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
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None,
                                timeout=timedelta(seconds=cfg.comm.init_timeout_s))  # to the first step: guards
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
    estimate = estimate_peak_memory(args, cfg, dims, device.type)
    logger.info("estimated peak memory per device: %s", estimate)
    if device.type == "cuda":
        check_fits(args, cfg, dims, torch.cuda.get_device_properties(device).total_memory)
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
        model.init_weights(buffer_device=device, seed=cfg.job.seed, place=place_shard)  # the same on any mesh
    model.train()
    return model


def run_info(cfg: JobConfig, args: ModelArgs) -> dict:
    """What every checkpoint records about the run (its run.json), for the export and its model card."""
    return {
        "job_name": cfg.job.name,
        "command": "python -m nano.train " + shlex.join(sys.argv[1:]),
        "model_args": dataclasses.asdict(args),
        "num_params": analytic_num_params(args),
        "data_mix": [{"name": s.name, "hub_id": s.hub_id, "weight": s.weight, "local": bool(s.data_files)}
                     for s in resolve_sources(cfg.data)],
        "license": cfg.hub.license,
        "torch": torch.__version__,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# One optimizer step


def forward_backward(
    model: nn.Module, micro_batches: list[dict[str, torch.Tensor]], device: torch.device,
    compute_ctx: ContextFactory = contextlib.nullcontext, loss_ctx: ContextFactory = contextlib.nullcontext,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """Accumulate gradients over `micro_batches`; returns the mean loss (detached).

    Every micro-batch holds the same number of tokens (packed windows, no padding), so dividing each
    loss by the number of micro-batches gives exactly the gradient of one big batch.
    """
    total = torch.zeros((), device=device)
    for batch in micro_batches:
        inputs = batch["input"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with loss_ctx():
            with compute_ctx():
                loss = model(inputs, labels, z_loss=z_loss) / len(micro_batches)  # out of the model: no logits
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
    # Continue this folder's run, or refuse to mix with it; decided before anything is written or built.
    resume_from = find_resume_point(cfg.checkpoint, cfg.output_path(cfg.checkpoint.folder), resolved)
    if resume_from is not None and resume_from.step >= cfg.training.max_steps:
        if runtime.is_rank0:
            logger.info("nothing to do: %s is step %d and training.max_steps is %d, so this run is finished. Train "
                        "on with --training.max_steps N (N > %d), or start a new run with --job.dump_folder DIR",
                        resume_from.path, resume_from.step, cfg.training.max_steps, resume_from.step)
        return
    if runtime.is_rank0:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "config.toml").write_text(resolved)
        logger.info("resolved config (also in %s):\n%s", dump / "config.toml", resolved)
    pusher = build_pusher(cfg.hub, dump / "hf_export", is_rank0=runtime.is_rank0)

    # Everything that can be wrong with the inputs is found here, before any weight is allocated.
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    args = build_model_args(cfg, tokenizer)
    dims.validate_model(args.n_heads, args.n_kv_heads or args.n_heads)
    mesh = dims.build_mesh(runtime.device.type)
    dp_rank = dims.dp_rank(mesh)
    dataloader = build_dataloader(
        cfg.data, tokenizer, seq_len=cfg.training.seq_len, micro_batch_size=cfg.training.micro_batch_size,
        dp_rank=dp_rank, dp_world_size=dims.dp_degree, seed=cfg.job.seed,
        held_out_per_source=cfg.validation.documents_per_source,  # set aside for validation, never trained on
    )
    accum = grad_accum_steps(cfg, runtime.world_size)

    model = build_model(cfg, args, dims, mesh, runtime.device)
    fpt = flops_per_token(args, cfg.training.seq_len)

    optimizer = build_optimizer(model, cfg.optimizer, runtime.device.type)
    scheduler = build_lr_scheduler(optimizer, cfg.lr_scheduler, cfg.training.max_steps)
    state = TrainState()
    guards = Guards(cfg.training, cfg.comm, mesh)  # preemption signals, bad-step skipping, collective timeouts
    checkpointer = CheckpointManager(
        cfg.checkpoint,
        cfg.output_path(cfg.checkpoint.folder),
        {
            "train": ModelAndOptimizer(model, optimizer),
            "lr_scheduler": scheduler,
            "train_state": state,
            "dataloader": PerRankState(dataloader, dp_rank),
            "guards": guards.steps,
        },
        layout={"dp_world_size": dims.dp_degree, "vocab_size": args.vocab_size},
        is_rank0=runtime.is_rank0,
        files={"config.toml": resolved.encode(), "tokenizer.model": tokenizer.model_bytes},
        run_info=run_info(cfg, args),
        on_complete=pusher.on_checkpoint if pusher else None,
        protected=pusher.protected if pusher else None,
    )
    checkpointer.load(resume_from)

    metrics = MetricsLogger(
        cfg.metrics, cfg.output_path(cfg.metrics.tensorboard_dir), flops_per_token=fpt,
        max_steps=cfg.training.max_steps, source_names=dataloader.source_names,
        device=runtime.device, rank=runtime.rank, dp_degree=dims.dp_degree,
        extra_scalars=pusher.scalars if pusher else None, jsonl_path=dump / "metrics.jsonl",
    )
    compute_ctx, loss_ctx = autocast_context(cfg, dims, runtime.device), loss_context(dims, cfg)
    validator = Validator(
        cfg.validation, dataloader.held_out, tokenizer, seq_len=cfg.training.seq_len,
        micro_batch_size=cfg.training.micro_batch_size, global_batch_size=cfg.training.global_batch_size,
        last_step=cfg.training.max_steps, dp_rank=dp_rank, dp_degree=dims.dp_degree, device=runtime.device,
        compute_ctx=compute_ctx, loss_ctx=loss_ctx,
    )
    sampler = PromptSampler(cfg.sampling, tokenizer, tensor_parallel_degree=dims.tp)
    profiler = StepProfiler(cfg.profiling, dump / "profiles", rank=runtime.rank, device=runtime.device)
    logger.info(
        "training steps %d -> %d: global batch %d = micro %d x accum %d x dp %d, %d tokens per step",
        state.step, cfg.training.max_steps, cfg.training.global_batch_size, cfg.training.micro_batch_size,
        accum, dims.dp_degree, cfg.training.global_batch_size * cfg.training.seq_len,
    )
    try:
        run_loop(cfg, model, optimizer, scheduler, dataloader, checkpointer, metrics, state, accum,
                 dp_degree=dims.dp_degree, compute_ctx=compute_ctx, loss_ctx=loss_ctx, device=runtime.device,
                 validator=validator, sampler=sampler, profiler=profiler, guards=guards)
    except TrainingStopped:
        checkpointer.wait()  # an earlier checkpoint still being written in the background must land first
        raise
    finally:
        guards.close()
    checkpointer.wait()
    if dist.is_initialized():
        dist.barrier()  # every rank finished its last step and save before the group goes away
    # rank 0 only, no collective left to time out; a preempted job has no time to wait for uploads
    finish_pushes(pusher, checkpointer, 0 if guards.preempted else cfg.hub.final_timeout_s)
    metrics.close(state.step)
    guards.check(state.step)  # stopped for bad steps: its checkpoint is saved, now say so


def run_loop(cfg: JobConfig, model: nn.Module, optimizer, scheduler, dataloader, checkpointer: CheckpointManager,
             metrics: MetricsLogger, state: TrainState, accum: int, *, dp_degree: int, compute_ctx, loss_ctx,
             device: torch.device, validator: Validator, sampler: PromptSampler, profiler: StepProfiler,
             guards: Guards) -> None:
    data = iter(dataloader)
    tokens_per_step = cfg.training.micro_batch_size * cfg.training.seq_len * accum
    while state.step < cfg.training.max_steps:
        profiler.step(state.step + 1)
        micro_batches = next_micro_batches(data, accum)
        optimizer.zero_grad(set_to_none=True)
        loss = forward_backward(model, micro_batches, device, compute_ctx, loss_ctx, z_loss=cfg.training.z_loss)
        grad_norm = clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        skipped = guards.skip_step(state.step + 1, loss, grad_norm)  # non-finite or spiking: weights stay as they are
        if not skipped:
            optimizer.step()
        scheduler.step()
        state.step += 1
        state.tokens_seen += tokens_per_step * dp_degree
        if validator.due(state.step):
            with metrics.untimed():  # evaluating is not training: kept out of tokens/s
                metrics.log_validation(state.step, validator.evaluate(model))
        if sampler.due(state.step):
            with metrics.untimed():
                metrics.log_samples(state.step, sampler.complete(model))
        metrics.record(
            state.step, loss=loss, grad_norm=grad_norm, lr=lr, tokens=tokens_per_step, tokens_seen=state.tokens_seen,
            source_tokens=torch.stack([b["source_tokens"].sum(0) for b in micro_batches]).sum(0),
            source_skipped=torch.stack([b["source_skipped"].sum(0) for b in micro_batches]).sum(0), skipped=skipped,
        )
        stop = guards.should_stop()  # a stop signal reached any rank, or too many steps were skipped: save, stop
        saving = checkpointer.due(state.step, cfg.training.max_steps, stopping=stop)
        reporting = state.step % cfg.metrics.log_freq == 0 or state.step == cfg.training.max_steps
        if saving or reporting:  # these steps wait for the device anyway
            guards.check_finite()  # with skip_bad_steps off: stop before a non-finite step's weights are saved
        checkpointer.poll()
        if saving:
            checkpointer.save(state.step, summary={"tokens_seen": state.tokens_seen, "loss": metrics.last_loss},
                              final=state.step == cfg.training.max_steps)
            metrics.reset_window()
        if stop:
            break
    profiler.close()


def finish_pushes(pusher: HubPusher | None, checkpointer: CheckpointManager, timeout_s: float) -> None:
    """Give pushes still in flight up to `timeout_s`, then prune what they were keeping alive."""
    if pusher is not None:
        pusher.finish(timeout_s)
        checkpointer.prune()


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
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
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
