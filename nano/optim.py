"""AdamW with decay on matrices only, and the warmup + cosine/linear/WSD learning-rate schedules."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from nano.config import LRScheduler, Optimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only.

    Norm gains and biases are scale parameters that decay would pull towards zero, and the token embedding
    is a lookup table whose rows are updated only when their token appears, so uniform decay would shrink
    rare tokens; LLaMA-style recipes exempt all three.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "tok_embeddings" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: Optimizer, device_type: str) -> torch.optim.AdamW:
    impl = cfg.implementation
    if impl == "auto":
        impl = "fused" if device_type == "cuda" else "foreach"
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=impl == "fused",
        foreach=impl == "foreach",
    )


def lr_factor(step: int, cfg: LRScheduler, max_steps: int) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based).

    Warmup reaches the peak on its last step (step 0 already trains at 1/warmup of the peak, so no step
    is wasted at LR 0); the decay ends exactly at `min_lr_ratio` on the final step.
    """
    warmup = min(cfg.warmup_steps, max_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - 1 - warmup))
    floor = cfg.min_lr_ratio
    if cfg.decay_type == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.decay_type == "linear":
        return 1.0 - (1.0 - floor) * progress
    # Warmup-stable-decay: hold the peak, then decay linearly over the last `decay_fraction` of the run.
    decay_start = 1.0 - cfg.decay_fraction
    if progress <= decay_start or cfg.decay_fraction == 0:
        return 1.0
    return 1.0 - (1.0 - floor) * (progress - decay_start) / cfg.decay_fraction


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: LRScheduler, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, cfg=cfg, max_steps=max_steps))
