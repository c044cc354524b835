"""Training-step throughput for a config on random tokens: tokens/s, MFU and peak memory per device.

    python benchmarks/train_step.py --config train_configs/nano_1b.toml --steps 30 [--section.key value ...]
    torchrun --nproc_per_node 8 benchmarks/train_step.py --config train_configs/nano_1b.toml

Uses the trainer's own builders (model on meta, parallelize, init, optimizer, forward_backward), so the
figures measure exactly what `nano.train` runs, minus data loading. MFU is reported against the device's
dense bf16 peak (nano.metrics.PEAK_BF16_FLOPS); pass --peak-tflops for other devices. On a GPU the measured
peak memory is printed next to the start-up estimate (nano.parallel.memory), and the attention kernel used.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch
import torch.distributed as dist

from nano.config import grad_accum_steps, load_config
from nano.metrics import peak_flops
from nano.models.llama import FLAVORS, Transformer, flops_per_token, padded_vocab_size, sdpa_backend
from nano.optim import build_optimizer
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import estimate_peak_memory
from nano.parallel.parallelize import autocast_context, clip_grad_norm_, loss_context, parallelize, place_shard
from nano.train import build_runtime, forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps (after 5 warm-up steps)")
    parser.add_argument("--vocab", type=int, default=32000 + 6, help="tokenizer size (the model pads it)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU if not known")
    args, config_argv = parser.parse_known_args()
    cfg = load_config(config_argv, world_size=int(os.environ.get("WORLD_SIZE", 1)))
    runtime = build_runtime(cfg)
    dims = ParallelDims.from_config(cfg.parallelism, runtime.world_size)
    model_args = dataclasses.replace(FLAVORS[cfg.model.flavor], vocab_size=padded_vocab_size(args.vocab),
                                     max_seq_len=cfg.training.seq_len)
    mesh = dims.build_mesh(runtime.device.type)
    with torch.device("meta"):
        model = Transformer(model_args)
    plan = parallelize(model, dims, mesh, cfg, runtime.device.type)
    model.to_empty(device=runtime.device)
    with torch.no_grad():
        model.init_weights(buffer_device=runtime.device, place=place_shard)
    optimizer = build_optimizer(model, cfg.optimizer, runtime.device.type)
    accum = grad_accum_steps(cfg, runtime.world_size)
    compute_ctx, loss_ctx = autocast_context(cfg, dims, runtime.device), loss_context(dims, cfg)
    shape = (cfg.training.micro_batch_size, cfg.training.seq_len + 1)

    def step() -> None:
        micro = []
        for _ in range(accum):
            tokens = torch.randint(0, model_args.vocab_size, shape, device=runtime.device)
            micro.append({"input": tokens[:, :-1], "label": tokens[:, 1:]})
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, micro, runtime.device, compute_ctx, loss_ctx, z_loss=cfg.training.z_loss)
        clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
        optimizer.step()

    def sync() -> None:
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(5):
        step()
    sync()
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    # Tokens one data-parallel rank trains on per second; its tensor-parallel peers share them, so per device
    # the rate (and the FLOPs behind it) is divided by the TP degree.
    tokens_per_s = args.steps * accum * shape[0] * cfg.training.seq_len / elapsed / dims.tp
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(runtime.device)
    if runtime.is_rank0:
        print(" | ".join(plan))
        print(f"{cfg.model.flavor}: {tokens_per_s:,.0f} tokens/s per device, {elapsed / args.steps:.3f} s/step "
              f"(micro {shape[0]} x accum {accum} x seq {cfg.training.seq_len})")
        if peak:
            print(f"MFU {100 * tokens_per_s * flops_per_token(model_args, cfg.training.seq_len) / peak:.1f}%")
        if runtime.device.type == "cuda":
            dtype = torch.bfloat16 if cfg.training.mixed_precision == "bf16" else torch.float32
            print(f"attention: {sdpa_backend(model_args, cfg.training.seq_len, dtype, runtime.device)}")
            print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB measured, "
                  f"estimate {estimate_peak_memory(model_args, cfg, dims)}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
