"""Progress you can watch: one console line per `log_freq` steps, the same figures in TensorBoard."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist

from nano.config import Metrics

logger = logging.getLogger("nano")

# Dense bf16 tensor-core peak per device, FLOP/s (vendor datasheets, no sparsity). MFU is reported only
# for devices listed here: a guessed peak would make the figure meaningless.
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.1e12,
    "A10G": 70.0e12,
    "RTX 4090": 165.2e12,
    "RTX 3090": 71.0e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def _global_mean(value: torch.Tensor) -> float:
    if dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


class MetricsLogger:
    """Accumulates per-step figures and reports them every `log_freq` steps (only rank 0 writes)."""

    def __init__(
        self,
        cfg: Metrics,
        tensorboard_dir: Path,
        *,
        flops_per_token: int,
        max_steps: int,
        source_names: list[str],
        device: torch.device,
        rank: int,
        dp_degree: int,
    ) -> None:
        self.cfg = cfg
        self.flops_per_token = flops_per_token
        self.max_steps = max_steps
        self.source_names = source_names
        self.device = device
        self.dp_degree = dp_degree  # tensor-parallel ranks share their tokens: only dp ranks add throughput
        self.is_writer = rank == 0
        self.peak = peak_flops(device)
        self.writer = None
        if self.is_writer and cfg.enable_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tensorboard_dir))
        self._window_start = time.perf_counter()
        self._window_tokens = 0
        self._window_steps = 0
        self._window_loss = 0.0
        self.source_tokens = torch.zeros(len(source_names), dtype=torch.long)

    def reset_window(self) -> None:
        """Restart the throughput clock, e.g. after a checkpoint save so its time isn't counted as training."""
        self._window_start = time.perf_counter()
        self._window_tokens = 0
        self._window_steps = 0
        self._window_loss = 0.0

    def record(
        self, step: int, *, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, tokens: int, tokens_seen: int,
        source_tokens: torch.Tensor,
    ) -> None:
        """Add one optimizer step (`tokens`: trained on by this rank; `tokens_seen`: by all ranks since step 0)."""
        self._window_tokens += tokens
        self._window_steps += 1
        self._window_loss = self._window_loss + loss.detach()  # a tensor sum: no device sync until the report
        self.source_tokens += source_tokens.cpu()
        if step % self.cfg.log_freq and step != self.max_steps:
            return
        elapsed = time.perf_counter() - self._window_start
        world = dist.get_world_size() if dist.is_initialized() else 1
        tokens_per_s = self._window_tokens / elapsed * self.dp_degree  # the whole job
        loss_value = _global_mean(self._window_loss / self._window_steps)  # mean over the steps since the last line
        norm_value = float(grad_norm)
        sources = self.source_tokens.clone()
        if dist.is_initialized():
            dist.all_reduce(sources)
        eta = datetime.timedelta(seconds=int(elapsed / self._window_steps * (self.max_steps - step)))
        parts = [
            f"step {step:>{len(str(self.max_steps))}}/{self.max_steps}",
            f"loss {loss_value:.4f}",
            f"lr {lr:.2e}",
            f"grad {norm_value:.3f}",
            f"{tokens_per_s:,.0f} tok/s",
        ]
        mfu = None
        if self.peak:
            mfu = 100.0 * tokens_per_s * self.flops_per_token / (self.peak * world)
            parts.append(f"mfu {mfu:.1f}%")
        if self.device.type == "cuda":
            parts.append(f"mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f}GiB")
        parts.append(f"eta {eta}")
        if self.is_writer:
            logger.info(" | ".join(parts))
            self._write_scalars(step, loss_value, norm_value, lr, tokens_per_s, tokens_seen, mfu, sources)
        self.reset_window()

    def _write_scalars(
        self, step: int, loss: float, grad_norm: float, lr: float, tokens_per_s: float, tokens_seen: int,
        mfu: float | None, sources: torch.Tensor,
    ) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("loss/train", loss, step)
        self.writer.add_scalar("optim/lr", lr, step)
        self.writer.add_scalar("optim/grad_norm", grad_norm, step)
        self.writer.add_scalar("throughput/tokens_per_s", tokens_per_s, step)
        self.writer.add_scalar("throughput/tokens_seen", tokens_seen, step)
        if mfu is not None:
            self.writer.add_scalar("throughput/mfu_percent", mfu, step)
        for name, count in zip(self.source_names, sources.tolist()):
            self.writer.add_scalar(f"data/tokens/{name}", count, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
