"""Hub pushes against a stand-in Hub on 127.0.0.1: one commit per checkpoint, retries, failures that never
reach training, retention that waits for pushes, start-up checks, and a token that is never written."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nano.checkpoint.export import export_checkpoint
from nano.checkpoint.hub import (
    HubError,
    HubPusher,
    PushFailed,
    PushTarget,
    check_access,
    is_transient,
    push_folder,
    with_retries,
)
from nano.checkpoint.manager import step_dirs
from nano.config import Hub
from tests.checkpoint.checkpoints import make_checkpoint, trainer_like_manager
from tests.checkpoint.fake_hub import FakeHub, Fault
from tests.distributed import REPO_ROOT, free_port

REPO = "me/nano"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The stand-in Hub, with huggingface_hub in this process and in child processes pointed at it."""
    import huggingface_hub.constants

    with FakeHub() as fake:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        for key, value in {"HF_ENDPOINT": fake.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": fake.token,
                           "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
            monkeypatch.setenv(key, value)
        yield fake


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    return export_checkpoint(make_checkpoint(folder / "ckpt"), folder / "hf")


def test_one_commit_holds_every_file_in_the_step_folder_and_at_the_root(hub: FakeHub, exported: Path) -> None:
    hub.inject(Fault("POST", r"/api/repos/create", status=429, headers={"Retry-After": "1"}))
    hub.inject(Fault("POST", r"/commit/main", status=500, times=2))
    push_folder(exported, 3, PushTarget(REPO), retry_timeout_s=60)
    assert len(hub.commits) == 1
    files = {p.name: sha256(p) for p in exported.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.model", "tokenizer_config.json", "README.md"} <= set(files)
    assert hub.commits[0].files == {**{f"checkpoints/step-3/{n}": h for n, h in files.items()}, **files}
    assert hub.file(REPO, "model.safetensors") == (exported / "model.safetensors").read_bytes()
    assert hub.count("POST", r"/commit/main") == 3  # two injected 500s, then the commit
    assert hub.repos[REPO]["private"]
    create = [t for t, m, p, _ in hub.requests if p == "/api/repos/create"]
    assert create[1] - create[0] >= 0.9  # the 429's Retry-After: 1 was honoured


def test_a_hub_that_keeps_failing_is_given_up_after_the_retry_time(hub: FakeHub, exported: Path) -> None:
    hub.inject(Fault("POST", r"/commit/main", status=503, times=-1))
    start = time.monotonic()
    with pytest.raises(PushFailed, match="committing step 3 to me/nano failed after .* HTTP 503"):
        push_folder(exported, 3, PushTarget(REPO), retry_timeout_s=4)
    assert time.monotonic() - start < 30
    assert hub.count("POST", r"/commit/main") >= 2 and not hub.commits


def test_a_refused_commit_is_not_retried(hub: FakeHub, exported: Path) -> None:
    hub.inject(Fault("POST", r"/commit/main", status=403, times=-1))
    with pytest.raises(PushFailed, match=r"not retryable.*HTTP 403"):
        push_folder(exported, 3, PushTarget(REPO), retry_timeout_s=60)
    assert hub.count("POST", r"/commit/main") == 1


class _Response:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code, self.headers = status, headers or {}


class _HttpError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"status {status}")
        self.response = _Response(status, headers)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    failures = [_HttpError(500), ConnectionError("reset"), _HttpError(429, {"Retry-After": "7"}), _HttpError(502)]
    waits: list[float] = []

    def call() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert with_retries(call, "x", time.monotonic() + 1000, sleep=waits.append, base_s=2.0) == "done"
    assert 0 <= waits[0] <= 2 and 0 <= waits[1] <= 4 and waits[2] == 7 and 0 <= waits[3] <= 16
    assert is_transient(TimeoutError()) and not is_transient(_HttpError(404)) and not is_transient(ValueError())
    with pytest.raises(PushFailed, match="not retryable"):
        with_retries(lambda: (_ for _ in ()).throw(_HttpError(401)), "x", time.monotonic() + 1000, sleep=waits.append)


def test_start_up_check(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    check_access(Hub(push=True, repo_id=REPO))
    assert REPO in hub.repos  # created at start-up
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubError, match="refused the token for me/nano \\(HTTP 401\\)"):
        check_access(Hub(push=True, repo_id=REPO))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    with caplog.at_level(logging.WARNING, logger="nano"):
        check_access(Hub(push=True, repo_id=REPO))
    assert "not reachable" in caplog.text


def test_retention_keeps_a_checkpoint_until_its_push_finished(hub: FakeHub, tmp_path: Path) -> None:
    hub.inject(Fault("POST", r"/commit/main", status=None, delay_s=10))  # a stalled (slow) first commit
    pusher = HubPusher(Hub(push=True, repo_id=REPO, retry_timeout_s=120), tmp_path / "hf_export")
    folder = tmp_path / "checkpoints"
    manager = trainer_like_manager(folder, keep_latest_k=1, on_complete=pusher.on_checkpoint,
                                   protected=pusher.protected)
    for step in (10, 20, 30):
        manager.save(step)
    # keep_latest_k = 1, but steps 10 and 20 are still being exported or pushed: nothing is deleted.
    assert [s for s, _ in step_dirs(folder)] == [10, 20, 30]
    assert pusher.protected() >= {folder / "step-10", folder / "step-20"}
    assert not pusher.finish(timeout_s=300)  # everything landed
    assert pusher.pushed == [10, 20, 30] and not pusher.protected()
    manager.prune()
    assert [s for s, _ in step_dirs(folder)] == [30]
    assert not any((tmp_path / "hf_export").iterdir())  # each export deleted once its push landed
    assert [c.summary for c in hub.commits] == [f"nano checkpoint step {s}" for s in (10, 20, 30)]


# ---------------------------------------------------------------------------------------------------------
# The trainer, end to end


def train(hub: FakeHub, dump: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One training process (as `run_train.sh` starts it on a 1-GPU box) with the push on."""
    return subprocess.run(
        [sys.executable, "-m", "nano.train", "--config", "train_configs/debug_model.toml", "--training.seq_len", "64",
         "--validation.no-enable", "--job.dump_folder", str(dump), "--metrics.log_freq", "1", "--hub.push",
         "--hub.repo_id", REPO, *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def line_index(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def test_training_pushes_in_the_background_and_survives_hub_errors(hub: FakeHub, tmp_path: Path) -> None:
    hub.inject(Fault("POST", r"/commit/main", status=None, delay_s=8))  # the first commit is slow
    hub.inject(Fault("POST", r"/commit/main", status=500))
    hub.inject(Fault("POST", r"/preupload/main", status=429, headers={"Retry-After": "1"}))
    proc = train(hub, tmp_path, "--max-steps", "20", "--checkpoint.interval", "10", "--checkpoint.keep_latest_k", "1")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert [c.summary for c in hub.commits] == [f"nano checkpoint step {s}" for s in (10, 20)]
    root = {path: oid for path, oid in hub.repos[REPO]["branches"]["main"].items() if "/" not in path}
    assert root == {p.removeprefix("checkpoints/step-20/"): oid for p, oid in hub.commits[-1].files.items()
                    if p.startswith("checkpoints/step-20/")}
    lines = proc.stdout.splitlines()
    # Training went on while step 10 was exported and pushed: later steps were logged before it landed.
    queued, landed = line_index(lines, r"step 10 queued"), line_index(lines, r"step 10 landed")
    assert any(re.search(r"step +1[1-9]/20 \|", line) for line in lines[queued:landed])
    assert "all 2 pushes landed" in proc.stdout
    assert not any((tmp_path / "hf_export").iterdir())
    assert [s for s, _ in step_dirs(tmp_path / "checkpoints")] == [20]  # pruned once the pushes were done

    # The repo root is the newest model: transformers loads it and it is the step-60 weights.
    transformers = pytest.importorskip("transformers")
    local = tmp_path / "from_hub"
    local.mkdir()
    for path, oid in root.items():
        (local / path).write_bytes(hub.blobs[oid])
    model = transformers.AutoModelForCausalLM.from_pretrained(local)
    assert model.config.num_hidden_layers == 4

    # The token is nowhere: not in the output, not in any file the run wrote, not in anything it uploaded.
    token = hub.token.encode()
    assert token not in proc.stdout.encode() and token not in proc.stderr.encode()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if token in p.read_bytes()]
    assert not [oid for oid, blob in hub.blobs.items() if token in blob]


def test_a_dead_hub_never_stops_training(hub: FakeHub, tmp_path: Path) -> None:
    hub.inject(Fault("POST", r"^/api/", status=503, times=-1))  # every write fails, from start-up on
    proc = train(hub, tmp_path, "--max-steps", "4", "--checkpoint.interval", "2", "--hub.retry_timeout_s", "2")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert re.search(r"step 4/4 \|", proc.stdout) and not hub.commits
    assert "the Hub is not reachable now (HTTP 503" in proc.stdout  # at start-up: a warning, not a stop
    for step in (2, 4):
        assert re.search(rf"hub: step {step} did not reach me/nano; push it by hand: nano-export \S+step-{step} "
                         rf"\S+hf_export/step-{step} --push me/nano", proc.stdout), proc.stdout[-3000:]
        assert (tmp_path / "checkpoints" / f"step-{step}" / ".complete").is_file()  # nothing lost locally
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    events.Reload()
    assert events.Scalars("hub/failed_pushes")[-1].value == 2


@pytest.mark.parametrize("case", ["no token", "rejected token"])
def test_push_without_a_usable_token_stops_before_the_model_is_built(hub: FakeHub, tmp_path: Path, case: str) -> None:
    env = {"HF_TOKEN": ""} if case == "no token" else {"HF_TOKEN": "hf_wrong_token"}
    proc = train(hub, tmp_path, "--max-steps", "2", env=env)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = "no Hugging Face token was found" if case == "no token" else "refused the token for me/nano (HTTP 401)"
    assert expected in proc.stderr and "--no-push" in proc.stderr
    assert "parameters" not in proc.stdout  # stopped before the model was built
