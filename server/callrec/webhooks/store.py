"""Durable webhook state in SQLite: endpoints, one cursor each, recent attempts, dead letters.

Why its own file (`webhooks.sqlite3` beside the state database): delivery writes after every attempt,
and keeping those small commits off the state database keeps its WAL and its write lock for recordings.
`synchronous=FULL`: a committed cursor is a promise that the event was delivered (or dead-lettered), so
it must survive a power cut; the cost is one fsync per attempt, a few per second at most.

Like `callrec.state.db`, statements run on the calling (event loop) thread: each is a sub-millisecond
local write or an indexed read. The methods are coroutines so that a PostgreSQL version of
`WebhookStorePort` (cluster mode) can do real I/O behind the same interface.

The cursor of an endpoint is `delivered_sequence` (every matching event up to there was delivered or
dead-lettered) plus the state of the event being retried: its sequence and id, how many attempts were
made, when the first was made (the 24 h window) and when the next is due. A restart resumes from there
with the same `webhook-id`, the same attempt count and the same deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from callrec.events.model import EventFilter
from callrec.security.redact import redact_url
from callrec.webhooks.config import WebhookSettings
from callrec.webhooks.errors import EndpointNotFound, InvalidWebhook

__all__ = [
    "SOURCE_API",
    "SOURCE_CONFIG",
    "DeadLetter",
    "DeliveryAttempt",
    "EndpointCursor",
    "WebhookEndpoint",
    "WebhookStore",
    "WebhookStorePort",
    "new_endpoint_id",
]

SOURCE_CONFIG = "config"
SOURCE_API = "api"

_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS endpoints (
            id TEXT PRIMARY KEY,
            url TEXT NOT NULL UNIQUE,
            secret TEXT NOT NULL,
            event_types TEXT NOT NULL DEFAULT '[]',
            server_call_id TEXT NOT NULL DEFAULT '',
            schema TEXT NOT NULL DEFAULT 'callrec',
            source TEXT NOT NULL CHECK (source IN ('config', 'api')),
            enabled INTEGER NOT NULL DEFAULT 1,
            disabled_reason TEXT NOT NULL DEFAULT '',
            validated INTEGER NOT NULL DEFAULT 1,
            created_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS cursors (
            endpoint_id TEXT PRIMARY KEY REFERENCES endpoints(id) ON DELETE CASCADE,
            delivered_sequence INTEGER NOT NULL,
            pending_sequence INTEGER,
            pending_event_id TEXT NOT NULL DEFAULT '',
            attempts INTEGER NOT NULL DEFAULT 0,
            first_attempt_at REAL,
            next_attempt_at REAL
        );
        CREATE TABLE IF NOT EXISTS attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
            event_id TEXT NOT NULL,
            sequence INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            at REAL NOT NULL,
            status INTEGER,
            error TEXT NOT NULL DEFAULT '',
            duration_ms REAL NOT NULL,
            redelivery INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS attempts_by_endpoint ON attempts (endpoint_id, id);
        CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts (endpoint_id, event_id);
        CREATE TABLE IF NOT EXISTS dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
            event_id TEXT NOT NULL DEFAULT '',
            event_type TEXT NOT NULL DEFAULT '',
            first_sequence INTEGER NOT NULL,
            last_sequence INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            status INTEGER,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS dead_letters_by_endpoint ON dead_letters (endpoint_id, id);
        CREATE INDEX IF NOT EXISTS dead_letters_by_event ON dead_letters (endpoint_id, event_id)
        """,
    ),
]


# ------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class WebhookEndpoint:
    """One endpoint: where to POST, with which secret, which events, and whether deliveries run."""

    id: str
    url: str
    secret: str = field(repr=False)
    """`whsec_...`; never printed (the API layer shows it once, when it generated it)."""
    event_types: tuple[str, ...] = ()
    server_call_id: str = ""
    schema: str = "callrec"
    source: str = SOURCE_API
    """`config` (the TOML file: not removable through the API) or `api`."""
    enabled: bool = True
    disabled_reason: str = ""
    """Why deliveries stopped (a 410, a failed validation handshake); empty while enabled."""
    validated: bool = True
    """False for an `eventgrid` endpoint from the TOML file until its validation handshake succeeded."""
    created_at: float = 0.0

    @property
    def event_filter(self) -> EventFilter:
        """The event log filter of this endpoint's subscription."""
        return EventFilter(frozenset(self.event_types), self.server_call_id)

    @property
    def shown_url(self) -> str:
        """The URL for logs and messages: no query string (it often carries a key) or user-info."""
        return redact_url(self.url)


@dataclass(frozen=True)
class EndpointCursor:
    """How far an endpoint got, and the state of the event being retried."""

    endpoint_id: str
    delivered_sequence: int
    """Every matching event up to this sequence was delivered or dead-lettered."""
    pending_sequence: int | None = None
    """The event being retried (attempted, not yet settled), if any."""
    pending_event_id: str = ""
    attempts: int = 0
    """Attempts made at the pending event."""
    first_attempt_at: float | None = None
    """Unix time of the pending event's first attempt: its 24 h window starts here."""
    next_attempt_at: float | None = None
    """Unix time the next attempt is due."""

    def settled(self, sequence: int) -> EndpointCursor:
        """The cursor once the event at `sequence` is delivered or dead-lettered."""
        return EndpointCursor(self.endpoint_id, max(self.delivered_sequence, sequence))

    def fresh(self) -> EndpointCursor:
        """The cursor with no retry state (a new 24 h window for the event at the cursor)."""
        return EndpointCursor(self.endpoint_id, self.delivered_sequence)


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST to an endpoint (or one that could not be sent)."""

    endpoint_id: str
    event_id: str
    """The `webhook-id` sent."""
    sequence: int
    attempt: int
    """1 for the first attempt at this event, 2 for the first retry, ..."""
    at: float
    """Unix time the attempt started."""
    status: int | None
    """HTTP status, or None when there was no response."""
    error: str
    """What went wrong without a response (timeout, connection refused, address policy), or a note."""
    duration_ms: float
    redelivery: bool = False
    """Sent by `redeliver` (the cursor was not involved)."""


@dataclass(frozen=True)
class DeadLetter:
    """An event (or a range of pruned events) the endpoint will not get from the cursor."""

    endpoint_id: str
    event_id: str
    """Empty for a pruned range (the events are gone, their ids with them)."""
    event_type: str
    first_sequence: int
    last_sequence: int
    """Equal to `first_sequence` for one event."""
    attempts: int
    status: int | None
    """Status of the last attempt, if it got one."""
    reason: str
    at: float


# ------------------------------------------------------------------------------------------ the port
class WebhookStorePort(Protocol):
    """What the dispatcher needs of durable webhook state (SQLite here; PostgreSQL in cluster mode later).

    Every write that settles an event (`record` with a cursor) is atomic: the attempt, the dead letter
    and the cursor commit together or not at all.
    """

    async def insert_endpoint(self, endpoint: WebhookEndpoint, after_sequence: int) -> None:
        """Store a new endpoint whose cursor starts after `after_sequence`; `InvalidWebhook` if its URL is taken."""
        ...

    async def sync_config(
        self, settings: Sequence[WebhookSettings], after_sequence: int, now: float
    ) -> list[WebhookEndpoint]:
        """Make the `config` endpoints exactly `settings` (upserted by URL; others of source config removed)."""
        ...

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Remove an endpoint with its cursor, attempts and dead letters."""
        ...

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        """The endpoint; `EndpointNotFound` when no endpoint has this id."""
        ...

    async def find_endpoint(self, url: str) -> WebhookEndpoint | None:
        """The endpoint with this URL, if any."""
        ...

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        """Every endpoint, oldest first."""
        ...

    async def set_enabled(self, endpoint_id: str, enabled: bool, reason: str = "") -> WebhookEndpoint:
        """Enable (clearing the reason and the retry state: a fresh 24 h window) or disable with a reason."""
        ...

    async def set_validated(self, endpoint_id: str) -> None:
        """Record that an Event Grid endpoint passed its validation handshake."""
        ...

    async def cursor(self, endpoint_id: str) -> EndpointCursor:
        """The endpoint's cursor."""
        ...

    async def record(
        self,
        *,
        attempt: DeliveryAttempt | None = None,
        cursor: EndpointCursor | None = None,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        """Write an attempt, a cursor and a dead letter (those given) in one transaction."""
        ...

    async def deliveries(self, endpoint_id: str, limit: int) -> list[DeliveryAttempt]:
        """The newest `limit` attempts of an endpoint, newest first."""
        ...

    async def dead_letters(self, endpoint_id: str, limit: int) -> list[DeadLetter]:
        """The newest `limit` dead letters of an endpoint, newest first."""
        ...

    async def find_sequence(self, endpoint_id: str, event_id: str) -> int | None:
        """The sequence of an event the endpoint has seen (attempted or dead-lettered), if known."""
        ...

    async def last_attempt_number(self, endpoint_id: str, event_id: str) -> int:
        """The highest attempt number recorded (and kept) for this event at this endpoint (0: none)."""
        ...

    async def close(self) -> None:
        """Release the database."""
        ...


def new_endpoint_id() -> str:
    """A short opaque id: `wh_` + 12 url-safe random characters (72 bits)."""
    return "wh_" + secrets.token_urlsafe(9)


# ---------------------------------------------------------------------------------------- SQLite
class WebhookStore:
    """`WebhookStorePort` on a SQLite file of its own (see the module docstring)."""

    def __init__(self, path: Path, *, max_attempts_kept: int = 1000) -> None:
        if max_attempts_kept < 1:
            raise ValueError(f"[webhooks_policy] max_attempts_kept must be >= 1, got {max_attempts_kept}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_attempts_kept = max_attempts_kept
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        os.chmod(path, 0o600)  # it holds the endpoints' secrets
        self._migrate()

    def _migrate(self) -> None:
        current = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        for version, script in _MIGRATIONS:
            if version > current:
                with self._transaction() as conn:
                    for statement in script.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- endpoints ---------------------------------------------------------------------------------
    async def insert_endpoint(self, endpoint: WebhookEndpoint, after_sequence: int) -> None:
        """Store a new endpoint whose cursor starts after `after_sequence`; `InvalidWebhook` if its URL is taken."""
        with self._transaction() as conn:
            taken = conn.execute("SELECT id FROM endpoints WHERE url = ?", (endpoint.url,)).fetchone()
            if taken is not None:
                raise InvalidWebhook(
                    f"an endpoint for {endpoint.shown_url!r} exists already (id {taken['id']}); remove it first"
                )
            self._insert(conn, endpoint, after_sequence)

    @staticmethod
    def _insert(conn: sqlite3.Connection, endpoint: WebhookEndpoint, after_sequence: int) -> None:
        conn.execute(
            "INSERT INTO endpoints (id, url, secret, event_types, server_call_id, schema, source, enabled,"
            " disabled_reason, validated, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                endpoint.id,
                endpoint.url,
                endpoint.secret,
                json.dumps(list(endpoint.event_types)),
                endpoint.server_call_id,
                endpoint.schema,
                endpoint.source,
                int(endpoint.enabled),
                endpoint.disabled_reason,
                int(endpoint.validated),
                endpoint.created_at,
            ),
        )
        conn.execute(
            "INSERT INTO cursors (endpoint_id, delivered_sequence) VALUES (?, ?)", (endpoint.id, after_sequence)
        )

    async def sync_config(
        self, settings: Sequence[WebhookSettings], after_sequence: int, now: float
    ) -> list[WebhookEndpoint]:
        """Make the `config` endpoints exactly `settings`, matched by URL.

        New URLs are inserted (cursor after `after_sequence`: new events only); existing ones take the
        file's secret, filter and schema and become `config` (an API endpoint the operator now lists
        keeps its cursor); `config` endpoints no longer in the file are removed. An `eventgrid` endpoint
        that is new, or whose URL was not validated as one before, needs its handshake (`validated` false).
        """
        wanted = {s.url: s for s in settings}
        with self._transaction() as conn:
            for row in conn.execute("SELECT id, url FROM endpoints WHERE source = ?", (SOURCE_CONFIG,)).fetchall():
                if row["url"] not in wanted:
                    conn.execute("DELETE FROM endpoints WHERE id = ?", (row["id"],))
            for s in settings:
                row = conn.execute("SELECT * FROM endpoints WHERE url = ?", (s.url,)).fetchone()
                if row is None:
                    endpoint = WebhookEndpoint(
                        id=new_endpoint_id(),
                        url=s.url,
                        secret=s.secret,
                        event_types=s.event_types,
                        server_call_id=s.server_call_id,
                        schema=s.schema,
                        source=SOURCE_CONFIG,
                        validated=s.schema != "eventgrid",
                        created_at=now,
                    )
                    self._insert(conn, endpoint, after_sequence)
                    continue
                current = _endpoint(row)
                # an eventgrid endpoint needs a handshake unless it passed one as an eventgrid endpoint already
                validated = s.schema != "eventgrid" or (current.schema == "eventgrid" and current.validated)
                conn.execute(
                    "UPDATE endpoints SET secret = ?, event_types = ?, server_call_id = ?, schema = ?, source = ?,"
                    " validated = ? WHERE id = ?",
                    (
                        s.secret,
                        json.dumps(list(s.event_types)),
                        s.server_call_id,
                        s.schema,
                        SOURCE_CONFIG,
                        int(validated),
                        current.id,
                    ),
                )
            rows = conn.execute("SELECT * FROM endpoints WHERE source = ? ORDER BY created_at, id", (SOURCE_CONFIG,))
            return [_endpoint(r) for r in rows.fetchall()]

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Remove an endpoint with its cursor, attempts and dead letters (`EndpointNotFound` if unknown)."""
        with self._transaction() as conn:
            if conn.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)).rowcount == 0:
                raise _not_found(endpoint_id)

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        """The endpoint; `EndpointNotFound` when no endpoint has this id."""
        row = self.conn.execute("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise _not_found(endpoint_id)
        return _endpoint(row)

    async def find_endpoint(self, url: str) -> WebhookEndpoint | None:
        """The endpoint with this URL, if any."""
        row = self.conn.execute("SELECT * FROM endpoints WHERE url = ?", (url,)).fetchone()
        return _endpoint(row) if row is not None else None

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        """Every endpoint, oldest first."""
        rows = self.conn.execute("SELECT * FROM endpoints ORDER BY created_at, id").fetchall()
        return [_endpoint(r) for r in rows]

    async def set_enabled(self, endpoint_id: str, enabled: bool, reason: str = "") -> WebhookEndpoint:
        """Enable (clearing the reason and the retry state: a fresh 24 h window) or disable with a reason."""
        with self._transaction() as conn:
            changed = conn.execute(
                "UPDATE endpoints SET enabled = ?, disabled_reason = ? WHERE id = ?",
                (int(enabled), "" if enabled else reason, endpoint_id),
            ).rowcount
            if not changed:
                raise _not_found(endpoint_id)
            if enabled:
                conn.execute(
                    "UPDATE cursors SET attempts = 0, first_attempt_at = NULL, next_attempt_at = NULL"
                    " WHERE endpoint_id = ?",
                    (endpoint_id,),
                )
            row = conn.execute("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return _endpoint(row)

    async def set_validated(self, endpoint_id: str) -> None:
        """Record that an Event Grid endpoint passed its validation handshake."""
        self.conn.execute("UPDATE endpoints SET validated = 1 WHERE id = ?", (endpoint_id,))

    # -- cursors, attempts, dead letters -------------------------------------------------------------
    async def cursor(self, endpoint_id: str) -> EndpointCursor:
        """The endpoint's cursor (`EndpointNotFound` if the endpoint is unknown)."""
        row = self.conn.execute("SELECT * FROM cursors WHERE endpoint_id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise _not_found(endpoint_id)
        return EndpointCursor(
            endpoint_id=row["endpoint_id"],
            delivered_sequence=int(row["delivered_sequence"]),
            pending_sequence=row["pending_sequence"],
            pending_event_id=row["pending_event_id"],
            attempts=int(row["attempts"]),
            first_attempt_at=row["first_attempt_at"],
            next_attempt_at=row["next_attempt_at"],
        )

    async def record(
        self,
        *,
        attempt: DeliveryAttempt | None = None,
        cursor: EndpointCursor | None = None,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        """Write an attempt (keeping the newest `max_attempts_kept` of its endpoint), a cursor and a dead
        letter, those given, in one transaction."""
        with self._transaction() as conn:
            if attempt is not None:
                conn.execute(
                    "INSERT INTO attempts (endpoint_id, event_id, sequence, attempt, at, status, error, duration_ms,"
                    " redelivery) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        attempt.endpoint_id,
                        attempt.event_id,
                        attempt.sequence,
                        attempt.attempt,
                        attempt.at,
                        attempt.status,
                        attempt.error,
                        attempt.duration_ms,
                        int(attempt.redelivery),
                    ),
                )
                conn.execute(
                    "DELETE FROM attempts WHERE endpoint_id = ? AND id <= (SELECT id FROM attempts"
                    " WHERE endpoint_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (attempt.endpoint_id, attempt.endpoint_id, self.max_attempts_kept),
                )
            if dead_letter is not None:
                d = dead_letter
                conn.execute(
                    "INSERT INTO dead_letters (endpoint_id, event_id, event_type, first_sequence, last_sequence,"
                    " attempts, status, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        d.endpoint_id,
                        d.event_id,
                        d.event_type,
                        d.first_sequence,
                        d.last_sequence,
                        d.attempts,
                        d.status,
                        d.reason,
                        d.at,
                    ),
                )
            if cursor is not None:
                conn.execute(
                    "UPDATE cursors SET delivered_sequence = ?, pending_sequence = ?, pending_event_id = ?,"
                    " attempts = ?, first_attempt_at = ?, next_attempt_at = ? WHERE endpoint_id = ?",
                    (
                        cursor.delivered_sequence,
                        cursor.pending_sequence,
                        cursor.pending_event_id,
                        cursor.attempts,
                        cursor.first_attempt_at,
                        cursor.next_attempt_at,
                        cursor.endpoint_id,
                    ),
                )

    async def deliveries(self, endpoint_id: str, limit: int) -> list[DeliveryAttempt]:
        """The newest `limit` attempts of an endpoint, newest first."""
        rows = self.conn.execute(
            "SELECT * FROM attempts WHERE endpoint_id = ? ORDER BY id DESC LIMIT ?", (endpoint_id, max(0, limit))
        ).fetchall()
        return [
            DeliveryAttempt(
                endpoint_id=r["endpoint_id"],
                event_id=r["event_id"],
                sequence=int(r["sequence"]),
                attempt=int(r["attempt"]),
                at=float(r["at"]),
                status=r["status"],
                error=r["error"],
                duration_ms=float(r["duration_ms"]),
                redelivery=bool(r["redelivery"]),
            )
            for r in rows
        ]

    async def dead_letters(self, endpoint_id: str, limit: int) -> list[DeadLetter]:
        """The newest `limit` dead letters of an endpoint, newest first."""
        rows = self.conn.execute(
            "SELECT * FROM dead_letters WHERE endpoint_id = ? ORDER BY id DESC LIMIT ?", (endpoint_id, max(0, limit))
        ).fetchall()
        return [
            DeadLetter(
                endpoint_id=r["endpoint_id"],
                event_id=r["event_id"],
                event_type=r["event_type"],
                first_sequence=int(r["first_sequence"]),
                last_sequence=int(r["last_sequence"]),
                attempts=int(r["attempts"]),
                status=r["status"],
                reason=r["reason"],
                at=float(r["at"]),
            )
            for r in rows
        ]

    async def find_sequence(self, endpoint_id: str, event_id: str) -> int | None:
        """The sequence of an event the endpoint has seen (attempted or dead-lettered), if known."""
        for table, column in (("attempts", "sequence"), ("dead_letters", "first_sequence")):
            row = self.conn.execute(
                f"SELECT {column} AS s FROM {table} WHERE endpoint_id = ? AND event_id = ? LIMIT 1",
                (endpoint_id, event_id),
            ).fetchone()
            if row is not None:
                return int(row["s"])
        cursor = await self.cursor(endpoint_id)
        if cursor.pending_event_id == event_id and cursor.pending_sequence is not None:
            return cursor.pending_sequence
        return None

    async def last_attempt_number(self, endpoint_id: str, event_id: str) -> int:
        """The highest attempt number kept for this event at this endpoint (0: none)."""
        row = self.conn.execute(
            "SELECT MAX(attempt) AS n FROM attempts WHERE endpoint_id = ? AND event_id = ?", (endpoint_id, event_id)
        ).fetchone()
        return int(row["n"] or 0)

    async def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        self.conn.close()


def _not_found(endpoint_id: str) -> EndpointNotFound:
    return EndpointNotFound(f"no webhook endpoint has id {endpoint_id!r} (`callrec webhooks list` shows them)")


def _endpoint(row: sqlite3.Row) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        url=row["url"],
        secret=row["secret"],
        event_types=tuple(json.loads(row["event_types"])),
        server_call_id=row["server_call_id"],
        schema=row["schema"],
        source=row["source"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        validated=bool(row["validated"]),
        created_at=float(row["created_at"]),
    )

