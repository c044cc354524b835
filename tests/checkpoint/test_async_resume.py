"""Async checkpoints (DCP async_save on a process group of their own) resume exactly like sync ones."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.distributed import REPO_ROOT, free_port

LOSS = re.compile(r"step\s+(\d+)/\d+ \| loss ([\d.]+)")


def train(dump: Path, *extra: str) -> dict[int, str]:
    env = {**os.environ, "NGPU": "2", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["./run_train.sh", "--config", "train_configs/debug_model.toml", "--training.seq_len", "64",
         "--training.micro_batch_size", "4", "--max-steps", "6", "--checkpoint.interval", "3",
         "--checkpoint.keep_latest_k", "0", "--lr_scheduler.warmup_steps", "2", "--metrics.log_freq", "1", "--validation.no-enable",
         "--job.dump_folder", str(dump), *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {int(step): loss for step, loss in LOSS.findall(proc.stdout)}


def test_async_checkpoints_resume_to_the_losses_of_sync_checkpoints(tmp_path: Path) -> None:
    sync = train(tmp_path / "sync")
    asynchronous = train(tmp_path / "async", "--checkpoint.async_mode", "async")
    assert sorted(sync) == list(range(1, 7)) and asynchronous == sync  # saving in the background changes nothing
    for step in (3, 6):
        assert (tmp_path / "async" / "checkpoints" / f"step-{step}" / ".complete").is_file()
    shutil.rmtree(tmp_path / "async" / "checkpoints" / "step-6")  # as if the run died after step 3's save
    resumed = train(tmp_path / "async", "--checkpoint.async_mode", "async", "--resume")
    assert resumed == {step: sync[step] for step in (4, 5, 6)}
