"""The video side of one mp4 recording, in-process: decoders → compositor → Mp4Writer.

`video_worker` runs one of these in a child process and feeds it commands; tests and
`bench/` drive it directly. The audio ticks are the clock: each 20 ms block is written,
and every video frame that the timeline then calls for is composited for its exact call
time, so audio and video come from one timeline (see `writers/mp4.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from callrec.core.model import VideoEncoding
from callrec.media.compositor import Compositor
from callrec.media.video_decode import VideoDecodeError, VideoDecoder
from callrec.media.writers.mp4 import SAMPLE_RATE, SAMPLES_PER_FRAME, Mp4Settings, Mp4Writer

Emit = Callable[[tuple[Any, ...]], None]


class VideoSession:
    """Decode, composite and encode one recording; `emit` receives event tuples.

    Events: ("chunk", path, bytes, duration_s, video_frames), ("progress", path, bytes,
    duration_s), ("rejected", participant_id, reason, message).
    """

    def __init__(
        self,
        path: Path,
        settings: Mp4Settings | None = None,
        emit: Emit | None = None,
        compositor: Compositor | None = None,
    ) -> None:
        self.settings = settings or Mp4Settings()
        self.emit: Emit = emit or (lambda _msg: None)
        self.compositor = compositor or Compositor(self.settings.width, self.settings.height)
        self.decoders: dict[str, VideoDecoder] = {}
        self.writer = Mp4Writer(path, self.settings)
        self.paused: str | None = None  # None, "skip" or "silence"
        self._next_progress = 1.0

    def handle(self, msg: tuple[Any, ...]) -> bool:
        """Apply one command tuple; True when the session has finished."""
        name, args = msg[0], msg[1:]
        if name == "finish":
            self.finish()
            return True
        handler = getattr(self, f"on_{name}", None)
        if handler is None:
            raise ValueError(f"unknown video worker command {name!r}")
        handler(*args)
        return False

    # -- commands ----------------------------------------------------------------------

    def on_join(self, pid: str, display_name: str, encoding: str | None, width: int, height: int) -> None:
        """A participant entered; a decoder is made for their video codec."""
        old = self.decoders.pop(pid, None)
        if old is not None:
            old.close()
        if encoding is not None:
            self.decoders[pid] = VideoDecoder(VideoEncoding(encoding), width, height)
        self.compositor.add(pid, display_name, encoding is not None)

    def on_leave(self, pid: str) -> None:
        """A participant left."""
        dec = self.decoders.pop(pid, None)
        if dec is not None:
            dec.close()
        self.compositor.remove(pid)

    def on_video(self, pid: str, data: bytes, t: float | None, width: int, height: int) -> None:
        """Decode a frame (even while paused: H.264 needs every reference frame)."""
        dec = self.decoders.get(pid)
        if dec is None:
            self.emit(("rejected", pid, "no_video", "video from a participant that joined without video"))
            return
        try:
            frames = dec.decode(data, width, height)
        except VideoDecodeError as exc:
            self.emit(("rejected", pid, exc.reason, exc.message))
            return
        for frame in frames:
            self.compositor.update_video(pid, frame, t)

    def on_audio(self, pcm: bytes | np.ndarray, t: float, speaking: Mapping[str, bool]) -> None:
        """One mix tick at call time `t`: write it, then every video frame now due."""
        block = np.frombuffer(pcm, np.int16) if isinstance(pcm, bytes | bytearray) else pcm
        self.compositor.note_activity(speaking, t)
        if self.paused == "skip":
            return
        if self.paused == "silence":
            block = np.zeros_like(block)
        w = self.writer
        start = w.samples_written
        w.write_audio(block)
        while w.video_due:
            frame_t = t + (w.frames_written * SAMPLES_PER_FRAME - start) / SAMPLE_RATE
            planes = self.compositor.slate() if self.paused else self.compositor.compose(frame_t)
            w.write_video(*planes)
        if w.duration >= self._next_progress:
            self._next_progress = float(int(w.duration)) + 1.0
            self.emit(("progress", str(w.path), w.bytes_written, w.duration))

    def on_pause(self, silence: bool) -> None:
        """Stop writing (skip) or write silence and the slate (silence)."""
        self.paused = "silence" if silence else "skip"

    def on_resume(self) -> None:
        """Write media again."""
        self.paused = None

    def on_rotate(self, new_path: str) -> None:
        """Close this chunk and start the next (its first frame is a key frame)."""
        self._close_chunk()
        self.writer = Mp4Writer(Path(new_path), self.settings)
        self._next_progress = 1.0

    def finish(self) -> None:
        """Close the last chunk and free the decoders."""
        self._close_chunk()
        for dec in self.decoders.values():
            dec.close()
        self.decoders.clear()

    def _close_chunk(self) -> None:
        w = self.writer
        if w.closed:
            return
        w.close()
        self.emit(("chunk", str(w.path), w.bytes_written, w.duration, w.frames_written))
