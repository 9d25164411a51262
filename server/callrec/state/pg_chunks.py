"""The chunk index in PostgreSQL: `ChunkIndexPort` (and what ContentService needs) for cluster mode.

The same rows as `state.chunks.ChunkIndex` (SQLite), so a location announced by any node resolves on
every node, and a dead node's stored chunks stay listed.
"""

from __future__ import annotations

import time
from typing import Any

from callrec.core.ports import StoredChunk
from callrec.state.postgres import PostgresDatabase

__all__ = ["PgChunkIndex"]

_FIELDS = list(StoredChunk.__dataclass_fields__)


def _chunk(row: dict[str, Any]) -> StoredChunk:
    return StoredChunk(**{k: row[k] for k in _FIELDS})


class PgChunkIndex:
    """Insert chunks when stored; resolve content, metadata and delete locations."""

    def __init__(self, db: PostgresDatabase, node_id: str = "") -> None:
        self.db = db
        self.node_id = node_id
        """The node whose chunks this instance indexes (where a local store's files are)."""

    async def add(self, chunk: StoredChunk) -> None:
        """Record a stored chunk (idempotent per document id: a re-index replaces the row)."""
        columns = ", ".join(_FIELDS)
        updates = ", ".join(f"{f} = excluded.{f}" for f in _FIELDS if f != "document_id")
        async with self.db.connection() as conn:
            await conn.execute(
                f"INSERT INTO chunks ({columns}, created_at, deleted_at, node_id) VALUES "
                f"({', '.join(['%s'] * len(_FIELDS))}, %s, NULL, %s) ON CONFLICT (document_id) DO UPDATE SET "
                f"{updates}, created_at = excluded.created_at, deleted_at = NULL, node_id = excluded.node_id".encode(),
                (*(getattr(chunk, f) for f in _FIELDS), time.time(), self.node_id),
            )

    async def by_location(self, location: str) -> tuple[StoredChunk, str] | None:
        """The live chunk a location names and which file ("media", "metadata" or "delete")."""
        async with self.db.connection() as conn:
            for column, what in (("content_location", "media"), ("metadata_location", "metadata"),
                                 ("delete_location", "delete")):
                cur = await conn.execute(
                    f"SELECT * FROM chunks WHERE {column} = %s AND deleted_at IS NULL".encode(), (location,)
                )
                row = await cur.fetchone()
                if row is not None:
                    return _chunk(row), what
        return None

    async def for_recording(self, recording_id: str) -> list[StoredChunk]:
        """A recording's chunks by index."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM chunks WHERE recording_id = %s ORDER BY chunk_index", (recording_id,)
            )
            return [_chunk(r) for r in await cur.fetchall()]

    async def mark_deleted(self, document_id: str) -> None:
        """The chunk's files are gone (deleted by a user or by retention)."""
        async with self.db.connection() as conn:
            await conn.execute("UPDATE chunks SET deleted_at = %s WHERE document_id = %s", (time.time(), document_id))

    async def expired(self, target: str, older_than_s: float) -> list[StoredChunk]:
        """Live chunks of a target stored more than `older_than_s` ago."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM chunks WHERE target = %s AND deleted_at IS NULL AND created_at < %s",
                (target, time.time() - older_than_s),
            )
            return [_chunk(r) for r in await cur.fetchall()]
