"""Fragmented MP4 writer: H.264 1920x1080 16 fps + AAC 16 kHz mono, on one timeline.

Audio drives the timeline: every 20 ms mix block advances it by 320 samples, and a video
frame is due every 1000 samples (62.5 ms at 16 kHz = exactly one frame at 16 fps), so
video pts k (time_base 1/16) and audio pts 1000k (time_base 1/16000) are the same instant
by construction and the file cannot drift, however long it runs.

The file is written fragmented (`empty_moov`, a fragment at every key frame and every
second), so a file cut short by a crash still plays up to its last complete fragment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from callrec.media.video_decode import plane_array

SAMPLE_RATE = 16_000
FPS = 16
#: Audio samples per video frame: 16000 / 16, an integer, which is what keeps A/V exact.
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
_AAC_FRAME = 1024


@dataclass(frozen=True)
class Mp4Settings:
    """Encoder settings; the defaults are what SPEC §2 promises (see bench/video_composite.py)."""

    width: int = 1920
    height: int = 1080
    #: x264 preset: `superfast` costs ~1/3 core at 1080p16 for grid content on the dev machine.
    preset: str = "superfast"
    #: Quality target; `maxrate`/`bufsize` cap busy scenes near 1 Mbps (VBV).
    crf: int = 26
    maxrate: str = "1M"
    bufsize: str = "2M"
    #: Key frame interval in frames: 32 = 2 s, the longest SPEC allows.
    gop: int = 32
    #: x264 threads; 0 = auto. One worker process per recording: 2 overlaps its frames.
    threads: int = 2
    audio_bit_rate: int = 48_000
    #: A new fragment at least this often (µs) besides every key frame: bounds crash loss.
    frag_duration_us: int = 1_000_000
    extra_x264: dict[str, str] = field(default_factory=dict)


class Mp4Writer:
    """Writes one mp4 chunk. Not thread-safe: one writer per worker.

    Call `write_audio` with each mixed 20 ms block and, while `video_due` is true,
    `write_video` with the composite for the instant `next_video_time`; then `close()`.
    """

    def __init__(self, path: str | os.PathLike[str], settings: Mp4Settings | None = None) -> None:
        self.path = Path(path)
        self.settings = s = settings or Mp4Settings()
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
        self._frame = av.VideoFrame(s.width, s.height, "yuv420p")
        self._frame_planes = [plane_array(self._frame, i) for i in range(3)]
        self._pending = np.zeros(0, np.int16)
        self.samples_written = 0
        self.frames_written = 0
        self.closed = False

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
        samples = np.asarray(block, dtype=np.int16).reshape(-1)
        self.samples_written += samples.size
        self._pending = np.concatenate([self._pending, samples]) if self._pending.size else samples
        while self._pending.size >= _AAC_FRAME:
            self._encode_audio(self._pending[:_AAC_FRAME])
            self._pending = self._pending[_AAC_FRAME:]

    def _encode_audio(self, samples: np.ndarray) -> None:
        pts = self.samples_written - self._pending.size
        frame = av.AudioFrame.from_ndarray(
            (samples.astype(np.float32) / 32768.0).reshape(1, -1), format="fltp", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self._container.mux(self._audio.encode(frame))

    def write_video(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Encode the next video frame (pts = frames written, i.e. `next_video_offset`)."""
        dst_y, dst_u, dst_v = self._frame_planes
        dst_y[:] = y
        dst_u[:] = u
        dst_v[:] = v
        # Reusing one frame is safe: libx264 copies the picture into its own lookahead.
        frame = self._frame
        frame.pts = self.frames_written
        frame.time_base = Fraction(1, FPS)
        self.frames_written += 1
        self._container.mux(self._video.encode(frame))

    def close(self) -> None:
        """Flush both encoders and finish the file (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._pending.size:
                tail, self._pending = self._pending, np.zeros(0, np.int16)
                self._pending_tail(tail)
            self._container.mux(self._audio.encode(None))
            self._container.mux(self._video.encode(None))
        finally:
            self._container.close()

    def _pending_tail(self, tail: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(
            (tail.astype(np.float32) / 32768.0).reshape(1, -1), format="fltp", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.samples_written - tail.size
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self._container.mux(self._audio.encode(frame))
