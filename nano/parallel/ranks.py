"""Which rank decides: rank 0 takes decisions that every rank must share (file listings, save checks)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def is_rank0() -> bool:
    """True on rank 0, and in a process that is not part of a group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable values; no-op for one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
