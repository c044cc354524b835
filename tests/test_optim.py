import math

import pytest
import torch
from torch import nn

from nano.config import LRScheduler, Optimizer
from nano.optim import build_lr_scheduler, build_optimizer, lr_factor, param_groups


@pytest.mark.parametrize("decay_type", ["cosine", "linear", "wsd"])
def test_warmup_start_end_and_final_value(decay_type: str) -> None:
    cfg = LRScheduler(warmup_steps=100, decay_type=decay_type, min_lr_ratio=0.1, decay_fraction=0.2)
    max_steps = 1000
    assert lr_factor(0, cfg, max_steps) == pytest.approx(1 / 100)
    assert lr_factor(49, cfg, max_steps) == pytest.approx(0.5)
    assert lr_factor(99, cfg, max_steps) == pytest.approx(1.0)  # warmup ends at the peak
    assert lr_factor(100, cfg, max_steps) == pytest.approx(1.0)  # decay starts at the peak
    assert lr_factor(max_steps - 1, cfg, max_steps) == pytest.approx(0.1)  # ends exactly at the floor
    factors = [lr_factor(s, cfg, max_steps) for s in range(100, max_steps)]
    assert all(a >= b - 1e-12 for a, b in zip(factors, factors[1:])), "decay must be monotone"


def test_decay_shapes_differ_in_the_middle() -> None:
    max_steps, mid = 1001, 500  # progress 0.5 at step 500 with 0 warmup over 1000 decay steps
    shape = {t: lr_factor(mid, LRScheduler(warmup_steps=0, decay_type=t, min_lr_ratio=0.0), max_steps)
             for t in ("cosine", "linear", "wsd")}
    assert shape["cosine"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert shape["linear"] == pytest.approx(0.5)
    assert shape["wsd"] == pytest.approx(1.0)  # still in the stable phase
    wsd = LRScheduler(warmup_steps=0, decay_type="wsd", min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_factor(900, wsd, max_steps) == pytest.approx(0.5)  # halfway through the last 20%


def test_scheduler_drives_the_optimizer_lr() -> None:
    model = nn.Linear(4, 4)
    opt = build_optimizer(model, Optimizer(lr=1e-3), "cpu")
    sched = build_lr_scheduler(opt, LRScheduler(warmup_steps=10), max_steps=100)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    for _ in range(9):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4, bias=True)
        self.norm = nn.RMSNorm(4)


def test_weight_decay_only_on_matrices() -> None:
    model = Tiny()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.proj.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model.tok_embeddings.weight), id(model.proj.bias), id(model.norm.weight)
    }
    opt = build_optimizer(model, Optimizer(weight_decay=0.1), "cpu")
    before = model.norm.weight.detach().clone()
    model.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # With a zero gradient only decay moves a parameter: the norm gain must stay put, the matrix shrinks.
    assert torch.equal(model.norm.weight, before)
