"""Fragmented MP4 writer: H.264 1920x1080 16 fps + AAC 16 kHz mono, on one timeline.

Audio drives the timeline: every 20 ms mix block advances it by 320 samples, and a video
frame is due every 1000 samples (62.5 ms at 16 kHz = exactly one frame at 16 fps), so
video pts k (time_base 1/16) and audio pts 1000k (time_base 1/16000) are the same instant
by construction and the file cannot drift, however long it runs.

The file is written fragmented (`empty_moov`, a fragment at every key frame and every
half second), so a file cut short by a crash still plays up to its last complete fragment.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from callrec.core.model import OUTPUT_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, VIDEO_FPS
from callrec.media.video_decode import plane_array

SAMPLE_RATE = OUTPUT_SAMPLE_RATE
FPS = VIDEO_FPS
SAMPLES_PER_FRAME = SAMPLES_PER_VIDEO_FRAME
_AAC_FRAME = 1024
#: Video frames in flight between the compositor and the encoder thread.
FRAME_POOL = 3


@dataclass(frozen=True)
class Mp4Settings:
    """Encoder settings. Defaults measured with bench/video_composite.py on the 2-core dev box.

    superfast + mb-tree (a 10-frame lookahead) gives almost veryfast's quality per bit for
    ~0.55 core per 9-camera 1080p16 recording; plain superfast fills the 1 Mbps cap with
    noise for the same picture, veryfast costs ~40 % more CPU, ultrafast ~35 % less CPU but
    sits at the cap with visibly worse detail.
    """

    width: int = 1920
    height: int = 1080
    preset: str = "superfast"
    #: Quality target; `maxrate`/`bufsize` cap busy scenes near 1 Mbps (VBV), static grids use less.
    crf: int = 24
    maxrate: str = "1M"
    bufsize: str = "2M"
    #: Key frame interval in frames: 32 = 2 s, the longest SPEC allows.
    gop: int = 32
    #: x264 threads (0 = auto); with the encoder thread below, 2 keeps both cores busy.
    threads: int = 2
    audio_bit_rate: int = 48_000
    #: A new fragment at least this often (µs) besides every key frame: bounds crash loss.
    frag_duration_us: int = 500_000
    #: Encode on a thread of its own (PyAV releases the GIL), overlapping the next composite.
    encode_thread: bool = True
    #: Raw x264 options on top of the preset (x264-params syntax).
    x264_params: str = "mbtree=1:rc-lookahead=10"
    extra_x264: dict[str, str] = field(default_factory=dict)


class Mp4Writer:
    """Writes one mp4 chunk. Call it from one thread; it encodes on a thread of its own.

    Call `write_audio` with each mixed 20 ms block and, while `video_due` is true,
    `write_video` with the composite for the instant `next_video_offset`; then `close()`.
    An encoder error surfaces as an exception from the next call or from `close()`.
    """

    def __init__(self, path: str | os.PathLike[str], settings: Mp4Settings | None = None) -> None:
        self.path = Path(path)
        self.settings = s = settings or Mp4Settings()
        # FFmpeg opens the file lazily, at the first packet; fail here, where the caller is.
        self.path.open("wb").close()
        self._container = av.open(
            str(self.path),
            "w",
            format="mp4",
            container_options={
                "movflags": "frag_keyframe+empty_moov+default_base_moof",
                "frag_duration": str(s.frag_duration_us),
                # Hand each fragment to the OS as soon as it is complete, not 32 KiB later.
                "flush_packets": "1",
            },
        )
        try:
            self._video = self._add_video(s)
            self._audio = self._add_audio(s)
        except Exception:
            self._container.close()
            raise
        self._pending = np.zeros(0, np.int16)
        self.samples_written = 0
        self.frames_written = 0
        self.closed = False
        # Frames cycle between the caller (filling them) and the encoder; the pool's size
        # bounds how far the encoder thread may lag, and so the memory it holds.
        self._free: queue.Queue[av.VideoFrame] = queue.Queue()
        self._planes_of: dict[int, list[np.ndarray]] = {}
        for _ in range(FRAME_POOL if s.encode_thread else 1):
            frame = av.VideoFrame(s.width, s.height, "yuv420p")
            self._planes_of[id(frame)] = [plane_array(frame, i) for i in range(3)]
            self._free.put(frame)
        self._error: BaseException | None = None
        self._jobs: queue.Queue[tuple[str, Any, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if s.encode_thread:
            self._thread = threading.Thread(target=self._run, name=f"mp4-encode:{self.path.name}", daemon=True)
            self._thread.start()

    def _add_video(self, s: Mp4Settings) -> av.VideoStream:
        stream = self._container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = s.width, s.height, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        cc = stream.codec_context
        cc.time_base = Fraction(1, FPS)
        cc.gop_size = s.gop
        cc.thread_count = s.threads
        # Tag the colours the compositor used (BT.709, limited range) so players agree.
        cc.colorspace = cc.color_primaries = cc.color_trc = 1
        cc.color_range = 1
        stream.options = {
            "preset": s.preset,
            "crf": str(s.crf),
            "maxrate": s.maxrate,
            "bufsize": s.bufsize,
            "g": str(s.gop),
            "keyint_min": str(FPS),
            # No scene-cut key frames: keep the GOP regular, fragments predictable.
            "sc_threshold": "0",
            **({"x264-params": s.x264_params} if s.x264_params else {}),
            **s.extra_x264,
        }
        return stream

    def _add_audio(self, s: Mp4Settings) -> av.AudioStream:
        stream = self._container.add_stream("aac", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.format = "fltp"
        stream.bit_rate = s.audio_bit_rate
        stream.time_base = Fraction(1, SAMPLE_RATE)
        stream.codec_context.time_base = Fraction(1, SAMPLE_RATE)
        return stream

    # -- timeline ----------------------------------------------------------------------

    @property
    def video_due(self) -> bool:
        """True while a video frame starts before the end of the audio written so far."""
        return self.frames_written * SAMPLES_PER_FRAME < self.samples_written

    @property
    def next_video_offset(self) -> float:
        """Seconds from the start of this file of the next video frame."""
        return self.frames_written / FPS

    @property
    def duration(self) -> float:
        """Seconds of media written (audio samples, the timeline's master)."""
        return self.samples_written / SAMPLE_RATE

    @property
    def bytes_written(self) -> int:
        """Bytes on disk so far (the muxer's last buffered 32 KiB may still be in memory)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    # -- writing -----------------------------------------------------------------------

    def write_audio(self, block: np.ndarray) -> None:
        """Append mono int16 samples at 16 kHz (normally one 320-sample mix block)."""
        self._check()
        samples = np.asarray(block, dtype=np.int16).reshape(-1)
        self.samples_written += samples.size
        self._pending = np.concatenate([self._pending, samples]) if self._pending.size else samples
        while self._pending.size >= _AAC_FRAME:
            pts = self.samples_written - self._pending.size
            self._submit("audio", self._pending[:_AAC_FRAME], pts)
            self._pending = self._pending[_AAC_FRAME:]

    def write_video(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Encode the next video frame (pts = frames written, i.e. `next_video_offset`).

        The planes are copied before this returns, so the caller may reuse its buffers.
        """
        self._check()
        frame = self._take_frame()
        for dst, src in zip(self._planes_of[id(frame)], (y, u, v), strict=True):
            dst[:] = src
        frame.pts = self.frames_written
        frame.time_base = Fraction(1, FPS)
        self.frames_written += 1
        self._submit("video", frame, frame.pts)

    def close(self) -> None:
        """Flush both encoders and finish the file (idempotent). Raises an encoder error."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._pending.size:
                tail, self._pending = self._pending, np.zeros(0, np.int16)
                self._submit("audio", tail, self.samples_written - tail.size)
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
            self._check()
            self._container.mux(self._audio.encode(None))
            self._container.mux(self._video.encode(None))
        finally:
            self._container.close()

    # -- encoding (on the encoder thread when settings.encode_thread) -------------------

    def _submit(self, kind: str, payload: Any, pts: int) -> None:
        if self._thread is None:
            self._encode(kind, payload, pts)
        else:
            self._jobs.put((kind, payload, pts))

    def _encode(self, kind: str, payload: Any, pts: int) -> None:
        if kind == "video":
            self._container.mux(self._video.encode(payload))
            # libx264 has copied the picture into its own lookahead: the frame is free again.
            self._free.put(payload)
            return
        frame = av.AudioFrame.from_ndarray(
            (payload.astype(np.float32) / 32768.0).reshape(1, -1), format="fltp", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self._container.mux(self._audio.encode(frame))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    self._encode(*job)
                except BaseException as exc:  # reported to the caller at its next call
                    self._error = exc

    def _take_frame(self) -> av.VideoFrame:
        """A free frame from the pool: blocks while the encoder is `FRAME_POOL` frames behind."""
        while True:
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
