"""The index of stored chunks: which store and keys each announced location names."""

from __future__ import annotations

import sqlite3
import time

from callrec.core.ports import StoredChunk
from callrec.state.db import Database


def _chunk(row: sqlite3.Row) -> StoredChunk:
    return StoredChunk(**{k: row[k] for k in StoredChunk.__dataclass_fields__})


class ChunkIndex:
    """Insert chunks when stored; resolve content, metadata and delete locations."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, chunk: StoredChunk) -> None:
        """Record a stored chunk (idempotent per document id)."""
        fields = list(StoredChunk.__dataclass_fields__)
        self.db.conn.execute(
            f"INSERT OR REPLACE INTO chunks ({', '.join(fields)}, created_at) "
            f"VALUES ({', '.join('?' * len(fields))}, ?)",
            (*(getattr(chunk, f) for f in fields), time.time()),
        )

    async def by_location(self, location: str) -> tuple[StoredChunk, str] | None:
        """The live chunk a location names and which file ("media", "metadata" or "delete")."""
        for column, what in (("content_location", "media"), ("metadata_location", "metadata"),
                             ("delete_location", "delete")):
            row = self.db.conn.execute(
                f"SELECT * FROM chunks WHERE {column} = ? AND deleted_at IS NULL", (location,)
            ).fetchone()
            if row is not None:
                return _chunk(row), what
        return None

    async def for_recording(self, recording_id: str) -> list[StoredChunk]:
        """A recording's chunks by index."""
        rows = self.db.conn.execute(
            "SELECT * FROM chunks WHERE recording_id = ? ORDER BY chunk_index", (recording_id,)
        ).fetchall()
        return [_chunk(r) for r in rows]

    async def mark_deleted(self, document_id: str) -> None:
        """The chunk's files are gone (deleted by a user or by retention)."""
        self.db.conn.execute("UPDATE chunks SET deleted_at = ? WHERE document_id = ?", (time.time(), document_id))

    async def expired(self, target: str, older_than_s: float) -> list[StoredChunk]:
        """Live chunks of a target stored more than `older_than_s` ago."""
        rows = self.db.conn.execute(
            "SELECT * FROM chunks WHERE target = ? AND deleted_at IS NULL AND created_at < ?",
            (target, time.time() - older_than_s),
        ).fetchall()
        return [_chunk(r) for r in rows]
