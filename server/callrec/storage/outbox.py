"""The upload outbox: a durable queue (SQLite) of files to store, uploaded with retries.

Why a queue and not a direct upload: a store may be down for minutes, and the
server may be killed meanwhile. Every finished file is enqueued first; the worker
retries transient failures with exponential backoff (forever: nothing is dropped
because a store was down), deletes the spool copy only once the store confirmed,
and picks up where it left off after a restart. Permanent failures (bad
credentials, missing bucket) stop retrying and keep the spool copy.

The outbox knows files, keys and opaque group ids (a recording id), nothing of calls.
Its time source (wall clock, sleep, backoff jitter) is injected, so tests run the backoff
schedule on fake time (`callrec.testing.FakeTime`) with no real sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from callrec import metrics
from callrec.logs import get_logger
from callrec.state.db import Database
from callrec.storage.base import StorageError, Store

log = get_logger("outbox")

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True)
class Upload:
    """One row of the outbox."""

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


class UploadFailed(Exception):
    """A group has uploads that failed permanently; the message names target, key and cause."""


def _jitter() -> float:
    """Spread retries of many files (and many servers) over +-20% of the backoff."""
    return random.uniform(0.8, 1.2)


def _row(r: sqlite3.Row) -> Upload:
    return Upload(**{k: r[k] for k in Upload.__dataclass_fields__})


class Outbox:
    """Durable upload queue with a worker task; `resolve` maps a target string to its Store.

    The n-th failed attempt of a file waits `min(backoff_max_s, backoff_base_s * 2 ** (n - 1))`
    seconds times `jitter()`. The keyword-only arguments are the time source, real by default:
    `clock` gives wall-clock seconds (stored in the database, so they must mean the same after a
    restart), `sleep` waits that many seconds, `jitter` returns the factor applied to each backoff.
    """

    def __init__(
        self,
        db: Database,
        resolve: Callable[[str], Store],
        concurrency: int = 2,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        on_change: Callable[[dict[str, int]], None] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = _jitter,
    ) -> None:
        self.db = db
        self.resolve = resolve
        self.concurrency = concurrency
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._in_flight: set[int] = set()

    # ---- queue ---------------------------------------------------------------------------------
    def enqueue(self, group_id: str, target: str, key: str, path: Path, content_type: str) -> int:
        """Add a file to store; durable once this returns."""
        now = self._clock()
        cur = self.db.conn.execute(
            "INSERT INTO uploads (group_id, target, key, path, content_type, state, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (group_id, target, key, str(path), content_type, PENDING, now, now),
        )
        self._wake.set()
        self._report()
        return int(cur.lastrowid or 0)

    def group(self, group_id: str) -> list[Upload]:
        """Every upload of a group, in enqueue order."""
        rows = self.db.conn.execute("SELECT * FROM uploads WHERE group_id = ? ORDER BY id", (group_id,)).fetchall()
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Uploads by state (pending, done, failed)."""
        rows = self.db.conn.execute("SELECT state, COUNT(*) AS n FROM uploads GROUP BY state").fetchall()
        counts = {PENDING: 0, DONE: 0, FAILED: 0}
        counts.update({r["state"]: int(r["n"]) for r in rows})
        return counts

    async def wait_group(self, group_id: str) -> list[Upload]:
        """Wait until no upload of the group is pending; UploadFailed if one failed permanently."""
        async with self._changed:
            await self._changed.wait_for(lambda: all(u.state != PENDING for u in self.group(group_id)))
        uploads = self.group(group_id)
        failed = [u for u in uploads if u.state == FAILED]
        if failed:
            first = failed[0]
            raise UploadFailed(
                f"upload to storage target {first.target.split('|', 1)[0]!r} failed: {first.last_error} "
                f"({len(failed)} file(s) kept in the spool, e.g. {first.path})"
            )
        return uploads

    async def wait_stored(self, group_id: str) -> str | None:
        """Core's `UploadQueuePort`: like `wait_group`, but a permanent failure is returned as its message."""
        try:
            await self.wait_group(group_id)
        except UploadFailed as exc:
            return str(exc)
        return None

    # ---- worker --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Upload due files, `concurrency` at a time, until cancelled."""
        running: set[asyncio.Task[None]] = set()
        # after a restart, pending files are due now: the backoff was about a store that may be back
        self.db.conn.execute("UPDATE uploads SET next_attempt_at = ? WHERE state = ?", (self._clock(), PENDING))
        self._report()
        try:
            while True:
                self._wake.clear()
                now = self._clock()
                free = self.concurrency - len(running)
                if free > 0:
                    rows = self.db.conn.execute(
                        "SELECT * FROM uploads WHERE state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id",
                        (PENDING, now),
                    ).fetchall()
                    due = [u for u in map(_row, rows) if u.id not in self._in_flight][:free]
                    for upload in due:
                        self._in_flight.add(upload.id)
                        task = asyncio.get_running_loop().create_task(self._attempt(upload))
                        running.add(task)
                        task.add_done_callback(running.discard)
                        task.add_done_callback(lambda _t: self._wake.set())
                # a finished attempt wakes the loop, so with every slot busy there is nothing to poll
                nxt = None if len(running) >= self.concurrency else self._next_attempt_at()
                delay = 1.0 if nxt is None else min(1.0, max(0.0, nxt - self._clock()))
                await self._idle(delay)
        finally:
            for task in running:
                task.cancel()

    def _next_attempt_at(self) -> float | None:
        """When the earliest pending upload that is not being attempted is due (None: there is none).

        In-flight uploads are left out: they are due already, and counting them made the loop spin
        (one iteration per event-loop turn) for as long as an upload took.
        """
        rows = self.db.conn.execute(
            "SELECT id, next_attempt_at FROM uploads WHERE state = ? ORDER BY next_attempt_at LIMIT ?",
            (PENDING, len(self._in_flight) + 1),
        ).fetchall()
        return next((float(r["next_attempt_at"]) for r in rows if r["id"] not in self._in_flight), None)

    async def _idle(self, delay: float) -> None:
        """Wait until `enqueue` or a finished attempt sets `_wake`, or `delay` seconds passed."""
        woken = asyncio.ensure_future(self._wake.wait())
        timer = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            timer.cancel()

    async def _attempt(self, upload: Upload) -> None:
        try:
            store = self.resolve(upload.target)
            stored = await store.put_file(upload.key, upload.path, upload.content_type)
        except FileNotFoundError:
            self._finish_failed(upload, f"spool file {upload.path} is missing")
        except StorageError as exc:
            if exc.retryable:
                self._retry_later(upload, str(exc))
            else:
                self._finish_failed(upload, str(exc))
        except ValueError as exc:  # a malformed target or key: retrying cannot help
            self._finish_failed(upload, str(exc))
        except Exception as exc:
            log.exception("upload error", key=upload.key)
            self._retry_later(upload, f"{type(exc).__name__}: {exc}")
        else:
            now = self._clock()
            self.db.conn.execute(
                "UPDATE uploads SET state = ?, location = ?, size = ?, checksum = ?, attempts = attempts + 1,"
                " last_error = '', done_at = ? WHERE id = ?",
                (DONE, stored.location, stored.size, stored.checksum, now, upload.id),
            )
            # the target works (again): its other files waiting out a backoff are due now
            self.db.conn.execute(
                "UPDATE uploads SET next_attempt_at = ? WHERE target = ? AND state = ? AND next_attempt_at > ?",
                (now, upload.target, PENDING, now),
            )
            with contextlib.suppress(FileNotFoundError):
                Path(upload.path).unlink()
            log.info(
                "uploaded", key=upload.key, size=stored.size, location=stored.location, attempts=upload.attempts + 1
            )
        finally:
            self._in_flight.discard(upload.id)
            self._report()
            async with self._changed:
                self._changed.notify_all()

    def _retry_later(self, upload: Upload, error: str) -> None:
        metrics.UPLOADS_FAILED.inc()
        attempts = upload.attempts + 1
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempts - 1)) * self._jitter()
        retry_at = self._clock() + delay
        self.db.conn.execute(
            "UPDATE uploads SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
            (attempts, retry_at, error, upload.id),
        )
        # the target is failing: its other files wait too, so a dead store costs one probe per backoff
        # instead of occupying every upload slot (other targets keep uploading)
        self.db.conn.execute(
            "UPDATE uploads SET next_attempt_at = MAX(next_attempt_at, ?) WHERE target = ? AND state = ? AND id != ?",
            (retry_at, upload.target, PENDING, upload.id),
        )
        log.warning(
            "upload failed, will retry", key=upload.key, attempt=attempts, retry_in_s=round(delay, 1), error=error
        )

    def _finish_failed(self, upload: Upload, error: str) -> None:
        metrics.UPLOADS_FAILED.inc()
        self.db.conn.execute(
            "UPDATE uploads SET state = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
            (FAILED, error, upload.id),
        )
        log.error("upload failed permanently; the spool keeps the file", key=upload.key, path=upload.path, error=error)

    def _report(self) -> None:
        if self.on_change:
            self.on_change(self.counts())
