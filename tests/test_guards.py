"""nano.guards: bad steps are skipped without touching the weights, stop signals, the free-space check."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import nano.train
from nano.config import Training
from nano.guards import BadStepGuard, StopSignals, disk_space_problem
from nano.train import main
from tests.distributed import REPO_ROOT

RUN = ["--config", "train_configs/debug_model.toml", "--training.seq_len", "64", "--training.micro_batch_size", "4",
       "--metrics.log_freq", "1", "--lr_scheduler.warmup_steps", "0", "--validation.no-enable",
       "--sampling.prompts", ""]


def guard(**overrides) -> BadStepGuard:
    return BadStepGuard(Training(**{"spike_window": 4, "spike_factor": 3.0, "max_consecutive_skips": 3, **overrides}))


def step(g: BadStepGuard, number: int, loss: float, norm: float = 1.0) -> bool:
    return g.skip(number, torch.tensor(loss), torch.tensor(norm))


def test_non_finite_loss_or_norm_is_skipped_and_the_window_keeps_only_accepted_losses() -> None:
    g = guard()
    assert not step(g, 1, 5.0)
    assert step(g, 2, math.nan) and step(g, 3, 4.0, norm=math.inf)
    assert not step(g, 4, 4.5)
    assert list(g.window) == [5.0, 4.5] and g.consecutive == 0 and g.total == 2


def test_a_spike_is_skipped_once_the_window_is_full() -> None:
    g = guard()
    assert not step(g, 1, 2.0) and not step(g, 2, 20.0)  # window not full yet: a rise is not judged
    for number, loss in enumerate([2.0, 2.0], start=3):
        assert not step(g, number, loss)
    mean = (2.0 + 20.0 + 2.0 + 2.0) / 4
    assert step(g, 5, 3.0 * mean + 0.01) and "loss spike" in g.last_reason
    assert not step(g, 6, 3.0 * mean - 0.01)
    assert not guard(spike_factor=0.0).skip(1, torch.tensor(1e9), torch.tensor(1.0))  # 0 turns the check off


def test_too_many_skips_in_a_row_stop_with_the_steps_named_and_the_state_resumes_exactly(tmp_path: Path) -> None:
    g = guard()
    for number, loss in enumerate([2.0, 2.1, 1.9, 2.0], start=1):
        step(g, number, loss)
    assert step(g, 5, math.nan) and step(g, 6, math.nan) and not g.diverged
    dcp.save({"guards": g}, checkpoint_id=str(tmp_path))  # as the trainer's checkpoints hold it
    resumed = guard()
    dcp.load({"guards": resumed}, checkpoint_id=str(tmp_path))
    assert list(resumed.window) == list(g.window) and resumed.consecutive == 2
    for copy in (g, resumed):  # the same decisions after a resume: the third skip in a row stops
        assert step(copy, 7, 50.0) and copy.diverged
        assert copy.stop_message(7).startswith("stopped at step 7: steps 5-7 were all skipped (last: loss spike")
    assert not guard(skip_bad_steps=False).skip(1, torch.tensor(math.nan), torch.tensor(math.nan))


def test_free_space_check(tmp_path: Path) -> None:
    assert disk_space_problem(tmp_path / "not" / "made" / "yet", 1) is None
    problem = disk_space_problem(tmp_path, 10**18)
    assert problem is not None and " free on the file system of " in problem
    assert "needs about 1000000000.0 GB" in problem


SIGNALLED = """
import os, signal, sys, time
import nano.guards
nano.guards.DUPLICATE_WINDOW_S = {window}
stop = nano.guards.StopSignals()
os.kill(os.getpid(), signal.SIGTERM)
while not stop.requested:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGTERM)  # the same notice again at once (scheduler and launcher both send it)
time.sleep(0.5)
print("still running after the duplicate", flush=True)
os.kill(os.getpid(), signal.SIGUSR1)  # a second notice, later than the window: exit at once
time.sleep(30)
print("not reached", flush=True)
"""


def test_a_second_signal_exits_at_once_but_a_duplicate_of_the_first_does_not() -> None:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SIGNALLED.format(window=0.3)], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT, check=False)
    assert proc.returncode == 128 + 10, proc.stdout + proc.stderr  # 128 + SIGUSR1
    assert proc.stdout == "still running after the duplicate\n" and time.monotonic() - start < 25


def test_stop_signals_restore_the_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    assert signal.getsignal(signal.SIGTERM) is not before
    stop.close()
    assert signal.getsignal(signal.SIGTERM) is before


def metrics(dump: Path) -> dict[int, dict]:
    records = map(json.loads, (dump / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r for r in records if "loss/train" in r}


def test_a_nan_step_is_skipped_without_touching_weights_or_optimizer_and_training_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, one_thread) -> None:
    real_forward_backward, real_build_optimizer = nano.train.forward_backward, nano.train.build_optimizer
    optimizers: list[torch.optim.Optimizer] = []
    calls: list[int] = []
    before_bad_step: dict[str, dict] = {}
    unchanged: list[bool] = []

    def build_optimizer(*args, **kwargs):
        optimizers.append(real_build_optimizer(*args, **kwargs))
        return optimizers[-1]

    def state(model) -> dict[str, dict]:
        return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "optimizer": {k: {n: t.clone() for n, t in s.items()} for k, s in optimizers[0].state.items()}}

    def forward_backward(model, *args, **kwargs):  # one call per optimizer step
        calls.append(1)
        if len(calls) == 3:
            before_bad_step.update(state(model))
        if len(calls) == 4:  # after the bad step 3: everything as before it
            now = state(model)
            unchanged.append(all(torch.equal(now["params"][k], v) for k, v in before_bad_step["params"].items())
                             and all(torch.equal(now["optimizer"][i][n], t)
                                     for i, s in before_bad_step["optimizer"].items() for n, t in s.items()))
        loss = real_forward_backward(model, *args, **kwargs)
        if len(calls) == 3:  # a fault in step 3: NaN loss and gradients
            for param in model.parameters():
                param.grad.fill_(math.nan)
            loss = loss * math.nan
        return loss

    monkeypatch.setattr(nano.train, "forward_backward", forward_backward)
    monkeypatch.setattr(nano.train, "build_optimizer", build_optimizer)
    caplog.set_level("WARNING", logger="nano")
    assert main([*RUN, "--max-steps", "5", "--checkpoint.no-enable", "--job.dump_folder", str(tmp_path)]) == 0
    assert unchanged == [True]
    assert "step 3 skipped: loss nan, gradient norm nan; weights and optimizer state unchanged" in caplog.text
    logged = metrics(tmp_path)
    assert [logged[s]["optim/skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 0, 0]
    assert all(math.isfinite(logged[s]["loss/train"]) for s in (1, 2, 4, 5))


def test_a_diverging_run_saves_and_stops_with_a_message_after_a_few_skipped_steps(
        tmp_path: Path, capsys: pytest.CaptureFixture, one_thread) -> None:
    assert main([*RUN, "--optimizer.lr", "1e3", "--max-steps", "50", "--checkpoint.interval", "100",
                 "--training.max_consecutive_skips", "4", "--job.dump_folder", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "error: stopped at step " in err and "lower optimizer.lr" in err
    stopped = max(metrics(tmp_path))
    assert stopped < 10  # not a wall of NaN steps: it stopped after 4 skipped in a row
    assert sum(r["optim/skipped_steps"] for r in metrics(tmp_path).values()) == 4
    assert (tmp_path / "checkpoints" / f"step-{stopped}" / ".complete").is_file()
