"""`AudioRecording`: one recording's audio (wav, mp3, unmixed wav) from its call's ticks.

The timeline, chunking, metadata and the stop wait are the shared `RecordingEngine`'s;
what is audio's own is here: the writer jobs (`AudioWriterFactory`, implemented in
`callrec.media.writers`), batching, the unmixed channel assignment, and the size
estimate that rotation by `chunk_max_bytes` asks for.

Threading: `on_tick` runs on the event loop and only slices arrays (3 µs mixed, ~20 µs
unmixed with 5 channels). Media is batched (0.1 s by default: a job per 5 ticks, and a
crash loses at most the batch in flight) and every writer call (file I/O, mp3 encoding,
unmixed assembly, metadata) runs in an executor thread, one job at a time per recording,
in order. The job queue is bounded (`max_pending_jobs`, ~5 min of media): a writer that
cannot keep up fails the recording instead of growing memory.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.chunker import ChunkOutput, ClosedChunk, OnChunkFinished, OpenChunk, SerialJobs
from callrec.core.metadata import VideoConfiguration
from callrec.core.mixer import DEFAULT_KNEE, float_to_int16, soft_limit
from callrec.core.model import OUTPUT_SAMPLE_RATE, ChannelPin, ChannelType, RecordingOptions
from callrec.core.ports import AudioWriter, AudioWriterFactory, AudioWriterHost, TimeSource
from callrec.core.recording_engine import RecordingEngine
from callrec.core.zeros import zeros

__all__ = ["AudioRecording", "ChannelAssigner", "write_pieces"]


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


@dataclass
class _Slot:
    """Holds a chunk's writer; only jobs (in the executor) touch it."""

    writer: AudioWriter | None = None


class _AudioOutput:
    """`ChunkOutput` of an audio recording: batches blocks into writer jobs."""

    video: VideoConfiguration | None = None

    def __init__(self, factory: AudioWriterFactory, jobs: SerialJobs, assigner: ChannelAssigner | None,
                 batch_samples: int) -> None:
        self.extension = factory.extension
        self.content_type = factory.content_type
        self._factory = factory
        self._jobs = jobs
        self._assigner = assigner  # None: mixed
        self._batch_samples = batch_samples
        self._slot = _Slot()
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._caps: dict[int, int] = {}

    def open(self, chunk: OpenChunk) -> None:
        slot, factory, path = _Slot(), self._factory, chunk.media_path
        self._slot = slot

        def open_writer() -> None:
            slot.writer = factory.open(path)

        self._jobs.submit(open_writer)

    def journal(self, path: Path, journal: dict[str, Any], previous: Path | None) -> bool:
        """Writer threads: the chunker queues it as a job, behind this recording's writes (`SerialJobs`)."""
        return False

    def set_paused(self, paused: bool) -> None:
        return None

    def width(self, tick: MixTick, chunk: OpenChunk, silent: bool) -> int:
        assigner = self._assigner
        if assigner is None:
            return 1
        if silent:
            return chunk.channels
        assigner.observe(tick.participants, tick.speaking)
        needed = 0
        for participant_id in tick.participants:
            channel = assigner.channel_of(participant_id)
            if channel is not None:
                needed = max(needed, channel + 1)
        return max(chunk.channels, needed)

    def cap(self, chunk: OpenChunk, channels: int, max_bytes: int, limit: int) -> int:
        cap = self._caps.get(channels)
        if cap is None:
            lo, hi = 0, limit
            while lo < hi:  # largest n with projected_bytes(n) <= max_bytes
                mid = (lo + hi + 1) // 2
                if self._factory.projected_bytes(mid, channels) <= max_bytes:
                    lo = mid
                else:
                    hi = mid - 1
            cap = max(lo, TICK_SAMPLES)  # never an empty chunk, even with an absurd byte limit
            self._caps[channels] = cap
        return cap

    def write(self, tick: MixTick, start: int, end: int, chunk: OpenChunk, channels: int, silent: bool) -> None:
        self._pending.append(self._block(tick, start, end, silent, channels))
        self._pending_samples += end - start
        if self._pending_samples >= self._batch_samples:
            self._flush()

    def skip(self, tick: MixTick, start: int, end: int) -> None:
        return None

    def pad(self, chunk: OpenChunk, paused: bool, position: int) -> None:
        shape = (TICK_SAMPLES, chunk.channels) if self._assigner is not None else (TICK_SAMPLES,)
        self._pending.append(zeros(shape, np.int16))
        self._pending_samples += TICK_SAMPLES

    def channel_of(self, participant_id: str) -> int | None:
        return -1 if self._assigner is None else self._assigner.channel_of(participant_id)

    def bit_rate(self, channels: int) -> int:
        return self._factory.bit_rate(channels)

    def close(self, closed: ClosedChunk, complete: Callable[[Callable[[], Path]], None]) -> None:
        self._flush()
        slot = self._slot

        def close_writer() -> Path:
            assert slot.writer is not None
            return slot.writer.close()

        complete(close_writer)

    async def drain(self) -> None:
        return None  # every close already queued its jobs

    def _flush(self) -> None:
        if not self._pending:
            return
        pieces, slot = self._pending, self._slot
        self._pending, self._pending_samples = [], 0
        self._jobs.submit(lambda: write_pieces(_writer_of(slot), pieces))

    def _block(self, tick: MixTick, start: int, end: int, silent: bool, channels: int) -> np.ndarray:
        n = end - start
        assigner = self._assigner
        if assigner is None:
            return zeros(n, np.int16) if silent else tick.mixed[start:end]
        if silent:
            return zeros((n, channels), np.int16)  # the GIL kept: see `core.zeros`
        # float32, converted to int16 by the writer thread once per batch (`_write_pieces`): converting
        # every tick's blocks on the event loop cost more than the rest of this. `empty`, and every channel
        # written one column at a time: NumPy releases the GIL around `zeros` of this size, which wakes a
        # thread waiting for the GIL for nothing (see `Mixer.mix`).
        out = np.empty((n, channels), dtype=np.float32)
        by_channel: dict[int, list[np.ndarray]] = {}
        for participant_id in tick.participants:
            channel = assigner.channel_of(participant_id)
            if channel is not None:
                by_channel.setdefault(channel, []).append(tick.pcm_of(participant_id)[start:end])
        for channel in range(channels):
            blocks = by_channel.get(channel)
            if blocks is None:
                out[:, channel] = 0.0
            elif len(blocks) == 1:
                out[:, channel] = blocks[0]
            else:  # overflow participants share the last channel, mixed with the limiter
                out[:, channel] = _mix_overflow(blocks)
        return out


class _HostedAudioOutput(_AudioOutput):
    """`ChunkOutput` whose writers live in the audio writer process (`AudioWriterHost`): a batch is queued
    there from the loop, not run as a writer thread's job (see `media.writer_pool` for why)."""

    def __init__(self, factory: AudioWriterFactory, jobs: SerialJobs, assigner: ChannelAssigner | None,
                 batch_samples: int, host: AudioWriterHost, on_error: Callable[[BaseException], None]) -> None:
        super().__init__(factory, jobs, assigner, batch_samples)
        self._host = host
        self._on_error = on_error
        self._key: int | None = None
        self._closing: set[asyncio.Future[Path]] = set()

    def open(self, chunk: OpenChunk) -> None:
        try:
            self._key = self._host.open(self._factory, chunk.media_path, self._on_error)
        except Exception as exc:  # no writer process (shutting down, or it cannot start): the recording fails
            self._key = None
            self._on_error(exc)

    def journal(self, path: Path, journal: dict[str, Any], previous: Path | None) -> bool:
        """Through the writer process, behind this chunk's batches: written there, in order with the media it
        describes, and no thread of the server takes the GIL for it (a recording's journal is rewritten every
        second: hundreds of recordings were hundreds of thread jobs a second, in bursts when they started
        together)."""
        if self._key is None:
            return False
        self._flush()
        self._host.journal(self._key, path, journal, previous)
        return True

    def close(self, closed: ClosedChunk, complete: Callable[[Callable[[], Path]], None]) -> None:
        self._flush()
        if self._key is None:
            return  # its open failed, and the recording with it
        closing = self._host.close(self._key)
        self._key = None
        self._closing.add(closing)

        def closed_there(future: asyncio.Future[Path]) -> None:
            self._closing.discard(future)
            if future.cancelled():
                return
            error = future.exception()
            if error is None:
                path = future.result()
                complete(lambda: path)
            else:
                complete(functools.partial(_raise, error))  # the chunk's finish job fails the recording

        closing.add_done_callback(closed_there)

    async def drain(self) -> None:
        """Wait until every closed chunk's file is finished there (its finish job then queued)."""
        while self._closing:
            await asyncio.wait(set(self._closing))

    def _flush(self) -> None:
        if not self._pending:
            return
        pieces = self._pending
        self._pending, self._pending_samples = [], 0
        if self._key is not None:
            self._host.write(self._key, pieces)


def _raise(error: BaseException) -> Path:
    raise error


def _mix_overflow(blocks: list[np.ndarray]) -> np.ndarray:
    """The float32 blocks of the participants sharing the last channel, summed and limited.

    Summed one block at a time and limited only when loud: on a 20 ms block each NumPy call costs more
    than its arithmetic, and `np.sum` over a list, or `soft_limit` on a quiet block, cost 40-60 µs a tick.
    """
    total = blocks[0].copy()
    for block in blocks[1:]:
        np.add(total, block, out=total)
    if float(np.maximum.reduce(np.abs(total))) > DEFAULT_KNEE:  # below the knee soft_limit is the identity
        total = soft_limit(total)
    return total


class AudioRecording(RecordingEngine):
    """Writes one audio recording's chunks from its call's ticks (see the module docstring)."""

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
        batch_ms: int = 100,
        on_error: Callable[[BaseException], None] | None = None,
        max_pending_jobs: int = 3000,  # about 5 min of 0.1 s batches
        idle_timeout: float = 0.5,
        time: TimeSource | None = None,
        first_index: int = 0,
        start_paused: bool | None = None,
        writer_host: AudioWriterHost | None = None,
    ) -> None:
        self.writer_factory = writer_factory
        self._writer_host = writer_host
        self._batch_samples = max(TICK_SAMPLES, OUTPUT_SAMPLE_RATE * batch_ms // 1000)
        self._assigner = (
            ChannelAssigner(options.unmixed_max_channels, options.audio_channel_participant_ordering,
                            options.channel_affinity)
            if options.channel_type == ChannelType.UNMIXED else None
        )
        super().__init__(
            recording_id, call_id, options, spool_dir, resource_id, on_chunk_finished, start_at=start_at,
            executor=executor, on_error=on_error, max_pending_jobs=max_pending_jobs, idle_timeout=idle_timeout,
            time=time, first_index=first_index, start_paused=start_paused,
        )

    def _make_output(self) -> ChunkOutput:
        if self._writer_host is not None:
            return _HostedAudioOutput(self.writer_factory, self.jobs, self._assigner, self._batch_samples,
                                      self._writer_host, self.fail)
        return _AudioOutput(self.writer_factory, self.jobs, self._assigner, self._batch_samples)


def write_pieces(writer: AudioWriter, pieces: Sequence[np.ndarray]) -> None:
    """Write a batch; unmixed pieces of equal width are concatenated into one write, and converted to int16
    here (an unmixed recording's blocks come as float32: see `_AudioOutput._block`). Runs where the writer
    is: a writer thread, or the audio writer process (`media.writer_worker`)."""
    run: list[np.ndarray] = []
    for piece in pieces:
        if run and piece.shape[1:] != run[0].shape[1:]:
            writer.write(_int16(np.concatenate(run)))
            run = []
        run.append(piece)
    if run:
        writer.write(_int16(np.concatenate(run) if len(run) > 1 else run[0]))


def _writer_of(slot: _Slot) -> AudioWriter:
    assert slot.writer is not None
    return slot.writer


def _int16(samples: np.ndarray) -> np.ndarray:
    """int16 samples as they are; float32 ones (in [-1, 1)) rounded and saturated."""
    return samples if samples.dtype == np.int16 else float_to_int16(samples)
