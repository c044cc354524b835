"""Weighted, seeded, resumable choice of which source the next document comes from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Mixture:
    """Draws a source index per document with probability proportional to its weight.

    The generator state is part of the state dict, so a resumed run draws the same sequence of sources
    as an uninterrupted one.
    """

    def __init__(self, weights: Sequence[float], seed: Sequence[int]) -> None:
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {list(weights)}")
        self.cumulative = np.cumsum(np.asarray(weights, dtype=np.float64) / total)
        self.rng = np.random.default_rng(list(seed))

    def next_source(self) -> int:
        index = int(np.searchsorted(self.cumulative, self.rng.random(), side="right"))
        return min(index, len(self.cumulative) - 1)  # guards against a cumulative sum of 0.9999999

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
