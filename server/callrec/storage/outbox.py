"""The upload outbox: a durable queue (SQLite) of files to store, uploaded with retries.

Why a queue and not a direct upload: a store may be down for minutes, and the
server may be killed meanwhile. Every finished file is enqueued first; the worker
retries transient failures with exponential backoff, deletes the spool copy only
once the store confirmed, and picks up where it left off after a restart. Permanent
failures (bad credentials, missing bucket) stop retrying and keep the spool copy.

Why per target and with timeouts: one store must never hold the others hostage.
`concurrency` counts per target, so a black-holed store (connections that accept and
never answer) fills only its own slots; every attempt has a timeout (a timed-out
attempt is a transient failure, retried with backoff); and an upload still not stored
`deadline_s` after it was queued ends FAILED with a reason naming the target and the
deadline (its file stays in the spool, `retry_failed` re-queues it). A 4 h mp4 chunk
is ~1.8 GB, so an attempt may also take `ATTEMPT_SECONDS_PER_MIB` per MiB on top of
`attempt_timeout_s` (1 MiB/s: slower than any link a recording server should have).

The outbox knows files, keys and opaque group ids (a recording id), nothing of calls.
Its time source (wall clock, sleep, backoff jitter) is injected, so tests run the backoff
schedule, the timeouts and the deadline on fake time (`callrec.testing.FakeTime`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from callrec import metrics
from callrec.logs import get_logger
from callrec.security.redact import redact_text
from callrec.state.db import Database
from callrec.storage.base import FileUploader, StorageError
from callrec.storage.resolver import describe_target

log = get_logger("outbox")

PENDING, DONE, FAILED = "pending", "done", "failed"
STATES = (PENDING, DONE, FAILED)

PRESSURE_RELEASE_S = 30.0
"""Uploads stay at one per target until the media has been under no pressure this long (no flapping)."""

ATTEMPT_SECONDS_PER_MIB = 1.0
"""Time an attempt may take per MiB of its file, on top of `attempt_timeout_s`."""


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


@dataclass(frozen=True)
class RetryResult:
    """What `retry_failed` did: uploads re-queued, and failed ones whose spool file is gone."""

    retried: list[Upload]
    missing: list[Upload]


@dataclass(frozen=True)
class PruneResult:
    """What `prune` deleted."""

    done_rows: int
    failed_rows: int
    failed_files: int


class UploadFailed(Exception):
    """A group has uploads that failed permanently; the message names target, key and cause."""


class AttemptTimedOut(Exception):
    """An upload attempt took longer than its timeout (a transient failure)."""


def _jitter() -> float:
    """Spread retries of many files (and many servers) over +-20% of the backoff."""
    return random.uniform(0.8, 1.2)


def _row(r: sqlite3.Row) -> Upload:
    return Upload(**{k: r[k] for k in Upload.__dataclass_fields__})


def span(seconds: float) -> str:
    """A duration for messages: "24 h", "90 min", "7.5 s"."""
    if seconds >= 3600 and seconds % 360 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 6 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _encode_token(upload_id: int) -> str:
    return base64.urlsafe_b64encode(f"upload:{upload_id}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    """The cursor in a page token; ValueError when it is not one of ours."""
    padded = token + "=" * (-len(token) % 4)
    text = base64.urlsafe_b64decode(padded.encode()).decode()
    if not text.startswith("upload:"):
        raise ValueError("not an uploads page token")
    return int(text[len("upload:"):])


class Outbox:
    """Durable upload queue with a worker task; `resolve` maps a target string to its store (in the
    server: `UploadWorker`, which runs the attempts in a process of its own).

    The n-th failed attempt of a file waits `min(backoff_max_s, backoff_base_s * 2 ** (n - 1))`
    seconds times `jitter()`. At most `concurrency` files of one target are uploaded at once
    (targets do not share slots). An attempt is abandoned (and retried) after `attempt_timeout_s`
    plus `ATTEMPT_SECONDS_PER_MIB` per MiB; an upload not stored `deadline_s` after it was queued
    fails (0: never). `under_pressure()` true (the calls' media is falling behind) limits every target
    to one attempt at a time: uploads can wait, live media cannot, and after an outage hundreds of
    uploads at full speed took the CPU the mixer needed. The other keyword-only arguments are the time
    source, real by default: `clock`
    gives wall-clock seconds (stored in the database, so they must mean the same after a restart),
    `sleep` waits that many seconds, `jitter` returns the factor applied to each backoff.
    """

    def __init__(
        self,
        db: Database,
        resolve: Callable[[str], FileUploader],
        concurrency: int = 2,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        on_change: Callable[[dict[str, int]], None] | None = None,
        *,
        attempt_timeout_s: float = 300.0,
        deadline_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = _jitter,
        under_pressure: Callable[[], bool] | None = None,
    ) -> None:
        self.db = db
        self.resolve = resolve
        self.concurrency = concurrency
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.attempt_timeout_s = attempt_timeout_s
        self.deadline_s = deadline_s
        self.on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._under_pressure = under_pressure
        self._pressed = False
        self._pressure_seen: float | None = None  # when `under_pressure()` was last true
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}  # upload id -> its attempt
        self._targets: dict[int, str] = {}  # upload id -> target, while in flight
        self._expires: dict[int, float] = {}  # upload id -> when its attempt times out
        self._timed_out: set[int] = set()

    # ---- queue ---------------------------------------------------------------------------------
    def enqueue(self, group_id: str, target: str, key: str, path: Path, content_type: str) -> int:
        """Add a file to store; durable once this returns."""
        now = self._clock()
        cur = self.db.conn.execute(
            "INSERT INTO uploads (group_id, target, key, path, content_type, state, next_attempt_at, created_at,"
            " queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (group_id, target, key, str(path), content_type, PENDING, now, now, now),
        )
        self._wake.set()
        self._report()
        return int(cur.lastrowid or 0)

    def group(self, group_id: str) -> list[Upload]:
        """Every upload of a group, in enqueue order."""
        rows = self.db.conn.execute("SELECT * FROM uploads WHERE group_id = ? ORDER BY id", (group_id,)).fetchall()
        return [_row(r) for r in rows]

    def queued_keys(self, group_id: str) -> set[str]:
        """Core's `UploadQueuePort`: the keys a group ever queued (any state), for recovery's reconciliation."""
        rows = self.db.conn.execute("SELECT key FROM uploads WHERE group_id = ?", (group_id,)).fetchall()
        return {str(r["key"]) for r in rows}

    def counts(self) -> dict[str, int]:
        """Uploads by state (pending, done, failed)."""
        rows = self.db.conn.execute("SELECT state, COUNT(*) AS n FROM uploads GROUP BY state").fetchall()
        counts = {PENDING: 0, DONE: 0, FAILED: 0}
        counts.update({r["state"]: int(r["n"]) for r in rows})
        return counts

    async def list_page(
        self, state: str | None = None, group_id: str = "", page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Upload], str]:
        """A page of uploads, newest first, and the next page's token ("" on the last page).

        Read on the database's reader thread: a store outage queues thousands of uploads, and a page
        of them built on the event loop delayed every call's media. ValueError for an unknown state or
        a page token this outbox did not make.
        """
        clauses: list[str] = []
        params: list[str | int] = []
        if state is not None:
            if state not in STATES:
                raise ValueError(f"unknown upload state {state!r}")
            clauses.append("state = ?")
            params.append(state)
        if group_id:
            clauses.append("group_id = ?")
            params.append(group_id)
        if page_token:
            clauses.append("id < ?")
            params.append(_decode_token(page_token))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT * FROM uploads {where} ORDER BY id DESC LIMIT ?"

        def read(conn: sqlite3.Connection) -> tuple[list[Upload], bool]:
            rows = conn.execute(query, (*params, page_size + 1)).fetchall()
            return [_row(r) for r in rows[:page_size]], len(rows) > page_size

        page, more = await self.db.read(read)
        return page, _encode_token(page[-1].id) if more else ""

    def retried_groups(self) -> list[str]:
        """Groups with pending uploads that `retry_failed` re-queued (queued again later than first
        queued), whose outcome someone may still wait for after a restart."""
        rows = self.db.conn.execute(
            "SELECT DISTINCT group_id FROM uploads WHERE state = ? AND queued_at > created_at ORDER BY group_id",
            (PENDING,),
        ).fetchall()
        return [r["group_id"] for r in rows]

    def deadline_for(self, queued_at: float) -> float | None:
        """When a pending upload queued at `queued_at` fails unless stored (None: no deadline)."""
        return queued_at + self.deadline_s if self.deadline_s > 0 else None

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
                f"({len(failed)} file(s) kept in the spool, e.g. {first.path}; once the cause is fixed, "
                f"`callrec uploads retry {group_id}` re-queues them)"
            )
        return uploads

    async def wait_stored(self, group_id: str) -> str | None:
        """Core's `UploadQueuePort`: like `wait_group`, but a permanent failure is returned as its message."""
        try:
            await self.wait_group(group_id)
        except UploadFailed as exc:
            return str(exc)
        return None

    # ---- operator actions ----------------------------------------------------------------------
    async def retry_failed(self, group_id: str) -> RetryResult:
        """Re-queue every failed upload of a group: pending, attempts reset, due now, a new deadline.

        A failed upload whose spool file is gone cannot be retried: it stays failed, its
        `last_error` says so, and it is returned in `missing`.
        """
        now = self._clock()
        retried: list[Upload] = []
        missing: list[Upload] = []
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM uploads WHERE group_id = ? AND state = ? ORDER BY id", (group_id, FAILED)
            ).fetchall()
            for upload in map(_row, rows):
                if Path(upload.path).is_file():
                    conn.execute(
                        "UPDATE uploads SET state = ?, attempts = 0, next_attempt_at = ?, queued_at = ?,"
                        " failed_at = NULL WHERE id = ?",
                        (PENDING, now, now, upload.id),
                    )
                    retried.append(upload)
                else:
                    error = f"spool file {upload.path} is missing: this upload cannot be retried"
                    conn.execute("UPDATE uploads SET last_error = ? WHERE id = ?", (error, upload.id))
                    missing.append(upload)
        by_id = {u.id: u for u in self.group(group_id)}
        result = RetryResult([by_id[u.id] for u in retried], [by_id[u.id] for u in missing])
        if retried:
            log.info("uploads re-queued", group_id=group_id, files=len(retried), missing=len(missing))
            self._wake.set()
            self._report()
            async with self._changed:
                self._changed.notify_all()
        return result

    def prune(self, done_before: float, failed_before: float) -> PruneResult:
        """Delete stored uploads' rows done before `done_before`, and failed uploads (rows and spool
        files) that failed before `failed_before`. A file a pending upload still needs is never deleted."""
        with self.db.transaction() as conn:
            done = conn.execute("DELETE FROM uploads WHERE state = ? AND done_at < ?", (DONE, done_before)).rowcount
            rows = conn.execute(
                "SELECT id, path FROM uploads WHERE state = ? AND failed_at < ?", (FAILED, failed_before)
            ).fetchall()
            needed = {r["path"] for r in conn.execute("SELECT path FROM uploads WHERE state = ?", (PENDING,))}
            files = 0
            for r in rows:
                if r["path"] not in needed:
                    with contextlib.suppress(FileNotFoundError):
                        Path(r["path"]).unlink()
                        files += 1
                conn.execute("DELETE FROM uploads WHERE id = ?", (r["id"],))
        if done or rows:
            self._report()
        return PruneResult(done, len(rows), files)

    def prune_spool(self, spool_dir: Path, removable: Callable[[str], bool]) -> int:
        """Delete the spool's per-group directories (`spool_dir/<group_id>`) that `removable(group_id)`
        allows and that hold no file of a pending or failed upload; returns how many went."""
        if not spool_dir.is_dir():
            return 0
        kept = self.db.conn.execute("SELECT group_id, path FROM uploads WHERE state != ?", (DONE,)).fetchall()
        busy = {r["group_id"] for r in kept}
        root = spool_dir.resolve()
        for r in kept:  # whatever its group, a directory holding a file still needed stays
            path = Path(r["path"]).resolve()
            if path.is_relative_to(root) and path != root:
                busy.add(path.relative_to(root).parts[0])
        removed = 0
        for entry in sorted(spool_dir.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and entry.name not in busy and removable(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    # ---- worker --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Upload due files, `concurrency` per target at a time, until cancelled."""
        running: set[asyncio.Task[None]] = set()
        # after a restart, pending files are due now: the backoff was about a store that may be back
        self.db.conn.execute("UPDATE uploads SET next_attempt_at = ? WHERE state = ?", (self._clock(), PENDING))
        self._report()
        try:
            while True:
                self._wake.clear()
                await self._expire_overdue()
                self._cancel_timed_out()
                for upload in self._due():
                    task = asyncio.get_running_loop().create_task(self._attempt(upload))
                    self._in_flight[upload.id] = task
                    self._targets[upload.id] = upload.target
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _t: self._wake.set())
                # a finished attempt wakes the loop; targets with every slot busy are not polled
                expiring = (at for i, at in self._expires.items() if i not in self._timed_out)
                wake_at = [at for at in (self._next_attempt_at(), *expiring) if at is not None]
                delay = min(1.0, max(0.0, min(wake_at) - self._clock())) if wake_at else 1.0
                await self._idle(delay)
        finally:
            for task in running:
                task.cancel()

    def _busy(self) -> Counter[str]:
        """Attempts in flight per target."""
        return Counter(self._targets.values())

    def _cancel_timed_out(self) -> None:
        """Cancel the attempts that ran out of time; each then counts as a transient failure.

        The outbox's clock decides (not the event loop's), so fake time drives timeouts in tests.
        """
        now = self._clock()
        for upload_id, at in list(self._expires.items()):
            if at <= now and upload_id not in self._timed_out:
                self._timed_out.add(upload_id)
                self._in_flight[upload_id].cancel()

    def _slots(self) -> int:
        """Attempts each target may have in flight now (one while the media is under pressure)."""
        now = self._clock()
        if self._under_pressure is not None and self._under_pressure():
            self._pressure_seen = now
        pressed = self._pressure_seen is not None and now - self._pressure_seen < PRESSURE_RELEASE_S
        if pressed != self._pressed:
            self._pressed = pressed
            if pressed:
                log.info("calls' media is falling behind: one upload per storage target at a time until it recovers")
            else:
                log.info("calls' media recovered: uploads at full concurrency again", concurrency=self.concurrency)
        return 1 if pressed else self.concurrency

    def _due(self) -> list[Upload]:
        """Pending uploads due now, at most the free slots of each target, earliest first."""
        now = self._clock()
        busy = self._busy()
        slots = self._slots()
        targets = self.db.conn.execute(
            "SELECT DISTINCT target FROM uploads WHERE state = ? AND next_attempt_at <= ?", (PENDING, now)
        ).fetchall()
        due: list[Upload] = []
        for (target,) in targets:
            free = slots - busy[target]
            if free <= 0:
                continue
            rows = self.db.conn.execute(
                "SELECT * FROM uploads WHERE state = ? AND target = ? AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT ?",
                (PENDING, target, now, free + busy[target]),
            ).fetchall()
            due += [u for u in map(_row, rows) if u.id not in self._in_flight][:free]
        return due

    def _next_attempt_at(self) -> float | None:
        """When the earliest pending upload of a target with a free slot is due (None: there is none).

        In-flight uploads are left out: they are due already, and counting them made the loop spin
        (one iteration per event-loop turn) for as long as an upload took.
        """
        busy = self._busy()
        slots = self._slots()
        targets = self.db.conn.execute("SELECT DISTINCT target FROM uploads WHERE state = ?", (PENDING,)).fetchall()
        earliest: float | None = None
        for (target,) in targets:
            if busy[target] >= slots:
                continue
            rows = self.db.conn.execute(
                "SELECT id, next_attempt_at FROM uploads WHERE state = ? AND target = ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (PENDING, target, busy[target] + 1),
            ).fetchall()
            at = next((float(r["next_attempt_at"]) for r in rows if r["id"] not in self._in_flight), None)
            if at is not None and (earliest is None or at < earliest):
                earliest = at
        return earliest

    async def _idle(self, delay: float) -> None:
        """Wait until `enqueue` or a finished attempt sets `_wake`, or `delay` seconds passed."""
        woken = asyncio.ensure_future(self._wake.wait())
        timer = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            timer.cancel()

    async def _expire_overdue(self) -> None:
        """Fail the pending uploads (not being attempted) whose deadline passed."""
        if self.deadline_s <= 0:
            return
        now = self._clock()
        rows = self.db.conn.execute(
            "SELECT * FROM uploads WHERE state = ? AND queued_at <= ? ORDER BY id", (PENDING, now - self.deadline_s)
        ).fetchall()
        overdue = [u for u in map(_row, rows) if u.id not in self._in_flight]
        for upload in overdue:
            self._finish_failed(upload, self._deadline_error(upload, upload.last_error), attempted=False)
        if overdue:
            self._report()
            async with self._changed:
                self._changed.notify_all()

    def _deadline_error(self, upload: Upload, last_error: str) -> str:
        cause = f"last error: {last_error}" if last_error else "no attempt yet: the target's upload slots were busy"
        return (
            f"not stored within the upload deadline of {span(self.deadline_s)} (storage target "
            f"{describe_target(upload.target)!r}); {cause}"
        )

    def _attempt_timeout(self, upload: Upload) -> float:
        size = os.stat(upload.path).st_size  # FileNotFoundError: the spool file is gone
        return self.attempt_timeout_s + ATTEMPT_SECONDS_PER_MIB * size / (1024 * 1024)

    async def _attempt(self, upload: Upload) -> None:
        try:
            store = self.resolve(upload.target)
            timeout = self._attempt_timeout(upload)
            self._expires[upload.id] = self._clock() + timeout
            try:
                stored = await store.put_file(upload.key, upload.path, upload.content_type)
            except asyncio.CancelledError:
                if upload.id not in self._timed_out:
                    raise  # the worker is shutting down
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                raise AttemptTimedOut(f"upload attempt timed out after {span(round(timeout, 1))}") from None
        except FileNotFoundError:
            self._finish_failed(upload, f"spool file {upload.path} is missing")
        except AttemptTimedOut as exc:
            self._retry_later(upload, str(exc))
        except StorageError as exc:
            if exc.retryable:
                self._retry_later(upload, str(exc))
            else:
                self._finish_failed(upload, str(exc))
        except ValueError as exc:  # a malformed target or key: retrying cannot help
            self._finish_failed(upload, str(exc))
        except Exception as exc:
            # no traceback: its exception texts may quote a URL with its credentials
            log.error("upload error", key=upload.key, error=redact_text(f"{type(exc).__name__}: {exc}"))
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
            self._in_flight.pop(upload.id, None)
            self._targets.pop(upload.id, None)
            self._expires.pop(upload.id, None)
            self._timed_out.discard(upload.id)
            self._report()
            async with self._changed:
                self._changed.notify_all()

    def _retry_later(self, upload: Upload, error: str) -> None:
        error = redact_text(error)  # shown in upload rows, the resource's last_error, events and logs
        now = self._clock()
        if self.deadline_s > 0 and now - upload.queued_at >= self.deadline_s:
            self._finish_failed(upload, self._deadline_error(upload, error))
            return
        metrics.UPLOADS_FAILED.inc()
        attempts = upload.attempts + 1
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempts - 1)) * self._jitter()
        retry_at = now + delay
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

    def _finish_failed(self, upload: Upload, error: str, *, attempted: bool = True) -> None:
        """The upload is failed for good (until `retry_failed`); `attempted`: an attempt ended so."""
        error = redact_text(error)  # shown in upload rows, the recording's error, events and logs
        metrics.UPLOADS_FAILED.inc()
        self.db.conn.execute(
            "UPDATE uploads SET state = ?, attempts = attempts + ?, last_error = ?, failed_at = ? WHERE id = ?",
            (FAILED, int(attempted), error, self._clock(), upload.id),
        )
        log.error("upload failed permanently; the spool keeps the file", key=upload.key, path=upload.path, error=error)

    def _report(self) -> None:
        if self.on_change:
            self.on_change(self.counts())
