"""`UploadAdmin`: what an operator does with the upload outbox (UploadService).

Why in core: listing is a plain read, but a retry carries recording rules: an unknown
recording is NOT_FOUND, one without failed uploads is FAILED_PRECONDITION, a file gone
from the spool cannot be retried, and a FAILED recording whose files all end up stored
gets its RecordingFileStatusUpdated (`RecordingRegistry.uploads_retried`, watched in the
background: the RPC returns once the files are re-queued, not once they are stored).
The outbox (`storage.outbox.Outbox`) is reached through `UploadOutboxPort`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from callrec.core.errors import CallrecError, FailedPrecondition, InvalidArgument
from callrec.core.log import get_logger
from callrec.core.model import RecordingState
from callrec.core.ports import ChunkIndexPort, StorageTargetsPort, UploadQueuePort
from callrec.core.recording_registry import RecordingRegistry

__all__ = ["RetryOutcome", "UploadAdmin", "UploadInfo", "UploadOutboxPort", "UploadRetried", "UploadRow", "UploadState"]

log = get_logger(__name__)

MAX_ID_LENGTH = 256
"""Longest recording id accepted (the server's own are ~70 characters)."""
MAX_PAGE_TOKEN_LENGTH = 512
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class UploadState(enum.StrEnum):
    """An upload's state; the values are the outbox's own."""

    PENDING = "pending"
    """Waiting for (another) attempt."""
    STORED = "done"
    """The store confirmed it; the spool copy is gone."""
    FAILED = "failed"
    """Failed for good (permanent error or deadline); the file stays in the spool."""


class UploadRow(Protocol):
    """One upload as the outbox keeps it (`storage.outbox.Upload`); times in epoch seconds."""

    @property
    def id(self) -> int: ...
    @property
    def group_id(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def last_error(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def next_attempt_at(self) -> float: ...
    @property
    def node_id(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def queued_at(self) -> float: ...


class RetryOutcome(Protocol):
    """What the outbox did on a retry (`storage.outbox.RetryResult`)."""

    @property
    def retried(self) -> Sequence[UploadRow]: ...
    @property
    def missing(self) -> Sequence[UploadRow]: ...


class UploadOutboxPort(UploadQueuePort, Protocol):
    """The outbox's operator side, on top of the queue core's recorder uses."""

    async def list_page(
        self, state: str | None, group_id: str, page_size: int, page_token: str
    ) -> tuple[Sequence[UploadRow], str]:
        """A page of uploads, newest first; ValueError for a page token it did not make."""
        ...

    async def group(self, group_id: str) -> Sequence[UploadRow]:
        """Every upload of a group (a recording id), on every node."""
        ...

    async def own_group(self, group_id: str) -> Sequence[UploadRow]:
        """The uploads of a group whose files are on this node (the ones it can retry)."""
        ...

    async def retry_failed(self, group_id: str) -> RetryOutcome:
        """Re-queue the group's failed uploads whose spool file is still there."""
        ...

    def deadline_for(self, queued_at: float) -> float | None:
        """When a pending upload queued at `queued_at` fails unless stored (None: no deadline)."""
        ...

    async def retried_groups(self) -> Sequence[str]:
        """Groups with pending uploads that a retry re-queued."""
        ...


@dataclass(frozen=True)
class UploadInfo:
    """One upload as the API shows it (the target without credentials)."""

    upload_id: int
    recording_id: str
    target: str
    key: str
    state: UploadState
    attempts: int
    last_error: str
    created_at: datetime
    next_attempt_at: datetime | None
    """Pending only: when the next attempt is due."""
    deadline_at: datetime | None
    """Pending only: when it fails unless stored."""
    spool_path: str
    """Where the file waits (pending and failed uploads)."""
    location: str
    """The store's location once stored."""
    node_id: str = ""
    """Cluster mode: the node whose spool holds the file."""


@dataclass(frozen=True)
class UploadRetried:
    """The result of a retry: uploads re-queued, and failed ones whose spool file is missing."""

    recording_id: str
    retried: list[UploadInfo]
    missing: list[UploadInfo]


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _check_recording_id(recording_id: str, required: bool) -> None:
    if required and not recording_id:
        raise InvalidArgument("recording_id is required: the recording whose failed uploads to retry")
    if len(recording_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"recording_id is too long: at most {MAX_ID_LENGTH} characters, got {len(recording_id)}")


class UploadAdmin:
    """Lists uploads and retries a recording's failed ones."""

    def __init__(
        self,
        outbox: UploadOutboxPort,
        registry: RecordingRegistry,
        targets: StorageTargetsPort,
        index: ChunkIndexPort,
    ) -> None:
        self.outbox = outbox
        self.registry = registry
        self.targets = targets
        self.index = index
        self._watchers: dict[str, asyncio.Task[object]] = {}

    def info(self, row: UploadRow) -> UploadInfo:
        """The API view of an outbox row."""
        state = UploadState(row.state)
        deadline = self.outbox.deadline_for(row.queued_at) if state is UploadState.PENDING else None
        return UploadInfo(
            upload_id=row.id,
            recording_id=row.group_id,
            target=self.targets.describe(row.target),
            key=row.key,
            state=state,
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=_time(row.created_at),
            next_attempt_at=_time(row.next_attempt_at) if state is UploadState.PENDING else None,
            deadline_at=_time(deadline) if deadline is not None else None,
            spool_path=row.path if state is not UploadState.STORED else "",
            location=row.location,
            node_id=row.node_id,
        )

    async def list_uploads(
        self, state: UploadState | None, recording_id: str, page_size: int, page_token: str
    ) -> tuple[list[UploadInfo], str]:
        """A page of uploads, newest first, optionally of one state and/or one recording."""
        _check_recording_id(recording_id, required=False)
        if page_size == 0:
            page_size = DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size must be between 1 and {MAX_PAGE_SIZE} (0 = {DEFAULT_PAGE_SIZE}); got {page_size}"
            )
        bad_token = InvalidArgument(
            "page_token is not valid: pass the next_page_token of a previous ListUploads response"
        )
        if len(page_token) > MAX_PAGE_TOKEN_LENGTH:
            raise bad_token
        try:
            rows, token = await self.outbox.list_page(
                state.value if state else None, recording_id, page_size, page_token
            )
        except ValueError:
            raise bad_token from None
        return [self.info(r) for r in rows], token

    async def retry(self, recording_id: str) -> UploadRetried:
        """Re-queue every failed upload of a recording: pending, attempts reset, due now.

        NotFound for an unknown recording; FailedPrecondition when it has no failed upload, or
        when every failed upload's spool file is gone (those cannot be retried; a retry that
        re-queues some reports the others in `missing`).
        """
        _check_recording_id(recording_id, required=True)
        await self.registry.get(recording_id)  # NotFound for an unknown recording
        uploads = await self.outbox.own_group(recording_id)
        if not any(u.state == UploadState.FAILED for u in uploads):
            counts = {s: sum(1 for u in uploads if u.state == s) for s in UploadState}
            raise FailedPrecondition(
                f"recording {recording_id} has no failed uploads to retry ({counts[UploadState.PENDING]} pending, "
                f"{counts[UploadState.STORED]} stored); `callrec uploads list --recording {recording_id}` shows them"
            )
        outcome = await self.outbox.retry_failed(recording_id)
        retried = [self.info(r) for r in outcome.retried]
        missing = [self.info(r) for r in outcome.missing]
        if not retried:
            paths = ", ".join(u.spool_path for u in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise FailedPrecondition(
                f"the failed uploads of recording {recording_id} cannot be retried: their files are no longer "
                f"in the spool ({paths}); they are lost, the rest of the recording is unaffected"
            )
        log.info("uploads retried", recording_id=recording_id, files=len(retried), missing=len(missing))
        self._watch_later(recording_id)
        return UploadRetried(recording_id, retried, missing)

    async def has_failed_here(self, recording_id: str) -> bool:
        """Whether this node's spool holds failed uploads of the recording (the ones it can retry)."""
        return any(u.state == UploadState.FAILED for u in await self.outbox.own_group(recording_id))

    async def resume(self) -> int:
        """After a restart: watch again the FAILED recordings whose retried uploads are still pending
        (their RecordingFileStatusUpdated is still due); returns how many."""
        resumed = 0
        for recording_id in await self.outbox.retried_groups():
            try:
                rec = await self.registry.get(recording_id)
            except CallrecError:
                continue
            if rec.state is RecordingState.FAILED:
                self._watch_later(recording_id)
                resumed += 1
        return resumed

    def _watch_later(self, recording_id: str) -> None:
        watcher = self._watchers.get(recording_id)
        if watcher is not None and not watcher.done():  # still waiting: it covers re-queued files too
            return
        task = asyncio.get_running_loop().create_task(self._watch(recording_id))
        self._watchers[recording_id] = task
        task.add_done_callback(lambda t: self._watchers.pop(recording_id, None) if t is task else None)

    async def _watch(self, recording_id: str) -> object:
        try:
            return await self.registry.uploads_retried(recording_id, self.outbox, self.index)
        except asyncio.CancelledError:
            raise
        except Exception:  # a watcher must not die silently
            log.exception("after a retry: publishing the recording's files failed", recording_id=recording_id)
            return None

    async def idle(self) -> None:
        """Wait until every retry watcher finished (tests)."""
        while self._watchers:
            await asyncio.gather(*self._watchers.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop watching (shutdown); pending uploads stay queued in the outbox."""
        watchers = list(self._watchers.values())
        for task in watchers:
            task.cancel()
        for task in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
