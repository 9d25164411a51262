"""The outbox's upload attempts, run in a process of their own.

Why a process: an upload is CPU work in Python (hashing, botocore signing and parsing, the transfer
manager's threads, the Azure SDK's pipeline). After a store outage hundreds of uploads complete
together, and in the server's process their threads took the GIL from the event loop for minutes:
calls recorded a third of their audio (the soak measured 643 frames late per second). Here they take
the other core instead (at a lower priority: `NICENESS`), and the server's process only sends a path
and receives a `StoredObject`.

What stays in the server: the outbox (its SQLite rows, backoff, per-target slots, attempt timeouts
and deadline). This module only replaces `Store.put_file`: `UploadWorker(spec, check)(target)` is
something with the same `put_file`, so the outbox does not know where its attempts run. The child
builds its own stores from the same configuration (`resolver_from_spec`, which the server uses as
well), so the bring-your-own-storage policy is enforced in both processes.

Failure handling: a timed-out attempt (cancelled by the outbox) is cancelled in the child too; a
child that dies (OOM, a crash in a C library) fails its attempts as `Transient` (the outbox retries
them with backoff) and the next attempt starts a new child; a child whose parent is gone (the
server was killed) exits at once: the server's restart uploads the files again (puts are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from callrec.child_process import child_connections, start_child
from callrec.logs import configure_logging, get_logger
from callrec.storage import base
from callrec.storage.address_policy import DestinationRefused
from callrec.storage.base import FileUploader, StorageError, StoredObject, Transient
from callrec.storage.external import ExternalPolicy
from callrec.storage.resolver import StoreResolver
from callrec.storage.targets import stores_from_config

log = get_logger("upload-worker")

NICENESS = 10
"""The child's scheduling priority, lowered by this much: an upload can wait a second, a call's media
cannot. On a busy box the chunks of many recordings finish together, and their uploads (with a store's
own work, when it runs on the same machine) took the CPU from the mixer for seconds."""

CLOSE_TIMEOUT_S = 5.0
"""How long `close` waits for the child to close its stores before killing it."""

_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        base.ObjectNotFound,
        base.PermissionDenied,
        base.Transient,
        base.ChecksumMismatch,
        base.RangeNotSatisfiable,
        StorageError,
        DestinationRefused,
        FileNotFoundError,
        ValueError,
    )
}
"""Exceptions an attempt may raise that the outbox tells apart, by name: they cross the pipe as text."""


@dataclass(frozen=True)
class StoreSpec:
    """Everything needed to build the server's stores, picklable: the child builds its own from it."""

    targets: Mapping[str, Mapping[str, Any]]
    default: str
    external: Mapping[str, Any] = field(default_factory=dict)
    data_dir: str = "."
    log_level: str = "info"
    log_format: str = "console"


def resolver_from_spec(spec: StoreSpec) -> StoreResolver:
    """The named targets and the bring-your-own-storage policy of a spec (ValueError names a bad field)."""
    targets = {name: dict(target) for name, target in spec.targets.items()}
    named, default = stores_from_config({"default": spec.default, "targets": targets}, data_dir=spec.data_dir)
    return StoreResolver(named, default, external=ExternalPolicy.from_config(spec.external, targets))


def error_name(exc: BaseException) -> str:
    """The name an attempt's exception crosses the pipe under: its nearest class the outbox tells apart."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _ERRORS and issubclass(cls, Exception):
            return cls.__name__
    return ""


def rebuild_error(name: str, message: str) -> Exception:
    """The parent's exception for an attempt that failed in the child; unknown errors are transient."""
    cls = _ERRORS.get(name)
    return cls(message) if cls is not None else Transient(message)


# -- parent side -------------------------------------------------------------------------------


class _Target:
    """One target's `put_file`, run by the worker process."""

    def __init__(self, worker: UploadWorker, target: str) -> None:
        self.worker = worker
        self.target = target

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        return await self.worker.put(self.target, key, str(path), content_type)


class UploadWorker:
    """Runs upload attempts in a child process; `worker(target)` is the outbox's `resolve`.

    `check(target)` is the server's own resolver: it raises ValueError for a target that is not
    configured or that the policy refuses, before anything is sent to the child. The child is
    started by `start` (the server calls it at start-up) or by the first attempt, and again by the
    next attempt after it died.
    """

    def __init__(self, spec: StoreSpec, check: Callable[[str], object]) -> None:
        self.spec = spec
        self.check = check
        self.starts = 0
        """How many children were started (more than one: a child died and was replaced)."""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[StoredObject]]] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __call__(self, target: str) -> FileUploader:
        self.check(target)
        return _Target(self, target)

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs."""
        proc = self._process
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start the child now (its imports take a second), so the first upload need not wait for it."""
        with self._lock:
            self._ensure_started()

    async def put(self, target: str, key: str, path: str, content_type: str) -> StoredObject:
        """Store one file through the child; its errors are re-raised here as the same classes."""
        if self._closed:
            raise Transient("the upload worker is closed (the server is stopping)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoredObject] = loop.create_future()
        request_id = next(self._ids)
        with self._lock:
            outbox = self._ensure_started()
            self._pending[request_id] = (loop, future)
        outbox.put(("put", request_id, target, key, path, content_type))
        try:
            return await future
        except asyncio.CancelledError:
            outbox.put(("cancel", request_id))  # the attempt timed out or the outbox stops
            raise
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def close(self) -> None:
        """Let the child close its stores and exit (killed after `CLOSE_TIMEOUT_S`); attempts end `Transient`."""
        self._closed = True
        with self._lock:
            proc, outbox = self._process, self._outbox
        if proc is None or outbox is None:
            return
        outbox.put(("close",))
        outbox.put(None)
        try:
            proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(CLOSE_TIMEOUT_S)
        for thread in self._threads:
            thread.join(CLOSE_TIMEOUT_S)

    def _ensure_started(self) -> queue.SimpleQueue[tuple[Any, ...] | None]:
        """The running child's command queue, starting a child if none runs (called under the lock)."""
        if self._process is not None and self._process.poll() is None and self._outbox is not None:
            return self._outbox
        child = start_child("callrec.storage.upload_worker")
        process = child.process
        self.starts += 1
        if self.starts > 1:
            log.warning("upload worker restarted", pid=process.pid, starts=self.starts)
        outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        outbox.put(("open", self.spec))
        cmd, evt = child.commands, child.events
        self._process, self._outbox = process, outbox
        self._threads = [t for t in self._threads if t.is_alive()]
        for body, name in ((self._send_loop, "send"), (self._recv_loop, "recv")):
            args = (outbox, cmd) if name == "send" else (process, evt)
            thread = threading.Thread(target=body, args=args, name=f"callrec-uploads-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return outbox

    @staticmethod
    def _send_loop(outbox: queue.SimpleQueue[tuple[Any, ...] | None], cmd: Connection) -> None:
        """Write commands into the child's pipe (a thread: a stuck child must never block the event loop)."""
        with contextlib.closing(cmd):
            while (msg := outbox.get()) is not None:
                try:
                    cmd.send(msg)
                except OSError:
                    return  # the child is gone; its receiver fails the attempts

    def _recv_loop(self, process: subprocess.Popen[bytes], evt: Connection) -> None:
        """Hand each outcome to its attempt; when the child goes, fail its attempts as transient."""
        with contextlib.closing(evt):
            while True:
                try:
                    msg = evt.recv()
                except (EOFError, OSError):
                    break
                if msg[0] == "done":
                    self._settle(msg[1], result=msg[2])
                elif msg[0] == "error":
                    self._settle(msg[1], error=rebuild_error(msg[2], msg[3]))
                elif msg[0] == "failed":
                    log.error("upload worker failed", error=msg[1])
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(2)
        code = process.poll()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        with self._lock:
            if self._process is process:
                self._process = None
                if self._outbox is not None:
                    self._outbox.put(None)  # ends the sender of the dead child
                self._outbox = None
            orphans = list(self._pending)
        if orphans and not self._closed:
            log.warning("upload worker exited during uploads; they will be retried", how=how, uploads=len(orphans))
        for request_id in orphans:
            self._settle(request_id, error=Transient(f"the upload worker process exited ({how}) during the attempt"))

    def _settle(self, request_id: int, *, result: StoredObject | None = None, error: Exception | None = None) -> None:
        with self._lock:
            entry = self._pending.get(request_id)
        if entry is None:
            return  # cancelled meanwhile
        loop, future = entry

        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            elif result is not None:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle)


# -- child side --------------------------------------------------------------------------------


async def _serve(cmd: Connection, evt: Connection, spec: StoreSpec) -> None:
    """Run each `put` as a task on this process's loop until `close` (or exit when the parent is gone)."""
    resolver = resolver_from_spec(spec)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
    attempts: dict[int, asyncio.Task[None]] = {}

    def read_commands() -> None:
        while True:
            try:
                msg = cmd.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server is gone (killed): its restart uploads these files again
            loop.call_soon_threadsafe(inbox.put_nowait, msg)

    threading.Thread(target=read_commands, name="callrec-uploads-read", daemon=True).start()

    async def attempt(request_id: int, target: str, key: str, path: str, content_type: str) -> None:
        try:
            stored = await resolver(target).put_file(key, path, content_type)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            name = error_name(exc)
            message = str(exc) if name else f"{type(exc).__name__}: {exc}"
            if not name:
                log.error("upload attempt raised an unexpected error", key=key, error=message)
            evt.send(("error", request_id, name, message))
        else:
            evt.send(("done", request_id, stored))
        finally:
            attempts.pop(request_id, None)

    while (msg := await inbox.get()) is not None:
        if msg[0] == "put":
            attempts[msg[1]] = loop.create_task(attempt(*msg[1:]))
        elif msg[0] == "cancel":
            task = attempts.get(msg[1])
            if task is not None:
                task.cancel()
        elif msg[0] == "close":
            break
    for task in list(attempts.values()):
        task.cancel()
    await asyncio.gather(*attempts.values(), return_exceptions=True)
    await resolver.close()


def _worker_main(cmd: Connection, evt: Connection) -> int:
    """Body of the child: the first message is ("open", StoreSpec)."""
    # the server stops on SIGTERM/SIGINT and then closes us; do not die first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    try:
        _, spec = cmd.recv()
        configure_logging(spec.log_level, spec.log_format)
        asyncio.run(_serve(cmd, evt, spec))
        return 0
    except EOFError:
        return 0
    except BaseException as exc:
        with contextlib.suppress(Exception):
            evt.send(("failed", f"upload worker: {type(exc).__name__}: {exc}"))
        return 1


if __name__ == "__main__":
    sys.exit(_worker_main(*child_connections(sys.argv)))
