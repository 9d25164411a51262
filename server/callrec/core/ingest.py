"""The media ingest interface the StreamMedia handler drives, and the counting default.

The audio/video pipeline (issue: audio recording) implements `MediaIngest`;
until a recording consumes media, frames are validated, counted and discarded.
"""

from __future__ import annotations

from typing import Protocol

from callrec.core.calls import Call, Participant

#: Rejection reasons (the keys of `frames_rejected_by_reason`).
EMPTY_FRAME = "empty_frame"
DUPLICATE = "duplicate"
NO_AUDIO_FORMAT = "no_audio_format"
NO_VIDEO_FORMAT = "no_video_format"


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


class CountingIngest:
    """Validates and counts frames without recording them."""

    def joined(self, call: Call, participant: Participant) -> None:
        return None

    def left(self, call: Call, participant: Participant) -> None:
        return None

    def audio(self, call: Call, participant: Participant, sequence: int, timestamp_us: int, data: bytes) -> str | None:
        if participant.audio_format is None:
            return NO_AUDIO_FORMAT
        if not data:
            return EMPTY_FRAME
        return None

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
        if participant.video_format is None:
            return NO_VIDEO_FORMAT
        if not data:
            return EMPTY_FRAME
        return None
