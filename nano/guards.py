"""What keeps a long run going without a person awake: preemption signals, bad steps, hung peers, full disks.

Preemption. SIGTERM and SIGUSR1 (what SLURM, Kubernetes and torchrun send before they kill a job) ask the
run to stop: it finishes the step it is in, saves a checkpoint and exits 0, and a relaunch resumes there.
A signal can reach the ranks at different times, or only some of them, so after every step the ranks
add up their stop flags in one all-reduce of one integer over a CPU (gloo) group of its own: it never
waits for the device, took 0.4 ms per step between two CPU processes (`benchmarks/stop_flag.py`), and
every rank stops after the same step. A second signal exits at once, except one within DUPLICATE_WINDOW_S
of the first: that is the same notice delivered twice (SLURM signals every process of a job, and torchrun
forwards the signal to its workers as well).

Bad steps. Once per optimizer step the mean loss over all ranks and the (already global) gradient norm
come to the host in one transfer. A non-finite value, or a loss above `training.spike_factor` times the
mean of the last `spike_window` accepted steps, skips the optimizer step: parameters and optimizer state
stay as they were, the data and the learning-rate schedule move on. `max_consecutive_skips` skipped steps
in a row save a checkpoint and stop the run with a message (TrainingStopped). With
`training.skip_bad_steps = false` nothing is read per step: the first non-finite gradient norm is remembered
on the device and stops the run (TrainingStopped) at the next progress or checkpoint step, which waits for the
device anyway, before any weights it touched are saved.

Hung peers. Collectives time out after `comm.init_timeout_s` while the job starts (checkpoint loading,
compilation) and after `comm.collective_timeout_s` once the first step is done, so a lost node fails the
job (and torchrun or SLURM can restart it) instead of hanging it.

Full disks. `disk_space_problem` is asked before every checkpoint save (nano.checkpoint.manager).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.device_mesh import DeviceMesh

from nano.config import Comm, Training
from nano.parallel.ranks import is_rank0

logger = logging.getLogger("nano")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DUPLICATE_WINDOW_S = 3.0


class TrainingStopped(RuntimeError):
    """The run cannot go on by itself (its checkpoint is saved); the CLI exits with code 3."""


# ---------------------------------------------------------------------------------------------------------
# Preemption


def _ignore(signum: int, frame: Any) -> None:
    """Installed for the stop signals so that Python's C-level handler writes them to the wakeup pipe."""


class StopSignals:
    """SIGTERM / SIGUSR1 become a stop request; a second one (later than DUPLICATE_WINDOW_S) exits at once.

    Python runs signal handlers only between bytecodes of the main thread, which can sit in one C call (a
    collective, a checkpoint write) for minutes, exactly when a second signal means "now". So the Python
    handler does nothing: Python's C-level handler writes the signal's number to a wakeup pipe, and a
    thread reading that pipe acts at once, whatever the main thread is doing.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._first_at = 0.0
        self._closed = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous = {sig: signal.signal(sig, _ignore) for sig in signals}
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        os.register_at_fork(after_in_child=self._forget_in_child)
        self._thread = threading.Thread(target=self._watch, name="nano-stop-signals", daemon=True)
        self._thread.start()

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _watch(self) -> None:
        while data := os.read(self._read_fd, 64):  # b"" once close() closed the pipe
            for number in data:
                if number in self.signals:
                    self._on_signal(signal.Signals(number))

    def _on_signal(self, sig: signal.Signals) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received, self._first_at = sig, now
            logger.warning("received %s: finishing this step, saving a checkpoint, then exiting "
                           "(send it again to exit at once)", sig.name)
        elif now - self._first_at > DUPLICATE_WINDOW_S:
            logger.warning("received %s again: exiting now, without saving", sig.name)
            for handler in logging.getLogger().handlers + logger.handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(128 + sig)

    def _forget_in_child(self) -> None:
        """A forked child (a data-loader worker) must not write its signals into this process's pipe."""
        if self._closed:
            return
        try:
            signal.set_wakeup_fd(-1)
            for sig in self.signals:
                signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # forked from a thread other than the main one: signals stay as they were
            pass

    def close(self) -> None:
        """Put the previous handlers back (from the main thread)."""
        if self._closed:
            return
        self._closed = True
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._write_fd)  # ends the watching thread
        self._thread.join(timeout=5)
        os.close(self._read_fd)


# ---------------------------------------------------------------------------------------------------------
# Bad steps


def global_loss_and_norm(loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[float, float]:
    """The loss averaged over all ranks and the gradient norm (global already), on the host in ONE transfer.

    This is the step's one host-device sync, and it is cheap because it comes after the whole accumulated
    step: backward and the norm must finish before the optimizer may step anyway, so the device only waits
    while the host enqueues the optimizer step's few kernels, not for the next micro-batches.
    """
    loss = loss.detach().float().reshape(1).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(loss)  # each data-parallel rank has its own loss; all ranks must take the same decision
        loss /= dist.get_world_size()
    loss_value, norm_value = torch.cat([loss, grad_norm.detach().float().reshape(1).to(loss.device)]).tolist()
    return loss_value, norm_value


class BadStepGuard(Stateful):
    """Decides whether an optimizer step is skipped; saved with checkpoints, so a resume decides the same way."""

    def __init__(self, cfg: Training) -> None:
        self.enabled = cfg.skip_bad_steps
        self.spike_factor = cfg.spike_factor
        self.max_consecutive = cfg.max_consecutive_skips
        self.window: deque[float] = deque(maxlen=cfg.spike_window)  # losses of the latest accepted steps
        self.consecutive = 0
        self.total = 0
        self.first_bad_step = 0  # of the current run of skipped steps
        self.last_reason = ""

    def skip(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """True when step `step` must not update the weights (reads loss and norm once; nothing when disabled)."""
        if not self.enabled:
            return False
        loss_value, norm_value = global_loss_and_norm(loss, grad_norm)
        reason = self._reason(loss_value, norm_value)
        if reason is None:
            self.window.append(loss_value)
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.total += 1
        if self.consecutive == 1:
            self.first_bad_step = step
        self.last_reason = reason
        if is_rank0():
            logger.warning("step %d skipped: %s; weights and optimizer state unchanged (%d in a row, %d in total)",
                           step, reason, self.consecutive, self.total)
        return True

    def _reason(self, loss: float, norm: float) -> str | None:
        if not math.isfinite(loss) or not math.isfinite(norm):
            return f"loss {loss:.4g}, gradient norm {norm:.4g}"
        if self.spike_factor > 0 and len(self.window) == self.window.maxlen:
            mean = sum(self.window) / len(self.window)
            if loss > self.spike_factor * mean:
                return (f"loss spike {loss:.4f} > {self.spike_factor:g} x {mean:.4f} (the mean of the last "
                        f"{len(self.window)} steps)")
        return None

    @property
    def diverged(self) -> bool:
        return self.enabled and self.consecutive >= self.max_consecutive

    def stop_message(self, step: int) -> str:
        return (f"stopped at step {step}: steps {self.first_bad_step}-{step} were all skipped (last: "
                f"{self.last_reason}). The checkpoint of step {step} holds the weights after step "
                f"{self.first_bad_step - 1} and the data position after step {step}, and a relaunch resumes from it: "
                f"lower optimizer.lr first (or raise training.spike_factor if the loss rose for a known reason). If "
                f"those weights are already damaged, move the newer step folders out of the checkpoint folder to "
                f"resume from an earlier checkpoint.")

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "consecutive": self.consecutive, "total": self.total,
                "first_bad_step": self.first_bad_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.window.clear()
        self.window.extend(state_dict["window"])
        self.consecutive, self.total = int(state_dict["consecutive"]), int(state_dict["total"])
        self.first_bad_step = int(state_dict["first_bad_step"])


class DeferredNonFiniteCheck:
    """Remembers, on the device, the first step whose gradient norm was inf or NaN; read only by `check`."""

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None  # 0: every norm so far was finite
        self.norm: torch.Tensor | None = None

    def note(self, step: int, grad_norm: torch.Tensor) -> None:
        if self.step is None:
            self.step = torch.zeros((), dtype=torch.long, device=grad_norm.device)
            self.norm = torch.zeros((), device=grad_norm.device)
        first = (self.step == 0) & ~torch.isfinite(grad_norm)
        self.step = torch.where(first, step, self.step)
        self.norm = torch.where(first, grad_norm.detach().float(), self.norm)

    def check(self) -> None:
        if self.step is not None and (step := int(self.step)):
            raise TrainingStopped(f"step {step}: gradient norm is {float(self.norm)}, and training.skip_bad_steps is "
                                  f"off, so its update was applied; nothing from step {step} on was saved. Lower "
                                  f"optimizer.lr (or turn training.skip_bad_steps on) and relaunch: the run resumes "
                                  f"from its last checkpoint.")


# ---------------------------------------------------------------------------------------------------------
# Hung peers


def set_collective_timeout(seconds: float, mesh: DeviceMesh | None, extra_groups: tuple = ()) -> None:
    """Apply `seconds` to the default group and every group of the mesh (and `extra_groups`)."""
    if not dist.is_initialized():
        return
    groups: list[Any] = [None, *extra_groups]  # None: the default group
    if mesh is not None:
        groups += [mesh[name].get_group() for name in mesh.mesh_dim_names or ()]
        groups += [mesh["dp"].get_group()]  # the flattened data-parallel dimension (nano.parallel.dims)
    for group in groups:
        # Private, but the one way to change a live group's timeout (torchtitan does the same).
        dist.distributed_c10d._set_pg_timeout(timedelta(seconds=seconds), group)


# ---------------------------------------------------------------------------------------------------------
# Full disks


def disk_space_problem(folder: Path, needed_bytes: int, margin: float = 0.05) -> str | None:
    """A message when the file system holding `folder` has less free space than `needed_bytes` (+5%)."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free >= needed_bytes * (1 + margin):
        return None
    return (f"{readable_size(free)} free on the file system of {folder}, a checkpoint needs about "
            f"{readable_size(needed_bytes)}")


def readable_size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------------------
# The training loop's view


class Guards:
    """The loop asks `skip_step` before the optimizer step, `should_stop` after it, and `check_finite` before
    reporting or saving."""

    def __init__(self, training: Training, comm: Comm, mesh: DeviceMesh | None) -> None:
        self.steps = BadStepGuard(training)
        self.deferred = DeferredNonFiniteCheck()
        self.signals = StopSignals()
        self.collective_timeout_s = comm.collective_timeout_s
        self.mesh = mesh
        self._stop_group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._first_step_done = False
        self.preempted = False

    def skip_step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        if not self.steps.enabled:
            self.deferred.note(step, grad_norm)
            return False
        return self.steps.skip(step, loss, grad_norm)

    def check_finite(self) -> None:
        """On steps that wait for the device anyway: raise if a non-finite step went unskipped."""
        self.deferred.check()

    def should_stop(self) -> bool:
        """After each step: stop now (save first) because a rank was signalled or too many steps were skipped.

        Every rank returns the same answer: the stop flags are summed over all ranks, and the bad-step
        guard decides from values that are the same on every rank.
        """
        flag = torch.tensor([int(self.signals.requested)])
        if self._stop_group is not None:
            dist.all_reduce(flag, group=self._stop_group)
        if not self._first_step_done:  # every rank is past start-up now: from here on a stall means a hang
            self._first_step_done = True
            extra = (self._stop_group,) if self._stop_group is not None else ()
            set_collective_timeout(self.collective_timeout_s, self.mesh, extra)
        self.preempted = bool(flag.item())
        return self.preempted or self.steps.diverged

    def check(self, step: int) -> None:
        """After the stop's checkpoint is saved: raise if the run stopped for bad steps."""
        if self.steps.diverged:
            raise TrainingStopped(self.steps.stop_message(step))

    def close(self) -> None:
        self.signals.close()
