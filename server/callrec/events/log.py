"""The durable event log: dense sequence numbers, retention, and wake-ups for subscribers.

Subscribers never receive events pushed at them: they read the log after their
cursor and sleep until the log grows. So a subscriber that falls behind, or
reconnects with `after_sequence`, sees every event exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

from callrec.events.model import EventFilter, EventType, NewEvent, StoredEvent
from callrec.state.db import Database


class EventLog:
    """Appends events durably and serves them to subscribers."""

    def __init__(self, db: Database, retention: timedelta, on_publish: Callable[[StoredEvent], None] | None = None):
        self.db = db
        self.retention = retention
        self._grew = asyncio.Condition()
        self._on_publish = on_publish

    def last_sequence(self) -> int:
        """Sequence of the newest event ever appended (0 when none)."""
        row = self.db.conn.execute("SELECT value FROM counters WHERE name = 'event_sequence'").fetchone()
        return int(row["value"])

    def oldest_sequence(self) -> int:
        """Sequence of the oldest retained event (last + 1 when the log is empty)."""
        row = self.db.conn.execute("SELECT MIN(sequence) AS s FROM events").fetchone()
        return int(row["s"]) if row["s"] is not None else self.last_sequence() + 1

    async def append(self, event: NewEvent) -> StoredEvent:
        """Store the event with the next sequence number and wake subscribers."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'event_sequence'")
            sequence = int(conn.execute("SELECT value FROM counters WHERE name = 'event_sequence'").fetchone()[0])
            conn.execute(
                "INSERT INTO events (sequence, id, event_type, subject, server_call_id, recording_id, event_time,"
                " created_at, payload, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sequence,
                    event.id,
                    event.event_type.value,
                    event.subject,
                    event.server_call_id,
                    event.recording_id,
                    event.event_time.isoformat(),
                    time.time(),
                    json.dumps(event.payload, ensure_ascii=False),
                    event.json,
                ),
            )
        stored = StoredEvent(sequence, event)
        if self._on_publish:
            self._on_publish(stored)
        async with self._grew:
            self._grew.notify_all()
        return stored

    def read_after(self, after: int, flt: EventFilter, limit: int = 500) -> tuple[list[StoredEvent], int]:
        """Up to `limit` matching events after `after`, and the cursor to continue from."""
        rows = self.db.conn.execute(
            "SELECT * FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?", (after, limit)
        ).fetchall()
        out: list[StoredEvent] = []
        cursor = after
        for row in rows:
            cursor = int(row["sequence"])
            event = NewEvent(
                id=row["id"],
                event_type=EventType(row["event_type"]),
                subject=row["subject"],
                server_call_id=row["server_call_id"],
                recording_id=row["recording_id"],
                event_time=datetime.fromisoformat(row["event_time"]),
                payload=json.loads(row["payload"]),
                json=row["json"],
            )
            if flt.matches(event):
                out.append(StoredEvent(cursor, event))
        return out, cursor

    async def follow(self, after: int, flt: EventFilter) -> AsyncIterator[StoredEvent]:
        """Every matching event after `after`, then new ones as they are appended, forever."""
        cursor = after
        while True:

            def grown(seen: int = cursor) -> bool:
                """Whether an event was appended after those already read."""
                return self.last_sequence() > seen

            async with self._grew:
                await self._grew.wait_for(grown)
            while True:
                batch, cursor = self.read_after(cursor, flt)
                for stored in batch:
                    yield stored
                if cursor >= self.last_sequence():
                    break

    def prune(self, now: float | None = None) -> int:
        """Delete events older than the retention; sequence numbers are never reused."""
        cutoff = (now if now is not None else time.time()) - self.retention.total_seconds()
        return self.db.conn.execute("DELETE FROM events WHERE created_at < ?", (cutoff,)).rowcount
