"""Checkpoints that survive accidents: damaged files, other runs' folders, config changes, full disks."""

from __future__ import annotations

import dataclasses
import errno
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter

from nano.checkpoint.config_diff import check_resume_config, config_changes
from nano.checkpoint.integrity import read_manifest
from nano.checkpoint.manager import (
    COMPLETE_MARKER,
    CORRUPT_MARKER,
    CheckpointManager,
    find_resume_point,
    run_id_of,
    step_dirs,
    verify_checkpoint,
)
from nano.config import Checkpoint, ConfigError, JobConfig, apply_override, to_toml
from tests.checkpoint.checkpoints import trainer_like_manager


def weights(manager: CheckpointManager) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in manager.states["train"].model.state_dict().items()}


def perturb(manager: CheckpointManager) -> None:
    with torch.no_grad():
        for param in manager.states["train"].model.parameters():
            param.add_(0.01)


def two_checkpoints(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    """step-1 and step-2 of one run, with different weights; returns the weights of each."""
    manager = trainer_like_manager(folder)
    saved = {}
    for step in (1, 2):
        perturb(manager)
        manager.save(step)
        saved[step] = weights(manager)
    return saved


def truncate(path: Path) -> None:
    shard = next(path.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def delete_metadata(path: Path) -> None:
    (path / ".metadata").unlink()


def flip_one_bit(path: Path) -> None:
    shard = next(path.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a weight: DCP itself would load this without a word
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize(("tamper", "reported"), [
    (truncate, "bytes"), (delete_metadata, ".metadata: missing"), (flip_one_bit, "crc32")])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, tamper, reported: str) -> None:
    saved = two_checkpoints(tmp_path)
    tamper(tmp_path / "step-2")
    fresh = trainer_like_manager(tmp_path)
    caplog.set_level("ERROR", logger="nano")
    assert fresh.load_latest() == 1
    assert f"checkpoint {tmp_path / 'step-2'} is damaged" in caplog.text and reported in caplog.text
    for key, value in saved[1].items():
        assert torch.equal(weights(fresh)[key], value), key
    # Out of the running for good: no longer complete, so retention and the next resume ignore it.
    assert (tmp_path / "step-2" / CORRUPT_MARKER).is_file() and [s for s, _ in step_dirs(tmp_path)] == [1]


def test_every_file_is_recorded_with_the_marker_and_an_intact_checkpoint_verifies(tmp_path: Path) -> None:
    manager = trainer_like_manager(tmp_path)
    path = manager.save(3)
    recorded = read_manifest(path / COMPLETE_MARKER)
    on_disk = {p.name for p in path.iterdir() if p.name != COMPLETE_MARKER}
    assert set(recorded) == on_disk and {".metadata", "run.json", "tokenizer.model", "config.toml"} <= on_disk
    assert all(recorded[name]["size"] == (path / name).stat().st_size for name in recorded)
    assert verify_checkpoint(path) == []


def test_async_saves_record_checksums_too(tmp_path: Path) -> None:
    manager = trainer_like_manager(tmp_path)
    async_manager = CheckpointManager(dataclasses.replace(manager.cfg, async_mode="async"), tmp_path,
                                      {"train": manager.states["train"]}, layout=manager.layout, is_rank0=True,
                                      files=manager.files)
    async_manager.save(5)
    async_manager.wait()
    recorded = read_manifest(tmp_path / "step-5" / COMPLETE_MARKER)
    assert ".metadata" in recorded and "config.toml" in recorded and verify_checkpoint(tmp_path / "step-5") == []


def test_no_save_replaces_or_prunes_a_checkpoint_another_run_wrote(tmp_path: Path, caplog) -> None:
    first = trainer_like_manager(tmp_path)
    for step in (10, 20):
        first.save(step)
    before = {p: p.read_bytes() for p in (tmp_path / "step-20").iterdir()}
    other = trainer_like_manager(tmp_path, keep_latest_k=1)  # a second run that did not resume (a new run id)
    assert other.run_id != first.run_id
    assert other.save(20) is None  # refused, with the reason in the log
    assert "a checkpoint of another run" in caplog.text
    assert {p: p.read_bytes() for p in (tmp_path / "step-20").iterdir()} == before
    other.save(30)
    other.save(40)  # keep_latest_k = 1 prunes its own step-30, never the first run's folders
    assert [s for s, _ in step_dirs(tmp_path)] == [10, 20, 40]
    assert {run_id_of(tmp_path / f"step-{s}") for s in (10, 20)} == {first.run_id}


def test_a_resumed_run_keeps_its_checkpoints_run_id_and_prunes_its_own_old_ones(tmp_path: Path) -> None:
    first = trainer_like_manager(tmp_path)
    first.save(10)
    resumed = trainer_like_manager(tmp_path, keep_latest_k=1)
    assert resumed.load_latest() == 10 and resumed.run_id == first.run_id
    resumed.save(20)
    assert [s for s, _ in step_dirs(tmp_path)] == [20]


def test_start_decisions(tmp_path: Path) -> None:
    assert find_resume_point(Checkpoint(), tmp_path, None) is None  # auto, empty folder: step 0
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        find_resume_point(Checkpoint(resume="required"), tmp_path, None)
    trainer_like_manager(tmp_path).save(7)
    (tmp_path / "step-9").mkdir()  # an unfinished save
    point = find_resume_point(Checkpoint(), tmp_path, None)
    assert point is not None and point.step == 7 and point.run_id == run_id_of(tmp_path / "step-7")
    with pytest.raises(ConfigError, match=f"{tmp_path} already holds checkpoints \\(step-7; run "):
        find_resume_point(Checkpoint(resume="never"), tmp_path, None)
    assert (tmp_path / "step-7" / COMPLETE_MARKER).is_file()
    assert find_resume_point(Checkpoint(resume="never", overwrite=True), tmp_path, None) is None
    assert step_dirs(tmp_path, complete_only=False) == []


def resolved(*overrides: tuple[str, str]) -> str:
    cfg = JobConfig()
    for key, value in overrides:
        apply_override(cfg, key, value)
    return to_toml(cfg)


def test_config_changes_are_classified() -> None:
    saved = resolved(("training.seq_len", "64"))
    changes = {c.key: c.kind for c in config_changes(saved, resolved(
        ("training.seq_len", "128"), ("metrics.log_freq", "3"), ("optimizer.lr", "1e-4"), ("model.rope_theta", "5e5"),
        ("model.tie_embeddings", "true"), ("job.seed", "7"), ("data.sources.gsm8k.weight", "3"),
        ("data.sources.ultrachat.weight", "0")))}
    assert changes == {
        "training.seq_len": "guarded", "metrics.log_freq": "harmless", "optimizer.lr": "harmless",
        "model.rope_theta": "guarded", "model.tie_embeddings": "fixed", "job.seed": "fixed",
        "data.sources.gsm8k.weight": "guarded", "data.sources.ultrachat.weight": "guarded",
        "data.sources": "fixed",  # weight 0 drops ultrachat: the loader's saved position has another shape
    }


def test_allowing_a_change_lets_a_guarded_key_through_but_never_a_fixed_one() -> None:
    saved = resolved(("training.seq_len", "64"))
    longer = resolved(("training.seq_len", "128"))
    with pytest.raises(ConfigError, match="training.seq_len: 64 -> 128 .*allow it with --checkpoint.allow_changes"):
        check_resume_config(saved, longer, [], "ckpt")
    assert [c.key for c in check_resume_config(saved, longer, ["training"], "ckpt")] == ["training.seq_len"]
    tied = resolved(("training.seq_len", "64"), ("model.tie_embeddings", "true"))
    with pytest.raises(ConfigError, match="model.tie_embeddings: false -> true .*no setting allows this"):
        check_resume_config(saved, tied, ["model"], "ckpt")
    assert check_resume_config(saved, saved, [], "ckpt") == []


def test_a_save_that_runs_out_of_space_is_removed_and_training_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    manager = trainer_like_manager(tmp_path, keep_latest_k=2)
    manager.save(1)
    real_write = FileSystemWriter.write_data

    def write_then_run_out(self, plan, planner):  # part of a shard lands, then the disk is full
        (Path(self.path) / "__0_0.distcp").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSystemWriter, "write_data", write_then_run_out)
    assert manager.save(2) is None
    assert "could not be written" in caplog.text and "No space left on device" in caplog.text
    assert not (tmp_path / "step-2").exists() and [s for s, _ in step_dirs(tmp_path)] == [1]
    monkeypatch.setattr(FileSystemWriter, "write_data", real_write)
    assert manager.save(3) is not None  # the run goes on, and so do its checkpoints
    assert trainer_like_manager(tmp_path).load_latest() == 3


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 20 MB file system (tmpfs); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True,
                             check=False)
    if mounted.returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint_and_training_going(small_disk: Path, caplog) -> None:
    manager = trainer_like_manager(small_disk, keep_latest_k=1)  # one checkpoint: ~14 MB of this 20 MB disk
    assert manager.save(1) is not None
    assert manager.save(2) is None  # not even tried: less room left than step-1 took
    assert "not saved" in caplog.text and "MB free on the file system" in caplog.text
    assert [s for s, _ in step_dirs(small_disk, complete_only=False)] == [1]
    assert trainer_like_manager(small_disk).load_latest() == 1

    shutil.rmtree(small_disk / "step-1")
    (small_disk / "filler").write_bytes(b"\0" * 12 * 2**20)  # something else fills the disk meanwhile
    fresh = trainer_like_manager(small_disk)  # no previous checkpoint to estimate from: the write itself fails
    assert fresh.save(3) is None
    # torch.save reports the full disk as a RuntimeError of its zip writer, without the errno: still a storage error.
    assert "could not be written" in caplog.text and step_dirs(small_disk, complete_only=False) == []
