"""The durable event log: dense sequence numbers, retention, and delivery to subscribers.

Two backends share this module's subscription machinery and differ only in storage: `EventLog`
(SQLite, here; the embedded default) and `callrec.events.redis_log.RedisEventLog` (a Redis Stream, for
cluster mode, where every node appends to and follows one log). The rest of the server sees either
through `EventLogPort`. What is shared (`EventLogBase`, `EventSubscription`): the set of subscriptions,
the cap on it, the backlog→live handover and the bounded queues. What each backend provides: `append`,
`last_sequence`, `oldest_sequence`, `prune`, reading one page of backlog (`_read_page`), and the
sequence up to which it has handed committed events to its subscriptions (`_queue_from`).

A subscriber reads in two phases, so that it sees every matching event exactly once, in order:

- Backlog: events already in the log are read in pages. SQLite reads SQL pages (at most `PAGE_SIZE`
  events and `SCAN_SPAN` sequence numbers per query), filtered by SQLite through the indexes of
  migration 0005 on type, call and recording, on a worker thread with its own read connection.
  Filtering used to happen in Python on the event loop: a filtered subscriber over a 200 000-event
  log stalled every call on the server for ~4 s. Redis reads `XRANGE` pages (see its module).
- Live: once caught up, the `append` that commits an event pushes it into each matching
  subscriber's queue (with Redis: the one task per node that follows the stream, for the appends of
  every node), so following the log costs no query per event per subscriber.

Handover without gap or duplicate: a subscription is registered, and the sequence of the last event
delivered to subscriptions is read, in one step on the event loop, where events are delivered
(SQLite: where appends commit); from then on its queue holds every matching event after that
sequence (`_queue_from`), and the backlog is read from the store up to exactly there.

Bounded memory: a queue holds at most `max_queue` events. When it is full and the subscriber is still
taking events (only slower than a burst), the queue is dropped and those events are read again from
the log. When it is full and the subscriber has taken nothing since the queue last filled (a client
that does not read: gRPC's flow control holds its write), the subscription ends with
RESOURCE_EXHAUSTED naming the `after_sequence` to resume from.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

from callrec.core.errors import OutOfRange, ResourceExhausted
from callrec.core.limits import check_count
from callrec.events.model import EventFilter, EventType, NewEvent, StoredEvent
from callrec.state.db import Database

PAGE_SIZE = 500
"""Most events one backlog query returns (~0.5 MB of rows at most)."""
SCAN_SPAN = 50_000
"""Most sequence numbers one backlog query covers, so a filter that its index does not fully cover
(a call's events, of one type) scans a bounded range per query (~10 ms) and the reader thread,
shared by every subscriber, is never held long by one of them."""

_COLUMNS = "sequence, id, event_type, subject, server_call_id, recording_id, event_time, payload, json"


class EventLogPort(Protocol):
    """What the server uses of an event log, whichever backend stores it (SQLite or Redis).

    `start` before the first `subscribe` (a Redis log starts following the stream there) and `close`
    at shutdown. Sequence queries and `prune` are coroutines because a remote backend needs I/O;
    `subscribe` is not, because the handover from backlog to live must happen in one step of the
    event loop.
    """

    max_subscribers: int
    max_queue: int

    async def start(self) -> None:
        """Get ready to serve subscribers (connect, follow the log); raises UNAVAILABLE when it cannot."""
        ...

    async def close(self) -> None:
        """Stop following the log and release connections."""
        ...

    async def append(self, event: NewEvent) -> StoredEvent:
        """Store `event` with the next sequence number; it then reaches every matching subscriber."""
        ...

    async def last_sequence(self) -> int:
        """Sequence of the newest event ever appended (0 when none)."""
        ...

    async def oldest_sequence(self) -> int:
        """Sequence of the oldest retained event (last + 1 when the log is empty)."""
        ...

    async def prune(self, now: float | None = None) -> int:
        """Delete events older than the retention and say how many; sequence numbers are never reused."""
        ...

    def subscribe(self, after: int, flt: EventFilter) -> EventSubscription:
        """A subscription to every matching event after `after`; close it when done."""
        ...

    def follow(self, after: int, flt: EventFilter) -> AsyncIterator[StoredEvent]:
        """Every matching event after `after`, then new ones as they are appended, forever."""
        ...

    def subscriber_count(self) -> int:
        """Subscriptions open now."""
        ...

    def subscriptions(self) -> list[EventSubscription]:
        """The open subscriptions (for metrics and tests)."""
        ...


class EventLogBase(ABC):
    """The backend-neutral half of an event log: its subscriptions and the delivery of committed events.

    A backend calls `_deliver` with every committed event, in sequence order and once each, on the
    event loop; `_queue_from` must return the sequence of the last event it delivered (or of the newest
    committed one, when no event is committed that it has not delivered yet). A subscription reads its
    backlog with `_read_page` up to that sequence and takes the rest from its queue.
    """

    def __init__(
        self,
        on_publish: Callable[[StoredEvent], None] | None,
        max_subscribers: int,
        max_queue: int,
    ) -> None:
        if max_subscribers < 1 or max_queue < 1:
            raise ValueError(
                f"[limits] max_event_subscribers ({max_subscribers}) and max_subscriber_queue ({max_queue}) "
                "must be >= 1"
            )
        self.max_subscribers = max_subscribers
        self.max_queue = max_queue
        self._on_publish = on_publish
        self._subscriptions: set[EventSubscription] = set()

    def subscribe(self, after: int, flt: EventFilter) -> EventSubscription:
        """A subscription to every matching event after `after` (which the caller has checked is
        retained and not beyond the log); close it when done (it is a context manager)."""
        check_count(len(self._subscriptions), self.max_subscribers, "event subscribers", "max_event_subscribers")
        sub = EventSubscription(self, after, flt, queue_from=self._queue_from())
        self._subscriptions.add(sub)
        return sub

    def subscriber_count(self) -> int:
        """Subscriptions open now."""
        return len(self._subscriptions)

    def subscriptions(self) -> list[EventSubscription]:
        """The open subscriptions (for metrics and tests)."""
        return list(self._subscriptions)

    async def follow(self, after: int, flt: EventFilter) -> AsyncIterator[StoredEvent]:
        """Every matching event after `after`, then new ones as they are appended, forever."""
        with self.subscribe(after, flt) as sub:
            while True:
                stored = await sub.next()
                sub.delivered = stored.sequence
                yield stored

    def _deliver(self, stored: StoredEvent) -> None:
        """Push a committed event to every subscription (each keeps it if it matches)."""
        for sub in list(self._subscriptions):
            sub._offer(stored)

    def _unsubscribe(self, sub: EventSubscription) -> None:
        self._subscriptions.discard(sub)

    @abstractmethod
    def _queue_from(self) -> int:
        """The sequence after which every committed event will still reach `_deliver` (see the class)."""

    @abstractmethod
    async def _read_page(self, after: int, upto: int, flt: EventFilter) -> tuple[list[StoredEvent], int]:
        """Matching events in (after, upto] (all committed), at most about a page of them, and the cursor
        to continue from (`upto` once every match up to there was returned). Raises OUT_OF_RANGE
        (`pruned_error`) when events after `after` were pruned before they were read."""


def pruned_error(after: int) -> OutOfRange:
    """The error a subscription ends with when its backlog was pruned before it read it."""
    return OutOfRange(
        f"events after {after} were pruned (older than the retention) before this subscriber read "
        "them; resubscribe with from_oldest=true and reconcile with ListRecordings"
    )


class EventLog(EventLogBase):
    """Appends events durably to SQLite and serves them to subscribers (the embedded backend)."""

    def __init__(
        self,
        db: Database,
        retention: timedelta,
        on_publish: Callable[[StoredEvent], None] | None = None,
        *,
        max_subscribers: int = 1000,
        max_queue: int = 10_000,
    ) -> None:
        super().__init__(on_publish, max_subscribers, max_queue)
        self.db = db
        self.retention = retention

    async def start(self) -> None:
        """Nothing to start: appends deliver to subscribers directly."""

    async def last_sequence(self) -> int:
        """Sequence of the newest event ever appended (0 when none)."""
        return _last_sequence(self.db.conn)

    async def oldest_sequence(self) -> int:
        """Sequence of the oldest retained event (last + 1 when the log is empty)."""
        return _oldest_sequence(self.db.conn)

    async def append(self, event: NewEvent) -> StoredEvent:
        """Store the event with the next sequence number and push it to live subscribers.

        Commit and push happen in one step of the event loop (no await between them), which the
        subscriptions' handover from backlog to live relies on.
        """
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
        self._deliver(stored)
        return stored

    async def prune(self, now: float | None = None) -> int:
        """Delete events older than the retention; sequence numbers are never reused."""
        cutoff = (now if now is not None else time.time()) - self.retention.total_seconds()
        return self.db.conn.execute("DELETE FROM events WHERE created_at < ?", (cutoff,)).rowcount

    async def close(self) -> None:
        """Nothing to release: reads run on the database's reader thread (`Database.close` stops it)."""

    def _queue_from(self) -> int:
        """The newest committed sequence: `append` delivers in the step that commits, so none is pending."""
        return _last_sequence(self.db.conn)

    async def _read_page(self, after: int, upto: int, flt: EventFilter) -> tuple[list[StoredEvent], int]:
        """Matching events in (after, upto], read on the database's reader thread: see `_read_page_blocking`."""
        return await self.db.read(lambda conn: self._read_page_blocking(conn, after, upto, flt))

    def _read_page_blocking(
        self, conn: sqlite3.Connection, after: int, upto: int, flt: EventFilter
    ) -> tuple[list[StoredEvent], int]:
        """Up to about `PAGE_SIZE` matching events in (after, upto], and the cursor to continue from.

        Every committed row up to `upto` exists (`upto` was the last sequence when it was chosen), so a
        short page means every match up to `upto` was read. Several event types without a call or
        recording filter are read one type at a time: each is then a plain range of its index, where
        `event_type IN (...)` would sort every match of the range first.
        """
        conn.execute("BEGIN")  # one snapshot: a prune cannot slip between the retention check and the reads
        try:
            oldest = _oldest_sequence(conn)
            if after + 1 < oldest and after < upto:
                raise pruned_error(after)
            if len(flt.event_types) > 1 and not flt.server_call_id and not flt.recording_id:
                parts = [_select(conn, after, upto, EventFilter(frozenset({t}))) for t in sorted(flt.event_types)]
            else:
                parts = [_select(conn, after, upto, flt)]
        finally:
            conn.execute("COMMIT")
        # A full part may have more matches after its last row: continue from the earliest such row.
        cursor = min((rows[-1].sequence for rows in parts if len(rows) == PAGE_SIZE), default=upto)
        merged = sorted((row for rows in parts for row in rows if row.sequence <= cursor), key=lambda s: s.sequence)
        return merged, cursor


class EventSubscription:
    """One subscriber: its filter, its place in the log and its bounded queue of live events.

    One consumer calls `next()` and sets `delivered` once it has handed an event on; the log calls
    `_offer()` for every appended event.
    """

    def __init__(self, log: EventLogBase, after: int, flt: EventFilter, queue_from: int) -> None:
        self.filter = flt
        self.delivered = after
        """Last sequence the consumer handed to its transport: where a resume starts."""
        self.queue_peak = 0
        """Most events the queue ever held (never more than the log's `max_queue`)."""
        self._log = log
        self._cursor = after
        """Every matching event up to here was read (returned, or waiting in `_page`)."""
        self._queue_from = queue_from
        """`_queue` holds every matching event after this sequence."""
        self._page: deque[StoredEvent] = deque()
        self._queue: deque[StoredEvent] = deque()
        self._inside_next = False
        self._took_since_reset = False
        self._wake = asyncio.Event()
        self._ended = asyncio.Event()
        self._overflowed = False

    @property
    def queued(self) -> int:
        """Live events waiting in the queue now."""
        return len(self._queue)

    async def next(self) -> StoredEvent:
        """The next matching event: from the log's backlog, then live ones as they are appended.

        Raises RESOURCE_EXHAUSTED after an overflow, OUT_OF_RANGE when the backlog was pruned
        before it was read.
        """
        self._inside_next = self._took_since_reset = True
        try:
            while True:
                if self._overflowed:
                    raise self.overflow_error()
                if self._page:
                    return self._page.popleft()
                if self._cursor < self._queue_from:
                    upto = min(self._queue_from, self._cursor + SCAN_SPAN)
                    page, cursor = await self._log._read_page(self._cursor, upto, self.filter)
                    self._page.extend(page)
                    self._cursor = cursor
                    continue
                while self._queue:
                    stored = self._queue.popleft()
                    if stored.sequence > self._cursor:
                        self._cursor = stored.sequence
                        return stored
                self._wake.clear()
                await self._wake.wait()
        finally:
            self._inside_next = False

    async def wait_ended(self) -> None:
        """Returns when the subscription ended by overflowing (`overflow_error` says how to resume)."""
        await self._ended.wait()

    def overflow_error(self) -> ResourceExhausted:
        """The error an overflowed subscription ends with: names the `after_sequence` to resume from."""
        return ResourceExhausted(
            f"event subscriber not reading: {self._log.max_queue} events arrived while it read none, the limit "
            f"([limits] max_subscriber_queue); resubscribe with after_sequence={self.delivered} to continue"
        )

    def close(self) -> None:
        """Stop receiving events and free the queue."""
        self._log._unsubscribe(self)
        self._page.clear()
        self._queue.clear()

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _offer(self, stored: StoredEvent) -> None:
        """An event was appended (called by the log, on the event loop, right after the commit)."""
        if stored.sequence <= self._queue_from or not self.filter.matches(stored.event):
            return
        if len(self._queue) >= self._log.max_queue:
            if not (self._inside_next or self._took_since_reset):
                self._overflowed = True
                self.close()
                self._ended.set()
                self._wake.set()
                return
            # Still taking events, only slower than they come: read these from the log instead.
            self._queue.clear()
            self._queue_from = stored.sequence
            self._took_since_reset = False
            self._wake.set()
            return
        self._queue.append(stored)
        self.queue_peak = max(self.queue_peak, len(self._queue))
        self._wake.set()


def _last_sequence(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = 'event_sequence'").fetchone()
    return int(row["value"])


def _oldest_sequence(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MIN(sequence) AS s FROM events").fetchone()
    return int(row["s"]) if row["s"] is not None else _last_sequence(conn) + 1


def page_query(flt: EventFilter) -> tuple[str, list[object]]:
    """SQL for the first `PAGE_SIZE` matching events in (?, ?], and its parameters after those two.

    With one key (a recording, a call or one event type) this is one range of that key's index
    (migration 0005) in sequence order: SQLite reads only matching entries, and sorts nothing.
    """
    where = ["sequence > ?", "sequence <= ?"]
    params: list[object] = []
    if flt.recording_id:
        where.append("recording_id = ?")
        params.append(flt.recording_id)
    if flt.server_call_id:
        where.append("server_call_id = ?")
        params.append(flt.server_call_id)
    if flt.event_types:
        types = sorted(flt.event_types)
        where.append(f"event_type IN ({', '.join('?' * len(types))})")
        params.extend(types)
    return f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY sequence LIMIT {PAGE_SIZE}", params


def _select(conn: sqlite3.Connection, after: int, upto: int, flt: EventFilter) -> list[StoredEvent]:
    sql, params = page_query(flt)
    return [_stored(row) for row in conn.execute(sql, [after, upto, *params])]


def _stored(row: sqlite3.Row) -> StoredEvent:
    return stored_event(int(row["sequence"]), row)


def stored_event(sequence: int, fields: Mapping[str, Any] | sqlite3.Row) -> StoredEvent:
    """An event from its stored fields (a SQLite row or a Redis stream entry: the same names)."""
    return StoredEvent(
        sequence,
        NewEvent(
            id=fields["id"],
            event_type=EventType(fields["event_type"]),
            subject=fields["subject"],
            server_call_id=fields["server_call_id"],
            recording_id=fields["recording_id"],
            event_time=datetime.fromisoformat(fields["event_time"]),
            payload=json.loads(fields["payload"]),
            json=fields["json"],
        ),
    )
