"""Admission by cost: a node takes no more work than it can keep at real time (cluster mode, SPEC §8).

Why a cost model and not just counts: an audio participant and a 1080p composite differ by two orders
of magnitude in CPU, and the capacity benchmark measured both on this machine (`make bench`). The load
of a node is

    audio participants / capacity_audio_participants + calls / capacity_calls
        + mp4 recordings / capacity_video_composites

(1.0 = everything it can keep at real time). Why calls have a cost of their own: each call has its stream,
its tick, its mix and its recording's encoder whatever its size, so 1:1 calls cost about twice as much per
participant as 10-person calls (rows 8a and 8c of `make bench`); with participants alone, a capacity
measured on 10-person calls admitted 1:1 calls well past the point where they fall behind.

A new call is refused once the node, with that call, is at `ceiling` (0.8 by default: the headroom absorbs
the participants that join calls already admitted and bursts such as chunk rotations); a participant
joining a call already here is refused only past 1.0; an mp4 recording starts only if the node stays under
the ceiling with it. Each refusal is RESOURCE_EXHAUSTED with the figures and the setting.

A control node (`role = "control"`) takes no calls at all: it is always full, advertises an infinite load
(so no node relays a new call to it), and answers the control and read RPCs a proxy sends it without
sharing an event loop with any call's media (issue 11: control RPCs stay fast while the media nodes work).
"""

from __future__ import annotations

import math
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
    calls: float = 0.0
    """The per-call share of the load: calls the node would keep if their participants cost nothing."""
    takes_calls: bool = True
    """False on a control node: every new call is refused here (relayed to a node with room when there is one)."""

    @property
    def enabled(self) -> bool:
        """Whether any cost is set (a node without a capacity admits by the count limits only)."""
        return self.audio_participants > 0 or self.video_composites > 0 or self.calls > 0 or not self.takes_calls


class Admission:
    """Checks new calls, participants and mp4 recordings against the node's capacity."""

    def __init__(self, capacity: Capacity, participants: Callable[[], int], composites: Callable[[], int],
                 node: str = "this node", *, calls: Callable[[], int] = lambda: 0) -> None:
        if not 0 < capacity.ceiling <= 1:
            raise ValueError(f"admission_ceiling must be in (0, 1]; got {capacity.ceiling}")
        self.capacity = capacity
        self.participants = participants
        self.composites = composites
        self.calls = calls
        self.node = node

    def _cost(self, participants: int, composites: int, calls: int) -> float:
        cap = self.capacity
        audio = participants / cap.audio_participants if cap.audio_participants > 0 else 0.0
        video = composites / cap.video_composites if cap.video_composites > 0 else 0.0
        per_call = calls / cap.calls if cap.calls > 0 else 0.0
        return audio + video + per_call

    def load(self) -> float:
        """The node's load now (1.0 = all it keeps at real time; infinite on a control node, which keeps none)."""
        if not self.capacity.takes_calls:
            return math.inf
        return self._cost(self.participants(), self.composites(), self.calls())

    def _refuse(self, what: str, load: float, limit: float, setting: str) -> ResourceExhausted:
        cap = self.capacity

        def of(count: int, what: str, capacity: float) -> str:
            return f"{count} {what} of {capacity:g}" if capacity > 0 else f"{count} {what} (not costed)"

        figures = [of(self.participants(), "audio participants", cap.audio_participants)]
        if cap.calls > 0:
            figures.append(of(self.calls(), "calls", cap.calls))
        figures.append(of(self.composites(), "mp4 composites", cap.video_composites))
        return ResourceExhausted(
            f"{self.node} is full: {what} would take it to {load:.0%} of what it keeps at real time "
            f"({', '.join(figures)}); the limit is {limit:.0%} ({setting}); open the call "
            "on another node or retry when calls have ended"
        )

    def _load_with_new_call(self) -> float:
        return self._cost(self.participants(), self.composites(), self.calls() + 1)

    def full(self) -> bool:
        """True when a new call would be refused (the node is at its ceiling, or takes no calls)."""
        if not self.capacity.takes_calls:
            return True
        return self.capacity.enabled and self._load_with_new_call() >= self.capacity.ceiling

    def check_open(self) -> None:
        """A new call: refused once the node, with that call's own cost, is at its ceiling."""
        if not self.capacity.takes_calls:
            raise ResourceExhausted(
                f"{self.node} is a control node (role = control): it takes no calls, and no node that takes "
                "calls has room for this one; send gateways' streams to the proxy's media backend or to a node "
                "started without --role control"
            )
        if not self.capacity.enabled:
            return
        load = self._load_with_new_call()
        if load >= self.capacity.ceiling:
            raise self._refuse("a new call", load, self.capacity.ceiling, "admission_ceiling")

    def check_join(self) -> None:
        """A participant joins a call already here: refused only past the node's full capacity."""
        if not self.capacity.enabled or self.capacity.audio_participants <= 0:
            return
        load = self._cost(self.participants() + 1, self.composites(), self.calls())
        if load > 1.0:
            raise self._refuse("one more participant", load, 1.0, "capacity_audio_participants")

    def check_composite(self) -> None:
        """An mp4 recording: starts only if the node stays under its ceiling with it."""
        if not self.capacity.enabled or self.capacity.video_composites <= 0:
            return
        load = self._cost(self.participants(), self.composites() + 1, self.calls())
        if load > self.capacity.ceiling:
            raise self._refuse("one more mp4 composite", load, self.capacity.ceiling, "admission_ceiling")
