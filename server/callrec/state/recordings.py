"""Persistence of Recording entities and StartRecording idempotency keys."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from callrec.core.model import (
    ChannelPin,
    ChannelType,
    ChunkEndReason,
    ChunkInfo,
    ContentType,
    ExternalStorage,
    Format,
    MediaStats,
    PauseInterval,
    PauseMode,
    RecordedParticipant,
    RecordingError,
    RecordingOptions,
    RecordingState,
)
from callrec.core.recording_state import Recording
from callrec.state.db import Database


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def recording_to_dict(rec: Recording) -> dict[str, Any]:
    """The entity as a JSON-able dict (the `body` column)."""
    opts = rec.options
    return {
        "recording_id": rec.recording_id,
        "server_call_id": rec.server_call_id,
        "call_id": rec.call_id,
        "call_connection_id": rec.call_connection_id,
        "state": rec.state.value,
        "options": {
            "content_type": opts.content_type.value,
            "channel_type": opts.channel_type.value,
            "format": opts.format.value,
            "audio_channel_participant_ordering": list(opts.audio_channel_participant_ordering),
            "channel_affinity": [[p.channel, p.participant_id] for p in opts.channel_affinity],
            "pause_on_start": opts.pause_on_start,
            "pause_mode": opts.pause_mode.value,
            "destination": opts.destination,
            "external_storage": (
                [opts.external_storage.kind, opts.external_storage.container_url]
                if opts.external_storage
                else None
            ),
            "chunk_max_duration_s": opts.chunk_max_duration.total_seconds(),
            "chunk_max_bytes": opts.chunk_max_bytes,
            "request_id": opts.request_id,
            "unmixed_max_channels": opts.unmixed_max_channels,
            "operation_context": opts.operation_context,
        },
        "start_time": _dt(rec.start_time),
        "stop_time": _dt(rec.stop_time),
        "pause_intervals": [
            [_dt(p.start_time), p.duration.total_seconds() if p.duration is not None else None]
            for p in rec.pause_intervals
        ],
        "participants": [[p.participant_id, p.display_name, p.channel] for p in rec.participants],
        "chunks": [
            [c.document_id, c.index, c.end_reason.value, c.metadata_location, c.content_location,
             c.delete_location]
            for c in rec.chunks
        ],
        "duration_s": rec.duration.total_seconds(),
        "session_end_reason": rec.session_end_reason,
        "error": [rec.error.code, rec.error.message] if rec.error else None,
        "media_stats": {
            "frames_received": rec.media_stats.frames_received,
            "frames_rejected_by_reason": rec.media_stats.frames_rejected_by_reason,
            "frames_late": rec.media_stats.frames_late,
            "gap_fill_ms": rec.media_stats.gap_fill_ms,
        },
    }


def recording_from_dict(d: dict[str, Any]) -> Recording:
    """Inverse of `recording_to_dict`."""
    o = d["options"]
    ext = o["external_storage"]
    options = RecordingOptions(
        content_type=ContentType(o["content_type"]),
        channel_type=ChannelType(o["channel_type"]),
        format=Format(o["format"]),
        audio_channel_participant_ordering=tuple(o["audio_channel_participant_ordering"]),
        channel_affinity=tuple(ChannelPin(c, p) for c, p in o["channel_affinity"]),
        pause_on_start=o["pause_on_start"],
        pause_mode=PauseMode(o["pause_mode"]),
        destination=o["destination"],
        external_storage=ExternalStorage(ext[0], ext[1]) if ext else None,
        chunk_max_duration=timedelta(seconds=o["chunk_max_duration_s"]),
        chunk_max_bytes=o["chunk_max_bytes"],
        request_id=o["request_id"],
        unmixed_max_channels=o["unmixed_max_channels"],
        operation_context=o["operation_context"],
    )
    start = _parse_dt(d["start_time"])
    assert start is not None
    stats = d["media_stats"]
    return Recording(
        recording_id=d["recording_id"],
        server_call_id=d["server_call_id"],
        call_id=d["call_id"],
        call_connection_id=d["call_connection_id"],
        options=options,
        state=RecordingState(d["state"]),
        start_time=start,
        stop_time=_parse_dt(d["stop_time"]),
        pause_intervals=[
            PauseInterval(_parse_dt(s) or start, timedelta(seconds=dur) if dur is not None else None)
            for s, dur in d["pause_intervals"]
        ],
        participants=[RecordedParticipant(p, n, c) for p, n, c in d["participants"]],
        chunks=[ChunkInfo(c[0], c[1], ChunkEndReason(c[2]), c[3], c[4], c[5]) for c in d["chunks"]],
        duration=timedelta(seconds=d["duration_s"]),
        session_end_reason=d["session_end_reason"],
        error=RecordingError(*d["error"]) if d["error"] else None,
        media_stats=MediaStats(
            frames_received=stats["frames_received"],
            frames_rejected_by_reason=dict(stats["frames_rejected_by_reason"]),
            frames_late=stats["frames_late"],
            gap_fill_ms=stats["gap_fill_ms"],
        ),
    )


def encode_page_token(seq: int) -> str:
    """The page token of a paging cursor (opaque to clients)."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The paging cursor inside a page token; ValueError when it is not one of ours."""
    padded = token + "=" * (-len(token) % 4)
    text = base64.urlsafe_b64decode(padded.encode()).decode()
    if not text.startswith("seq:"):
        raise ValueError("not a page token")
    return int(text[4:])


class RecordingRepository:
    """Saves and loads recordings; remembers idempotency keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[sqlite3.Connection]:
        """Everything saved inside commits together (a recording and its request id).

        The methods below never suspend (SQLite is local), so no other task's statement can slip
        into the transaction while it is open.
        """
        with self.db.transaction() as conn:
            yield conn

    async def save(self, rec: Recording) -> None:
        """Insert or update the recording (whole row)."""
        body = json.dumps(recording_to_dict(rec), separators=(",", ":"))
        now = datetime.now(UTC).isoformat()
        self.db.conn.execute(
            "INSERT INTO recordings (recording_id, server_call_id, state, body, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(recording_id) DO UPDATE SET "
            "state = excluded.state, body = excluded.body, updated_at = excluded.updated_at",
            (rec.recording_id, rec.server_call_id, rec.state.value, body, now),
        )

    async def get(self, recording_id: str) -> Recording | None:
        """The recording, or None."""
        row = self.db.conn.execute("SELECT body FROM recordings WHERE recording_id = ?", (recording_id,)).fetchone()
        return recording_from_dict(json.loads(row["body"])) if row else None

    async def in_progress(self) -> list[Recording]:
        """Recordings that were active, paused or stopping (for recovery after a restart)."""
        rows = self.db.conn.execute(
            "SELECT body FROM recordings WHERE state IN ('active', 'inactive', 'stopping') ORDER BY seq"
        ).fetchall()
        return [recording_from_dict(json.loads(r["body"])) for r in rows]

    async def list(
        self, server_call_id: str = "", state: RecordingState | None = None, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Recording], str]:
        """A page of recordings, newest first, and the next page's token ("" on the last page)."""
        clauses: list[str] = []
        params: list[str | int] = []
        if server_call_id:
            clauses.append("server_call_id = ?")
            params.append(server_call_id)
        if state is not None:
            clauses.append("state = ?")
            params.append(state.value)
        if page_token:
            clauses.append("seq < ?")
            params.append(decode_page_token(page_token))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.conn.execute(
            f"SELECT seq, body FROM recordings {where} ORDER BY seq DESC LIMIT ?", (*params, page_size + 1)
        ).fetchall()
        page = rows[:page_size]
        next_token = encode_page_token(page[-1]["seq"]) if len(rows) > page_size else ""
        return [recording_from_dict(json.loads(r["body"])) for r in page], next_token

    async def remember_request(self, request_id: str, recording_id: str) -> None:
        """Store an idempotency key."""
        self.db.conn.execute(
            "INSERT OR REPLACE INTO idempotency_keys (request_id, recording_id, created_at) VALUES (?, ?, ?)",
            (request_id, recording_id, time.time()),
        )

    async def recall_request(self, request_id: str, window: timedelta) -> str | None:
        """The recording started with `request_id` within `window`, if any."""
        row = self.db.conn.execute(
            "SELECT recording_id FROM idempotency_keys WHERE request_id = ? AND created_at >= ?",
            (request_id, time.time() - window.total_seconds()),
        ).fetchone()
        return row["recording_id"] if row else None

    async def forget_requests_before(self, window: timedelta) -> int:
        """Drop idempotency keys older than the window."""
        cur = self.db.conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?", (time.time() - window.total_seconds(),)
        )
        return cur.rowcount
