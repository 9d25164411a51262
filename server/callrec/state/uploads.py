"""The upload outbox's rows: `UploadRowsPort`, and its SQLite version (the embedded default).

Why a port: the outbox (`storage.outbox.Outbox`) decides when to attempt, retry and give up; where its
rows live is the deployment's choice. A single server keeps them in its SQLite file; a cluster keeps
them in PostgreSQL (`state.pg_uploads`), so any node answers for any recording's uploads, even a dead
node's. Every row belongs to the node whose spool holds the file (`node_id` there): a node attempts,
retries, expires and prunes only its own rows, because only it can read the file.

The methods are coroutines because the PostgreSQL version needs I/O; the SQLite version runs each
statement on the calling thread (sub-millisecond local writes, see `state.db`), except the page
query, which can be long and runs on the reader thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from callrec.state.db import Database

__all__ = [
    "DONE", "FAILED", "METADATA_TYPE", "NOT_WAITING_FOR_MEDIA", "PENDING", "STATES", "SqliteUploadRows", "Upload",
    "UploadRowsPort", "not_waiting_for_media", "upload_of",
]

PENDING, DONE, FAILED = "pending", "done", "failed"
STATES = (PENDING, DONE, FAILED)

#: A chunk's metadata file: stored only after the media files queued before it in its recording.
METADATA_TYPE = "application/json"


def not_waiting_for_media(*, per_node: bool) -> str:
    """The SQL condition (on `uploads`) of a row that ordering lets be attempted now.

    A metadata document announces its chunk's media, so a reader that finds it must find the media
    too: it waits while an earlier media file of its recording (on the same node, `per_node`: the
    table has a `node_id` column) is pending. After an outage both are due at once, and the small
    JSON would otherwise be stored first. A media file that failed for good no longer holds it back
    (the recording fails with the reason; the metadata is stored anyway).
    """
    same_node = " AND media.node_id = uploads.node_id" if per_node else ""
    return (
        f"NOT (uploads.content_type = '{METADATA_TYPE}' AND EXISTS (SELECT 1 FROM uploads media"
        f" WHERE media.group_id = uploads.group_id{same_node} AND media.id < uploads.id"
        f" AND media.state = '{PENDING}' AND media.content_type != '{METADATA_TYPE}'))"
    )


NOT_WAITING_FOR_MEDIA = not_waiting_for_media(per_node=False)


@dataclass(frozen=True)
class Upload:
    """One row of the outbox; times are the outbox clock's seconds (wall clock: epoch seconds)."""

    id: int
    group_id: str
    target: str
    key: str
    path: str
    content_type: str
    state: str
    attempts: int
    last_error: str
    location: str
    size: int
    checksum: str
    next_attempt_at: float
    created_at: float
    queued_at: float
    """When the upload was queued, or re-queued by `retry_failed`: its deadline counts from here."""
    done_at: float | None
    failed_at: float | None
    node_id: str = ""
    """Cluster mode: the node whose spool holds the file ("" on a single server)."""


_FIELDS = tuple(Upload.__dataclass_fields__)


def upload_of(row: sqlite3.Row | Mapping[str, Any]) -> Upload:
    """An `Upload` from a database row of either backend (SQLite rows have no `node_id`)."""
    columns = set(row.keys())
    values = {k: row[k] for k in _FIELDS if k in columns}
    for k in ("next_attempt_at", "created_at", "queued_at"):
        values[k] = float(values[k])
    return Upload(**values)


def page_query(state: str | None, group_id: str, before_id: int | None, limit: int,
               placeholder: str) -> tuple[str, list[str | int]]:
    """The SQL and parameters of a page of uploads, newest first (`placeholder`: `?` or `%s`)."""
    clauses: list[str] = []
    params: list[str | int] = []
    for column, value in (("state = ", state), ("group_id = ", group_id or None), ("id < ", before_id)):
        if value is not None:
            clauses.append(column + placeholder)
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT * FROM uploads {where} ORDER BY id DESC LIMIT {placeholder}", [*params, limit]


class UploadRowsPort(Protocol):
    """Where the outbox keeps its rows. "Own" rows are this node's (its spool has their files); the
    other queries see every node's rows."""

    async def insert(self, group_id: str, target: str, key: str, path: str, content_type: str, now: float) -> int:
        """A new pending upload, due now; durable once this returns. Returns its id."""
        ...

    async def group(self, group_id: str, *, own: bool) -> list[Upload]:
        """A group's uploads in enqueue order: this node's (`own`) or every node's."""
        ...

    async def queued_keys(self, group_id: str) -> set[str]:
        """Every key the group ever queued, on any node, whatever its state."""
        ...

    async def counts(self) -> dict[str, int]:
        """This node's uploads by state."""
        ...

    async def pending(self) -> int:
        """This node's pending uploads: an index range, where `counts` reads every row kept (50 000 done rows:
        2 ms a call, and the outbox reported after every upload)."""
        ...

    async def page(self, state: str | None, group_id: str, before_id: int | None, limit: int) -> list[Upload]:
        """Up to `limit` uploads of every node, newest first, with ids below `before_id`."""
        ...

    async def retried_groups(self) -> list[str]:
        """Groups with own pending uploads that a retry re-queued (queued later than created)."""
        ...

    async def failed_of(self, group_id: str) -> list[Upload]:
        """The group's own failed uploads."""
        ...

    async def requeue(self, upload_id: int, now: float) -> None:
        """A failed upload becomes pending: attempts reset, due now, its deadline counted from now."""
        ...

    async def set_error(self, upload_id: int, error: str) -> None:
        """Replace an upload's `last_error`."""
        ...

    async def delete_done(self, before: float) -> int:
        """Delete own done rows stored before `before`; how many went."""
        ...

    async def failed_before(self, before: float) -> list[Upload]:
        """Own uploads that failed before `before`."""
        ...

    async def delete(self, upload_ids: list[int]) -> None:
        """Delete these rows."""
        ...

    async def unfinished(self) -> list[Upload]:
        """Own pending and failed uploads (their files must stay in the spool)."""
        ...

    async def make_due(self, now: float) -> None:
        """Every own pending upload is due at `now` (after a restart)."""
        ...

    async def due(self, now: float, target: str, limit: int) -> list[Upload]:
        """Up to `limit` own pending uploads of `target` due at `now`, earliest first."""
        ...

    async def due_targets(self, now: float) -> list[str]:
        """Targets with own pending uploads due at `now`."""
        ...

    async def pending_targets(self) -> list[str]:
        """Targets with own pending uploads."""
        ...

    async def earliest(self, target: str, limit: int) -> list[Upload]:
        """Up to `limit` own pending uploads of `target`, earliest due first."""
        ...

    async def queued_before(self, at: float) -> list[Upload]:
        """Own pending uploads queued at or before `at`, by id."""
        ...

    async def mark_done(self, upload_id: int, location: str, size: int, checksum: str, now: float) -> None:
        """Stored: state done, its location, size and checksum, one attempt more."""
        ...

    async def hasten(self, target: str, now: float) -> None:
        """Own pending uploads of `target` waiting out a backoff are due now (the target works again)."""
        ...

    async def mark_retry(self, upload_id: int, attempts: int, retry_at: float, error: str) -> None:
        """A transient failure: next attempt at `retry_at`."""
        ...

    async def postpone(self, target: str, retry_at: float, except_id: int) -> None:
        """Own pending uploads of `target` wait at least until `retry_at` (the target is failing)."""
        ...

    async def mark_failed(self, upload_id: int, attempted: bool, error: str, now: float) -> None:
        """Failed for good (until a retry); `attempted`: an attempt ended so (counts one more)."""
        ...


class SqliteUploadRows:
    """`UploadRowsPort` in the server's SQLite file: one node, so every row is its own."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Upload]:
        return [upload_of(r) for r in self.db.conn.execute(sql, params).fetchall()]

    async def insert(self, group_id: str, target: str, key: str, path: str, content_type: str, now: float) -> int:
        cur = self.db.conn.execute(
            "INSERT INTO uploads (group_id, target, key, path, content_type, state, next_attempt_at, created_at,"
            " queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (group_id, target, key, path, content_type, PENDING, now, now, now),
        )
        return int(cur.lastrowid or 0)

    async def group(self, group_id: str, *, own: bool) -> list[Upload]:
        return self._all("SELECT * FROM uploads WHERE group_id = ? ORDER BY id", (group_id,))

    async def queued_keys(self, group_id: str) -> set[str]:
        rows = self.db.conn.execute("SELECT key FROM uploads WHERE group_id = ?", (group_id,)).fetchall()
        return {str(r["key"]) for r in rows}

    async def counts(self) -> dict[str, int]:
        rows = self.db.conn.execute("SELECT state, COUNT(*) AS n FROM uploads GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({r["state"]: int(r["n"]) for r in rows})
        return counts

    async def pending(self) -> int:
        return int(self.db.conn.execute("SELECT COUNT(*) FROM uploads WHERE state = ?", (PENDING,)).fetchone()[0])

    async def page(self, state: str | None, group_id: str, before_id: int | None, limit: int) -> list[Upload]:
        query, params = page_query(state, group_id, before_id, limit, "?")

        def read(conn: sqlite3.Connection) -> list[Upload]:
            return [upload_of(r) for r in conn.execute(query, params).fetchall()]

        # on the reader thread: a store outage queues thousands of uploads, and a page of them built
        # on the event loop delayed every call's media
        return await self.db.read(read)

    async def retried_groups(self) -> list[str]:
        rows = self.db.conn.execute(
            "SELECT DISTINCT group_id FROM uploads WHERE state = ? AND queued_at > created_at ORDER BY group_id",
            (PENDING,),
        ).fetchall()
        return [r["group_id"] for r in rows]

    async def failed_of(self, group_id: str) -> list[Upload]:
        return self._all("SELECT * FROM uploads WHERE group_id = ? AND state = ? ORDER BY id", (group_id, FAILED))

    async def requeue(self, upload_id: int, now: float) -> None:
        self.db.conn.execute(
            "UPDATE uploads SET state = ?, attempts = 0, next_attempt_at = ?, queued_at = ?, failed_at = NULL"
            " WHERE id = ?",
            (PENDING, now, now, upload_id),
        )

    async def set_error(self, upload_id: int, error: str) -> None:
        self.db.conn.execute("UPDATE uploads SET last_error = ? WHERE id = ?", (error, upload_id))

    async def delete_done(self, before: float) -> int:
        return self.db.conn.execute("DELETE FROM uploads WHERE state = ? AND done_at < ?", (DONE, before)).rowcount

    async def failed_before(self, before: float) -> list[Upload]:
        return self._all("SELECT * FROM uploads WHERE state = ? AND failed_at < ? ORDER BY id", (FAILED, before))

    async def delete(self, upload_ids: list[int]) -> None:
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM uploads WHERE id = ?", [(i,) for i in upload_ids])

    async def unfinished(self) -> list[Upload]:
        return self._all("SELECT * FROM uploads WHERE state != ? ORDER BY id", (DONE,))

    async def make_due(self, now: float) -> None:
        self.db.conn.execute("UPDATE uploads SET next_attempt_at = ? WHERE state = ?", (now, PENDING))

    async def due(self, now: float, target: str, limit: int) -> list[Upload]:
        return self._all(
            f"SELECT * FROM uploads WHERE state = ? AND target = ? AND next_attempt_at <= ? AND {NOT_WAITING_FOR_MEDIA}"
            " ORDER BY next_attempt_at, id LIMIT ?",
            (PENDING, target, now, limit),
        )

    async def due_targets(self, now: float) -> list[str]:
        rows = self.db.conn.execute(
            f"SELECT DISTINCT target FROM uploads WHERE state = ? AND next_attempt_at <= ? AND {NOT_WAITING_FOR_MEDIA}",
            (PENDING, now),
        ).fetchall()
        return [r["target"] for r in rows]

    async def pending_targets(self) -> list[str]:
        rows = self.db.conn.execute("SELECT DISTINCT target FROM uploads WHERE state = ?", (PENDING,)).fetchall()
        return [r["target"] for r in rows]

    async def earliest(self, target: str, limit: int) -> list[Upload]:
        return self._all(
            f"SELECT * FROM uploads WHERE state = ? AND target = ? AND {NOT_WAITING_FOR_MEDIA}"
            " ORDER BY next_attempt_at LIMIT ?",
            (PENDING, target, limit),
        )

    async def queued_before(self, at: float) -> list[Upload]:
        return self._all("SELECT * FROM uploads WHERE state = ? AND queued_at <= ? ORDER BY id", (PENDING, at))

    async def mark_done(self, upload_id: int, location: str, size: int, checksum: str, now: float) -> None:
        self.db.conn.execute(
            "UPDATE uploads SET state = ?, location = ?, size = ?, checksum = ?, attempts = attempts + 1,"
            " last_error = '', done_at = ? WHERE id = ?",
            (DONE, location, size, checksum, now, upload_id),
        )

    async def hasten(self, target: str, now: float) -> None:
        self.db.conn.execute(
            "UPDATE uploads SET next_attempt_at = ? WHERE target = ? AND state = ? AND next_attempt_at > ?",
            (now, target, PENDING, now),
        )

    async def mark_retry(self, upload_id: int, attempts: int, retry_at: float, error: str) -> None:
        self.db.conn.execute(
            "UPDATE uploads SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
            (attempts, retry_at, error, upload_id),
        )

    async def postpone(self, target: str, retry_at: float, except_id: int) -> None:
        self.db.conn.execute(
            "UPDATE uploads SET next_attempt_at = MAX(next_attempt_at, ?) WHERE target = ? AND state = ? AND id != ?",
            (retry_at, target, PENDING, except_id),
        )

    async def mark_failed(self, upload_id: int, attempted: bool, error: str, now: float) -> None:
        self.db.conn.execute(
            "UPDATE uploads SET state = ?, attempts = attempts + ?, last_error = ?, failed_at = ? WHERE id = ?",
            (FAILED, int(attempted), error, now, upload_id),
        )
