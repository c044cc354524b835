"""Distributed checkpoints (DCP): save every N steps, keep the newest K, resume from the newest complete one.

A step folder counts only once its `.complete` marker exists, so a crash during a save can never be
resumed from. Model and optimizer go through `get_state_dict`/`set_state_dict`, which gives the same
(unsharded-FQN) keys for a plain module and for FSDP2/TP DTensors, so a run can resume on another mesh.
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from nano.config import Checkpoint

logger = logging.getLogger("nano")

COMPLETE_MARKER = ".complete"
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


# What a resume must match, with the fix to name when it does not.
LAYOUT_HINTS = {
    "dp_world_size": "the data stream is split per data-parallel rank: resume with the saved number of "
                     "data-parallel ranks (processes / tensor_parallel_degree)",
    "vocab_size": "the model's vocabulary follows the tokenizer: resume with the data.tokenizer it was trained with",
}


class CheckpointManager:
    """Owns the checkpoint folder of one run.

    `layout` (e.g. data-parallel size, vocab size) is saved with every checkpoint and checked before
    anything else is loaded, so a mismatched resume fails with both values named, not a shape error.
    """

    def __init__(self, cfg: Checkpoint, folder: Path, states: dict[str, Stateful], *, layout: dict[str, int],
                 is_rank0: bool) -> None:
        self.cfg, self.folder, self.is_rank0 = cfg, folder, is_rank0
        self.states: dict[str, Any] = {**states, "layout": dict(layout)}
        self.layout = dict(layout)

    def due(self, step: int, last_step: int) -> bool:
        return self.cfg.enable and (step % self.cfg.interval == 0 or step == last_step)

    def save(self, step: int, resolved_config: str) -> Path:
        path = self.folder / f"step-{step}"
        if self.is_rank0 and path.exists():  # a leftover of a crashed save at this step
            shutil.rmtree(path)
        _barrier()
        with _single_process_quiet():
            dcp.save(dict(self.states), checkpoint_id=str(path))
        _barrier()
        if self.is_rank0:
            (path / "config.toml").write_text(resolved_config)
            (path / COMPLETE_MARKER).write_text(f"{step}\n")
            self._prune()
            logger.info("saved checkpoint %s", path)
        _barrier()
        return path

    def latest(self) -> tuple[int, Path] | None:
        complete = step_dirs(self.folder)
        return complete[-1] if complete else None

    def load_latest(self) -> int:
        """Restore every state from the newest complete checkpoint; returns its step (0 if there is none)."""
        found = self.latest()
        if found is None:
            logger.info("no complete checkpoint in %s: starting from step 0", self.folder)
            return 0
        step, path = found
        self._check_layout(path)
        with _single_process_quiet():
            dcp.load(dict(self.states), checkpoint_id=str(path))
        logger.info("resumed from %s (step %d)", path, step)
        return step

    def _check_layout(self, path: Path) -> None:
        probe = {"layout": {key: -1 for key in self.layout}}
        with _single_process_quiet():
            dcp.load(probe, checkpoint_id=str(path))
        for key, now in self.layout.items():
            saved = probe["layout"][key]
            if saved != now:
                raise RuntimeError(f"{path} was saved with {key} = {saved}, this run has {now}: {LAYOUT_HINTS.get(key, '')}")

    def _prune(self) -> None:
        if self.cfg.keep_latest_k <= 0:
            return
        complete = step_dirs(self.folder)
        newest_kept = complete[-self.cfg.keep_latest_k][0] if len(complete) >= self.cfg.keep_latest_k else 0
        for step, path in step_dirs(self.folder, complete_only=False):
            if step < newest_kept:
                shutil.rmtree(path, ignore_errors=True)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def _single_process_quiet():
    """DCP warns on every call without a process group; one process is a supported setup here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
