"""Who is shown where in the video grid, and who is the active speaker.

Pure logic (no pixels), so the rules of SPEC §2 are testable without decoding anything:
1 participant full frame, 2 side by side, 3-4 a 2x2, 5-9 a 3x3, more than 9 the 9 most
recently active speakers. A tile keeps its slot while its participant stays in the grid;
a newcomer takes the slot of the least recently active one. The active speaker changes
with hysteresis so the highlight does not flicker between words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The grid never shows more tiles than this (3x3).
MAX_TILES = 9


@dataclass(frozen=True)
class Rect:
    """An even-aligned rectangle in output pixels (even so chroma planes line up)."""

    x: int
    y: int
    w: int
    h: int

    def inset(self, by: int) -> Rect:
        """The rectangle shrunk by `by` pixels on every side."""
        return Rect(self.x + by, self.y + by, self.w - 2 * by, self.h - 2 * by)


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) for `count` visible tiles."""
    if count <= 1:
        return 1, 1
    if count == 2:
        return 2, 1
    if count <= 4:
        return 2, 2
    return 3, 3


def tile_rects(count: int, width: int = 1920, height: int = 1080) -> list[Rect]:
    """Cells of the grid for `count` tiles, row by row; edges on even pixels."""
    cols, rows = grid_shape(count)
    xs = [(width * c // cols) & ~1 for c in range(cols + 1)]
    ys = [(height * r // rows) & ~1 for r in range(rows + 1)]
    xs[-1], ys[-1] = width, height
    return [Rect(xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r]) for r in range(rows) for c in range(cols)]


def fit_size(src_w: int, src_h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Largest even size with the source's aspect ratio that fits the box (letterboxing)."""
    scale = min(box_w / src_w, box_h / src_h)
    w = max(2, int(src_w * scale) & ~1)
    h = max(2, int(src_h * scale) & ~1)
    return min(w, box_w & ~1), min(h, box_h & ~1)


class SpeakerTracker:
    """Smoothed speaking levels, last-spoke times and the active speaker, with hysteresis.

    Each participant's level follows its speaking flag with a fast attack and a slow
    release; the active speaker only changes when another participant is clearly louder
    (by `margin`) and the current one has held the highlight for at least `min_hold` s.
    """

    def __init__(
        self,
        attack_s: float = 0.25,
        release_s: float = 1.0,
        on_level: float = 0.5,
        margin: float = 0.2,
        min_hold: float = 1.0,
        highlight_level: float = 0.05,
    ) -> None:
        self.attack_s = attack_s
        self.release_s = release_s
        self.on_level = on_level
        self.margin = margin
        self.min_hold = min_hold
        self.highlight_level = highlight_level
        self.levels: dict[str, float] = {}
        self.last_spoke: dict[str, float] = {}
        self.active: str | None = None
        self._active_since = -math.inf
        self._t: float | None = None

    def note(self, speaking: Mapping[str, bool], t: float) -> None:
        """Feed one audio tick's speaking flags at call time `t` (seconds)."""
        dt = 0.02 if self._t is None else max(0.0, t - self._t)
        self._t = t
        for pid in set(self.levels) | set(speaking):
            on = bool(speaking.get(pid, False))
            level = self.levels.get(pid, 0.0)
            tau = self.attack_s if on else self.release_s
            level += ((1.0 if on else 0.0) - level) * (1.0 - math.exp(-dt / tau)) if dt > 0 else 0.0
            self.levels[pid] = level
            if on:
                self.last_spoke[pid] = t
        self._choose(t)

    def _choose(self, t: float) -> None:
        if not self.levels:
            return
        best = max(self.levels, key=lambda p: (self.levels[p], self.last_spoke.get(p, -math.inf)))
        best_level = self.levels[best]
        if best == self.active or best_level < self.on_level:
            return
        current = self.levels.get(self.active, 0.0) if self.active else 0.0
        held = t - self._active_since
        if self.active is None or (best_level > current + self.margin and held >= self.min_hold):
            self.active, self._active_since = best, t

    def is_speaking(self, pid: str) -> bool:
        """Whether `pid` is speaking now (smoothed: a cough does not count)."""
        return self.levels.get(pid, 0.0) >= self.on_level

    def highlighted(self) -> str | None:
        """The active speaker while their level has not faded out, else None."""
        if self.active is not None and self.levels.get(self.active, 0.0) >= self.highlight_level:
            return self.active
        return None

    def forget(self, pid: str) -> None:
        """A participant left: drop their state, and the highlight if it was theirs."""
        self.levels.pop(pid, None)
        self.last_spoke.pop(pid, None)
        if self.active == pid:
            self.active, self._active_since = None, -math.inf


class GridSlots:
    """Stable assignment of participants to grid slots.

    `slots[i]` is the participant id shown in cell i (None: empty cell). A participant keeps
    their index while they stay; the grid shape follows the number shown; when more than
    `max_tiles` take part, a speaker outside the grid replaces the member that was least
    recently active (spoke or entered the grid longest ago).
    """

    def __init__(self, max_tiles: int = MAX_TILES) -> None:
        self.max_tiles = max_tiles
        self.slots: list[str | None] = []
        self._entered: dict[str, float] = {}

    def members(self) -> list[str]:
        """Participants in the grid, in slot order."""
        return [p for p in self.slots if p is not None]

    def _recency(self, pid: str, last_spoke: Mapping[str, float]) -> float:
        return max(last_spoke.get(pid, -math.inf), self._entered.get(pid, -math.inf))

    def update(
        self,
        participants: Sequence[str],
        last_spoke: Mapping[str, float],
        speaking: Sequence[str],
        t: float,
    ) -> list[str | None]:
        """Recompute slots for the participants present (in join order) at call time `t`."""
        present = set(participants)
        self.slots = [p if p in present else None for p in self.slots]
        for gone in set(self._entered) - present:
            del self._entered[gone]
        shown = min(len(participants), self.max_tiles)
        cols, rows = grid_shape(shown)
        cells = cols * rows if shown else 0
        members = self.members()
        if cells < len(self.slots):
            # The grid shrank: keep members in their order, packed to the front.
            if len(members) > cells:
                members.sort(key=lambda p: self._recency(p, last_spoke), reverse=True)
                keep = set(members[:cells])
                members = [p for p in self.slots if p in keep]
                for p in set(self._entered) - keep:
                    del self._entered[p]
            self.slots = [*members, *([None] * (cells - len(members)))]
        elif cells > len(self.slots):
            self.slots += [None] * (cells - len(self.slots))
        outside = [p for p in participants if p not in self._entered]
        order = {p: i for i, p in enumerate(participants)}
        if len(participants) > self.max_tiles:
            # Not everyone fits: free cells go to the most recently active first.
            outside.sort(key=lambda p: (-last_spoke.get(p, -math.inf), order[p]))
        for pid in outside:
            if None in self.slots and len(self.members()) < shown:
                self._place(pid, self.slots.index(None), t)
        speaking_outside = [p for p in outside if p in speaking and p not in self._entered]
        for pid in speaking_outside:
            victim = min(self.members(), key=lambda p: (self._recency(p, last_spoke), -order.get(p, 0)))
            if self._recency(victim, last_spoke) >= last_spoke.get(pid, -math.inf) or victim in speaking:
                break
            index = self.slots.index(victim)
            del self._entered[victim]
            self._place(pid, index, t)
        return list(self.slots)

    def _place(self, pid: str, index: int, t: float) -> None:
        self.slots[index] = pid
        self._entered[pid] = t
