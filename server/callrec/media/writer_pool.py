"""`AudioWriterPool`: audio recordings' files written by a process of their own (`--audio-writer-process`).

Why a process and not the writer threads: every 0.1 s batch of every recording was a job in a writer
thread, and each job took the GIL three times (to start, after libmp3lame, after the file write), each
time from an event loop that held it most of the time: the loop gave it up, waited to get it back,
and every call and RPC waited with it. Measured on the 2-core machine at 600 participants (60 mixed
mp3 recordings): with batches five times larger (so a fifth of the jobs) the server used 83 % of a
core instead of 88-91 %, and GetRecordingState's p50 fell from 22-35 ms to 10-14 ms. Here a batch
costs the loop a pickle and a share of one pipe write per turn, and the encoding runs on another core.

What it guarantees:
* One writer's commands run in the order they were queued (one process, one pipe).
* Nothing is lost quietly: a writer that fails there (disk, encoder), or the process's exit, fails the
  recordings whose writers it held, through their `on_error`, with what happened; the next recording
  starts a new process.
* A kill -9 of the server loses less than with threads: what was already in the pipe is still written
  (the process exits only when the pipe is empty), and start-up recovery finishes the files.
* Bounded: a process more than `max_queued_bytes` behind (a disk that stopped) fails the recordings
  that write more, instead of growing the server's memory.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from callrec.core.log import get_logger
from callrec.core.ports import AudioWriterFactory
from callrec.core.serial_jobs import RecordingMediaError
from callrec.media.pipe_channel import LoopPipe

__all__ = ["MAX_QUEUED_BYTES", "AudioWriterPool"]

log = get_logger(__name__)

#: How far (bytes not yet taken by the pipe) the process may fall behind: ~100 s of 600 participants' mp3
#: batches, far beyond any stall the recordings would survive anyway.
MAX_QUEUED_BYTES = 256 << 20


@dataclass(eq=False)
class _Writer:
    on_error: Callable[[BaseException], None]
    pipe: LoopPipe
    path: Path
    closing: asyncio.Future[Path] | None = None
    failed: BaseException | None = None


class AudioWriterPool:
    """The `AudioWriterHost` of the server: one writer process, started at the first recording's open."""

    def __init__(self, max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self._max_queued = max_queued_bytes
        self._pipe: LoopPipe | None = None
        self._writers: dict[int, _Writer] = {}
        self._keys = itertools.count(1)
        self.restarts = 0  # processes started after one exited
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The writer process's id, while one runs (tests and logs)."""
        return self._pipe.pid if self._pipe is not None and self._pipe.alive else None

    # ------------------------------------------------------------------ AudioWriterHost
    def open(self, factory: AudioWriterFactory, path: Path, on_error: Callable[[BaseException], None]) -> int:
        """Open a writer there (see `core.ports.AudioWriterHost`)."""
        if self._closed:
            raise RecordingMediaError("the audio writer process was stopped (the server is shutting down)")
        pipe = self._running()
        key = next(self._keys)
        self._writers[key] = _Writer(on_error, pipe, path)
        pipe.send(("open", key, factory, str(path)))
        return key

    def write(self, key: int, pieces: Sequence[np.ndarray]) -> None:
        """Queue one batch for the writer."""
        writer = self._writers.get(key)
        if writer is None or writer.failed is not None:
            return  # failed already: its recording heard so
        if writer.pipe.queued_bytes > self._max_queued:
            self._fail(key, RecordingMediaError(
                f"the audio writer process is {writer.pipe.queued_bytes >> 20} MiB of media behind (the disk "
                f"under the spool stalled?); {writer.path.name} stops here"))
            return
        writer.pipe.send(("write", key, list(pieces)))

    def journal(self, key: int, path: Path, document: dict[str, Any], previous: Path | None) -> None:
        """Queue a chunk's journal behind the writer's batches (see `core.ports.AudioWriterHost`)."""
        writer = self._writers.get(key)
        if writer is None or writer.failed is not None:
            return  # failed already: its recording heard so
        writer.pipe.send(("journal", key, str(path), document, None if previous is None else str(previous)))

    def close(self, key: int) -> asyncio.Future[Path]:
        """Finish the file after everything queued; the future gives its path or the error."""
        future: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        writer = self._writers.get(key)
        if writer is None:
            future.set_exception(RecordingMediaError(f"no audio writer {key} (closed twice?)"))
            return future
        if writer.failed is not None:
            del self._writers[key]
            future.set_exception(writer.failed)
            return future
        writer.closing = future
        writer.pipe.send(("close", key))
        return future

    # ------------------------------------------------------------------ the process
    def _running(self) -> LoopPipe:
        pipe = self._pipe
        if pipe is None or not pipe.alive:
            if pipe is not None:
                self.restarts += 1
            pipe = self._pipe = LoopPipe("callrec.media.writer_worker", self._on_message, self._on_exit)
            log.info("audio writer process started", pid=pipe.pid)
        return pipe

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind, key = message[0], message[1]
        if kind == "closed":
            writer = self._writers.pop(key, None)
            if writer is not None and writer.closing is not None and not writer.closing.done():
                writer.closing.set_result(Path(message[2]))
        elif kind == "failed":
            self._fail(key, RecordingMediaError(message[2]))

    def _on_exit(self, code: int | None) -> None:
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        lost = [key for key, writer in self._writers.items() if not writer.pipe.alive]
        if lost or not self._closed:
            log.error("audio writer process exited; the recordings it wrote fail", exit=how, recordings=len(lost))
        for key in lost:
            self._fail(key, RecordingMediaError(
                f"the audio writer process exited ({how}) with this chunk open; the chunk's spool file keeps "
                "what reached it"))

    def _fail(self, key: int, exc: RecordingMediaError) -> None:
        writer = self._writers.get(key)
        if writer is None or writer.failed is not None:
            return
        writer.failed = exc
        if writer.closing is not None:
            del self._writers[key]
            if not writer.closing.done():
                writer.closing.set_exception(exc)
        try:
            writer.on_error(exc)
        except Exception:
            log.exception("a recording's error handler failed", error=str(exc))

    async def close_all(self) -> None:
        """Stop: let the process write and close what is queued (the recordings closed theirs first), then exit."""
        self._closed = True
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.alive:
            await pipe.finish()
