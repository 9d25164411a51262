"""The event model: what the log stores and subscribers receive.

Events know recordings only as ids and plain values; they are rendered to ACS
JSON once, when published, and never re-rendered (redelivery is byte-identical).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class EventType(enum.StrEnum):
    """ACS event type strings."""

    RECORDING_STATE_CHANGED = "Microsoft.Communication.RecordingStateChanged"
    RECORDING_FILE_STATUS_UPDATED = "Microsoft.Communication.RecordingFileStatusUpdated"
    RECORDING_FAILED = "Microsoft.Communication.StartRecordingFailed"


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended to the log (no sequence yet)."""

    id: str
    event_type: EventType
    subject: str
    server_call_id: str
    recording_id: str
    event_time: datetime
    payload: dict[str, Any]
    """Typed fields (snake_case) for the protobuf oneof."""
    json: str
    """The ACS rendering, exactly as delivered."""


@dataclass(frozen=True)
class StoredEvent:
    """An event in the durable log."""

    sequence: int
    event: NewEvent


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber wants; empty fields match everything."""

    event_types: frozenset[str] = field(default_factory=frozenset)
    server_call_id: str = ""
    recording_id: str = ""

    def matches(self, event: NewEvent) -> bool:
        """True when `event` passes every non-empty filter."""
        return (
            (not self.event_types or event.event_type.value in self.event_types)
            and (not self.server_call_id or event.server_call_id == self.server_call_id)
            and (not self.recording_id or event.recording_id == self.recording_id)
        )
