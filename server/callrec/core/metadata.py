"""Chunk metadata files (SPEC §3): the JSON document stored beside each chunk's media.

Field names and spellings follow `schemas/recording-chunk-metadata.schema.json` (ACS's
metadata file, stricter): enums in camelCase / lower case, times RFC 3339 in UTC,
durations in milliseconds. Values must be the true ones of the file they describe:
the `Chunker` passes the sample counts it wrote, not nominal durations.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callrec.core.model import ChannelType, ContentType, Format, RecordedParticipant

__all__ = [
    "SCHEMAS_DIR",
    "VideoConfiguration",
    "chunk_metadata",
    "fsync_directory",
    "milliseconds",
    "new_document_id",
    "rfc3339",
    "write_json_atomically",
]

#: The schemas the project ships (copies of ../shared/schemas).
SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True)
class VideoConfiguration:
    """`videoConfiguration` of an audio-video chunk."""

    longer_side_length: int
    shorter_side_length: int
    frame_rate: float
    bit_rate: int


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, 'Z' suffix (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def milliseconds(samples: int, sample_rate: int) -> int | float:
    """Exact milliseconds of `samples`: an int when whole, else a float (JSON number)."""
    whole, rest = divmod(samples * 1000, sample_rate)
    return whole if rest == 0 else samples * 1000 / sample_rate


def new_document_id() -> str:
    """A unique, URL-safe chunk document id shaped like ACS's ("0-callrec-<32 hex>")."""
    return f"0-callrec-{uuid.uuid4().hex}"


def chunk_metadata(
    *,
    resource_id: str,
    call_id: str,
    document_id: str,
    index: int,
    start_time: datetime,
    duration_ms: float,
    pauses: Sequence[tuple[datetime, float]],
    content_type: ContentType,
    channel_type: ChannelType,
    format: Format,
    sample_rate: int,
    bit_rate: int,
    channels: int,
    participants: Sequence[RecordedParticipant],
    video: VideoConfiguration | None = None,
) -> dict[str, Any]:
    """The metadata document of one chunk; participants carry `channel` when unmixed."""
    unmixed = channel_type == ChannelType.UNMIXED
    recording_info: dict[str, Any] = {
        "contentType": str(content_type),
        "channelType": str(channel_type),
        "format": str(format),
        "audioConfiguration": {"sampleRate": sample_rate, "bitRate": bit_rate, "channels": channels},
    }
    if video is not None:
        recording_info["videoConfiguration"] = {
            "longerSideLength": video.longer_side_length,
            "shorterSideLength": video.shorter_side_length,
            "frameRate": video.frame_rate,
            "bitRate": video.bit_rate,
        }
    people: list[dict[str, Any]] = []
    for participant in participants:
        entry: dict[str, Any] = {"participantId": participant.participant_id}
        if unmixed:
            entry["channel"] = participant.channel
        people.append(entry)
    return {
        "resourceId": resource_id,
        "callId": call_id,
        "chunkDocumentId": document_id,
        "chunkIndex": index,
        "chunkStartTime": rfc3339(start_time),
        "chunkDuration": duration_ms,
        "pauseResumeIntervals": [{"startTime": rfc3339(start), "duration": ms} for start, ms in pauses],
        "recordingInfo": recording_info,
        "participants": people,
    }


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Write `.part`, fsync, rename, fsync the directory: a reader (or a restart after a crash or a
    power cut) sees the old document or the new one, never half of one. For a chunk's metadata, once
    (a chunk's journal, rewritten while the chunk is open, is `journal_files.write_journal`).

    Indented, for people to read; made in one `json.dumps` call (`json.dump` streams through the
    pure-Python encoder, about 4x slower).
    """
    part = path.with_name(path.name + ".part")
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    with open(part, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
