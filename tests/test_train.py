import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from nano.config import Optimizer
from nano.guards import DeferredNonFiniteCheck, TrainingStopped
from nano.models.llama import FLAVORS, Transformer
from nano.optim import build_optimizer
from nano.parallel.parallelize import clip_grad_norm_
from nano.train import forward_backward
from tests.tiny import reference_model

REPO = Path(__file__).resolve().parents[1]


def small_model() -> Transformer:
    return reference_model(dataclasses.replace(FLAVORS["debug"], vocab_size=512, max_seq_len=64))


def batch(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input": tokens[:, :-1], "label": tokens[:, 1:]}


def test_debug_model_overfits_one_batch() -> None:
    model = small_model()
    fixed = batch(torch.randint(0, 512, (4, 65), generator=torch.Generator().manual_seed(1)))
    opt = build_optimizer(model, Optimizer(lr=3e-3, weight_decay=0.0), "cpu")
    losses = []
    for _ in range(30):
        opt.zero_grad()
        losses.append(float(forward_backward(model, [fixed], torch.device("cpu"))))
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_grad_accumulation_equals_one_big_batch() -> None:
    tokens = torch.randint(0, 512, (8, 65), generator=torch.Generator().manual_seed(2))
    big, accumulated = small_model(), small_model()
    loss_big = forward_backward(big, [batch(tokens)], torch.device("cpu"))
    micro = [batch(chunk) for chunk in tokens.chunk(4)]
    loss_acc = forward_backward(accumulated, micro, torch.device("cpu"))
    torch.testing.assert_close(loss_acc, loss_big, rtol=1e-5, atol=1e-6)
    for (name, p_big), p_acc in zip(big.named_parameters(), accumulated.parameters()):
        torch.testing.assert_close(p_acc.grad, p_big.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_non_finite_gradient_norm_is_reported_with_the_step_it_began() -> None:
    guard = DeferredNonFiniteCheck()
    for step, norm in enumerate([0.5, 2.0], start=1):
        guard.note(step, torch.tensor(norm))
    guard.check()  # all finite: nothing to report
    for step, norm in enumerate([float("inf"), float("nan"), 1.0], start=3):
        guard.note(step, torch.tensor(norm))
    with pytest.raises(TrainingStopped, match=r"step 3: gradient norm is inf"):
        guard.check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_training_step_never_waits_for_the_device() -> None:
    """Loss, gradient norm and the non-finite flag stay on the device (batches pinned, as the loader pins them)."""
    device = torch.device("cuda")
    model = small_model().to(device)
    optimizer = build_optimizer(model, Optimizer(), "cuda")
    guard = DeferredNonFiniteCheck()
    tokens = torch.randint(0, 512, (4, 65), generator=torch.Generator().manual_seed(4))
    micro = [{k: v.contiguous().pin_memory() for k, v in batch(tokens).items()}]

    def step(index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, micro, device)
        norm = clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        guard.note(index, norm)

    step(1)  # the first step initialises the optimizer state
    torch.cuda.set_sync_debug_mode("error")
    try:
        for index in (2, 3):
            step(index)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    guard.check()


LOG_LINE = re.compile(r"step\s+(\d+)/\d+ \| loss ([\d.]+)")


def test_run_train_sh_end_to_end(tmp_path: Path) -> None:
    """The README's demo command, shortened: exits 0, logs a falling loss, leaves a checkpoint and config."""
    env = {**os.environ, "MASTER_PORT": "29617"}
    proc = subprocess.run(
        ["./run_train.sh", "--config", "train_configs/debug_model.toml", "--max-steps", "20",
         "--metrics.log_freq", "5", "--job.dump_folder", str(tmp_path), "--checkpoint.interval", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [float(loss) for _, loss in LOG_LINE.findall(proc.stdout)]
    assert len(losses) == 4, proc.stdout[-3000:]
    assert losses[-1] < losses[0] - 1.0, losses
    assert (tmp_path / "config.toml").is_file()
    assert (tmp_path / "checkpoints" / "step-20" / ".complete").is_file()
    assert (tmp_path / "checkpoints" / "step-10" / ".complete").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/train")] == [5, 10, 15, 20]
    assert events.Scalars("data/tokens/gsm8k")[-1].value > 0  # per-source token counts reach TensorBoard

    again = subprocess.run(  # the same command once more: the run is finished, and says so
        ["./run_train.sh", "--config", "train_configs/debug_model.toml", "--max-steps", "20",
         "--job.dump_folder", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do: " in again.stdout and "step 20 and training.max_steps is 20" in again.stdout
    assert not LOG_LINE.search(again.stdout)


def test_a_diverging_run_stops_at_its_next_report_without_saving(tmp_path: Path) -> None:
    """Gradient norms are read back only when a progress line or a checkpoint is due; the first bad step is named
    and no checkpoint is written from it on."""
    env = {**os.environ, "MASTER_PORT": "29619"}
    proc = subprocess.run(
        ["./run_train.sh", "--config", "train_configs/debug_model.toml", "--max-steps", "8", "--metrics.log_freq", "4",
         "--checkpoint.interval", "4", "--optimizer.lr", "1e30", "--lr_scheduler.warmup_steps", "0",
         "--training.no-skip_bad_steps",  # without the per-step guard (nano.guards), the device-side check
         "--job.dump_folder", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 3
    bad = re.search(r"^error: step (\d+): gradient norm is (nan|inf)", proc.stderr, re.MULTILINE)
    assert bad, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 2 <= int(bad.group(1)) <= 4  # step 1 trains from the initial weights; step 4 is the first report
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def run(*args: str, port: int = 29631) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NGPU": "1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["./run_train.sh", "--config", "train_configs/debug_model.toml", "--metrics.log_freq", "1", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def logged_losses(stdout: str) -> dict[int, str]:
    return {int(step): loss for step, loss in LOG_LINE.findall(stdout)}


def test_resume_with_loader_workers_retraces_the_uninterrupted_run(tmp_path: Path) -> None:
    """Train 8 steps saving at 4 and 8; lose step 8 as if the run died after step 4; --resume must retrace steps 5-8,
    with each of the 2 loader workers continuing its own stream. (Other meshes and crashes: tests/test_resilience.py.)"""
    common = ["--job.dump_folder", str(tmp_path), "--max-steps", "8", "--checkpoint.interval", "4",
              "--checkpoint.keep_latest_k", "0", "--lr_scheduler.warmup_steps", "2", "--data.num_workers", "2",
              "--training.seq_len", "64", "--validation.no-enable"]
    full = logged_losses(run(*common).stdout)
    assert sorted(full) == list(range(1, 9))
    shutil.rmtree(tmp_path / "checkpoints" / "step-8")
    resumed = run(*common, "--resume")
    assert "resumed from" in resumed.stdout and "step-4" in resumed.stdout
    again = logged_losses(resumed.stdout)
    assert sorted(again) == [5, 6, 7, 8]
    assert {s: full[s] for s in again} == again  # the same data, weights and optimizer state: the same losses


def test_policies_from_the_command_line(tmp_path: Path) -> None:
    proc = run("--job.dump_folder", str(tmp_path), "--max-steps", "2", "--checkpoint.no-enable",
               "--compile.enable", "--activation_checkpoint.mode", "selective_op",
               "--float8.enable", "--float8.emulate")
    assert "float8 (tensorwise, emulated)" in proc.stdout
    assert "activation checkpointing selective_op" in proc.stdout and "torch.compile: each of 4 blocks" in proc.stdout
    assert sorted(logged_losses(proc.stdout)) == [1, 2]
