"""Recordings and idempotency keys in PostgreSQL: `RecordingRepositoryPort` for cluster mode.

The same rows as `state.recordings.RecordingRepository` (SQLite): indexed columns for lookups and
paging, the entity as JSON in `body`; page tokens are the same opaque cursors. One contract test
suite runs against both (tests/integration/test_state_contract.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from callrec.core.model import RecordingState
from callrec.core.recording_state import Recording
from callrec.state.postgres import Connection, PostgresDatabase
from callrec.state.recordings import decode_page_token, encode_page_token, recording_from_dict, recording_to_dict

__all__ = ["PgRecordingRepository"]

IN_PROGRESS = ("active", "inactive", "stopping")


class PgRecordingRepository:
    """Saves and loads recordings; remembers idempotency keys (shared by every node)."""

    def __init__(self, db: PostgresDatabase, node_id: str = "") -> None:
        self.db = db
        self.node_id = node_id
        """This node: it records what it inserts, and `in_progress()` is its own recordings only."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Everything this task saves inside commits together (a recording and its request id)."""
        async with self.db.transaction() as conn:
            yield conn

    async def save(self, rec: Recording) -> None:
        """Insert or update the recording (whole row)."""
        body = json.dumps(recording_to_dict(rec), separators=(",", ":"))
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO recordings (recording_id, server_call_id, state, body, updated_at, node_id) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (recording_id) DO UPDATE SET "
                "state = excluded.state, body = excluded.body, updated_at = excluded.updated_at",
                (rec.recording_id, rec.server_call_id, rec.state.value, body, datetime.now(UTC), self.node_id),
            )

    async def get(self, recording_id: str) -> Recording | None:
        """The recording, or None."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT body FROM recordings WHERE recording_id = %s", (recording_id,))
            row = await cur.fetchone()
        return recording_from_dict(json.loads(row["body"])) if row else None

    async def in_progress(self) -> list[Recording]:
        """This node's recordings that were active, paused or stopping (for recovery after its restart).

        Other nodes' recordings are theirs to recover (or, once their lease lapsed, the gateway's to
        re-open elsewhere).
        """
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT body FROM recordings WHERE state = ANY(%s) AND node_id = %s ORDER BY seq",
                (list(IN_PROGRESS), self.node_id),
            )
            rows = await cur.fetchall()
        return [recording_from_dict(json.loads(r["body"])) for r in rows]

    async def take_over_call(self, server_call_id: str) -> list[Recording]:
        """The call's recordings in progress on nodes whose lease lapsed, moved to this node (one statement:
        PostgreSQL locks each row it updates, so two nodes never both take one)."""
        return await self._take_over(
            "UPDATE recordings r SET node_id = %s WHERE r.server_call_id = %s AND r.state = ANY(%s) "
            "AND r.node_id <> %s AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = r.node_id "
            "AND n.lease_expires_at > now()) RETURNING r.seq, r.body",
            (self.node_id, server_call_id, list(IN_PROGRESS), self.node_id),
        )

    async def take_over_abandoned(self, dead_for_s: float) -> list[Recording]:
        """Recordings in progress on nodes dead for more than `dead_for_s` whose call no live node owns,
        moved to this node (to be ended)."""
        return await self._take_over(
            "UPDATE recordings r SET node_id = %s WHERE r.state = ANY(%s) AND r.node_id <> %s "
            "AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = r.node_id "
            "AND n.lease_expires_at > now() - make_interval(secs => %s)) "
            "AND NOT EXISTS (SELECT 1 FROM call_owners o JOIN nodes n2 USING (node_id) "
            "WHERE o.server_call_id = r.server_call_id AND n2.lease_expires_at > now()) RETURNING r.seq, r.body",
            (self.node_id, list(IN_PROGRESS), self.node_id, dead_for_s),
        )

    async def _take_over(self, query: str, params: tuple[object, ...]) -> list[Recording]:
        if not self.node_id:
            return []
        async with self.db.connection() as conn:
            cur = await conn.execute(query.encode(), params)
            rows = sorted(await cur.fetchall(), key=lambda r: r["seq"])
        return [recording_from_dict(json.loads(r["body"])) for r in rows]

    async def list(
        self, server_call_id: str = "", state: RecordingState | None = None, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Recording], str]:
        """A page of recordings, newest first, and the next page's token ("" on the last page)."""
        clauses: list[str] = []
        params: list[str | int] = []
        if server_call_id:
            clauses.append("server_call_id = %s")
            params.append(server_call_id)
        if state is not None:
            clauses.append("state = %s")
            params.append(state.value)
        if page_token:
            clauses.append("seq < %s")
            params.append(decode_page_token(page_token))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT seq, body FROM recordings {where} ORDER BY seq DESC LIMIT %s".encode(),
                (*params, page_size + 1),
            )
            rows = await cur.fetchall()
        page = rows[:page_size]
        next_token = encode_page_token(page[-1]["seq"]) if len(rows) > page_size else ""
        return [recording_from_dict(json.loads(r["body"])) for r in page], next_token

    async def remember_request(self, request_id: str, recording_id: str) -> None:
        """Store an idempotency key."""
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO idempotency_keys (request_id, recording_id, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (request_id) DO UPDATE SET recording_id = excluded.recording_id, "
                "created_at = excluded.created_at",
                (request_id, recording_id, time.time()),
            )

    async def recall_request(self, request_id: str, window: timedelta) -> str | None:
        """The recording started with `request_id` within `window`, if any."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT recording_id FROM idempotency_keys WHERE request_id = %s AND created_at >= %s",
                (request_id, time.time() - window.total_seconds()),
            )
            row = await cur.fetchone()
        return str(row["recording_id"]) if row else None

    async def forget_requests_before(self, window: timedelta) -> int:
        """Drop idempotency keys older than the window."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM idempotency_keys WHERE created_at < %s", (time.time() - window.total_seconds(),)
            )
            return cur.rowcount
