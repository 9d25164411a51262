"""`RecordingMedia`: one recording's audio output, a sink of its call's `MixTick`s.

It turns ticks into chunk files in the spool: pause / resume / stop at sample precision
(`at` datetimes are mapped onto the ticks' timeline, so a command issued now applies to
the media captured now, which the real-time clock delivers a playout delay later),
chunk rotation by duration or size without losing or repeating a sample, unmixed
channel assignment, and a metadata JSON per chunk (`core.metadata`).

Threading: `on_tick` runs on the event loop and only slices arrays (3 µs mixed, ~20 µs
unmixed with 5 channels). Media is batched (1 s by default) and every writer call (file
I/O, mp3 encoding, unmixed assembly, metadata) runs in an executor thread, one job at a
time per recording, in order, through a worker task. A crash therefore loses at most
the batch in flight. The job queue is bounded (`max_pending_jobs`, ~5 min of media):
a writer that cannot keep up fails the recording instead of growing memory.

`on_chunk_finished(chunk)` is called on the event loop, from that worker task, once the
chunk's media and metadata files are complete and fsynced; it may be a plain function or
a coroutine function (it is awaited; later chunks wait for it, so it should only enqueue
the upload). Chunks are reported in index order; the last has endReason SessionEnded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.metadata import chunk_metadata, milliseconds, new_document_id, write_json_atomically
from callrec.core.mixer import float_to_int16, soft_limit
from callrec.core.model import (
    OUTPUT_SAMPLE_RATE,
    ChannelPin,
    ChannelType,
    ChunkEndReason,
    ParticipantInfo,
    PauseInterval,
    PauseMode,
    RecordingOptions,
)

__all__ = [
    "AudioWriter",
    "AudioWriterFactory",
    "ChannelAssigner",
    "FinishedChunk",
    "OnChunkFinished",
    "RecordingMedia",
    "RecordingMediaError",
]

log = logging.getLogger(__name__)


class AudioWriter(Protocol):
    """Writes one chunk's media file (implementations in `callrec.media.writers`)."""

    @property
    def bytes_written(self) -> int:
        """Bytes of the file so far."""
        ...

    def write(self, samples: np.ndarray) -> None:
        """Append int16 samples: shape (n,) for mono, (n, channels) for unmixed (channels may grow)."""
        ...

    def close(self) -> Path:
        """Finish and fsync the file; returns its path."""
        ...


class AudioWriterFactory(Protocol):
    """Opens writers of one format and answers the questions rotation and metadata ask."""

    content_type: str  # MIME type, e.g. "audio/wav"
    extension: str  # file extension without dot

    def open(self, path: Path) -> AudioWriter:
        """A writer for a new chunk file (called in a worker thread)."""
        ...

    def bit_rate(self, channels: int) -> int:
        """`audioConfiguration.bitRate` of a chunk with `channels` channels."""
        ...

    def projected_bytes(self, samples: int, channels: int) -> int:
        """File size (upper bound) once `samples` frames are written and the file closed."""
        ...


@dataclass(frozen=True)
class FinishedChunk:
    """A complete chunk in the spool: media file plus metadata JSON."""

    index: int
    end_reason: ChunkEndReason
    media_path: Path
    metadata_path: Path
    document_id: str
    start_time: datetime
    duration_ms: int  # rounded; `samples` is exact
    participants: tuple[ParticipantInfo, ...]
    content_type: str
    samples: int
    channels: int
    size_bytes: int
    pause_intervals: tuple[PauseInterval, ...]


OnChunkFinished = Callable[[FinishedChunk], Awaitable[None] | None]


class RecordingMediaError(RuntimeError):
    """Writing the recording's media failed (e.g. disk full); the recording should fail."""


class ChannelAssigner:
    """Unmixed channels: pins first, then the next free channel at a participant's first speech.

    `channel_affinity` pins win; `audio_channel_participant_ordering` takes the lowest
    channels not pinned, in order. A pinned participant gets its channel as soon as it is
    present; others when the mixer first flags them speaking. When every channel is
    taken, newcomers share the last channel (mixed into it, listed with it): nobody is
    dropped. Assignments hold for the whole recording.
    """

    def __init__(self, max_channels: int, ordering: Sequence[str] = (), pins: Sequence[ChannelPin] = ()):
        self.max_channels = max(1, min(32, max_channels))
        last = self.max_channels - 1
        self._reserved: dict[str, int] = {}
        for pin in pins:
            self._reserved[pin.participant_id] = pin.channel if 0 <= pin.channel <= last else last
        taken = set(self._reserved.values())
        free = (c for c in range(self.max_channels) if c not in taken)
        for participant_id in ordering:
            if participant_id not in self._reserved:
                self._reserved[participant_id] = next(free, last)
        self._assigned: dict[str, int] = {}

    def channel_of(self, participant_id: str) -> int | None:
        """The participant's channel, or None while it has none."""
        return self._assigned.get(participant_id)

    @property
    def assignments(self) -> Mapping[str, int]:
        """participant_id -> channel, in assignment order."""
        return self._assigned

    def observe(self, present: Iterable[str], speaking: Mapping[str, bool]) -> None:
        """Assign channels to participants present in a recorded tick (join order breaks ties)."""
        for participant_id in present:
            if participant_id in self._assigned:
                continue
            pinned = self._reserved.get(participant_id)
            if pinned is not None:
                self._assigned[participant_id] = pinned
            elif speaking.get(participant_id):
                self._assigned[participant_id] = self._next_free()

    def _next_free(self) -> int:
        used = set(self._assigned.values()) | set(self._reserved.values())
        for channel in range(self.max_channels):
            if channel not in used:
                return channel
        return self.max_channels - 1


class _Kind(enum.IntEnum):
    START = 0
    PAUSE = 1
    RESUME = 2
    STOP = 3


@dataclass
class _Slot:
    """Holds a chunk's writer; only worker jobs touch it."""

    writer: AudioWriter | None = None


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
    slot: _Slot
    samples: int = 0
    channels: int = 0  # unmixed: width so far; mixed: 1
    participants: dict[str, ParticipantInfo] = field(default_factory=dict)
    pauses: list[_Pause] = field(default_factory=list)
    pending: list[np.ndarray] = field(default_factory=list)
    pending_samples: int = 0


@dataclass
class _Job:
    run: Callable[[], Any]
    then: Callable[[Any], Awaitable[None] | None] | None = None


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _time_at(tick: MixTick, offset: int) -> datetime:
    return tick.time + timedelta(seconds=offset / OUTPUT_SAMPLE_RATE)


class RecordingMedia:
    """Writes one recording's chunks from its call's ticks (see the module docstring)."""

    def __init__(
        self,
        recording_id: str,
        call_id: str,
        options: RecordingOptions,
        spool_dir: Path,
        resource_id: str,
        writer_factory: AudioWriterFactory,
        on_chunk_finished: OnChunkFinished,
        *,
        start_at: datetime | None = None,
        executor: Executor | None = None,
        batch_ms: int = 1000,
        on_error: Callable[[BaseException], None] | None = None,
        max_pending_jobs: int = 300,
        idle_timeout: float = 0.5,
    ) -> None:
        self.recording_id = recording_id
        self.call_id = call_id
        self.options = options
        self.spool_dir = spool_dir
        self.resource_id = resource_id
        self.writer_factory = writer_factory
        self._on_chunk_finished = on_chunk_finished
        self._on_error = on_error
        self._executor = executor
        self._max_pending_jobs = max_pending_jobs
        self._idle_timeout = idle_timeout
        self._created_at = time.monotonic()
        self._last_tick_at: float | None = None
        self._finish_called_at = self._created_at
        self._batch_samples = max(TICK_SAMPLES, OUTPUT_SAMPLE_RATE * batch_ms // 1000)
        self._unmixed = options.channel_type == ChannelType.UNMIXED
        self._assigner = ChannelAssigner(
            options.unmixed_max_channels, options.audio_channel_participant_ordering, options.channel_affinity
        )
        self._max_samples = max(TICK_SAMPLES, int(options.chunk_max_duration.total_seconds() * OUTPUT_SAMPLE_RATE))
        self._limits: dict[int, int] = {}
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
        self._end_time: datetime | None = None
        self._pause_log: list[_Pause] = []
        self._participants: dict[str, ParticipantInfo] = {}
        self._total_samples = 0
        self._done: list[FinishedChunk] = []
        self._stop_reached = asyncio.Event()
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._finish_task: asyncio.Task[list[FinishedChunk]] | None = None

    # ------------------------------------------------------------------ commands
    def pause(self, at: datetime) -> None:
        """Pause at `at` (no-op if already paused then). SKIP cuts the span, SILENCE keeps silence."""
        self._requested_paused = True
        self._schedule(_aware(at), _Kind.PAUSE)

    def resume(self, at: datetime) -> None:
        """Resume at `at` (no-op if not paused then)."""
        self._requested_paused = False
        self._schedule(_aware(at), _Kind.RESUME)

    def stop(self, at: datetime) -> None:
        """Schedule the end of the recording at `at`: media after it is ignored. `finish()` closes.

        Schedule it before the ticks pass `at` (with the real-time clock any `at` >= now
        is in time); media already taken cannot be cut.
        """
        self._schedule(_aware(at), _Kind.STOP)

    def _schedule(self, at: datetime, kind: _Kind) -> None:
        self._events.append((at, next(self._order), kind))
        self._events.sort(key=lambda e: (e[0], e[1]))

    @property
    def paused(self) -> bool:
        """The state last requested by pause()/resume() (or pause_on_start)."""
        return self._requested_paused

    @property
    def chunks(self) -> list[FinishedChunk]:
        """Chunks finished so far."""
        return list(self._done)

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
    def participants(self) -> list[ParticipantInfo]:
        """Participants captured so far, with their channel when unmixed."""
        return list(self._participants.values())

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
        """The failure that stopped the writer, if any."""
        return self._error

    # ------------------------------------------------------------------ ticks
    @property
    def pending_jobs(self) -> int:
        """Writer jobs queued behind the executor (about one per second of media): a lag metric."""
        return self._jobs.qsize()

    def on_tick(self, tick: MixTick) -> None:
        """Take one tick (called by `CallMedia` on the event loop)."""
        self._last_tick_at = time.monotonic()
        if self._closing or self._stopped or self._error is not None:
            return
        try:
            self._take(tick)
        except Exception as exc:  # a bug here must fail the recording, not the call's mixer
            log.exception("recording media failed on a tick", extra={"recording_id": self.recording_id})
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            if self._on_error is not None:
                self._on_error(exc)

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
            self._end_time = _time_at(tick, offset)
            if self._started:
                self._position, self._position_time = self._end_pos, self._end_time
            self._stop_reached.set()

    def _begin(self, tick: MixTick, offset: int) -> None:
        self._started = True
        self._start_time = _time_at(tick, offset)
        position = tick.index * TICK_SAMPLES + offset
        self._position, self._position_time = position, self._start_time
        self._open_chunk(0, self._start_time)
        if self._paused:
            self._open_pause(self._start_time, position)

    def _set_paused(self, paused: bool, tick: MixTick, offset: int) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        if not self._started:
            return
        position = tick.index * TICK_SAMPLES + offset
        if paused:
            self._open_pause(_time_at(tick, offset), position)
        else:
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
        if self._paused:
            if self.options.pause_mode == PauseMode.SILENCE:
                self._write(tick, start, end, silent=True)
            return
        if self._unmixed:
            self._assigner.observe(tick.participants, tick.speaking)
        self._write(tick, start, end, silent=False)

    # ------------------------------------------------------------------ chunks
    def _write(self, tick: MixTick, start: int, end: int, *, silent: bool) -> None:
        position = start
        while position < end:
            chunk = self._chunk
            assert chunk is not None
            channels = self._width(chunk, tick, silent)
            limit = self._limit(channels)
            if chunk.samples >= limit:
                self._rotate(tick, position)
                continue
            take = min(end - position, limit - chunk.samples)
            chunk.pending.append(self._block(tick, position, position + take, silent, channels))
            chunk.pending_samples += take
            chunk.samples += take
            chunk.channels = channels
            self._total_samples += take
            if not silent:
                self._note_participants(chunk, tick)
            if chunk.pending_samples >= self._batch_samples:
                self._flush(chunk)
            position += take

    def _width(self, chunk: _Chunk, tick: MixTick, silent: bool) -> int:
        if not self._unmixed:
            return 1
        if silent:
            return chunk.channels
        needed = 0
        for participant_id in tick.participants:
            channel = self._assigner.channel_of(participant_id)
            if channel is not None:
                needed = max(needed, channel + 1)
        return max(chunk.channels, needed)

    def _limit(self, channels: int) -> int:
        limit = self._limits.get(channels)
        if limit is None:
            limit = self._max_samples
            max_bytes = self.options.chunk_max_bytes
            if max_bytes > 0:
                lo, hi = 0, limit
                while lo < hi:  # largest n with projected_bytes(n) <= max_bytes
                    mid = (lo + hi + 1) // 2
                    if self.writer_factory.projected_bytes(mid, channels) <= max_bytes:
                        lo = mid
                    else:
                        hi = mid - 1
                limit = lo
            limit = max(limit, TICK_SAMPLES)  # never an empty chunk, even with an absurd byte limit
            self._limits[channels] = limit
        return limit

    def _block(self, tick: MixTick, start: int, end: int, silent: bool, channels: int) -> np.ndarray:
        n = end - start
        if not self._unmixed:
            return np.zeros(n, dtype=np.int16) if silent else tick.mixed[start:end]
        out = np.zeros((n, channels), dtype=np.int16)
        if silent:
            return out
        by_channel: dict[int, list[np.ndarray]] = {}
        for participant_id, block in tick.participants.items():
            channel = self._assigner.channel_of(participant_id)
            if channel is not None:
                by_channel.setdefault(channel, []).append(block[start:end])
        for channel, blocks in by_channel.items():
            if len(blocks) == 1:
                out[:, channel] = blocks[0]
            else:  # overflow participants share the last channel, mixed with the limiter
                total = np.sum([b.astype(np.float32) for b in blocks], axis=0) / np.float32(32768.0)
                out[:, channel] = float_to_int16(soft_limit(total))
        return out

    def _note_participants(self, chunk: _Chunk, tick: MixTick) -> None:
        for participant_id in tick.participants:
            if participant_id in chunk.participants:
                continue
            if self._unmixed:
                channel = self._assigner.channel_of(participant_id)
                if channel is None:
                    continue
            else:
                channel = -1
            info = ParticipantInfo(participant_id, tick.names.get(participant_id, ""), channel)
            chunk.participants[participant_id] = info
            self._participants.setdefault(participant_id, info)

    def _open_chunk(self, index: int, start_time: datetime) -> None:
        stem = f"{self._stem}-{index}"
        chunk = _Chunk(
            index=index,
            document_id=new_document_id(),
            start_time=start_time,
            media_path=self.spool_dir / f"{stem}.{self.writer_factory.extension}",
            metadata_path=self.spool_dir / f"{stem}-metadata.json",
            slot=_Slot(),
            channels=0 if self._unmixed else 1,
        )
        self._chunk = chunk
        factory, slot, path = self.writer_factory, chunk.slot, chunk.media_path

        def open_writer() -> None:
            slot.writer = factory.open(path)

        self._submit(_Job(open_writer))

    def _rotate(self, tick: MixTick, offset: int) -> None:
        old = self._chunk
        assert old is not None
        position = tick.index * TICK_SAMPLES + offset
        moment = _time_at(tick, offset)
        self._close_pauses(position, log_too=False)
        self._close_chunk(old, ChunkEndReason.CHUNK_MAXIMUM_SIZE_EXCEEDED)
        self._open_chunk(old.index + 1, moment)
        if self._paused:  # SILENCE mode: the pause goes on in the new chunk
            assert self._chunk is not None
            self._chunk.pauses.append(_Pause(moment, position))

    def _flush(self, chunk: _Chunk) -> None:
        if not chunk.pending:
            return
        pieces, slot = chunk.pending, chunk.slot
        chunk.pending, chunk.pending_samples = [], 0
        self._submit(_Job(lambda: _write_pieces(slot, pieces)))

    def _close_chunk(self, chunk: _Chunk, reason: ChunkEndReason) -> None:
        self._flush(chunk)
        channels = 1 if not self._unmixed else max(1, chunk.channels)
        participants = list(chunk.participants.values())
        if self._unmixed:
            participants.sort(key=lambda p: p.channel)
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
            bit_rate=self.writer_factory.bit_rate(channels),
            channels=channels,
            participants=participants,
        )
        pause_intervals = tuple(PauseInterval(start, timedelta(milliseconds=ms)) for start, ms in pauses)
        slot, content_type = chunk.slot, self.writer_factory.content_type

        def close() -> FinishedChunk:
            assert slot.writer is not None
            path = slot.writer.close()
            write_json_atomically(chunk.metadata_path, document)
            return FinishedChunk(
                index=chunk.index,
                end_reason=reason,
                media_path=path,
                metadata_path=chunk.metadata_path,
                document_id=chunk.document_id,
                start_time=chunk.start_time,
                duration_ms=round(duration),
                participants=tuple(participants),
                content_type=content_type,
                samples=chunk.samples,
                channels=channels,
                size_bytes=path.stat().st_size,
                pause_intervals=pause_intervals,
            )

        self._submit(_Job(close, self._chunk_done))

    async def _chunk_done(self, finished: FinishedChunk) -> None:
        self._done.append(finished)
        try:
            result = self._on_chunk_finished(finished)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception(
                "on_chunk_finished failed",
                extra={"recording_id": self.recording_id, "chunk_index": finished.index},
            )

    # ------------------------------------------------------------------ worker
    def _submit(self, job: _Job) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        if self._jobs.qsize() >= self._max_pending_jobs and self._error is None:
            # Minutes of media waiting for the disk or the encoder: fail loudly, do not grow.
            self._fail(RecordingMediaError(f"writer is {self._jobs.qsize()} jobs behind; giving up"))
        self._jobs.put_nowait(job)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._jobs.get()
            if job is None:
                return
            if self._error is not None:
                continue
            try:
                result = await loop.run_in_executor(self._executor, job.run)
            except Exception as exc:
                log.exception("recording media writer failed", extra={"recording_id": self.recording_id})
                self._fail(exc)
                continue
            if job.then is not None:
                outcome = job.then(result)
                if inspect.isawaitable(outcome):
                    await outcome

    # ------------------------------------------------------------------ finish
    async def finish(self, at: datetime | None = None, timeout: float = 2.0) -> list[FinishedChunk]:
        """Stop (at `at`, else after the last tick taken), close the last chunk, wait for all files.

        With `at`, waits up to `timeout` seconds for the ticks that reach `at` (the
        real-time clock delivers media a playout delay late), or until no tick came for
        `idle_timeout` (a media clock without media). Idempotent. Returns every chunk;
        raises `RecordingMediaError` if writing failed.
        """
        if self._finish_task is None:
            self._finish_task = asyncio.ensure_future(self._finish(at, timeout))
        return list(await asyncio.shield(self._finish_task))

    async def _finish(self, at: datetime | None, timeout: float) -> list[FinishedChunk]:
        self._finish_called_at = time.monotonic()
        if at is not None and not self._stopped:
            at = _aware(at)
            self.stop(at)
            if self._position_time is not None and self._position_time > at:
                log.warning(
                    "stop time already passed: stopping after the media taken",
                    extra={"recording_id": self.recording_id},
                )
            elif self._position_time is None or self._position_time < at:
                await self._wait_for_stop(timeout)
        self._closing = True
        if not self._started:
            moment = _aware(at) if at is not None else self._start_at or datetime.now(UTC)
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
        if chunk.samples == 0:
            # Every chunk gets a decodable file: an empty recording holds one tick of silence.
            channels = chunk.channels
            shape = (TICK_SAMPLES, channels) if self._unmixed else (TICK_SAMPLES,)
            chunk.pending.append(np.zeros(shape, dtype=np.int16))
            chunk.samples = chunk.pending_samples = TICK_SAMPLES
            self._total_samples += TICK_SAMPLES
        self._close_pauses(end)
        self._close_chunk(chunk, ChunkEndReason.SESSION_ENDED)
        self._submit_sentinel()
        assert self._worker is not None
        await self._worker
        if self._error is not None:
            raise RecordingMediaError(f"recording {self.recording_id}: {self._error}") from self._error
        return list(self._done)

    async def _wait_for_stop(self, timeout: float) -> None:
        """Wait for the ticks that reach the stop time, unless they stopped coming.

        The real-time clock delivers a tick every 20 ms (the stop time is reached a playout
        delay later); a media clock with no media delivers none, so waiting the whole
        timeout would only delay StopRecording.
        """
        deadline = time.monotonic() + timeout
        while not self._stop_reached.is_set():
            now = time.monotonic()
            last = self._last_tick_at if self._last_tick_at is not None else self._created_at
            if now >= deadline or now - max(last, self._finish_called_at) >= self._idle_timeout:
                log.warning(
                    "stopping before the media reached the stop time",
                    extra={"recording_id": self.recording_id},
                )
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_reached.wait(), min(0.05, deadline - now))

    def _submit_sentinel(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())
        self._jobs.put_nowait(None)


def _write_pieces(slot: _Slot, pieces: list[np.ndarray]) -> None:
    """Write a batch; unmixed pieces of equal width are concatenated into one write."""
    writer = slot.writer
    assert writer is not None
    run: list[np.ndarray] = []
    for piece in pieces:
        if run and piece.shape[1:] != run[0].shape[1:]:
            writer.write(np.concatenate(run))
            run = []
        run.append(piece)
    if run:
        writer.write(np.concatenate(run) if len(run) > 1 else run[0])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
