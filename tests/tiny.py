"""A tiny model and a training step shared by the trainer, single-process and torchrun parallelism tests."""

import contextlib

import torch

from nano.config import Optimizer
from nano.models.llama import ModelArgs, Transformer
from nano.optim import build_optimizer
from nano.parallel.parallelize import clip_grad_norm_
from nano.train import forward_backward

TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, ffn_hidden_dim=128, max_seq_len=32)
STEPS, GLOBAL_BATCH, SEQ = 5, 4, 32


def reference_model(args: ModelArgs = TINY) -> Transformer:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights()
    return model


def batches(step: int) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(100 + step))


def train(model: torch.nn.Module, rows: slice = slice(None), steps: int = STEPS, loss_ctx=contextlib.nullcontext) -> list[torch.Tensor]:
    """AdamW steps on this process's rows of each global batch; returns the per-step (local) losses."""
    opt = build_optimizer(model, Optimizer(lr=1e-2), "cpu")
    losses = []
    for step in range(steps):
        tokens = batches(step)[rows]
        opt.zero_grad()
        loss = forward_backward(model, [{"input": tokens[:, :-1], "label": tokens[:, 1:]}], torch.device("cpu"),
                                loss_ctx=loss_ctx)
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss)
    return losses
