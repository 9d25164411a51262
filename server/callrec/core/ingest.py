"""The media ingest interface the StreamMedia handler drives.

`callrec.recorder.CallMediaHub` implements it; rejection reasons are `core.model.RejectReason`.
"""

from __future__ import annotations

from typing import Protocol

from callrec.core.calls import Call, Participant


class MediaIngest(Protocol):
    """Receives a call's participants and frames; returns a rejection reason or None."""

    def joined(self, call: Call, participant: Participant) -> None:
        """A participant entered (or re-joined)."""

    def left(self, call: Call, participant: Participant) -> None:
        """A participant left."""

    def audio(self, call: Call, participant: Participant, sequence: int, timestamp_us: int, data: bytes) -> str | None:
        """An audio frame; None when accepted, else why it was rejected."""

    def video(
        self,
        call: Call,
        participant: Participant,
        sequence: int,
        timestamp_us: int,
        data: bytes,
        keyframe: bool,
        width: int,
        height: int,
    ) -> str | None:
        """A video frame; None when accepted, else why it was rejected."""
