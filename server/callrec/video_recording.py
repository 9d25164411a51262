"""`VideoRecordingMedia`: one mp4 recording, the video counterpart of `RecordingMedia`.

The `Recorder` drives it like an audio recording (ticks, pause / resume at a call-time
instant, `finish`), and `CallMediaHub` also feeds it participants and their video frames.
The heavy work (decoding, compositing, H.264 and AAC encoding) happens in a `VideoWorker`
process of its own; this class, which lives on the event loop, only decides *what* goes
into which chunk, and *when*:

- Timeline: every 20 ms tick's mixed audio is forwarded with its call time; the worker
  writes it and composites the video frames that the audio timeline then calls for, so
  audio and video cannot drift (see `media/writers/mp4.py`). Pause, resume, stop and
  chunk rotation are applied at sample precision by splitting a tick, exactly as
  `RecordingMedia` does for audio (the same `at` semantics, the same bookkeeping).
- Pause: SKIP tells the worker to drop the span (it still sees the speaking flags, so the
  grid is current on resume); SILENCE makes it write silence and a "Recording paused"
  slate, so the file stays aligned with the call.
- Chunks: rotated at `chunk_max_duration` (exact, counted in samples) or when the
  projected file size reaches `chunk_max_bytes`. The projection is the size the worker
  last reported (once per media second) plus the media sent since at the encoder's
  ceiling rate (VBV `maxrate` + AAC), so a chunk stays under the limit (up to the VBV
  buffer's slack) and ends early rather than late: by about a second's worth on the
  real-time clock, by more on the media clock where the worker lags far behind. The
  worker reports each closed file (`ChunkWritten`); then the metadata JSON is written,
  both files fsynced, and `on_chunk_finished` called on the event loop, in chunk order.
- Failure: a worker that crashes or falls behind reports `WorkerFailed`; `on_error` is
  called at once and `finish()` raises `RecordingMediaError`, so the recording ends FAILED
  with the worker's reason while the server and every other recording carry on.

Test hook: with `CALLREC_TEST_VIDEO_WORKER_CRASH_AFTER_S=<seconds>` in the server's
environment, each mp4 recording SIGKILLs its own worker once that much media has been
written: from the parent's side exactly what an FFmpeg segfault looks like. Integration
tests use it to prove that a crashed worker fails only its recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import os
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.errors import CallrecError, ErrorCode
from callrec.core.metadata import (
    VideoConfiguration,
    chunk_metadata,
    milliseconds,
    new_document_id,
    write_json_atomically,
)
from callrec.core.model import (
    OUTPUT_SAMPLE_RATE,
    ChunkEndReason,
    ParticipantInfo,
    PauseInterval,
    PauseMode,
    RecordingOptions,
    VideoEncoding,
    VideoFormat,
)
from callrec.core.recording_media import FinishedChunk, OnChunkFinished, RecordingMediaError
from callrec.logs import get_logger
from callrec.media.video_decode import MAX_DIMENSION, i420_size
from callrec.media.video_worker import (
    ChunkWritten,
    FrameRejected,
    VideoWorker,
    VideoWorkerError,
    WorkerEvent,
    WorkerFailed,
    WorkerProgress,
)
from callrec.media.writers.mp4 import FPS, SAMPLES_PER_FRAME, Mp4Settings

__all__ = [
    "CONTENT_TYPE",
    "CRASH_AFTER_ENV",
    "VideoRecordingMedia",
    "make_video_sink_factory",
    "video_configuration",
]

log = get_logger("video_recording")

#: Environment variable of the crash test hook (see the module docstring).
CRASH_AFTER_ENV = "CALLREC_TEST_VIDEO_WORKER_CRASH_AFTER_S"
CONTENT_TYPE = "video/mp4"
#: A byte-limited chunk holds at least this much media: an mp4 chunk starts with a key frame
#: and headers, so a tiny `chunk_max_bytes` must not turn into a flood of 20 ms files.
MIN_BYTE_LIMITED_SAMPLES = OUTPUT_SAMPLE_RATE
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _bits_per_second(rate: str | int) -> int:
    """FFmpeg-style rate ("1M", "800k", 1000000) as bits per second."""
    if isinstance(rate, int):
        return rate
    text = rate.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    return round(float(text[:-1] if scale != 1 else text) * scale)


def video_configuration(settings: Mp4Settings) -> VideoConfiguration:
    """The metadata's `videoConfiguration`: what the encoder is set to produce.

    `bitRate` is the VBV ceiling (`maxrate`, ≈1 Mbps as SPEC §2 promises); quiet grids
    use less, which is what ACS's nominal figure means too.
    """
    return VideoConfiguration(
        longer_side_length=max(settings.width, settings.height),
        shorter_side_length=min(settings.width, settings.height),
        frame_rate=FPS,
        bit_rate=_bits_per_second(settings.maxrate),
    )


@dataclass
class _Pause:
    start_time: datetime
    start_pos: int  # call timeline, 16 kHz samples
    end_pos: int | None = None


@dataclass
class _Chunk:
    index: int
    document_id: str
    start_time: datetime
    media_path: Path
    metadata_path: Path
    samples: int = 0
    participants: dict[str, ParticipantInfo] = field(default_factory=dict)
    pauses: list[_Pause] = field(default_factory=list)


@dataclass
class _Closed:
    """A chunk the parent has closed, waiting for the worker's `ChunkWritten`."""

    chunk: _Chunk
    reason: ChunkEndReason
    document: dict[str, Any]
    pause_intervals: tuple[PauseInterval, ...]
    duration_ms: int | float


class _Kind(enum.IntEnum):
    """Control events placed on the tick timeline (their order breaks ties at one instant)."""

    START = 0
    PAUSE = 1
    RESUME = 2
    STOP = 3


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _time_at(tick: MixTick, offset: int) -> datetime:
    return tick.time + timedelta(seconds=offset / OUTPUT_SAMPLE_RATE)


class VideoRecordingMedia:
    """One mp4 recording's sink: ticks, participants and video in; chunk files out.

    All methods run on the event loop and return quickly; the worker process does the
    media work. `finish` is a coroutine (it waits for the worker to drain and close).
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
        start_at: datetime | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        settings: Mp4Settings | None = None,
        max_backlog_s: float = 10.0,
        finish_timeout: float = 120.0,
        idle_timeout: float = 0.5,
        crash_after_s: float | None = None,
    ) -> None:
        self.recording_id = recording_id
        self.call_id = call_id
        self.options = options
        self.spool_dir = spool_dir
        self.resource_id = resource_id
        self.settings = settings or Mp4Settings()
        self.video_config = video_configuration(self.settings)
        self._on_chunk_finished = on_chunk_finished
        self._on_error = on_error
        self._finish_timeout = finish_timeout
        self._idle_timeout = idle_timeout
        self._crash_after = None if crash_after_s is None else round(crash_after_s * OUTPUT_SAMPLE_RATE)
        self._loop = asyncio.get_running_loop()
        self._created_at = self._loop.time()
        self._last_tick_at: float | None = None
        self._finish_called_at = self._created_at
        self._silence_mode = options.pause_mode == PauseMode.SILENCE
        self._max_samples = max(TICK_SAMPLES, int(options.chunk_max_duration.total_seconds() * OUTPUT_SAMPLE_RATE))
        #: Bytes per 16 kHz sample at the encoders' ceiling: what the unreported media can add.
        self._ceiling_bytes_per_sample = (
            (_bits_per_second(self.settings.maxrate) + self.settings.audio_bit_rate) / 8 / OUTPUT_SAMPLE_RATE
        )
        self._progress: WorkerProgress | None = None
        self._stem = _UNSAFE.sub("_", recording_id) or "recording"
        spool_dir.mkdir(parents=True, exist_ok=True)

        self._events: list[tuple[datetime, int, _Kind]] = []
        self._order = itertools.count()
        self._start_at = _aware(start_at) if start_at is not None else None
        if self._start_at is not None:
            self._schedule(self._start_at, _Kind.START)
        self._started = False
        self._paused = options.pause_on_start
        self._requested_paused = options.pause_on_start
        self._stopped = False
        self._closing = False
        self._chunk: _Chunk | None = None
        self._start_time: datetime | None = None
        self._position: int | None = None  # call timeline (16 kHz samples) after the last tick taken
        self._position_time: datetime | None = None
        self._end_pos: int | None = None
        self._pause_log: list[_Pause] = []
        self._participants: dict[str, ParticipantInfo] = {}
        self._formats: dict[str, VideoFormat] = {}
        self._total_samples = 0
        self._awaiting: dict[Path, _Closed] = {}
        self._done: list[FinishedChunk] = []
        self._stop_reached = asyncio.Event()
        self._jobs: asyncio.Queue[_Closed | None] = asyncio.Queue()
        self._job_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._finish_task: asyncio.Task[list[FinishedChunk]] | None = None
        #: Video frames the worker could not decode, by reason (SPEC media_stats wording).
        self.frames_rejected_by_reason: dict[str, int] = {}

        self.worker = VideoWorker(
            self._media_path(0), self.settings, on_event=self._from_worker_thread, max_backlog_s=max_backlog_s
        )
        try:
            self.worker.start()
        except OSError as exc:
            raise CallrecError(f"could not start the video worker: {exc}", ErrorCode.INTERNAL) from exc
        log.info("video worker started", recording_id=recording_id, pid=self.worker.pid)

    # ------------------------------------------------------------------ paths
    def _media_path(self, index: int) -> Path:
        return self.spool_dir / f"{self._stem}-{index}.mp4"

    def _metadata_path(self, index: int) -> Path:
        return self.spool_dir / f"{self._stem}-{index}-metadata.json"

    # ------------------------------------------------------------------ control
    def pause(self, at: datetime) -> None:
        """Pause at `at` on the tick timeline (no-op if already paused then)."""
        self._requested_paused = True
        self._schedule(_aware(at), _Kind.PAUSE)

    def resume(self, at: datetime) -> None:
        """Resume at `at` (no-op if not paused then)."""
        self._requested_paused = False
        self._schedule(_aware(at), _Kind.RESUME)

    def stop(self, at: datetime) -> None:
        """Ignore media after `at`; `finish()` closes the last chunk."""
        self._schedule(_aware(at), _Kind.STOP)

    def _schedule(self, at: datetime, kind: _Kind) -> None:
        self._events.append((at, next(self._order), kind))
        self._events.sort(key=lambda e: (e[0], e[1]))

    # ------------------------------------------------------------------ state
    @property
    def paused(self) -> bool:
        """The state last requested by pause()/resume() (or pause_on_start)."""
        return self._requested_paused

    @property
    def chunks(self) -> list[FinishedChunk]:
        """Chunks finished (media + metadata in the spool) so far."""
        return list(self._done)

    @property
    def participants(self) -> list[ParticipantInfo]:
        """Participants whose media was recorded (present in a written, unpaused tick)."""
        return list(self._participants.values())

    @property
    def pause_intervals(self) -> list[PauseInterval]:
        """Every pause applied so far (an ongoing one without duration)."""
        return [
            PauseInterval(
                p.start_time,
                None
                if p.end_pos is None
                else timedelta(milliseconds=milliseconds(p.end_pos - p.start_pos, OUTPUT_SAMPLE_RATE)),
            )
            for p in self._pause_log
        ]

    @property
    def duration_ms(self) -> int | float:
        """Media written so far (pauses excluded in SKIP mode)."""
        return milliseconds(self._total_samples, OUTPUT_SAMPLE_RATE)

    @property
    def start_time(self) -> datetime | None:
        """When the recording started on the call's timeline (None before its first tick)."""
        return self._start_time

    @property
    def error(self) -> BaseException | None:
        """The failure that ended the recording's media, if any."""
        return self._error

    # ------------------------------------------------------------------ participants and video
    def join(self, participant_id: str, display_name: str, video: VideoFormat | None) -> None:
        """A participant is in the call: the worker makes a decoder (or a name card)."""
        if video is None:
            self._formats.pop(participant_id, None)
        else:
            self._formats[participant_id] = video
        encoding = None if video is None else VideoEncoding(video.encoding)
        self.worker.join(participant_id, display_name or participant_id, encoding,
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
        if self._closing or self._stopped or self._error is not None:
            return None
        fmt = self._formats.get(participant_id)
        if fmt is None:
            return "no_video_format"
        raw = fmt.encoding == VideoEncoding.I420
        if raw:
            w, h = width or fmt.width, height or fmt.height
            if not (0 < w <= MAX_DIMENSION and 0 < h <= MAX_DIMENSION):
                return self._reject("bad_dimensions")
            if len(data) != i420_size(w, h):
                return self._reject("bad_length")
        self.worker.video(participant_id, data, call_us / 1_000_000, width=width, height=height, raw=raw)
        return None

    def _reject(self, reason: str) -> str:
        self.frames_rejected_by_reason[reason] = self.frames_rejected_by_reason.get(reason, 0) + 1
        return reason

    # ------------------------------------------------------------------ ticks
    def on_tick(self, tick: MixTick) -> None:
        """Take one tick (called by `CallMedia` on the event loop)."""
        self._last_tick_at = self._loop.time()
        if self._closing or self._stopped or self._error is not None:
            return
        try:
            self._take(tick)
        except Exception as exc:  # a bug here must fail the recording, not the call's mixer
            log.exception("video recording failed on a tick", recording_id=self.recording_id)
            self._fail(exc)

    def _take(self, tick: MixTick) -> None:
        samples = tick.samples
        if not self._started and self._start_at is None:
            self._begin(tick, 0)
        cursor = 0
        while self._events and self._events[0][0] < tick.end_time:
            at, _, kind = self._events.pop(0)
            offset = min(samples, max(0, round((at - tick.time).total_seconds() * OUTPUT_SAMPLE_RATE)))
            if offset > cursor:
                self._segment(tick, cursor, offset)
                cursor = offset
            self._apply(kind, tick, offset)
            if self._stopped:
                return
        if cursor < samples:
            self._segment(tick, cursor, samples)
        self._position = tick.index * TICK_SAMPLES + samples
        self._position_time = tick.end_time

    def _apply(self, kind: _Kind, tick: MixTick, offset: int) -> None:
        if kind == _Kind.START:
            if not self._started:
                self._begin(tick, offset)
        elif kind in (_Kind.PAUSE, _Kind.RESUME):
            self._set_paused(kind == _Kind.PAUSE, tick, offset)
        else:
            self._stopped = True
            self._end_pos = tick.index * TICK_SAMPLES + offset
            if self._started:
                self._position, self._position_time = self._end_pos, _time_at(tick, offset)
            self._stop_reached.set()

    def _begin(self, tick: MixTick, offset: int) -> None:
        self._started = True
        self._start_time = _time_at(tick, offset)
        position = tick.index * TICK_SAMPLES + offset
        self._position, self._position_time = position, self._start_time
        self._open_chunk(0, self._start_time)
        if self._paused:
            self.worker.pause(self._silence_mode)
            self._open_pause(self._start_time, position)

    def _set_paused(self, paused: bool, tick: MixTick, offset: int) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        if not self._started:
            return
        position = tick.index * TICK_SAMPLES + offset
        if paused:
            self.worker.pause(self._silence_mode)
            self._open_pause(_time_at(tick, offset), position)
        else:
            self.worker.resume()
            self._close_pauses(position)

    def _open_pause(self, start_time: datetime, position: int) -> None:
        assert self._chunk is not None
        self._chunk.pauses.append(_Pause(start_time, position))
        self._pause_log.append(_Pause(start_time, position))

    def _close_pauses(self, position: int, log_too: bool = True) -> None:
        assert self._chunk is not None
        for pause in self._chunk.pauses:
            if pause.end_pos is None:
                pause.end_pos = max(pause.start_pos, position)
        if log_too:
            for pause in self._pause_log:
                if pause.end_pos is None:
                    pause.end_pos = max(pause.start_pos, position)

    def _segment(self, tick: MixTick, start: int, end: int) -> None:
        if not self._started:
            return
        if self._paused and not self._silence_mode:
            # The worker drops it (SKIP); it still learns who speaks, so the grid is
            # current the moment the recording resumes.
            self._send(tick, start, end)
            return
        self._write(tick, start, end, silent=self._paused)

    def _write(self, tick: MixTick, start: int, end: int, *, silent: bool) -> None:
        position = start
        while position < end:
            chunk = self._chunk
            assert chunk is not None
            room = self._room(chunk)
            if room <= 0:
                self._rotate(tick, position)
                continue
            take = min(end - position, room)
            self._send(tick, position, position + take)
            chunk.samples += take
            self._total_samples += take
            if not silent:
                self._note_participants(chunk, tick)
            position += take
        if self._crash_after is not None and self._total_samples >= self._crash_after:
            self._crash_after = None
            pid = self.worker.pid
            log.warning("test hook: killing the video worker", recording_id=self.recording_id, pid=pid,
                        env=CRASH_AFTER_ENV)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _send(self, tick: MixTick, start: int, end: int) -> None:
        t = tick.start_us / 1_000_000 + start / OUTPUT_SAMPLE_RATE
        block = tick.mixed if start == 0 and end == tick.samples else tick.mixed[start:end]
        self.worker.audio(block, t, tick.speaking)

    def _room(self, chunk: _Chunk) -> int:
        """Samples the chunk may still take before it must rotate (≤ 0: rotate now)."""
        room = self._max_samples - chunk.samples
        max_bytes = self.options.chunk_max_bytes
        if max_bytes > 0 and chunk.samples >= MIN_BYTE_LIMITED_SAMPLES:
            rate = self._ceiling_bytes_per_sample
            known_bytes, known = 0, 0
            progress = self._progress
            if progress is not None and progress.path == chunk.media_path:
                known_bytes, known = progress.bytes_written, round(progress.duration_s * OUTPUT_SAMPLE_RATE)
            projected = known_bytes + max(0, chunk.samples - known) * rate
            # End on a video frame boundary: the chunk's last frame then lasts as long as its audio.
            end = (chunk.samples + int((max_bytes - projected) / rate)) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME
            room = min(room, end - chunk.samples)
        return room

    def _note_participants(self, chunk: _Chunk, tick: MixTick) -> None:
        for participant_id in tick.participants:
            if participant_id in chunk.participants:
                continue
            info = ParticipantInfo(participant_id, tick.names.get(participant_id, ""), -1)
            chunk.participants[participant_id] = info
            self._participants.setdefault(participant_id, info)

    # ------------------------------------------------------------------ chunks
    def _open_chunk(self, index: int, start_time: datetime) -> None:
        self._chunk = _Chunk(
            index=index,
            document_id=new_document_id(),
            start_time=start_time,
            media_path=self._media_path(index),
            metadata_path=self._metadata_path(index),
        )

    def _rotate(self, tick: MixTick, offset: int) -> None:
        old = self._chunk
        assert old is not None
        position = tick.index * TICK_SAMPLES + offset
        moment = _time_at(tick, offset)
        self._close_pauses(position, log_too=False)
        self._close_chunk(old, ChunkEndReason.CHUNK_MAXIMUM_SIZE_EXCEEDED)
        self._open_chunk(old.index + 1, moment)
        assert self._chunk is not None
        self.worker.rotate(self._chunk.media_path)
        if self._paused:  # SILENCE mode: the pause goes on in the new chunk
            self._chunk.pauses.append(_Pause(moment, position))

    def _close_chunk(self, chunk: _Chunk, reason: ChunkEndReason) -> None:
        """Fix the chunk's metadata now; it is written once the worker has closed the file."""
        participants = list(chunk.participants.values())
        pauses = [
            (p.start_time, milliseconds((p.end_pos or p.start_pos) - p.start_pos, OUTPUT_SAMPLE_RATE))
            for p in chunk.pauses
        ]
        duration = milliseconds(chunk.samples, OUTPUT_SAMPLE_RATE)
        document = chunk_metadata(
            resource_id=self.resource_id,
            call_id=self.call_id,
            document_id=chunk.document_id,
            index=chunk.index,
            start_time=chunk.start_time,
            duration_ms=duration,
            pauses=pauses,
            content_type=self.options.content_type,
            channel_type=self.options.channel_type,
            format=self.options.format,
            sample_rate=OUTPUT_SAMPLE_RATE,
            bit_rate=self.settings.audio_bit_rate,
            channels=1,
            participants=participants,
            video=self.video_config,
        )
        intervals = tuple(PauseInterval(start, timedelta(milliseconds=ms)) for start, ms in pauses)
        self._awaiting[chunk.media_path] = _Closed(chunk, reason, document, intervals, duration)

    # ------------------------------------------------------------------ worker events
    def _from_worker_thread(self, event: WorkerEvent) -> None:
        """`VideoWorker.on_event` (its reader thread): hand the event to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(self._on_worker_event, event)

    def _on_worker_event(self, event: WorkerEvent) -> None:
        if isinstance(event, ChunkWritten):
            self._chunk_written(event)
        elif isinstance(event, WorkerProgress):
            self._progress = event
        elif isinstance(event, FrameRejected):
            reason = self._reject(event.reason)
            if self.frames_rejected_by_reason[reason] == 1:  # once per reason: a bad stream repeats
                log.warning("video frame rejected", recording_id=self.recording_id,
                            participant_id=event.participant_id, reason=event.reason, detail=event.message)
        elif isinstance(event, WorkerFailed):
            log.error("video worker failed", recording_id=self.recording_id, error=event.message)
            self._fail(VideoWorkerError(event.message))

    def _chunk_written(self, event: ChunkWritten) -> None:
        closed = self._awaiting.pop(event.path, None)
        if closed is None:
            return
        expected = closed.chunk.samples / OUTPUT_SAMPLE_RATE
        if abs(event.duration_s - expected) > 1e-6:
            log.warning("video chunk length differs from what was sent", recording_id=self.recording_id,
                        index=closed.chunk.index, written_s=event.duration_s, sent_s=expected)
        if self._job_task is None:
            self._job_task = self._loop.create_task(self._complete_chunks())
        self._jobs.put_nowait(closed)

    async def _complete_chunks(self) -> None:
        """Write each closed chunk's metadata (in a thread) and announce it, in order."""
        while (closed := await self._jobs.get()) is not None:
            if self._error is not None:
                continue
            try:
                finished = await self._loop.run_in_executor(None, self._write_metadata, closed)
            except Exception as exc:
                log.exception("writing chunk metadata failed", recording_id=self.recording_id)
                self._fail(exc)
                continue
            self._done.append(finished)
            try:
                result = self._on_chunk_finished(finished)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_chunk_finished failed", recording_id=self.recording_id, index=finished.index)

    @staticmethod
    def _write_metadata(closed: _Closed) -> FinishedChunk:
        chunk = closed.chunk
        with open(chunk.media_path, "rb") as media:  # the worker closed it; make it durable
            os.fsync(media.fileno())
        write_json_atomically(chunk.metadata_path, closed.document)
        return FinishedChunk(
            index=chunk.index,
            end_reason=closed.reason,
            media_path=chunk.media_path,
            metadata_path=chunk.metadata_path,
            document_id=chunk.document_id,
            start_time=chunk.start_time,
            duration_ms=round(closed.duration_ms),
            participants=tuple(chunk.participants.values()),
            content_type=CONTENT_TYPE,
            samples=chunk.samples,
            channels=1,
            size_bytes=chunk.media_path.stat().st_size,
            pause_intervals=closed.pause_intervals,
        )

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            if self._on_error is not None:
                self._on_error(exc)

    # ------------------------------------------------------------------ finish
    async def finish(self, at: datetime | None = None, timeout: float = 2.0) -> list[FinishedChunk]:
        """Stop (at `at`, else after the last tick taken), close the last chunk, wait for all files.

        With `at`, waits up to `timeout` seconds for the ticks that reach `at` (or until
        ticks stopped coming for `idle_timeout`). Then waits for the worker to encode what
        it was sent and close the file. Idempotent. Returns every chunk; raises
        `RecordingMediaError` if the worker or the metadata failed.
        """
        if self._finish_task is None:
            self._finish_task = asyncio.ensure_future(self._finish(at, timeout))
        return list(await asyncio.shield(self._finish_task))

    async def _finish(self, at: datetime | None, timeout: float) -> list[FinishedChunk]:
        self._finish_called_at = self._loop.time()
        if at is not None and not self._stopped:
            at = _aware(at)
            self.stop(at)
            if self._position_time is not None and self._position_time > at:
                log.warning("stop time already passed: stopping after the media taken",
                            recording_id=self.recording_id)
            elif self._position_time is None or self._position_time < at:
                await self._wait_for_stop(timeout)
        self._closing = True
        if not self._started:
            moment = at if at is not None else self._start_at or datetime.now(UTC)
            self._started = True
            self._start_time = moment
            self._position, self._position_time = self._position or 0, moment
            self._open_chunk(0, moment)
            if self._paused:
                self._open_pause(moment, self._position)
        chunk = self._chunk
        assert chunk is not None
        end = self._end_pos if self._end_pos is not None else self._position
        assert end is not None
        if chunk.samples == 0 and self._error is None:
            # Every chunk gets a playable file: an empty recording holds one tick (one video
            # frame), the "paused" slate if it never left its pause.
            if self._paused:
                self.worker.pause(True)
            else:
                self.worker.resume()
            self.worker.audio(np.zeros(TICK_SAMPLES, np.int16), end / OUTPUT_SAMPLE_RATE, {})
            chunk.samples = TICK_SAMPLES
            self._total_samples += TICK_SAMPLES
        self._close_pauses(end)
        self._close_chunk(chunk, ChunkEndReason.SESSION_ENDED)
        try:
            written = await self._loop.run_in_executor(None, self.worker.finish, self._finish_timeout)
        except VideoWorkerError as exc:
            self._fail(exc)
            written = []
        for event in written:  # normally already delivered by the reader thread
            self._chunk_written(event)
        if self._job_task is None:
            self._job_task = self._loop.create_task(self._complete_chunks())
        self._jobs.put_nowait(None)
        await self._job_task
        log.info("video recording finished", recording_id=self.recording_id, chunks=len(self._done),
                 frames_dropped=self.worker.video_frames_dropped, rejected=self.frames_rejected_by_reason,
                 error=str(self._error) if self._error else None)
        if self._error is not None:
            raise RecordingMediaError(f"recording {self.recording_id}: {self._error}") from self._error
        return list(self._done)

    async def _wait_for_stop(self, timeout: float) -> None:
        """Wait for the ticks that reach the stop time, unless they stopped coming."""
        deadline = self._loop.time() + timeout
        while not self._stop_reached.is_set():
            now = self._loop.time()
            last = self._last_tick_at if self._last_tick_at is not None else self._created_at
            if now >= deadline or now - max(last, self._finish_called_at) >= self._idle_timeout:
                log.warning("stopping before the media reached the stop time", recording_id=self.recording_id)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_reached.wait(), min(0.05, deadline - now))


def make_video_sink_factory(
    clock: str = "realtime",
    settings: Mp4Settings | None = None,
    environ: Mapping[str, str] | None = None,
) -> Callable[..., VideoRecordingMedia]:
    """The `Recorder`'s `video_sink_factory` for a server running on `clock`.

    On the real-time clock a worker more than 10 s behind is failed (the machine is
    overloaded and memory must not grow). The media clock delivers media as fast as the
    gateway sends it, so the worker is legitimately minutes "behind": allow 10 minutes of
    queued audio there (about 10 MB), with raw video thinned and capped by the worker.
    """
    env = os.environ if environ is None else environ
    raw = env.get(CRASH_AFTER_ENV, "")
    try:
        crash_after = float(raw) if raw else None
    except ValueError:
        raise ValueError(f"{CRASH_AFTER_ENV} must be a number of seconds, got {raw!r}") from None
    if crash_after is not None:
        log.warning("test hook active: every mp4 recording's video worker will be killed", env=CRASH_AFTER_ENV,
                    after_s=crash_after)
    max_backlog_s = 600.0 if clock == "media" else 10.0
    finish_timeout = 600.0 if clock == "media" else 120.0

    def factory(
        recording_id: str,
        call_id: str,
        options: RecordingOptions,
        spool_dir: Path,
        resource_id: str,
        on_chunk_finished: OnChunkFinished,
        *,
        start_at: datetime | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> VideoRecordingMedia:
        return VideoRecordingMedia(
            recording_id, call_id, options, spool_dir, resource_id, on_chunk_finished,
            start_at=start_at, on_error=on_error, settings=settings, max_backlog_s=max_backlog_s,
            finish_timeout=finish_timeout, crash_after_s=crash_after,
        )

    return factory
