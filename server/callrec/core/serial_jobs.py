"""`SerialJobs`: one recording's blocking jobs (encode, write, fsync, metadata), run in order off the loop.

Why not one `run_in_executor` per job: each job then cost the event loop an asyncio future, a
wake-up through the loop's self-pipe and a task step, and, while the loop was busy, a GIL
hand-over for every step (measured: ~17 context switches per 0.1 s audio batch, 25-35 % of an
in-process mixed-mp3 pipeline's CPU). Here a job is a deque append on the loop; a writer thread
drains the deque and comes back to the loop only for what must run there: a job's `then`, an
error, a `join()`. An idle recording's next job wakes one thread; a busy one's jobs are taken by
the thread that is already draining.

Order is kept: a job runs after the previous job's `then` (and anything it awaits) has finished,
and an error reaches `on_error` before the next job starts.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from callrec.core.log import LogFields, get_logger

__all__ = ["RecordingMediaError", "SerialJobs", "writer_executor"]

log = get_logger(__name__)

Then = Callable[[Any], Awaitable[None] | None]

_shared_executor: ThreadPoolExecutor | None = None
_shared_lock = threading.Lock()


class RecordingMediaError(RuntimeError):
    """Writing a recording's media failed (disk, encoder); the recording fails."""


def writer_executor() -> ThreadPoolExecutor:
    """The process's recording-writer threads (made on first use), shared by every recording.

    As many as asyncio's default executor would have (cores + 4, at most 32): a job blocks on disk
    as often as on the CPU, and each recording uses one thread at a time.
    """
    global _shared_executor
    with _shared_lock:
        if _shared_executor is None:
            workers = min(32, (os.cpu_count() or 1) + 4)
            _shared_executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recording-writer")
        return _shared_executor


@dataclass(slots=True)
class _Job:
    run: Callable[[], Any]
    then: Then | None


@dataclass(slots=True)
class _JoinMark:
    done: asyncio.Future[None]


class SerialJobs:
    """Blocking jobs run one at a time, in order, in a writer thread; each may continue on the loop.

    Bounded: a queue longer than `max_pending` means the disk or the encoder cannot keep
    up, and the recording fails instead of growing memory. After a failure, jobs are
    skipped (the recording is over) but the queue still drains.
    """

    def __init__(
        self,
        executor: Executor | None,
        max_pending: int,
        on_error: Callable[[BaseException], None],
        failed: Callable[[], bool],
        log_fields: LogFields,
    ) -> None:
        self._executor = executor
        self._max_pending = max_pending
        self._on_error = on_error
        self._failed = failed
        self._log_fields = log_fields
        self._queue: deque[_Job | _JoinMark] = deque()
        self._lock = threading.Lock()  # guards `_busy` against the queue's emptiness
        self._busy = False  # a thread drains the queue, or the loop runs a job's `then` / error
        self._loop: asyncio.AbstractEventLoop | None = None
        self._then_tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Jobs waiting (about one per second of media for audio): a lag metric."""
        return len(self._queue)

    def submit(self, run: Callable[[], Any], then: Then | None = None) -> None:
        """Queue `run` (in a writer thread), then `then(result)` on the loop. Call on the loop."""
        if len(self._queue) >= self._max_pending and not self._failed():
            self._on_error(RecordingMediaError(f"writer is {len(self._queue)} jobs behind; giving up"))
        self._queue.append(_Job(run, then))
        self._start()

    async def join(self) -> None:
        """Wait until everything queued so far has run (and its `then` finished)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_JoinMark(done))
        self._start()
        await done

    # ------------------------------------------------------------------ loop side
    def _start(self) -> None:
        """Have a writer thread drain the queue, unless one does (or a `then` runs) already."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        with self._lock:
            if self._busy or not self._queue:
                return
            self._busy = True
        (self._executor or writer_executor()).submit(self._drain)

    def _resume(self) -> None:
        with self._lock:
            self._busy = False
        self._start()

    def _continue_on_loop(self, then: Then, result: Any) -> None:
        try:
            outcome = then(result)
        except Exception as exc:
            self._fail_on_loop(exc)
            return
        if not inspect.isawaitable(outcome):
            self._resume()
            return
        task = asyncio.get_running_loop().create_task(self._await_then(outcome))
        self._then_tasks.add(task)
        task.add_done_callback(self._then_tasks.discard)

    async def _await_then(self, outcome: Awaitable[None]) -> None:
        try:
            await outcome
        except asyncio.CancelledError:  # shutting down: later jobs (and joins) must not wait on it forever
            self._resume()
            raise
        except Exception as exc:
            self._fail_on_loop(exc)
            return
        self._resume()

    def _fail_on_loop(self, exc: BaseException) -> None:
        log.error("recording media writer failed", exc_info=exc, **self._log_fields)
        try:
            self._on_error(exc)
        finally:
            self._resume()

    # ------------------------------------------------------------------ thread side
    def _drain(self) -> None:
        """Run queued jobs until the queue is empty or one must continue on the loop."""
        loop = self._loop
        assert loop is not None
        while True:
            with self._lock:
                if not self._queue:
                    self._busy = False
                    return
                job = self._queue.popleft()
            if isinstance(job, _JoinMark):
                self._post(loop, _finish, job.done)
                continue
            if self._failed():
                continue
            try:
                result = job.run()
            except BaseException as exc:  # whatever ends a job fails the recording, never the queue
                self._post(loop, self._fail_on_loop, exc)
                return  # `on_error` runs before the next job; the loop resumes the drain
            if job.then is not None:
                self._post(loop, self._continue_on_loop, job.then, result)
                return

    def _post(self, loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed under us (shutdown): nothing is left to tell
            log.warning("recording writer finished after its event loop closed", **self._log_fields)


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
