"""Object names of recording chunks (SPEC §3): naming by call and recording is core's business, so storage
only ever sees finished keys.

    {prefix}/{YYYYMMDD}/{callId}/{first 8 of recordingId}-{unique id}/{chunkIndex}-{audio|video}.{ext}
    {prefix}/{YYYYMMDD}/{callId}/{first 8 of recordingId}-{unique id}/{chunkIndex}-metadata.json

Every store already prepends its own configured prefix, so callers normally leave `prefix` empty here;
it exists for an extra namespace inside a store. The unique id separates two sessions of one recording
id (e.g. a recording recovered after a restart) so their chunks never overwrite each other.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SEGMENT = 96
_EXT = re.compile(r"^[A-Za-z0-9]{1,8}$")

MediaKind = Literal["audio", "video"]


def safe_segment(value: str) -> str:
    """Make `value` one readable, safe path segment; distinct inputs stay distinct.

    Characters outside `[A-Za-z0-9._-]` (slashes, colons, spaces, non-ASCII...) become `_`; when that
    (or truncation, or an all-dots name) changed the value, 8 hex digits of its SHA-256 are appended, so
    `sip:a/b` and `sip_a_b` do not collide. Safe values (GUIDs, plain ids) are kept as they are.
    """
    cleaned = _UNSAFE.sub("_", value)[:_MAX_SEGMENT]
    if cleaned.strip(".") == "":
        cleaned = "_" * min(len(cleaned), 8) or "_"
    if cleaned == value:
        return value
    return f"{cleaned}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def day_segment(when: datetime | date) -> str:
    """`YYYYMMDD` in UTC; a naive datetime is refused because its day would depend on the host's zone."""
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"recording start time must be timezone-aware, got {when!r}")
        return when.astimezone(UTC).strftime("%Y%m%d")
    return when.strftime("%Y%m%d")


@dataclass(frozen=True, slots=True)
class ChunkKeys:
    """The object names of one recording session's chunks: a directory plus names per chunk."""

    directory: str

    @classmethod
    def for_recording(
        cls,
        *,
        started: datetime | date,
        call_id: str,
        recording_id: str,
        unique_id: str | None = None,
        prefix: str = "",
    ) -> ChunkKeys:
        """Build the directory `{prefix}/{YYYYMMDD}/{callId}/{recordingId[:8]}-{unique id}`.

        `unique_id` defaults to a fresh random hex id; pass a stored one to rebuild the same names.
        """
        if not call_id:
            raise ValueError("call_id must not be empty")
        if not recording_id:
            raise ValueError("recording_id must not be empty")
        unique = safe_segment(unique_id) if unique_id else uuid.uuid4().hex
        session = f"{safe_segment(recording_id[:8])}-{unique}"
        parts = [p for p in prefix.strip("/").split("/") if p] if prefix else []
        if any(p in (".", "..") or "\\" in p for p in parts):
            raise ValueError(f"prefix must not have '.' or '..' segments or backslashes: {prefix!r}")
        directory = "/".join([*parts, day_segment(started), safe_segment(call_id), session])
        return cls(directory)  # every segment is safe by construction; stores check keys again

    def media(self, chunk_index: int, kind: MediaKind, ext: str) -> str:
        """`.../{chunkIndex}-{audio|video}.{ext}`: `video` for audio-video mp4, `audio` otherwise."""
        if chunk_index < 0:
            raise ValueError(f"chunk_index must not be negative, got {chunk_index}")
        if kind not in ("audio", "video"):
            raise ValueError(f"kind must be 'audio' or 'video', got {kind!r}")
        ext = ext.lstrip(".")
        if not _EXT.match(ext):
            raise ValueError(f"file extension must be 1-8 letters or digits, got {ext!r}")
        return f"{self.directory}/{chunk_index}-{kind}.{ext.lower()}"

    def metadata(self, chunk_index: int) -> str:
        """`.../{chunkIndex}-metadata.json`."""
        if chunk_index < 0:
            raise ValueError(f"chunk_index must not be negative, got {chunk_index}")
        return f"{self.directory}/{chunk_index}-metadata.json"
