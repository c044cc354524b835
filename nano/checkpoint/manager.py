"""Distributed checkpoints (DCP): save every N steps, keep the newest K, resume from the newest intact one.

A step folder counts only once its `.complete` marker exists, so a crash during a save can never be
resumed from. Model and optimizer go through `get_state_dict`/`set_state_dict`, which gives the same
(unsharded-FQN) keys for a plain module and for FSDP2/TP DTensors, so a run can resume on another mesh.

Besides the DCP files each step folder holds what makes it usable on its own: the resolved `config.toml`,
the `tokenizer.model` the run trained with, and `run.json` (model shape, step, tokens seen, last loss,
the command, the data mix, the run id), which `nano-export` reads. The marker records every file's size
and CRC-32 (nano.checkpoint.integrity).

Starting a run (`find_resume_point`, before anything is built):
- resume = "auto" continues from the newest complete checkpoint in the folder; one whose files do not
  match their sizes and checksums is reported file by file, marked `.corrupt`, and the previous one is
  tried. Its resolved config is compared with this run's (nano.checkpoint.config_diff).
- resume = "never" refuses a folder that already holds checkpoints, unless `checkpoint.overwrite`.
Every run has an id (run.json, and `.run_id` in each step folder from the moment its save begins); a
resumed run keeps the id of its checkpoint. A save never replaces, and pruning never deletes, a
checkpoint another run wrote.

Saving: rank 0 first checks the free disk space against the size of the previous checkpoint. A save that
fails for the storage (no space, I/O error) is removed, the previous checkpoint stays, a warning names the
reason, and training continues.

With `async_mode = "async"`, `dcp.async_save` copies the state to CPU memory and writes it in a background
thread over a process group of its own (so its collectives never interleave with training's); the step
after a save starts as soon as the copy is made. Rank 0 writes the marker once its save finished, which
DCP reaches only after every rank's write result has been gathered, i.e. after all ranks wrote; it
checksums the files in the background too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
import shutil
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from nano.checkpoint.config_diff import check_resume_config
from nano.checkpoint.integrity import check_files, data_files, describe_files, read_manifest
from nano.config import Checkpoint, ConfigError
from nano.guards import disk_space_problem, readable_size
from nano.parallel.ranks import barrier, from_rank0, is_rank0

logger = logging.getLogger("nano")

COMPLETE_MARKER = ".complete"
CORRUPT_MARKER = ".corrupt"  # a complete checkpoint whose files failed verification (the marker, renamed)
OWNER_FILE = ".run_id"
RUN_INFO = "run.json"
CONFIG_FILE = "config.toml"
STEP_DIR = re.compile(r"^step-(\d+)$")


class ModelAndOptimizer(Stateful):
    """Model + optimizer state in the mesh-independent layout that DCP reshards on load."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optimizer": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state_dict["model"], optim_state_dict=state_dict["optimizer"]
        )


class PerRankState(Stateful):
    """An object whose state differs per data-parallel rank (the data loader): each rank saves its own key."""

    def __init__(self, obj: Any, dp_rank: int) -> None:
        self.obj, self.key = obj, f"dp_rank_{dp_rank}"

    def state_dict(self) -> dict[str, Any]:
        return {self.key: pickle.dumps(self.obj.state_dict())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.obj.load_state_dict(pickle.loads(state_dict[self.key]))


def step_dirs(folder: Path, complete_only: bool = True) -> list[tuple[int, Path]]:
    """(step, path) of the step folders, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (not complete_only or (path / COMPLETE_MARKER).exists()):
            found.append((int(match.group(1)), path))
    return sorted(found)


def run_id_of(step_dir: Path) -> str | None:
    """The id of the run that wrote a step folder (None: unknown, e.g. written by an older nano)."""
    try:
        return (step_dir / OWNER_FILE).read_text().strip() or None
    except OSError:
        return None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


# What a resume must match, with the fix to name when it does not.
LAYOUT_HINTS = {
    "dp_world_size": "the data stream is split per data-parallel rank: resume with the saved number of "
                     "data-parallel ranks (processes / tensor_parallel_degree)",
    "vocab_size": "the model's vocabulary follows the tokenizer: resume with the data.tokenizer it was trained with",
}


# ---------------------------------------------------------------------------------------------------------
# Where a run starts


@dataclass(frozen=True)
class ResumePoint:
    step: int
    path: Path
    run_id: str | None


def find_resume_point(cfg: Checkpoint, folder: Path, config_toml: str | None) -> ResumePoint | None:
    """The checkpoint this run continues from (None: start at step 0), decided the same way on every rank.

    Refuses (ConfigError) a fresh start over another run's checkpoints, a resume whose config changes what
    the checkpoint cannot take (see config_diff), and "required" without a checkpoint. `config_toml` is this
    run's resolved config; None skips the comparison.
    """
    complete = from_rank0(step_dirs(folder))  # one listing, so that every rank decides on the same folders
    if cfg.resume == "never":
        if complete and cfg.enable:
            _start_over(folder, complete, cfg.overwrite)
        return None
    for step, path in reversed(complete):
        problems = verify_checkpoint(path)
        if problems:
            _report_corrupt(path, problems)
            continue
        saved_config = path / CONFIG_FILE
        if config_toml is not None and saved_config.is_file():
            changes = check_resume_config(saved_config.read_text(), config_toml, cfg.allow_changes, str(path))
            if changes and is_rank0():
                logger.info("config changes since %s (taken as they are):\n  %s", path,
                            "\n  ".join(c.describe() for c in changes))
        return ResumePoint(step, path, run_id_of(path))
    if complete:
        raise ConfigError(f"no checkpoint in {folder} passed verification (see the errors above): move the damaged "
                          f"step folders away to resume from an older copy, or start over with "
                          f"--checkpoint.resume never --checkpoint.overwrite")
    if cfg.resume == "required":
        raise ConfigError(f"checkpoint.resume = \"required\" (--resume), but {folder} holds no complete checkpoint; "
                          f"check job.dump_folder and checkpoint.folder")
    return None


def _start_over(folder: Path, complete: list[tuple[int, Path]], overwrite: bool) -> None:
    names = ", ".join(p.name for _, p in complete)
    owners = sorted({run_id_of(p) or "unknown" for _, p in complete})
    if not overwrite:
        raise ConfigError(
            f"{folder} already holds checkpoints ({names}; run {', '.join(owners)}) and checkpoint.resume is "
            f"\"never\": a new run there would write its step folders beside them. Continue that run with "
            f"--checkpoint.resume auto, start this one elsewhere (--job.dump_folder), or delete them with "
            f"--checkpoint.overwrite")
    if is_rank0():
        for _, path in step_dirs(folder, complete_only=False):
            shutil.rmtree(path)
        logger.warning("checkpoint.overwrite: deleted the checkpoints in %s (%s) to start over", folder, names)
    barrier()


def verify_checkpoint(path: Path) -> list[str]:
    """Problems with a complete checkpoint's files (empty: intact). Ranks share the reading; all get the result."""
    manifest = read_manifest(path / COMPLETE_MARKER)
    if manifest is None:
        if is_rank0():
            logger.warning("%s records no file sizes or checksums (an older checkpoint): not verified", path)
        return []
    names = sorted(manifest)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = check_files(path, manifest, names[rank::world])
    if world == 1:
        return mine
    gathered: list[list[str]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, mine)
    return sorted(problem for part in gathered for problem in part)


def _report_corrupt(path: Path, problems: list[str]) -> None:
    """Name what is wrong, and take the checkpoint out of the running (its marker becomes `.corrupt`)."""
    if is_rank0():
        logger.error("checkpoint %s is damaged, trying the previous one:\n  %s", path, "\n  ".join(problems))
        try:
            (path / COMPLETE_MARKER).rename(path / CORRUPT_MARKER)
        except OSError as err:
            logger.error("could not mark %s as damaged (%s); it will be verified again next time", path, err)
    barrier()


# ---------------------------------------------------------------------------------------------------------
# The manager


@dataclass
class _PendingSave:
    step: int
    path: Path
    summary: dict[str, Any]
    final: bool
    future: Future  # rank 0: the DCP write, then the checksums of its files


class CheckpointManager:
    """Owns the checkpoint folder of one run.

    `layout` (e.g. data-parallel size, vocab size) is saved with every checkpoint and checked before
    anything else is loaded, so a mismatched resume fails with both values named, not a shape error.
    `files` are written into every step folder, `run_info` + the run id + each save's summary become its
    run.json. `on_complete(step, path, final)` runs on rank 0 once a checkpoint is complete (the Hub push
    hooks in here); `protected()` names folders that retention must keep for now (a push still reading them).
    """

    def __init__(self, cfg: Checkpoint, folder: Path, states: dict[str, Stateful], *, layout: dict[str, int],
                 is_rank0: bool, files: dict[str, bytes] | None = None, run_info: dict[str, Any] | None = None,
                 on_complete: Callable[[int, Path, bool], None] | None = None,
                 protected: Callable[[], set[Path]] | None = None) -> None:
        self.cfg, self.folder, self.is_rank0 = cfg, folder, is_rank0
        self.states: dict[str, Any] = {**states, "layout": dict(layout)}
        self.layout = dict(layout)
        self.files = dict(files or {})
        self.run_info = dict(run_info or {})
        self.run_id = from_rank0(new_run_id())  # a resume replaces it with its checkpoint's
        self.on_complete = on_complete
        self.protected = protected or set
        self._pending: _PendingSave | None = None
        # Async writes run their collectives in a background thread: on a group of their own.
        background = cfg.async_mode == "async"
        self._async_group = dist.new_group(backend="gloo") if background and dist.is_initialized() else None
        self._checksummer = ThreadPoolExecutor(1, "nano-checksums") if background and is_rank0 else None

    def due(self, step: int, last_step: int, stopping: bool = False) -> bool:
        """Save after this step: every `interval` steps, at the last step, and when the run stops early."""
        return self.cfg.enable and (stopping or step % self.cfg.interval == 0 or step == last_step)

    # --- saving

    def save(self, step: int, *, summary: dict[str, Any] | None = None, final: bool = False) -> Path | None:
        """Write step-N (synchronously, or start writing it in the background with async_mode = "async").

        Returns None, after a warning, when the save was skipped or failed for the storage: training goes on
        and the previous checkpoint stays the newest."""
        self.wait()  # one save at a time: the previous async write must be done before its buffers are reused
        path = self.folder / f"step-{step}"
        if not self._start_save(path):
            return None
        summary = dict(summary or {})
        try:
            with single_process_quiet():
                if self.cfg.async_mode == "async":
                    future = dcp.async_save(dict(self.states), checkpoint_id=str(path),
                                            process_group=self._async_group)
                    if self._checksummer is not None:
                        future = self._checksummer.submit(_checksums_after, future, path)
                    self._pending = _PendingSave(step, path, summary, final, future)
                    return path
                dcp.save(dict(self.states), checkpoint_id=str(path))
        except (Exception, CheckpointException) as err:
            self._discard(path, err)
            barrier()
            return None
        barrier()
        completed = self._complete(step, path, summary, final, None)
        barrier()
        return path if completed else None

    def poll(self) -> None:
        """Complete a finished background save (cheap: called every step)."""
        if self._pending is not None and self._pending.future.done():
            self.wait()

    def wait(self) -> None:
        """Block until a background save (if any) is written, then complete it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            result = pending.future.result()
        except (Exception, CheckpointException) as err:
            self._discard(pending.path, err)
            return
        self._complete(pending.step, pending.path, pending.summary, pending.final,
                       result if self._checksummer is not None else None)

    def _start_save(self, path: Path) -> bool:
        """Rank 0 decides whether step-N can be written now and prepares its folder; every rank follows."""
        problem = None
        if self.is_rank0:
            problem = self._save_problem(path)
            if problem is None:
                try:
                    if path.exists():  # our own earlier copy, or a save that never completed
                        shutil.rmtree(path)
                    path.mkdir(parents=True)
                    (path / OWNER_FILE).write_text(self.run_id + "\n")
                except OSError as err:
                    shutil.rmtree(path, ignore_errors=True)
                    problem = f"{type(err).__name__}: {err}"
            if problem is not None:
                logger.warning("checkpoint %s not saved: %s. The newest checkpoint is still %s; training continues",
                               path, problem, self._newest_name())
        return from_rank0(problem) is None

    def _save_problem(self, path: Path) -> str | None:
        owner = run_id_of(path)
        if (path / COMPLETE_MARKER).exists() and owner != self.run_id:
            return f"it is a checkpoint of another run ({owner or 'unknown'}), which nano never replaces"
        previous = [p for _, p in step_dirs(self.folder) if run_id_of(p) == self.run_id and p != path]
        if previous:
            needed = sum(f.stat().st_size for f in previous[-1].iterdir() if f.is_file())
            return disk_space_problem(self.folder, needed)
        return None

    def _discard(self, path: Path, err: BaseException) -> None:
        """A save the storage failed: remove what was written, keep training. Any other error is a bug: raise."""
        if not _is_storage_error(err):
            raise err
        if self.is_rank0:
            shutil.rmtree(path, ignore_errors=True)
            free = readable_size(shutil.disk_usage(self.folder).free) if self.folder.exists() else "?"
            logger.warning("checkpoint %s could not be written (%s; %s free now) and was removed. The newest "
                           "checkpoint is still %s; training continues", path, _describe(err), free,
                           self._newest_name())

    def _complete(self, step: int, path: Path, summary: dict[str, Any], final: bool,
                  dcp_files: dict[str, dict[str, Any]] | None) -> bool:
        """Rank 0: the extra files, run.json, then the marker with every file's size and checksum."""
        if not self.is_rank0:
            return True
        try:
            for name, content in self.files.items():
                (path / name).write_bytes(content)
            run = {**self.run_info, "run_id": self.run_id, **summary, "step": step,
                   "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (path / RUN_INFO).write_text(json.dumps(run, indent=2) + "\n")
            extra = [*self.files, RUN_INFO, OWNER_FILE]
            if dcp_files is None:
                dcp_files = describe_files(path, data_files(path, exclude=set(extra)))
            marker = {"step": step, "run_id": self.run_id, "files": {**dcp_files, **describe_files(path, extra)}}
            (path / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        except OSError as err:
            (path / COMPLETE_MARKER).unlink(missing_ok=True)
            self._discard(path, err)
            return False
        self.prune()
        logger.info("saved checkpoint %s", path)
        if self.on_complete is not None:
            self.on_complete(step, path, final)
        return True

    # --- loading

    def latest(self) -> tuple[int, Path] | None:
        complete = step_dirs(self.folder)
        return complete[-1] if complete else None

    def _newest_name(self) -> str:
        newest = self.latest()
        return str(newest[1]) if newest else "none"

    def load(self, point: ResumePoint | None) -> int:
        """Restore every state from `point` (from find_resume_point) and take over its run id; returns its step."""
        if point is None:
            if self.is_rank0:
                logger.info("starting at step 0 (run %s; checkpoints go to %s)", self.run_id, self.folder)
            return 0
        self._check_layout(point.path)
        with single_process_quiet():
            dcp.load(dict(self.states), checkpoint_id=str(point.path))
        self.run_id = point.run_id or self.run_id
        if self.is_rank0:
            logger.info("resumed from %s (step %d, run %s)", point.path, point.step, self.run_id)
        return point.step

    def load_latest(self) -> int:
        """Restore from the newest intact checkpoint (0 if there is none), whatever config it was saved with."""
        auto = dataclasses.replace(self.cfg, resume="auto")
        return self.load(find_resume_point(auto, self.folder, config_toml=None))

    def _check_layout(self, path: Path) -> None:
        probe = {"layout": {key: -1 for key in self.layout}}
        with single_process_quiet():
            dcp.load(probe, checkpoint_id=str(path))
        for key, now in self.layout.items():
            saved = probe["layout"][key]
            if saved != now:
                raise ConfigError(f"{path} was saved with {key} = {saved}, this run has {now}: "
                                  f"{LAYOUT_HINTS.get(key, '')}")

    # --- retention

    def prune(self) -> None:
        """Keep this run's newest K complete checkpoints, and any checkpoint a push still needs; never touch
        another run's folders."""
        if self.cfg.keep_latest_k <= 0:
            return
        ours = [(step, path) for step, path in step_dirs(self.folder) if run_id_of(path) == self.run_id]
        newest_kept = ours[-self.cfg.keep_latest_k][0] if len(ours) >= self.cfg.keep_latest_k else 0
        protected = self.protected()
        for step, path in step_dirs(self.folder, complete_only=False):
            if step < newest_kept and path not in protected and run_id_of(path) == self.run_id:
                shutil.rmtree(path, ignore_errors=True)


def _checksums_after(write: Future, path: Path) -> dict[str, dict[str, Any]]:
    """Background (rank 0, async mode): wait for the DCP write, then checksum what it wrote."""
    write.result()
    return describe_files(path, data_files(path, exclude={OWNER_FILE}))


def _is_storage_error(err: BaseException) -> bool:
    """The storage failed (no space, quota, I/O error), on any rank; anything else is a bug that must surface."""
    if isinstance(err, CheckpointException):
        return bool(err.failures) and all(_raised_writing(exc, stack) for exc, stack in err.failures.values())
    return isinstance(err, OSError)


def _raised_writing(exc: BaseException, stack: traceback.StackSummary) -> bool:
    """An OSError, or any error raised while DCP's file writer wrote: torch.save reports a full disk as a
    RuntimeError of its zip writer ("unexpected pos 704 vs 598"), without the errno."""
    return isinstance(exc, OSError) or any(Path(frame.filename).match("checkpoint/filesystem.py") for frame in stack)


def _describe(err: BaseException) -> str:
    if isinstance(err, CheckpointException):
        return "; ".join(f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in err.failures.items())
    return f"{type(err).__name__}: {err}"


@contextmanager
def single_process_quiet():
    """DCP warns on every call without a process group; one process is a supported setup here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
