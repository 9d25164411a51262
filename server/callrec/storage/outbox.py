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
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from callrec import metrics
from callrec.cancellation import honour_cancellation
from callrec.logs import get_logger
from callrec.security.redact import redact_text
from callrec.state.db import Database
from callrec.state.uploads import DONE, FAILED, PENDING, STATES, SqliteUploadRows, Upload, UploadRowsPort
from callrec.storage.base import FileUploader, StorageError
from callrec.storage.resolver import describe_target

__all__ = ["DONE", "FAILED", "PENDING", "STATES", "Outbox", "PruneResult", "RetryResult", "Upload", "UploadFailed",
           "span"]

log = get_logger("outbox")

PRESSURE_RELEASE_S = 30.0
"""Uploads stay at one per target until the media has been under no pressure this long (no flapping)."""

ATTEMPT_SECONDS_PER_MIB = 1.0
"""Time an attempt may take per MiB of its file, on top of `attempt_timeout_s`."""


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


@dataclass
class _GroupWaiters:
    """The `wait_group` calls of one group, and the event that wakes them when one of its uploads ends."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class UploadFailed(Exception):
    """A group has uploads that failed permanently; the message names target, key and cause."""


class AttemptTimedOut(Exception):
    """An upload attempt took longer than its timeout (a transient failure)."""


def _jitter() -> float:
    """Spread retries of many files (and many servers) over +-20% of the backoff."""
    return random.uniform(0.8, 1.2)


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
        rows: Database | UploadRowsPort,
        resolve: Callable[[str], FileUploader],
        concurrency: int = 2,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        on_pending: Callable[[int], None] | None = None,
        *,
        attempt_timeout_s: float = 300.0,
        deadline_s: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = _jitter,
        under_pressure: Callable[[], bool] | None = None,
    ) -> None:
        self.rows: UploadRowsPort = SqliteUploadRows(rows) if isinstance(rows, Database) else rows
        """Where the rows are: the server's SQLite file, or PostgreSQL in cluster mode."""
        self.resolve = resolve
        self.concurrency = concurrency
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.attempt_timeout_s = attempt_timeout_s
        self.deadline_s = deadline_s
        self.on_pending = on_pending
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._under_pressure = under_pressure
        self._pressed = False
        self._pressure_seen: float | None = None  # when `under_pressure()` was last true
        # Per group, not one condition for all: when a burst of calls ends, each finishing recording waits
        # for its own group, and every ended upload woke every waiter to query its group again (N recordings
        # finishing together: N x N queries on the loop; 160 of them took 4.5 s to finish).
        self._waiters: dict[str, _GroupWaiters] = {}
        self._wake = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}  # upload id -> its attempt
        # Uploads whose attempt ended while a read of the rows was under way, one set per read: that read may
        # still say "pending" of a file just stored and unlinked (PostgreSQL's reads await a round trip, and
        # other tasks run meanwhile), and it is no longer in `_in_flight` to be left out. Seen in cluster mode:
        # a stored file attempted again, found gone, and its recording FAILED.
        self._ended_during_reads: list[set[int]] = []
        self._targets: dict[int, str] = {}  # upload id -> target, while in flight
        self._expires: dict[int, float] = {}  # upload id -> when its attempt times out
        self._timed_out: set[int] = set()

    # ---- queue ---------------------------------------------------------------------------------
    async def enqueue(self, group_id: str, target: str, key: str, path: Path, content_type: str) -> int:
        """Add a file to store; durable once this returns."""
        upload_id = await self.rows.insert(group_id, target, key, str(path), content_type, self._clock())
        self._wake.set()
        await self._report()
        return upload_id

    async def group(self, group_id: str) -> list[Upload]:
        """Every upload of a group, on every node (cluster mode), in enqueue order."""
        return await self.rows.group(group_id, own=False)

    async def own_group(self, group_id: str) -> list[Upload]:
        """The uploads of a group whose files are in this node's spool, in enqueue order."""
        return await self.rows.group(group_id, own=True)

    async def queued_keys(self, group_id: str) -> set[str]:
        """Core's `UploadQueuePort`: the keys a group ever queued (any state), for recovery's reconciliation."""
        return await self.rows.queued_keys(group_id)

    async def counts(self) -> dict[str, int]:
        """This node's uploads by state (pending, done, failed)."""
        return await self.rows.counts()

    async def list_page(
        self, state: str | None = None, group_id: str = "", page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Upload], str]:
        """A page of uploads, newest first, and the next page's token ("" on the last page).

        ValueError for an unknown state or a page token this outbox did not make.
        """
        if state is not None and state not in STATES:
            raise ValueError(f"unknown upload state {state!r}")
        before = _decode_token(page_token) if page_token else None
        rows = await self.rows.page(state, group_id, before, page_size + 1)
        page = rows[:page_size]
        return page, _encode_token(page[-1].id) if len(rows) > page_size else ""

    async def retried_groups(self) -> list[str]:
        """Groups with pending uploads that `retry_failed` re-queued (queued again later than first
        queued), whose outcome someone may still wait for after a restart."""
        return await self.rows.retried_groups()

    def deadline_for(self, queued_at: float) -> float | None:
        """When a pending upload queued at `queued_at` fails unless stored (None: no deadline)."""
        return queued_at + self.deadline_s if self.deadline_s > 0 else None

    async def wait_group(self, group_id: str) -> list[Upload]:
        """Wait until no upload of the group on this node is pending; UploadFailed if one failed
        permanently.

        This node's only: after a takeover, the chunk a dead node had open is its to upload when it
        returns, and the recording's outcome here must not wait for that.
        """
        while True:
            honour_cancellation()  # a cancel a library swallowed (callrec/cancellation.py)
            # registered before the query: an upload of the group that ends meanwhile sets this event
            waiters = self._waiters.setdefault(group_id, _GroupWaiters())
            waiters.count += 1
            try:
                uploads = await self.rows.group(group_id, own=True)
                if all(u.state != PENDING for u in uploads):
                    break
                await waiters.event.wait()
            finally:
                waiters.count -= 1
                if not waiters.count and self._waiters.get(group_id) is waiters:
                    del self._waiters[group_id]
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
        """Re-queue every failed upload of a group on this node: pending, attempts reset, due now, a new
        deadline.

        A failed upload whose spool file is gone cannot be retried: it stays failed, its
        `last_error` says so, and it is returned in `missing`.
        """
        now = self._clock()
        retried: list[int] = []
        missing: list[int] = []
        for upload in await self.rows.failed_of(group_id):
            if Path(upload.path).is_file():
                await self.rows.requeue(upload.id, now)
                retried.append(upload.id)
            else:
                error = f"spool file {upload.path} is missing: this upload cannot be retried"
                await self.rows.set_error(upload.id, error)
                missing.append(upload.id)
        by_id = {u.id: u for u in await self.rows.group(group_id, own=True)}
        result = RetryResult([by_id[i] for i in retried], [by_id[i] for i in missing])
        if retried:
            log.info("uploads re-queued", group_id=group_id, files=len(retried), missing=len(missing))
            self._wake.set()
            await self._report()
            self._group_changed(group_id)
        return result

    async def prune(self, done_before: float, failed_before: float) -> PruneResult:
        """Delete stored uploads' rows done before `done_before`, and failed uploads (rows and spool
        files) that failed before `failed_before`. A file a pending upload still needs is never deleted."""
        done = await self.rows.delete_done(done_before)
        failed = await self.rows.failed_before(failed_before)
        needed = {u.path for u in await self.rows.unfinished() if u.state == PENDING}
        files = 0
        for upload in failed:
            if upload.path not in needed:
                with contextlib.suppress(FileNotFoundError):
                    Path(upload.path).unlink()
                    files += 1
        await self.rows.delete([u.id for u in failed])
        if done or failed:
            await self._report()
        return PruneResult(done, len(failed), files)

    async def prune_spool(self, spool_dir: Path, removable: Callable[[str], bool]) -> int:
        """Delete the spool's per-group directories (`spool_dir/<group_id>`) that `removable(group_id)`
        allows and that hold no file of a pending or failed upload; returns how many went."""
        if not spool_dir.is_dir():
            return 0
        kept = await self.rows.unfinished()
        busy = {u.group_id for u in kept}
        root = spool_dir.resolve()
        for u in kept:  # whatever its group, a directory holding a file still needed stays
            path = Path(u.path).resolve()
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
        await self.rows.make_due(self._clock())
        await self._report()
        try:
            while True:
                honour_cancellation()  # a cancel a library swallowed (callrec/cancellation.py)
                self._wake.clear()
                await self._expire_overdue()
                self._cancel_timed_out()
                for upload in await self._due():
                    task = asyncio.get_running_loop().create_task(self._attempt(upload))
                    self._in_flight[upload.id] = task
                    self._targets[upload.id] = upload.target
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _t: self._wake.set())
                # a finished attempt wakes the loop; targets with every slot busy are not polled
                next_at = await self._next_attempt_at()
                expiring = [at for i, at in self._expires.items() if i not in self._timed_out]
                wake_at = [at for at in (next_at, *expiring) if at is not None]
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

    async def _due(self) -> list[Upload]:
        """Pending uploads due now, at most the free slots of each target, earliest first."""
        now = self._clock()
        busy = self._busy()
        slots = self._slots()
        due: list[Upload] = []
        for target in await self.rows.due_targets(now):
            free = slots - busy[target]
            if free <= 0:
                continue
            with self._reading() as ended:
                rows = await self.rows.due(now, target, free + busy[target])
            due += [u for u in rows if u.id not in self._in_flight and u.id not in ended][:free]
        return due

    @contextlib.contextmanager
    def _reading(self) -> Iterator[set[int]]:
        """The ids of the uploads whose attempt ends while the caller reads rows (see `_ended_during_reads`)."""
        ended: set[int] = set()
        self._ended_during_reads.append(ended)
        try:
            yield ended
        finally:
            self._ended_during_reads.remove(ended)

    async def _next_attempt_at(self) -> float | None:
        """When the earliest pending upload of a target with a free slot is due (None: there is none).

        In-flight uploads are left out: they are due already, and counting them made the loop spin
        (one iteration per event-loop turn) for as long as an upload took.
        """
        busy = self._busy()
        slots = self._slots()
        earliest: float | None = None
        for target in await self.rows.pending_targets():
            if busy[target] >= slots:
                continue
            rows = await self.rows.earliest(target, busy[target] + 1)
            at = next((u.next_attempt_at for u in rows if u.id not in self._in_flight), None)
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
        with self._reading() as ended:
            rows = await self.rows.queued_before(now - self.deadline_s)
        overdue = [u for u in rows if u.id not in self._in_flight and u.id not in ended]
        for upload in overdue:
            await self._finish_failed(upload, self._deadline_error(upload, upload.last_error), attempted=False)
        if overdue:
            await self._report()
            self._group_changed(*{u.group_id for u in overdue})

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
            await self._finish_failed(upload, f"spool file {upload.path} is missing")
        except AttemptTimedOut as exc:
            await self._retry_later(upload, str(exc))
        except StorageError as exc:
            if exc.retryable:
                await self._retry_later(upload, str(exc))
            else:
                await self._finish_failed(upload, str(exc))
        except ValueError as exc:  # a malformed target or key: retrying cannot help
            await self._finish_failed(upload, str(exc))
        except Exception as exc:
            # no traceback: its exception texts may quote a URL with its credentials
            log.error("upload error", key=upload.key, error=redact_text(f"{type(exc).__name__}: {exc}"))
            await self._retry_later(upload, f"{type(exc).__name__}: {exc}")
        else:
            now = self._clock()
            await self.rows.mark_done(upload.id, stored.location, stored.size, stored.checksum, now)
            # the target works (again): its other files waiting out a backoff are due now
            await self.rows.hasten(upload.target, now)
            with contextlib.suppress(FileNotFoundError):
                Path(upload.path).unlink()
            log.info(
                "uploaded", key=upload.key, size=stored.size, location=stored.location, attempts=upload.attempts + 1
            )
        finally:
            self._in_flight.pop(upload.id, None)
            for ended in self._ended_during_reads:
                ended.add(upload.id)
            self._targets.pop(upload.id, None)
            self._expires.pop(upload.id, None)
            self._timed_out.discard(upload.id)
            await self._report()
            self._group_changed(upload.group_id)

    def _group_changed(self, *group_ids: str) -> None:
        """Wake the `wait_group` calls of these groups (an upload of each ended or went back to pending)."""
        for group_id in group_ids:
            waiters = self._waiters.pop(group_id, None)
            if waiters is not None:
                waiters.event.set()

    async def _retry_later(self, upload: Upload, error: str) -> None:
        error = redact_text(error)  # shown in upload rows, the resource's last_error, events and logs
        now = self._clock()
        if self.deadline_s > 0 and now - upload.queued_at >= self.deadline_s:
            await self._finish_failed(upload, self._deadline_error(upload, error))
            return
        metrics.UPLOADS_FAILED.inc()
        attempts = upload.attempts + 1
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempts - 1)) * self._jitter()
        retry_at = now + delay
        await self.rows.mark_retry(upload.id, attempts, retry_at, error)
        # the target is failing: its other files wait too, so a dead store costs one probe per backoff
        # instead of occupying every upload slot (other targets keep uploading)
        await self.rows.postpone(upload.target, retry_at, upload.id)
        log.warning(
            "upload failed, will retry", key=upload.key, attempt=attempts, retry_in_s=round(delay, 1), error=error
        )

    async def _finish_failed(self, upload: Upload, error: str, *, attempted: bool = True) -> None:
        """The upload is failed for good (until `retry_failed`); `attempted`: an attempt ended so."""
        error = redact_text(error)  # shown in upload rows, the recording's error, events and logs
        metrics.UPLOADS_FAILED.inc()
        await self.rows.mark_failed(upload.id, attempted, error, self._clock())
        log.error("upload failed permanently; the spool keeps the file", key=upload.key, path=upload.path, error=error)

    async def _report(self) -> None:
        if self.on_pending:
            self.on_pending(await self.rows.pending())
