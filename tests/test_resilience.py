"""Runs that survive the night, end to end through run_train.sh and scripts/slurm.sbatch on CPU ranks (gloo).

One set of uninterrupted reference runs (1 process, TP 2, FSDP 2, HSDP 2x1; each pair started at the same
time) is compared with: each other (the same seed gives the same model on any mesh), two "nodes" on this
machine started by the SLURM script, preempted by SIGUSR1 and requeued, and one process stopped by SIGTERM,
killed with -9 and relaunched without flags. Losses come from metrics.jsonl (every step, full precision);
a resumed run appends, so a step that ran twice must have had the same loss both times.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from nano.train import main
from tests.distributed import REPO_ROOT, free_port

STEPS = 6
COMMON = ["--config", "train_configs/debug_model.toml", "--training.seq_len", "64", "--training.micro_batch_size", "4",
          "--max-steps", str(STEPS), "--metrics.log_freq", "1", "--checkpoint.interval", "2",
          "--checkpoint.keep_latest_k", "0", "--lr_scheduler.warmup_steps", "2", "--validation.no-enable",
          "--sampling.prompts", ""]
MESHES = {
    "one_process": (1, []),
    "tp2": (2, ["--parallelism.tensor_parallel_degree", "2"]),
    "fsdp2": (2, []),
    "hsdp2x1": (2, ["--parallelism.data_parallel_replicate_degree", "2"]),
}


def env(**extra: str) -> dict[str, str]:
    """This machine's environment without a fixed rendezvous, so launches pick free ports."""
    base = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "RDZV_ENDPOINT")}
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **extra}


def start(dump: Path, *extra: str, nproc: int = 1) -> subprocess.Popen:
    log = open(dump.with_suffix(".log"), "ab")  # noqa: SIM115 - closed by the process's end
    return subprocess.Popen(["./run_train.sh", *COMMON, "--job.dump_folder", str(dump), *extra], cwd=REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env=env(NGPU=str(nproc)))


def output(dump: Path) -> str:
    return dump.with_suffix(".log").read_text(errors="replace")


def wait_for(dump: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in output(dump):
        assert proc.poll() is None, f"ended before {text!r}:\n{output(dump)[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{output(dump)[-3000:]}"
        time.sleep(0.05)


def finish(dump: Path, proc: subprocess.Popen, expect: int = 0) -> str:
    code = proc.wait(timeout=600)
    assert code == expect, f"exit {code}, expected {expect}:\n{output(dump)[-4000:]}"
    return output(dump)


def losses(dump: Path) -> dict[int, list[float]]:
    """Every logged training loss per step (a step appears again after a resume)."""
    found: dict[int, list[float]] = {}
    for line in (dump / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss/train" in record:
            found.setdefault(record["step"], []).append(record["loss/train"])
    return found


def complete_steps(dump: Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("step-")) for p in (dump / "checkpoints").glob("step-*/.complete"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs, two at a time started together (standalone rendezvous: no port given)."""
    root = tmp_path_factory.mktemp("reference")
    dumps = {name: root / name for name in MESHES}
    for pair in (("one_process", "tp2"), ("fsdp2", "hsdp2x1")):
        procs = {name: start(dumps[name], *MESHES[name][1], nproc=MESHES[name][0]) for name in pair}
        for name, proc in procs.items():
            finish(dumps[name], proc)
    return dumps


def single(values: dict[int, list[float]]) -> dict[int, float]:
    assert all(len(v) == 1 for v in values.values()), values
    return {step: v[0] for step, v in values.items()}


def test_two_runs_started_together_finish_and_tensor_parallel_trains_like_one_process(reference) -> None:
    one, tp = single(losses(reference["one_process"])), single(losses(reference["tp2"]))
    assert sorted(one) == list(range(1, STEPS + 1)) and sorted(tp) == sorted(one)
    for step in range(1, 7):
        assert tp[step] == pytest.approx(one[step], rel=1e-5), (step, one, tp)


def test_fsdp_and_hsdp_train_alike(reference) -> None:
    fsdp, hsdp = single(losses(reference["fsdp2"])), single(losses(reference["hsdp2x1"]))
    assert sorted(fsdp) == list(range(1, STEPS + 1))
    for step in fsdp:
        assert hsdp[step] == pytest.approx(fsdp[step], rel=1e-5), (step, fsdp, hsdp)


FAKE_SRUN = """#!/bin/bash
# Stand-in for srun on one machine: the command once per node of the job; USR1/TERM passed on, as srun does.
while [[ "$1" == --* ]]; do shift; done
pids=()
trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid" && code=0 || code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  (( code == 0 )) || status=$code
done
exit $status
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1" in
  show) for ((n = 0; n < SLURM_JOB_NUM_NODES; n++)); do echo 127.0.0.1; done ;;  # every node is this machine
  requeue) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
esac
"""


def sbatch(tmp_path: Path, dump: Path) -> subprocess.Popen:
    """scripts/slurm.sbatch as SLURM would run it for a 2-node job, srun and scontrol played on this machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, script in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(stat.S_IRWXU)
    job = env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_NUM_NODES="2",
              SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(REPO_ROOT), NGPU="1", RDZV_PORT=str(free_port()),
              CONFIG="train_configs/debug_model.toml", MAX_RESTARTS="0", FAKE_SLURM_LOG=str(tmp_path / "slurm.log"))
    log = open(dump.with_suffix(".log"), "ab")  # noqa: SIM115
    return subprocess.Popen(["bash", "scripts/slurm.sbatch", *COMMON[2:], "--job.dump_folder", str(dump)],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=job)


def test_two_nodes_from_the_slurm_script_preempted_requeued_resumed_match_one_node(reference, tmp_path: Path) -> None:
    dump = tmp_path / "two_nodes"
    job = sbatch(tmp_path, dump)
    wait_for(dump, f"step 1/{STEPS}", job)
    job.send_signal(signal.SIGUSR1)  # what SLURM sends the batch script 5 minutes before the time limit
    job.wait(timeout=600)  # torchrun reports the signal as its own failure; the workers exited 0 after saving
    log = output(dump)
    assert (tmp_path / "slurm.log").read_text() == "requeue 4242\n", log[-3000:]
    stopped = max(losses(dump))
    assert stopped < STEPS and complete_steps(dump)[-1] == stopped  # both nodes saved the step they stopped at
    assert log.count("received SIGUSR1") >= 2  # every rank heard it (from torchrun, which srun passed it to)

    requeued = sbatch(tmp_path, dump)
    finish(dump, requeued)
    assert f"resumed from {dump / 'checkpoints' / f'step-{stopped}'}" in output(dump)
    one_node = single(losses(reference["fsdp2"]))
    for step, values in losses(dump).items():
        assert values == [one_node[step]] * len(values), (step, values, one_node[step])
    assert sorted(losses(dump)) == list(range(1, STEPS + 1))


def test_sigterm_saves_and_exits_0_then_kill_9_and_a_plain_relaunch_retrace_the_uninterrupted_run(
        reference, tmp_path: Path) -> None:
    dump = tmp_path / "interrupted"
    run = start(dump)
    wait_for(dump, f"step 1/{STEPS}", run)
    run.send_signal(signal.SIGTERM)
    finish(dump, run, expect=0)
    stopped = max(losses(dump))
    assert complete_steps(dump) == [s for s in (2, 4, 6) if s < stopped] + [stopped]  # saved where it stopped
    assert "received SIGTERM" in output(dump)

    run = start(dump)  # the same command: it resumes by itself
    wait_for(dump, f"saved checkpoint {dump / 'checkpoints' / 'step-4'}", run)
    run.kill()  # kill -9: no chance to save anything
    assert run.wait() == -signal.SIGKILL and complete_steps(dump)[-1] == 4

    finish(dump, start(dump))
    assert f"resumed from {dump / 'checkpoints' / 'step-4'}" in output(dump)
    uninterrupted = single(losses(reference["one_process"]))
    for step, values in losses(dump).items():  # bit for bit, also for the steps that ran twice
        assert values == [uninterrupted[step]] * len(values), (step, values, uninterrupted[step])
    assert sorted(losses(dump)) == list(range(1, STEPS + 1))


def finished_run_copy(reference: dict[str, Path], tmp_path: Path) -> Path:
    """A finished one-process run's folder holding its last checkpoint (a copy: these tests must not touch it)."""
    dump = tmp_path / "copy"
    last = Path("checkpoints") / f"step-{STEPS}"
    shutil.copytree(reference["one_process"] / last, dump / last)
    return dump


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def test_a_fresh_start_over_another_runs_checkpoints_is_refused_and_deletes_nothing(
        reference, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dump = finished_run_copy(reference, tmp_path)
    before = snapshot(dump)
    assert main([*COMMON, "--job.dump_folder", str(dump), "--checkpoint.resume", "never"]) == 2
    error = capsys.readouterr().err
    assert f"{dump / 'checkpoints'} already holds checkpoints (step-{STEPS}" in error
    assert "--checkpoint.overwrite" in error
    assert snapshot(dump) == before


@pytest.mark.parametrize(("change", "named"), [
    (["--training.seq_len", "128"], "training.seq_len: 64 -> 128"),
    (["--model.tie_embeddings"], "model.tie_embeddings: false -> true"),
])
def test_a_resume_that_changes_the_model_or_the_data_stops_naming_the_key(
        reference, tmp_path: Path, capsys: pytest.CaptureFixture, change: list[str], named: str) -> None:
    dump = finished_run_copy(reference, tmp_path)
    assert main([*COMMON, "--job.dump_folder", str(dump), *change]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot resume from") and named in error, error


def test_a_resume_with_a_harmless_change_prints_it_and_continues(
        reference, tmp_path: Path, caplog: pytest.LogCaptureFixture, one_thread) -> None:
    dump = finished_run_copy(reference, tmp_path)
    caplog.set_level("INFO", logger="nano")
    assert main([*COMMON, "--job.dump_folder", str(dump), "--metrics.log_freq", "3", "--max-steps", str(STEPS + 1)]) == 0
    assert "metrics.log_freq: 1 -> 3" in caplog.text and f"training.max_steps: {STEPS} -> {STEPS + 1}" in caplog.text
    assert f"resumed from {dump / 'checkpoints' / f'step-{STEPS}'}" in caplog.text
    assert (dump / "checkpoints" / f"step-{STEPS + 1}" / ".complete").is_file()


def test_one_process_shows_nanos_error_alone_with_its_exit_code() -> None:
    proc = subprocess.run(["./run_train.sh", "--config", "train_configs/debug_model.toml", "--training.seq_len", "0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env(NGPU="1"), check=False)
    assert proc.returncode == 2
    assert proc.stderr == "error: training.seq_len must be > 0, got 0\n"
