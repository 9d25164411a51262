"""`VideoRecording`: one mp4 recording (the 3x3 active-speaker grid with the call's mixed audio).

The timeline, chunking, metadata and the stop wait are the shared `RecordingEngine`'s;
what is video's own is here. The heavy work (decoding, compositing, H.264 and AAC
encoding) happens in a worker process (`VideoWorkerPort`, implemented by
`callrec.media.video_worker.VideoWorker` and built by `callrec.media.video_output`);
this class, on the event loop, decides *what* goes into which chunk, and *when*:

- Timeline: every tick's mixed audio is forwarded with its call time; the worker writes
  it and composites the video frames that the audio timeline then calls for, so audio
  and video cannot drift. Video frames arrive already placed on the call timeline by
  `CallMedia.place_video`, the same code that places the participant's audio.
- Pause: SKIP tells the worker to drop the span (it still sees the speaking flags, so the
  grid is current on resume); SILENCE makes it write silence and a "Recording paused"
  slate, so the file stays aligned with the call.
- Chunk size: the projection is the size the worker last reported (once per media
  second) plus the media sent since at the encoder's ceiling rate (VBV `maxrate` + AAC),
  so a chunk ends early rather than late. The worker reports each closed file
  (`ChunkWritten`); then the file is fsynced and its metadata written, in chunk order.
- Failure: a worker that crashes or falls behind reports `WorkerFailed`; the recording
  fails at once with the worker's reason while the server and every other recording
  carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.chunker import ChunkOutput, ClosedChunk, OnChunkFinished, OpenChunk, spool_stem
from callrec.core.log import get_logger
from callrec.core.metadata import VideoConfiguration
from callrec.core.model import (
    MAX_VIDEO_DIMENSION,
    OUTPUT_SAMPLE_RATE,
    SAMPLES_PER_VIDEO_FRAME,
    VIDEO_FPS,
    PauseMode,
    RecordingOptions,
    VideoEncoding,
    VideoFormat,
    i420_size,
)
from callrec.core.ports import (
    ChunkWritten,
    FrameRejected,
    TimeSource,
    VideoWorkerError,
    VideoWorkerEvent,
    VideoWorkerPort,
    WorkerFailed,
    WorkerProgress,
)
from callrec.core.recording_engine import RecordingEngine

__all__ = ["CONTENT_TYPE", "VideoOutputSpec", "VideoRecording", "VideoWorkerFactory"]

log = get_logger(__name__)

CONTENT_TYPE = "video/mp4"
#: A byte-limited chunk holds at least this much media: an mp4 chunk starts with a key frame
#: and headers, so a tiny `chunk_max_bytes` must not turn into a flood of 20 ms files.
MIN_BYTE_LIMITED_SAMPLES = OUTPUT_SAMPLE_RATE

#: Builds the worker of one recording: its first chunk's path and the event callback
#: (called from a background thread).
VideoWorkerFactory = Callable[[Path, Callable[[VideoWorkerEvent], None]], VideoWorkerPort]


@dataclass(frozen=True)
class VideoOutputSpec:
    """What the encoder is set to produce: metadata and the chunk size estimate need it."""

    width: int
    height: int
    max_bit_rate: int  # video VBV ceiling, bits per second
    audio_bit_rate: int  # AAC, bits per second

    @property
    def configuration(self) -> VideoConfiguration:
        """The metadata's `videoConfiguration` (`bitRate` is the VBV ceiling, ≈1 Mbps as SPEC §2 promises)."""
        return VideoConfiguration(
            longer_side_length=max(self.width, self.height),
            shorter_side_length=min(self.width, self.height),
            frame_rate=VIDEO_FPS,
            bit_rate=self.max_bit_rate,
        )


class _VideoOutput:
    """`ChunkOutput` of an mp4 recording: commands to the worker process."""

    extension = "mp4"
    content_type = CONTENT_TYPE

    def __init__(self, recording: VideoRecording, worker: VideoWorkerPort, first_path: Path) -> None:
        self.video: VideoConfiguration | None = recording.spec.configuration
        self._recording = recording
        self._worker = worker
        self._path = first_path
        self._silence = recording.options.pause_mode == PauseMode.SILENCE
        spec = recording.spec
        #: Bytes per 16 kHz sample at the encoders' ceiling: what the unreported media can add.
        self._ceiling_bytes_per_sample = (spec.max_bit_rate + spec.audio_bit_rate) / 8 / OUTPUT_SAMPLE_RATE
        self.progress: WorkerProgress | None = None
        self._awaiting: dict[Path, tuple[ClosedChunk, Callable[[Callable[[], Path]], None]]] = {}

    def open(self, chunk: OpenChunk) -> None:
        if chunk.media_path != self._path:
            self._path = chunk.media_path
            self._worker.rotate(chunk.media_path)

    def journal(self, path: Path, journal: dict[str, Any], previous: Path | None) -> bool:
        """The chunker writes it as a job (the worker process knows nothing of journals)."""
        return False

    def set_paused(self, paused: bool) -> None:
        if paused:
            self._worker.pause(self._silence)
        else:
            self._worker.resume()

    def width(self, tick: MixTick, chunk: OpenChunk, silent: bool) -> int:
        return 1

    def cap(self, chunk: OpenChunk, channels: int, max_bytes: int, limit: int) -> int:
        if chunk.samples < MIN_BYTE_LIMITED_SAMPLES:
            return limit
        rate = self._ceiling_bytes_per_sample
        known_bytes, known = 0, 0
        progress = self.progress
        if progress is not None and progress.path == chunk.media_path:
            known_bytes, known = progress.bytes_written, round(progress.duration_s * OUTPUT_SAMPLE_RATE)
        projected = known_bytes + max(0, chunk.samples - known) * rate
        # End on a video frame boundary: the chunk's last frame then lasts as long as its audio.
        end = (chunk.samples + int((max_bytes - projected) / rate)) // SAMPLES_PER_VIDEO_FRAME
        return min(limit, end * SAMPLES_PER_VIDEO_FRAME)

    def write(self, tick: MixTick, start: int, end: int, chunk: OpenChunk, channels: int, silent: bool) -> None:
        self._send(tick, start, end)

    def skip(self, tick: MixTick, start: int, end: int) -> None:
        self._send(tick, start, end)  # the worker drops it, but learns who speaks

    def _send(self, tick: MixTick, start: int, end: int) -> None:
        t = tick.start_us / 1_000_000 + start / OUTPUT_SAMPLE_RATE
        block = tick.mixed if start == 0 and end == tick.samples else tick.mixed[start:end]
        self._worker.audio(block, t, tick.speaking)

    def pad(self, chunk: OpenChunk, paused: bool, position: int) -> None:
        # An empty recording holds one tick (one video frame), the "paused" slate if it never left its pause.
        if paused:
            self._worker.pause(True)
        else:
            self._worker.resume()
        self._worker.audio(np.zeros(TICK_SAMPLES, np.int16), position / OUTPUT_SAMPLE_RATE, {})

    def channel_of(self, participant_id: str) -> int | None:
        return -1

    def bit_rate(self, channels: int) -> int:
        return self._recording.spec.audio_bit_rate

    def close(self, closed: ClosedChunk, complete: Callable[[Callable[[], Path]], None]) -> None:
        self._awaiting[closed.chunk.media_path] = (closed, complete)  # the worker says when the file is done

    def chunk_written(self, event: ChunkWritten) -> None:
        entry = self._awaiting.pop(event.path, None)
        if entry is None:
            return
        closed, complete = entry
        expected = closed.chunk.samples / OUTPUT_SAMPLE_RATE
        if abs(event.duration_s - expected) > 1e-6:
            log.warning("video chunk length differs from what was sent", index=closed.chunk.index,
                        written_s=event.duration_s, sent_s=expected, **self._recording.log_fields)
        path = event.path

        def fsync_media() -> Path:
            with open(path, "rb") as media:  # the worker closed it; make it durable
                os.fsync(media.fileno())
            return path

        complete(fsync_media)

    async def drain(self) -> None:
        recording = self._recording
        try:
            written = await asyncio.get_running_loop().run_in_executor(
                recording.executor, self._worker.finish, recording.finish_timeout)
        except VideoWorkerError as exc:
            recording.fail(exc)
            written = []
        for event in written:  # normally already delivered through the event callback
            self.chunk_written(event)


class VideoRecording(RecordingEngine):
    """One mp4 recording's sink: ticks, participants and video in; chunk files out.

    All methods run on the event loop and return quickly; the worker process does the
    media work. `finish` waits for the worker to drain and close.
    """

    def __init__(
        self,
        recording_id: str,
        call_id: str,
        options: RecordingOptions,
        spool_dir: Path,
        resource_id: str,
        on_chunk_finished: OnChunkFinished,
        *,
        worker_factory: VideoWorkerFactory,
        spec: VideoOutputSpec,
        start_at: datetime | None = None,
        executor: Executor | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        finish_timeout: float = 120.0,
        idle_timeout: float = 0.5,
        time: TimeSource | None = None,
        first_index: int = 0,
        start_paused: bool | None = None,
    ) -> None:
        self.spec = spec
        self._first_index = first_index
        self.executor = executor
        self.finish_timeout = finish_timeout
        self._worker_factory = worker_factory
        self._loop = asyncio.get_running_loop()
        self._formats: dict[str, VideoFormat] = {}
        super().__init__(
            recording_id, call_id, options, spool_dir, resource_id, on_chunk_finished, start_at=start_at,
            executor=executor, on_error=on_error, idle_timeout=idle_timeout, time=time, first_index=first_index,
            start_paused=start_paused,
        )

    def _make_output(self) -> ChunkOutput:
        first_path = self.spool_dir / f"{spool_stem(self.recording_id)}-{self._first_index}.mp4"
        self.worker = self._worker_factory(first_path, self._from_worker_thread)
        self._output = _VideoOutput(self, self.worker, first_path)
        log.info("video worker started", pid=self.worker.pid, **self.log_fields)
        return self._output

    def _journal_fields(self) -> dict[str, Any]:
        """Recovery waits for this worker, which finishes its file when the server dies."""
        return {"worker_pid": self.worker.pid}

    # ------------------------------------------------------------------ participants and video
    def join(self, participant_id: str, display_name: str, video: VideoFormat | None) -> None:
        """A participant is in the call: the worker makes a decoder (or a name card)."""
        if video is None:
            self._formats.pop(participant_id, None)
        else:
            self._formats[participant_id] = video
        self.worker.join(participant_id, display_name or participant_id, video.encoding if video else None,
                         video.width if video else 0, video.height if video else 0)

    def leave(self, participant_id: str) -> None:
        """A participant left: their tile is freed."""
        self._formats.pop(participant_id, None)
        self.worker.leave(participant_id)

    def video(self, participant_id: str, data: bytes, call_us: int, width: int, height: int,
              keyframe: bool) -> str | None:
        """Forward one frame for call time `call_us`; returns a rejection reason or None.

        I420 frames are checked here (size and length cost nothing and the gateway gets
        its answer at once); H.264 / VP8 can only be judged by the decoder in the worker,
        whose rejections arrive later and are counted in `frames_rejected_by_reason`.
        Frames are forwarded before the recording's first tick too: a compressed stream
        needs its key frame, and a camera that sends rarely needs its last picture.
        """
        if self._closing or self.timeline.stopped or self.error is not None:
            return None
        fmt = self._formats.get(participant_id)
        if fmt is None:
            return "no_video_format"
        raw = fmt.encoding == VideoEncoding.I420
        if raw:
            w, h = width or fmt.width, height or fmt.height
            if not (0 < w <= MAX_VIDEO_DIMENSION and 0 < h <= MAX_VIDEO_DIMENSION):
                return self.count_rejected("bad_dimensions")
            if len(data) != i420_size(w, h):
                return self.count_rejected("bad_length")
        self.worker.video(participant_id, data, call_us / 1_000_000, width=width, height=height, raw=raw)
        return None

    # ------------------------------------------------------------------ worker events
    def _from_worker_thread(self, event: VideoWorkerEvent) -> None:
        """The worker's event callback (its reader thread): hand the event to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._on_worker_event, event)

    def _on_worker_event(self, event: VideoWorkerEvent) -> None:
        if isinstance(event, ChunkWritten):
            self._output.chunk_written(event)
        elif isinstance(event, WorkerProgress):
            self._output.progress = event
        elif isinstance(event, FrameRejected):
            if self.frames_rejected_by_reason.get(self.count_rejected(event.reason)) == 1:
                # once per reason: a bad stream repeats
                log.warning("video frame rejected", participant_id=event.participant_id, reason=event.reason,
                            detail=event.message, **self.log_fields)
        elif isinstance(event, WorkerFailed):
            log.error("video worker failed", error=event.message, **self.log_fields)
            self.fail(VideoWorkerError(event.message))
