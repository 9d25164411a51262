"""Admission by cost: a node takes no more work than it can keep at real time (cluster mode, SPEC §8).

Why a cost model and not just counts: an audio participant and a 1080p composite differ by two orders
of magnitude in CPU, and the capacity benchmark measured both on this machine (`make bench`: about 80
audio participants at real time per core-sized node, one sustained composite). The load of a node is

    audio participants / capacity_audio_participants + mp4 recordings / capacity_video_composites

(1.0 = everything it can keep at real time). A new call is refused at `ceiling` (0.8 by default: the
headroom absorbs the participants that join calls already admitted and bursts such as chunk rotations);
a participant joining a call already here is refused only past 1.0; an mp4 recording starts only if the
node stays under the ceiling with it. Each refusal is RESOURCE_EXHAUSTED with the figures and the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from callrec.core.errors import ResourceExhausted

__all__ = ["Admission", "Capacity"]


@dataclass(frozen=True)
class Capacity:
    """What one node keeps at real time; 0 for a kind means "not limited by cost"."""

    audio_participants: float = 0.0
    video_composites: float = 0.0
    ceiling: float = 0.8

    @property
    def enabled(self) -> bool:
        """Whether any cost is set (a node without a capacity admits by the count limits only)."""
        return self.audio_participants > 0 or self.video_composites > 0


class Admission:
    """Checks new calls, participants and mp4 recordings against the node's capacity."""

    def __init__(self, capacity: Capacity, participants: Callable[[], int], composites: Callable[[], int],
                 node: str = "this node") -> None:
        if not 0 < capacity.ceiling <= 1:
            raise ValueError(f"admission_ceiling must be in (0, 1]; got {capacity.ceiling}")
        self.capacity = capacity
        self.participants = participants
        self.composites = composites
        self.node = node

    def _cost(self, participants: int, composites: int) -> float:
        cap = self.capacity
        audio = participants / cap.audio_participants if cap.audio_participants > 0 else 0.0
        video = composites / cap.video_composites if cap.video_composites > 0 else 0.0
        return audio + video

    def load(self) -> float:
        """The node's load now (1.0 = all it keeps at real time)."""
        return self._cost(self.participants(), self.composites())

    def _refuse(self, what: str, load: float, limit: float, setting: str) -> ResourceExhausted:
        cap = self.capacity
        return ResourceExhausted(
            f"{self.node} is full: {what} would take it to {load:.0%} of what it keeps at real time "
            f"({self.participants()} audio participants of {cap.audio_participants:g}, {self.composites()} "
            f"mp4 composites of {cap.video_composites:g}); the limit is {limit:.0%} ({setting}); open the call "
            "on another node or retry when calls have ended"
        )

    def full(self) -> bool:
        """True when a new call would be refused (the node is at its ceiling)."""
        return self.capacity.enabled and self.load() >= self.capacity.ceiling

    def check_open(self) -> None:
        """A new call: refused once the node is at its ceiling."""
        if not self.capacity.enabled:
            return
        load = self.load()
        if load >= self.capacity.ceiling:
            raise self._refuse("a new call", load, self.capacity.ceiling, "admission_ceiling")

    def check_join(self) -> None:
        """A participant joins a call already here: refused only past the node's full capacity."""
        if not self.capacity.enabled or self.capacity.audio_participants <= 0:
            return
        load = self._cost(self.participants() + 1, self.composites())
        if load > 1.0:
            raise self._refuse("one more participant", load, 1.0, "capacity_audio_participants")

    def check_composite(self) -> None:
        """An mp4 recording: starts only if the node stays under its ceiling with it."""
        if not self.capacity.enabled or self.capacity.video_composites <= 0:
            return
        load = self._cost(self.participants(), self.composites() + 1)
        if load > self.capacity.ceiling:
            raise self._refuse("one more mp4 composite", load, self.capacity.ceiling, "admission_ceiling")
