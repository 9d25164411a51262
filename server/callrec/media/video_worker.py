"""One mp4 recording's video work (decode, composite, encode) in a process of its own.

Why a process: libx264 at 1080p16 plus compositing takes a good part of a core per
recording; in its own process it uses the second core instead of competing with the
event loop, and a crash in FFmpeg (or an exception in the compositor) ends that worker
only: the parent sees a `WorkerFailed` event, `failed` becomes true and `finish()` raises
`VideoWorkerError`, so the server marks that recording FAILED and carries on.

The parent side (`VideoWorker`) never blocks its caller: commands go into a bounded
in-memory queue that a sender thread writes into a pipe. Bounds: raw I420 video is
thinned to the output frame rate and dropped when the queue holds too many bytes;
audio and compressed video (which cannot be dropped without breaking the timeline or
the decoder's references) count as backlog, and a worker that falls `max_backlog_s`
behind is declared failed rather than let memory grow without limit.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from callrec.child_process import child_connections, start_child
from callrec.core.model import VideoEncoding
from callrec.core.ports import (
    ChunkWritten,
    FrameRejected,
    VideoWorkerError,
    VideoWorkerEvent,
    WorkerFailed,
    WorkerProgress,
)
from callrec.media.writers.mp4 import FPS, Mp4Settings

if TYPE_CHECKING:
    from callrec.core.call_media import MixTick

#: Audio ticks are 20 ms; the backlog is measured in them.
TICK_S = 0.02


# -- parent side ---------------------------------------------------------------------------


class VideoWorker:
    """Handle to one recording's video worker process.

    All command methods are cheap and non-blocking (safe on the event loop); `finish`
    blocks (run it in a thread). `on_event` is called from a background thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: Mp4Settings | None = None,
        *,
        on_event: Callable[[VideoWorkerEvent], None] | None = None,
        max_backlog_s: float = 10.0,
        max_video_backlog_bytes: int = 64 << 20,
        crash_after_s: float | None = None,
    ) -> None:
        """`crash_after_s` is a test hook: SIGKILL the worker once that much audio was sent.

        From the parent's side that is exactly what an FFmpeg segfault looks like;
        integration tests use it to prove that a crashed worker fails only its recording.
        """
        self.path = Path(path)
        self._crash_after_s = crash_after_s
        self._audio_sent_s = 0.0
        self.settings = settings or Mp4Settings()
        self.on_event = on_event
        self.max_backlog_s = max_backlog_s
        self.max_video_backlog_bytes = max_video_backlog_bytes
        self.chunks: list[ChunkWritten] = []
        self.progress: WorkerProgress | None = None
        self.video_frames_dropped = 0
        self.error: str | None = None
        self._queue: collections.deque[tuple[tuple[Any, ...], int, int]] = collections.deque()
        self._cond = threading.Condition()
        self._audio_queued = 0
        self._video_bytes_queued = 0
        self._raw: dict[str, int] = {}
        self._finished = threading.Event()
        self._closing = False
        self._process: subprocess.Popen[bytes] | None = None
        self._cmd: Connection | None = None
        self._evt: Connection | None = None
        self._threads: list[threading.Thread] = []

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker: a fresh interpreter (`python -m callrec.media.video_worker`).

        See `callrec.child_process` for why a plain subprocess; commands and events travel
        as pickled tuples over its two pipes.
        """
        child = start_child("callrec.media.video_worker")
        self._process, self._cmd, self._evt = child.process, child.commands, child.events
        self._queue.appendleft((("open", str(self.path), self.settings), 0, 0))
        for target, name in ((self._send_loop, "send"), (self._recv_loop, "recv")):
            thread = threading.Thread(target=target, name=f"callrec-video-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def pid(self) -> int | None:
        """The worker's process id (for logs and metrics)."""
        return self._process.pid if self._process else None

    @property
    def exitcode(self) -> int | None:
        """The worker's exit status once it ended (negative: killed by that signal)."""
        return self._process.poll() if self._process else None

    @property
    def failed(self) -> bool:
        """True once the worker failed; `error` says why."""
        return self.error is not None

    @property
    def backlog_s(self) -> float:
        """Seconds of audio queued for the worker and not yet handed to it."""
        return self._audio_queued * TICK_S

    def finish(self, timeout: float = 60.0) -> list[ChunkWritten]:
        """Close the last chunk and stop the worker; returns every chunk written.

        Blocks up to `timeout` seconds. Raises `VideoWorkerError` if the worker failed.
        """
        self._put(("finish",), kind=0, size=0)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if not self._finished.wait(timeout):
            self._fail(f"video worker did not finish within {timeout:.0f} s")
        self._reap()
        if self.error is not None:
            raise VideoWorkerError(self.error)
        return list(self.chunks)

    def kill(self) -> None:
        """Stop the worker at once (the open chunk keeps its complete fragments)."""
        if self.error is None and not self._finished.is_set():
            self._fail("video worker killed")
        self._reap()

    def _reap(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        proc = self._process
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for conn in (self._cmd, self._evt):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)

    # -- commands ----------------------------------------------------------------------

    def join(self, participant_id: str, display_name: str, video: VideoEncoding | None,
             width: int = 0, height: int = 0) -> None:
        """A participant entered (video None: audio only, shown as a name card)."""
        enc = None if video is None else VideoEncoding(video).value
        self._put(("join", participant_id, display_name, enc, width, height), kind=0, size=0)

    def leave(self, participant_id: str) -> None:
        """A participant left: their tile is freed."""
        self._raw.pop(participant_id, None)
        self._put(("leave", participant_id), kind=0, size=0)

    def video(self, participant_id: str, data: bytes, t: float | None = None, *,
              width: int = 0, height: int = 0, raw: bool = False) -> bool:
        """A video frame as the gateway sent it, to be shown from call time `t` (seconds).

        `raw` marks I420 frames, which may be thinned or dropped under load (returns False).
        """
        if raw:
            # One raw frame per output frame slot (1/16 s) is all the grid can show.
            slot = math.floor((time.monotonic() if t is None else t) * FPS)
            if slot == self._raw.get(participant_id) or self._video_bytes_queued > self.max_video_backlog_bytes:
                self.video_frames_dropped += 1
                return False
            self._raw[participant_id] = slot
        return self._put(("video", participant_id, bytes(data), t, width, height), kind=2, size=len(data))

    def audio(self, block: np.ndarray, t: float, speaking: Mapping[str, bool]) -> bool:
        """One 20 ms mix tick: 320 int16 samples, its call time `t` and who is speaking."""
        pcm = np.asarray(block, dtype=np.int16).tobytes()
        sent = self._put(("audio", pcm, t, dict(speaking)), kind=1, size=0)
        if self._crash_after_s is not None:
            self._audio_sent_s += len(pcm) / 2 / 16_000
            if self._audio_sent_s >= self._crash_after_s and self._process is not None:
                self._crash_after_s = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._process.pid, signal.SIGKILL)
        return sent

    def on_tick(self, tick: MixTick) -> None:
        """`TickSink` for `CallMedia.attach`: forwards each mix tick with its call time."""
        self.audio(tick.mixed, tick.start_us / 1_000_000, tick.speaking)

    def pause(self, silence: bool) -> None:
        """Pause: skip mode writes nothing; silence mode writes silence and the slate."""
        self._put(("pause", bool(silence)), kind=0, size=0)

    def resume(self) -> None:
        """Resume writing into the same chunk."""
        self._put(("resume",), kind=0, size=0)

    def rotate(self, new_path: Path) -> None:
        """Close the current chunk (a `ChunkWritten` follows) and continue in `new_path`."""
        self._put(("rotate", str(new_path)), kind=0, size=0)

    def _put(self, msg: tuple[Any, ...], kind: int, size: int) -> bool:
        with self._cond:
            if self.error is not None or self._closing:
                return False
            if kind == 1 and self._audio_queued * TICK_S >= self.max_backlog_s:
                overloaded = True
            else:
                overloaded = kind == 2 and self._video_bytes_queued > 4 * self.max_video_backlog_bytes
                if not overloaded:
                    self._queue.append((msg, kind, size))
                    self._audio_queued += kind == 1
                    self._video_bytes_queued += size
                    self._cond.notify()
                    return True
        self._fail(
            f"video worker fell more than {self.max_backlog_s:.0f} s behind real time "
            "(machine overloaded: too many concurrent video recordings)"
        )
        return False

    # -- threads -----------------------------------------------------------------------

    def _send_loop(self) -> None:
        assert self._cmd is not None
        while True:
            with self._cond:
                while not self._queue and not (self._closing or self.error):
                    self._cond.wait()
                if not self._queue:
                    return
                msg, kind, size = self._queue.popleft()
            try:
                self._cmd.send(msg)
            except (OSError, ValueError):
                # The worker is gone; the reader thread reports why (its own last words or
                # its exit code), which says more than a broken pipe.
                return
            finally:
                with self._cond:
                    self._audio_queued -= kind == 1
                    self._video_bytes_queued -= size
            if msg[0] == "finish":
                return

    def _recv_loop(self) -> None:
        assert self._evt is not None
        while True:
            try:
                msg = self._evt.recv()
            except (EOFError, OSError):
                if not self._finished.is_set():
                    code = self._exitcode()
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    self._fail(f"video worker exited unexpectedly ({how})", kill=False)
                return
            self._handle(msg)
            if msg[0] in ("finished", "failed"):
                return

    def _exitcode(self) -> int | None:
        proc = self._process
        if proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)
        return proc.poll()

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        event: VideoWorkerEvent | None = None
        if kind == "chunk":
            event = ChunkWritten(Path(msg[1]), msg[2], msg[3], msg[4])
            self.chunks.append(event)
        elif kind == "progress":
            event = self.progress = WorkerProgress(Path(msg[1]), msg[2], msg[3])
        elif kind == "rejected":
            event = FrameRejected(msg[1], msg[2], msg[3])
        elif kind == "failed":
            self._fail(msg[1], kill=False)  # it exits by itself; _reap waits for it
            return
        elif kind == "finished":
            self._finished.set()
            return
        if event is not None:
            self._emit(event)

    def _fail(self, message: str, kill: bool = True) -> None:
        with self._cond:
            if self.error is not None or self._finished.is_set():
                return
            self.error = message
            self._queue.clear()
            self._cond.notify_all()
        proc = self._process
        if kill and proc is not None and proc.poll() is None:
            proc.kill()
        self._finished.set()
        self._emit(WorkerFailed(message))

    def _emit(self, event: VideoWorkerEvent) -> None:
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # a faulty callback must not stop this thread
                self.on_event(event)


# -- worker side ---------------------------------------------------------------------------


def _worker_main(cmd: Connection, evt: Connection) -> int:
    """Body of the worker process: serve commands until finish or until the parent goes."""
    # The server drains on SIGTERM/SIGINT and then tells us to finish; do not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        from callrec.media.video_session import VideoSession  # heavy imports: worker only

        _, path, settings = cmd.recv()  # ("open", path, Mp4Settings)
        session = VideoSession(Path(path), settings, evt.send)
        while True:
            try:
                msg = cmd.recv()
            except EOFError:  # parent gone: finish the file so it stays playable
                session.finish()
                break
            if session.handle(msg):
                break
        evt.send(("finished",))
        return 0
    except BaseException as exc:
        with contextlib.suppress(Exception):
            evt.send(("failed", f"video worker: {type(exc).__name__}: {exc}"))
        return 1


if __name__ == "__main__":
    sys.exit(_worker_main(*child_connections(sys.argv)))
