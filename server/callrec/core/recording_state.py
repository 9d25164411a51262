"""The Recording entity and its state machine (an enum plus a transition table)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from callrec.core.errors import FailedPrecondition
from callrec.core.model import (
    ChunkInfo,
    MediaStats,
    PauseInterval,
    RecordedParticipant,
    RecordingError,
    RecordingOptions,
    RecordingState,
)

#: Legal moves; anything else is a FailedPrecondition.
TRANSITIONS: dict[RecordingState, frozenset[RecordingState]] = {
    RecordingState.ACTIVE: frozenset({RecordingState.INACTIVE, RecordingState.STOPPING, RecordingState.FAILED}),
    RecordingState.INACTIVE: frozenset({RecordingState.ACTIVE, RecordingState.STOPPING, RecordingState.FAILED}),
    RecordingState.STOPPING: frozenset({RecordingState.COMPLETED, RecordingState.FAILED}),
    RecordingState.COMPLETED: frozenset(),
    RecordingState.FAILED: frozenset(),
}


def new_recording_id() -> str:
    """An opaque, URL-safe id (base64url, one path segment as event subjects need)."""
    raw = f"callrec:recording:{uuid.uuid4()}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class Recording:
    """One recording of a call: its options, state, pauses, participants and stored chunks."""

    recording_id: str
    server_call_id: str
    call_id: str
    call_connection_id: str
    options: RecordingOptions
    state: RecordingState
    start_time: datetime
    pause_intervals: list[PauseInterval] = field(default_factory=list)
    participants: list[RecordedParticipant] = field(default_factory=list)
    chunks: list[ChunkInfo] = field(default_factory=list)
    duration: timedelta = timedelta(0)
    session_end_reason: str = ""
    error: RecordingError | None = None
    media_stats: MediaStats = field(default_factory=MediaStats)
    stop_time: datetime | None = None

    def transition(self, new_state: RecordingState) -> None:
        """Move to `new_state`, or raise FailedPrecondition naming the current state."""
        if new_state not in TRANSITIONS[self.state]:
            raise FailedPrecondition(
                f"recording {self.recording_id} is {self.state.value}; it cannot become {new_state.value}"
            )
        self.state = new_state

    def pause(self, at: datetime) -> bool:
        """Pause; returns False (a no-op) when already paused."""
        if self.state is RecordingState.INACTIVE:
            return False
        self.transition(RecordingState.INACTIVE)
        self.pause_intervals.append(PauseInterval(start_time=at))
        return True

    def resume(self, at: datetime) -> bool:
        """Resume; returns False (a no-op) when already active."""
        if self.state is RecordingState.ACTIVE:
            return False
        self.transition(RecordingState.ACTIVE)
        self._close_open_pause(at)
        return True

    def begin_stop(self, at: datetime, reason: str) -> bool:
        """Enter STOPPING; returns False (a no-op) when already stopping or finished."""
        if not self.state.in_progress:
            return False
        self.transition(RecordingState.STOPPING)
        self._close_open_pause(at)
        self.stop_time = at
        self.session_end_reason = reason
        return True

    def fail(self, error: RecordingError, at: datetime) -> None:
        """Mark FAILED with the reason (from any unfinished state)."""
        self._close_open_pause(at)
        self.transition(RecordingState.FAILED)
        self.error = error
        if self.stop_time is None:
            self.stop_time = at

    def _close_open_pause(self, at: datetime) -> None:
        if self.pause_intervals and self.pause_intervals[-1].duration is None:
            last = self.pause_intervals[-1]
            self.pause_intervals[-1] = PauseInterval(last.start_time, max(at - last.start_time, timedelta(0)))

    def paused_time(self, until: datetime) -> timedelta:
        """Total paused time up to `until` (an open pause counts up to then)."""
        total = timedelta(0)
        for interval in self.pause_intervals:
            total += interval.duration if interval.duration is not None else until - interval.start_time
        return total
