"""The upload outbox's rows in PostgreSQL (`UploadRowsPort`) for cluster mode.

Every node's uploads are in one table, so `ListUploads` on any node shows any recording's uploads,
including those a dead node left pending. Each row names the node whose spool holds its file; the
worker's queries (due, retry, expire, prune, counts) see only this node's rows, because no other
node can read the file. `node_id` is set once the node knows its id (after binding its port), before
the outbox's worker starts.
"""

from __future__ import annotations

from typing import Any

from callrec.state.postgres import PostgresDatabase
from callrec.state.uploads import (
    DONE,
    FAILED,
    PENDING,
    STATES,
    Upload,
    not_waiting_for_media,
    page_query,
    upload_of,
)

__all__ = ["PgUploadRows"]

NOT_WAITING_FOR_MEDIA_PER_NODE = not_waiting_for_media(per_node=True)


class PgUploadRows:
    """`UploadRowsPort` in PostgreSQL, scoped to `node_id` where the port says "own"."""

    def __init__(self, db: PostgresDatabase, node_id: str = "") -> None:
        self.db = db
        self.node_id = node_id

    async def _all(self, sql: str, params: tuple[Any, ...]) -> list[Upload]:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql.encode(), params)
            return [upload_of(r) for r in await cur.fetchall()]

    async def _run(self, sql: str, params: tuple[Any, ...]) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql.encode(), params)
            return cur.rowcount

    async def _column(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql.encode(), params)
            return [next(iter(r.values())) for r in await cur.fetchall()]

    async def insert(self, group_id: str, target: str, key: str, path: str, content_type: str, now: float) -> int:
        ids = await self._column(
            "INSERT INTO uploads (node_id, group_id, target, key, path, content_type, state, next_attempt_at,"
            " created_at, queued_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (self.node_id, group_id, target, key, path, content_type, PENDING, now, now, now),
        )
        return int(ids[0])

    async def group(self, group_id: str, *, own: bool) -> list[Upload]:
        if own:
            return await self._all("SELECT * FROM uploads WHERE group_id = %s AND node_id = %s ORDER BY id",
                                   (group_id, self.node_id))
        return await self._all("SELECT * FROM uploads WHERE group_id = %s ORDER BY id", (group_id,))

    async def queued_keys(self, group_id: str) -> set[str]:
        return {str(k) for k in await self._column("SELECT key FROM uploads WHERE group_id = %s", (group_id,))}

    async def counts(self) -> dict[str, int]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT state, COUNT(*) AS n FROM uploads WHERE node_id = %s GROUP BY state", (self.node_id,)
            )
            rows = await cur.fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({r["state"]: int(r["n"]) for r in rows})
        return counts

    async def pending(self) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT COUNT(*) AS n FROM uploads WHERE state = %s AND node_id = %s",
                                     (PENDING, self.node_id))
            row = await cur.fetchone()
        return int(row["n"]) if row else 0

    async def page(self, state: str | None, group_id: str, before_id: int | None, limit: int) -> list[Upload]:
        query, params = page_query(state, group_id, before_id, limit, "%s")
        return await self._all(query, tuple(params))

    async def retried_groups(self) -> list[str]:
        return [str(g) for g in await self._column(
            "SELECT DISTINCT group_id FROM uploads WHERE node_id = %s AND state = %s AND queued_at > created_at"
            " ORDER BY group_id", (self.node_id, PENDING))]

    async def failed_of(self, group_id: str) -> list[Upload]:
        return await self._all(
            "SELECT * FROM uploads WHERE node_id = %s AND group_id = %s AND state = %s ORDER BY id",
            (self.node_id, group_id, FAILED),
        )

    async def requeue(self, upload_id: int, now: float) -> None:
        await self._run(
            "UPDATE uploads SET state = %s, attempts = 0, next_attempt_at = %s, queued_at = %s, failed_at = NULL"
            " WHERE id = %s", (PENDING, now, now, upload_id),
        )

    async def set_error(self, upload_id: int, error: str) -> None:
        await self._run("UPDATE uploads SET last_error = %s WHERE id = %s", (error, upload_id))

    async def delete_done(self, before: float) -> int:
        return await self._run("DELETE FROM uploads WHERE node_id = %s AND state = %s AND done_at < %s",
                               (self.node_id, DONE, before))

    async def failed_before(self, before: float) -> list[Upload]:
        return await self._all(
            "SELECT * FROM uploads WHERE node_id = %s AND state = %s AND failed_at < %s ORDER BY id",
            (self.node_id, FAILED, before),
        )

    async def delete(self, upload_ids: list[int]) -> None:
        if upload_ids:
            await self._run("DELETE FROM uploads WHERE id = ANY(%s)", (upload_ids,))

    async def unfinished(self) -> list[Upload]:
        return await self._all("SELECT * FROM uploads WHERE node_id = %s AND state != %s ORDER BY id",
                               (self.node_id, DONE))

    async def make_due(self, now: float) -> None:
        await self._run("UPDATE uploads SET next_attempt_at = %s WHERE node_id = %s AND state = %s",
                        (now, self.node_id, PENDING))

    async def due(self, now: float, target: str, limit: int) -> list[Upload]:
        return await self._all(
            "SELECT * FROM uploads WHERE node_id = %s AND state = %s AND target = %s AND next_attempt_at <= %s"
            f" AND {NOT_WAITING_FOR_MEDIA_PER_NODE} ORDER BY next_attempt_at, id LIMIT %s",
            (self.node_id, PENDING, target, now, limit),
        )

    async def due_targets(self, now: float) -> list[str]:
        return [str(t) for t in await self._column(
            "SELECT DISTINCT target FROM uploads WHERE node_id = %s AND state = %s AND next_attempt_at <= %s"
            f" AND {NOT_WAITING_FOR_MEDIA_PER_NODE}",
            (self.node_id, PENDING, now))]

    async def pending_targets(self) -> list[str]:
        return [str(t) for t in await self._column(
            "SELECT DISTINCT target FROM uploads WHERE node_id = %s AND state = %s", (self.node_id, PENDING))]

    async def earliest(self, target: str, limit: int) -> list[Upload]:
        return await self._all(
            "SELECT * FROM uploads WHERE node_id = %s AND state = %s AND target = %s"
            f" AND {NOT_WAITING_FOR_MEDIA_PER_NODE} ORDER BY next_attempt_at LIMIT %s",
            (self.node_id, PENDING, target, limit),
        )

    async def queued_before(self, at: float) -> list[Upload]:
        return await self._all(
            "SELECT * FROM uploads WHERE node_id = %s AND state = %s AND queued_at <= %s ORDER BY id",
            (self.node_id, PENDING, at),
        )

    async def mark_done(self, upload_id: int, location: str, size: int, checksum: str, now: float) -> None:
        await self._run(
            "UPDATE uploads SET state = %s, location = %s, size = %s, checksum = %s, attempts = attempts + 1,"
            " last_error = '', done_at = %s WHERE id = %s", (DONE, location, size, checksum, now, upload_id),
        )

    async def hasten(self, target: str, now: float) -> None:
        await self._run(
            "UPDATE uploads SET next_attempt_at = %s WHERE node_id = %s AND target = %s AND state = %s"
            " AND next_attempt_at > %s", (now, self.node_id, target, PENDING, now),
        )

    async def mark_retry(self, upload_id: int, attempts: int, retry_at: float, error: str) -> None:
        await self._run("UPDATE uploads SET attempts = %s, next_attempt_at = %s, last_error = %s WHERE id = %s",
                        (attempts, retry_at, error, upload_id))

    async def postpone(self, target: str, retry_at: float, except_id: int) -> None:
        await self._run(
            "UPDATE uploads SET next_attempt_at = GREATEST(next_attempt_at, %s) WHERE node_id = %s AND target = %s"
            " AND state = %s AND id != %s", (retry_at, self.node_id, target, PENDING, except_id),
        )

    async def mark_failed(self, upload_id: int, attempted: bool, error: str, now: float) -> None:
        await self._run(
            "UPDATE uploads SET state = %s, attempts = attempts + %s, last_error = %s, failed_at = %s WHERE id = %s",
            (FAILED, int(attempted), error, now, upload_id),
        )
