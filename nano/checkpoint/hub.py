"""Checkpoints to the Hugging Face Hub, in the background, without ever stalling or stopping training.

Layout: every pushed checkpoint is one commit on `hub.revision` that writes the exported folder twice, to
`checkpoints/step-N/` (`hub.path_in_repo`) and to the repo root, so `from_pretrained(repo_id)` gives the
newest model and `from_pretrained(repo_id, subfolder="checkpoints/step-N")` any earlier one. The root copy
costs no upload: LFS stores each file once by content.

Start-up (`check_access`, rank 0, before any weight is built): no token -> stop with how to set one; the
token rejected (401/403) -> stop; the Hub unreachable -> a warning, pushes retry later.

During training (`HubPusher`, rank 0 only): each checkpoint due for a push is handed to a worker thread,
which runs `nano-export CHECKPOINT EXPORT --push REPO` as a child process. The export and the upload
therefore never hold the training process's interpreter or its process group, and a hung upload can be
killed. The child retries transient failures (5xx, 429 with Retry-After, timeouts, connection errors) with
exponential backoff and jitter around `create_repo` and `create_commit` (huggingface_hub retries only
pre-upload and LFS transfers itself), and gives up after `hub.retry_timeout_s`. A checkpoint stays
protected from `keep_latest_k` until its push finished; an export folder is deleted only after its push
landed. The token is read from HF_TOKEN or the `hf auth login` cache by huggingface_hub and never passed
on a command line, logged or written anywhere by nano.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nano.config import ConfigError, Hub
from nano.parallel.ranks import from_rank0

logger = logging.getLogger("nano")
T = TypeVar("T")

TRANSIENT_STATUS = {408, 409, 423, 425, 429, 500, 502, 503, 504}
START_UP_TIMEOUT_S = 60.0
MAX_BACKOFF_S = 300.0


class HubError(ConfigError):
    """Pushing cannot work as configured (no token, token rejected, no write access); found at start-up."""


class PushFailed(RuntimeError):
    """A push that kept failing until its retry time ran out, or failed permanently."""


@dataclass(frozen=True)
class PushTarget:
    repo_id: str
    revision: str = "main"
    private: bool = True
    path_in_repo: str = "checkpoints/step-{step}"
    update_root: bool = True

    @classmethod
    def from_config(cls, cfg: Hub) -> PushTarget:
        return cls(repo_id=cfg.repo_id, revision=cfg.revision, private=cfg.private, path_in_repo=cfg.path_in_repo)


# ---------------------------------------------------------------------------------------------------------
# Errors: which are worth retrying


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection errors and timeouts of whichever HTTP client this huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx", "requests"):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        errors.append(getattr(lib, "TransportError", None) or getattr(lib, "RequestException"))
    return tuple(errors)


def http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def retry_after_s(err: BaseException) -> float | None:
    """The server's Retry-After (seconds form) on a 429/503, if it sent one."""
    response = getattr(err, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def is_transient(err: BaseException) -> bool:
    status = http_status(err)
    if status is not None:
        return status in TRANSIENT_STATUS or status >= 500
    return isinstance(err, _transport_errors())


def with_retries(call: Callable[[], T], what: str, deadline: float, *, sleep: Callable[[float], None] = time.sleep,
                 base_s: float = 2.0) -> T:
    """`call()` until it succeeds; transient errors wait (exponential backoff, full jitter, or the server's
    Retry-After) and try again until `deadline` (time.monotonic()); anything else fails at once."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as err:  # classified below: the Hub client raises several families
            attempt += 1
            wait = retry_after_s(err)
            if wait is None:
                wait = random.uniform(0, min(MAX_BACKOFF_S, base_s * 2 ** (attempt - 1)))
            transient = is_transient(err)
            if not transient or time.monotonic() + wait > deadline:
                reason = "" if transient else " (not retryable)"
                raise PushFailed(f"{what} failed after {attempt} attempt(s){reason}: {describe(err)}") from err
            logger.warning("hub: %s failed (%s); retry %d in %.1fs", what, describe(err), attempt, wait)
            sleep(wait)


def describe(err: BaseException) -> str:
    status = http_status(err)
    first_line = (str(err).strip().splitlines() or [""])[0][:300]
    return f"HTTP {status}: {first_line}" if status is not None else f"{type(err).__name__}: {first_line}"


# ---------------------------------------------------------------------------------------------------------
# Start-up check


def check_access(cfg: Hub) -> None:
    """Stop now if pushing cannot work (no token, a rejected token, no write access); warn if the Hub is
    unreachable. Bounded by START_UP_TIMEOUT_S: a Hub that does not answer is a warning, not a hang."""
    from huggingface_hub import get_token

    if not get_token():
        raise HubError(
            "hub.push is on but no Hugging Face token was found: create a token with write access at "
            "https://huggingface.co/settings/tokens and `export HF_TOKEN=hf_...` (or run `hf auth login`), "
            "or train without pushing: --no-push")
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=_contact_hub, args=(cfg, outcome), daemon=True, name="nano-hub-check")
    worker.start()
    worker.join(START_UP_TIMEOUT_S)
    if worker.is_alive():
        logger.warning("hub: no answer from the Hub within %.0fs; training goes on and pushes will retry",
                       START_UP_TIMEOUT_S)
        return
    err = outcome.get("error")
    if err is None:
        logger.info("hub: pushing to %s (revision %s) as %s", cfg.repo_id, cfg.revision, outcome["user"])
        return
    status = http_status(err)
    if status in (401, 403):
        raise HubError(
            f"hub.push: the Hub refused the token for {cfg.repo_id} (HTTP {status}): use a token with write access "
            f"to that namespace (HF_TOKEN or `hf auth login`), fix hub.repo_id, or pass --no-push")
    logger.warning("hub: the Hub is not reachable now (%s); training goes on and pushes will retry",
                   describe(err))


def _contact_hub(cfg: Hub, outcome: dict[str, Any]) -> None:
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        outcome["user"] = api.whoami().get("name", "?")
        api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
    except Exception as err:  # reported by check_access, on the training thread
        outcome["error"] = err


# ---------------------------------------------------------------------------------------------------------
# One push: one commit


def push_folder(folder: Path, step: int, target: PushTarget, *, retry_timeout_s: float) -> str:
    """Commit an exported folder to `checkpoints/step-N/` and the repo root in one commit; returns its id."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # progress bars would flood the training log; the result is logged once
    deadline = time.monotonic() + retry_timeout_s
    api = HfApi()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise PushFailed(f"{folder} holds no files to push")
    prefixes = [target.path_in_repo.format(step=step).strip("/")]
    if target.update_root:
        prefixes.append("")

    def commit() -> Any:
        # Operations are single-use in huggingface_hub: build them anew for every attempt.
        operations = [CommitOperationAdd(path_in_repo=f"{prefix}/{p.relative_to(folder)}".lstrip("/"),
                                         path_or_fileobj=str(p)) for prefix in prefixes for p in files]
        return api.create_commit(target.repo_id, operations, commit_message=f"nano checkpoint step {step}",
                                 revision=target.revision)

    with_retries(lambda: api.create_repo(target.repo_id, private=target.private, exist_ok=True),
                 f"creating {target.repo_id}", deadline)
    info = with_retries(commit, f"committing step {step} to {target.repo_id}", deadline)
    logger.info("hub: pushed step %d to %s (%s), commit %s", step, target.repo_id, ", ".join(p or "root" for p in prefixes),
                getattr(info, "oid", "?"))
    return str(getattr(info, "oid", ""))


# ---------------------------------------------------------------------------------------------------------
# The background pusher (rank 0)


def build_pusher(cfg: Hub, export_folder: Path, *, is_rank0: bool) -> HubPusher | None:
    """None with push off. Otherwise rank 0 checks access (every rank stops with its message if it fails)
    and starts the background worker."""
    if not cfg.push:
        return None
    error = None
    if is_rank0:
        try:
            check_access(cfg)
        except HubError as err:
            error = str(err)
    error = from_rank0(error)
    if error:
        raise HubError(error)
    return HubPusher(cfg, export_folder) if is_rank0 else None


@dataclass
class PushJob:
    step: int
    checkpoint: Path
    export: Path


class HubPusher:
    """Rank 0's background worker: export + push each due checkpoint in a child process, one at a time."""

    def __init__(self, cfg: Hub, export_folder: Path) -> None:
        self.cfg, self.export_folder = cfg, export_folder
        self.target = PushTarget.from_config(cfg)
        self.saves = 0
        self.failed: list[PushJob] = []
        self.pushed: list[int] = []
        self._jobs: queue.Queue[PushJob | None] = queue.Queue()
        self._in_flight: dict[Path, PushJob] = {}  # by checkpoint folder: queued, exporting or pushing
        self._lock = threading.Lock()
        self._child: subprocess.Popen[str] | None = None
        self._worker = threading.Thread(target=self._run, daemon=True, name="nano-hub-push")
        self._worker.start()

    def on_checkpoint(self, step: int, checkpoint: Path, final: bool) -> None:
        """Called when a checkpoint is complete: queue it if it is due (every N-th save, and the last one)."""
        self.saves += 1
        if not (final or self.saves % self.cfg.every_n_saves == 0):
            return
        job = PushJob(step=step, checkpoint=checkpoint, export=self.export_folder / checkpoint.name)
        with self._lock:
            self._in_flight[checkpoint] = job
        self._jobs.put(job)
        logger.info("hub: step %d queued for push to %s", step, self.cfg.repo_id)

    def protected(self) -> set[Path]:
        """Checkpoints whose export or push has not finished: retention must keep them."""
        with self._lock:
            return set(self._in_flight)

    def scalars(self) -> dict[str, float]:
        with self._lock:
            return {"hub/pushed": float(len(self.pushed)), "hub/failed_pushes": float(len(self.failed)),
                    "hub/pending": float(len(self._in_flight))}

    def finish(self, timeout_s: float) -> list[PushJob]:
        """Wait up to `timeout_s` for queued pushes; report and return the checkpoints that did not land."""
        self._jobs.put(None)
        self._worker.join(timeout_s)
        with self._lock:
            not_landed = [*self.failed, *self._in_flight.values()]
        if self._worker.is_alive() and self._child is not None:
            self._child.kill()
        for job in sorted(not_landed, key=lambda j: j.step):
            logger.warning("hub: step %d did not reach %s; push it by hand: nano-export %s %s --push %s",
                           job.step, self.cfg.repo_id, job.checkpoint, job.export, self.cfg.repo_id)
        if not not_landed and self.pushed:
            logger.info("hub: all %d pushes landed on %s", len(self.pushed), self.cfg.repo_id)
        return not_landed

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                ok = self._push(job)
            except Exception as err:  # the worker must survive anything one push does
                logger.error("hub: push of step %d failed: %s", job.step, describe(err))
                ok = False
            with self._lock:
                if ok:
                    self.pushed.append(job.step)
                else:
                    self.failed.append(job)
                self._in_flight.pop(job.checkpoint, None)
            if ok:
                shutil.rmtree(job.export, ignore_errors=True)

    def _push(self, job: PushJob) -> bool:
        """Export and push in a child process; False (never an exception) when it did not land."""
        t = self.target
        cmd = [sys.executable, "-m", "nano.checkpoint.export", str(job.checkpoint), str(job.export),
               "--push", t.repo_id, "--revision", t.revision, "--path-in-repo", t.path_in_repo,
               "--retry-timeout", str(self.cfg.retry_timeout_s)]
        cmd += ["--private"] if t.private else []
        if shutil.which("nice"):  # the export must not take CPU from the data loader and the training ranks
            cmd = ["nice", "-n", "10", *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.monotonic()
        self._child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        # A hard bound on top of the child's own retry deadline, for an upload that hangs in a socket.
        killer = threading.Timer(self.cfg.retry_timeout_s + 600, self._child.kill)
        killer.start()
        assert self._child.stdout is not None
        for line in self._child.stdout:
            logger.info("hub[step %d]: %s", job.step, line.rstrip())
        code = self._child.wait()
        killer.cancel()
        if code != 0:
            logger.error("hub: push of step %d to %s failed (exit %s after %.0fs); training goes on",
                         job.step, t.repo_id, code, time.monotonic() - start)
            return False
        logger.info("hub: step %d landed on %s in %.0fs", job.step, t.repo_id, time.monotonic() - start)
        return True
