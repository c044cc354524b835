import json
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from torch import nn

from nano.checkpoint.manager import COMPLETE_MARKER, CheckpointManager, ModelAndOptimizer, PerRankState, step_dirs
from nano.config import Checkpoint, ConfigError


class Counter:
    """A stand-in for a per-rank data loader position."""

    def __init__(self) -> None:
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def make(folder: Path, keep: int = 2, dp_world_size: int = 1, seed: int = 0, vocab_size: int = 64,
         async_mode: str = "disabled"):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    loader = Counter()
    manager = CheckpointManager(
        Checkpoint(interval=10, keep_latest_k=keep, async_mode=async_mode), folder,
        {"train": ModelAndOptimizer(model, opt), "dataloader": PerRankState(loader, 0)},
        layout={"dp_world_size": dp_world_size, "vocab_size": vocab_size}, is_rank0=True,
        files={"config.toml": b"[job]\n"}, run_info={"job_name": "t"},
    )
    return model, opt, loader, manager


def test_save_then_load_restores_model_optimizer_and_per_rank_state(tmp_path: Path) -> None:
    model, opt, loader, manager = make(tmp_path)
    loader.position = 1234
    manager.save(10, summary={"loss": 2.5})
    assert (tmp_path / "step-10" / COMPLETE_MARKER).is_file()
    assert (tmp_path / "step-10" / "config.toml").read_text() == "[job]\n"
    run = json.loads((tmp_path / "step-10" / "run.json").read_text())
    assert (run["job_name"], run["loss"], run["step"]) == ("t", 2.5, 10)

    fresh_model, fresh_opt, fresh_loader, fresh_manager = make(tmp_path, seed=1)
    assert not torch.equal(fresh_model.weight, model.weight)
    assert fresh_manager.load_latest() == 10
    torch.testing.assert_close(fresh_model.weight, model.weight)
    torch.testing.assert_close(
        fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert fresh_loader.position == 1234


def test_keeps_latest_k_and_ignores_incomplete(tmp_path: Path) -> None:
    _, _, loader, manager = make(tmp_path, keep=2)
    for step in (10, 20, 30):
        loader.position = step
        manager.save(step)
    assert [s for s, _ in step_dirs(tmp_path)] == [20, 30]
    # A crash during a save leaves a folder without marker: resume must skip it.
    (tmp_path / "step-40").mkdir()
    _, _, fresh_loader, fresh_manager = make(tmp_path)
    assert fresh_manager.load_latest() == 30
    assert fresh_loader.position == 30


def test_no_checkpoint_starts_at_zero(tmp_path: Path) -> None:
    assert make(tmp_path / "none")[3].load_latest() == 0


def test_resume_with_other_data_parallel_size_is_refused(tmp_path: Path) -> None:
    make(tmp_path, dp_world_size=1)[3].save(10)
    manager = make(tmp_path, dp_world_size=2)[3]
    with pytest.raises(ConfigError, match="saved with dp_world_size = 1, this run has 2: the data stream"):
        manager.load_latest()


def test_resume_with_another_vocabulary_is_refused(tmp_path: Path) -> None:
    make(tmp_path, vocab_size=64)[3].save(10)
    with pytest.raises(ConfigError, match="vocab_size = 64, this run has 128: .* data.tokenizer"):
        make(tmp_path, vocab_size=128)[3].load_latest()


def test_async_save_completes_in_the_background_and_restores_the_same_state(tmp_path: Path) -> None:
    model, opt, loader, manager = make(tmp_path, async_mode="async")
    loader.position = 77
    saved_weight = model.weight.detach().clone()
    completed = []
    manager.on_complete = lambda step, path, final: completed.append((step, final))
    manager.save(10, final=True)
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on right after the save call: the checkpoint keeps the old values
    loader.position = 78
    manager.wait()
    assert completed == [(10, True)] and (tmp_path / "step-10" / COMPLETE_MARKER).is_file()
    fresh_model, _, fresh_loader, fresh_manager = make(tmp_path, seed=1)
    assert fresh_manager.load_latest() == 10
    torch.testing.assert_close(fresh_model.weight, saved_weight)
    assert fresh_loader.position == 77


def test_marker_is_written_only_when_the_async_write_finished(tmp_path: Path) -> None:
    _, _, _, manager = make(tmp_path, async_mode="async")
    gate = threading.Event()
    manager.save(10)
    real = manager._pending.future  # hold the write back until the gate opens
    held: Future = Future()
    threading.Thread(target=lambda: (gate.wait(), held.set_result(real.result()))).start()
    manager._pending.future = held
    manager.poll()
    assert not (tmp_path / "step-10" / COMPLETE_MARKER).exists() and step_dirs(tmp_path) == []
    gate.set()
    manager.wait()
    assert [s for s, _ in step_dirs(tmp_path)] == [10]


def test_a_failed_async_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    _, _, _, manager = make(tmp_path, async_mode="async")
    manager.save(10)
    manager.save(20)  # waits for step-10 first
    failing: Future = Future()
    failing.set_exception(OSError(28, "No space left on device"))
    manager._pending.future.result()
    manager._pending.future = failing
    manager.wait()
    assert [s for s, _ in step_dirs(tmp_path, complete_only=False)] == [10]
