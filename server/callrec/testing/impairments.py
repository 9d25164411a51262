"""Network impairments for media-clock tests: loss, duplicates, reordering, deterministic per seed."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Impairments"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Impairments:
    """Network trouble as a media-clock test sees it.

    `loss`: probability a frame is dropped; `duplicate`: probability it is sent again a
    few frames later; `reorder_window`: frames are shuffled within windows of that many
    positions (network reordering / jitter).
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder_window: int = 0
    seed: int = 1

    def apply(self, items: Sequence[_T]) -> list[_T]:
        """`items` in sending order with the impairments applied (deterministic for a seed)."""
        rng = random.Random(self.seed)
        out = [item for item in items if not (self.loss and rng.random() < self.loss)]
        if self.duplicate:
            for index in range(len(out) - 1, -1, -1):
                if rng.random() < self.duplicate:
                    out.insert(min(len(out), index + rng.randint(1, 6)), out[index])
        if self.reorder_window > 1:
            keyed = [(i + rng.uniform(0, self.reorder_window), item) for i, item in enumerate(out)]
            out = [item for _, item in sorted(keyed, key=lambda pair: pair[0])]
        return out
