"""`Chunker`: cuts a recording's media into chunks, each a media file plus its metadata JSON.

Why one module: audio and video recordings rotate, count, name and describe their chunks
the same way; only the file writing differs, and that is behind `ChunkOutput` (the audio
writer jobs in `core.audio_recording`, the video worker in `core.video_recording`).

- Rotation: a chunk ends at `chunk_max_duration` (exact, counted in 16 kHz samples) or
  where the output's size estimate says `chunk_max_bytes` would be passed. The cut falls
  inside a tick when it must: no sample is lost or repeated across chunks.
- Each chunk has its index, a fresh document id, the participants recorded in it, its
  pauses (a SILENCE pause that spans a rotation continues in the next chunk) and its
  metadata document (`core.metadata`), fixed when the chunk closes.
- In-order completion: blocking work (file I/O, encoding, metadata) runs one job at a
  time, in order, in an executor (`SerialJobs`); finished chunks are reported to
  `on_chunk_finished` on the event loop in index order, the last with SessionEnded.
- Crash safety: while a chunk is open, its journal (`{stem}-{index}.journal-{n}.json`: the
  metadata document so far, participants, pauses with their call-timeline positions,
  the last position taken) is rewritten through the same job queue, after the media it
  describes, whenever it changes (the chunk opens, a participant is first heard, a pause
  starts or ends) and, while a pause that skips media is open, once a second (nothing
  reaches the disk then to say how long it has lasted): each rewrite a new file, the one
  before it removed after (`core.journal_files` says why). Time alone changes nothing
  else recovery reads: where the media ended is read from the media. After a
  `kill -9`, `core.chunk_recovery` finishes the chunk from its newest whole journal and
  whatever media reached the disk. A finished chunk's journals are removed once it is
  announced.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.journal_files import forget_journals, journal_path, write_journal
from callrec.core.log import LogFields, get_logger
from callrec.core.metadata import (
    VideoConfiguration,
    chunk_metadata,
    milliseconds,
    new_document_id,
    rfc3339,
    write_json_atomically,
)
from callrec.core.model import (
    OUTPUT_SAMPLE_RATE,
    ChunkEndReason,
    PauseInterval,
    PauseMode,
    RecordedParticipant,
    RecordingOptions,
)
from callrec.core.serial_jobs import RecordingMediaError, SerialJobs
from callrec.core.timeline import Mark, PauseSpan

__all__ = [
    "ChunkOutput",
    "Chunker",
    "ClosedChunk",
    "FinishedChunk",
    "OnChunkFinished",
    "OpenChunk",
    "RecordingMediaError",
    "SerialJobs",
    "spool_stem",
]

log = get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


#: While a pause that skips media is open, the journal is rewritten this often (16 kHz samples of call time):
#: the pause's length is the one thing in it that moves with time and that the media cannot tell.
JOURNAL_EVERY_SAMPLES = OUTPUT_SAMPLE_RATE


def spool_stem(recording_id: str) -> str:
    """The file name stem of a recording's chunks in the spool (`{stem}-{index}.{ext}`)."""
    return _UNSAFE.sub("_", recording_id) or "recording"


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
    participants: tuple[RecordedParticipant, ...]
    content_type: str
    samples: int
    channels: int
    size_bytes: int
    pause_intervals: tuple[PauseInterval, ...]


OnChunkFinished = Callable[[FinishedChunk], Awaitable[None] | None]


@dataclass
class OpenChunk:
    """The chunk being written; only the event loop touches it."""

    index: int
    document_id: str
    start_time: datetime
    media_path: Path
    metadata_path: Path
    samples: int = 0
    channels: int = 0  # unmixed audio: width so far; otherwise 1
    participants: dict[str, RecordedParticipant] = field(default_factory=dict)
    pauses: list[PauseSpan] = field(default_factory=list)


@dataclass(frozen=True)
class ClosedChunk:
    """A chunk whose media is complete on the loop's side; its metadata is fixed."""

    chunk: OpenChunk
    reason: ChunkEndReason
    channels: int
    document: dict[str, Any]
    pause_intervals: tuple[PauseInterval, ...]
    duration_ms: int | float
    participants: tuple[RecordedParticipant, ...]


class ChunkOutput(Protocol):
    """What writes a recording's chunk files: audio writer jobs, or the video worker."""

    extension: str
    content_type: str
    video: VideoConfiguration | None

    def open(self, chunk: OpenChunk) -> None:
        """Start writing `chunk` (the previous one was closed just before)."""
        ...

    def set_paused(self, paused: bool) -> None:
        """The recording pauses or resumes (between two `write`s)."""
        ...

    def width(self, tick: MixTick, chunk: OpenChunk, silent: bool) -> int:
        """Channels the chunk needs for this tick (1 unless unmixed)."""
        ...

    def cap(self, chunk: OpenChunk, channels: int, max_bytes: int, limit: int) -> int:
        """Most samples (up to `limit`) `chunk` may hold before its file passes `max_bytes`.

        The output's own size estimate: a writer's projection for audio, the worker's
        reported size plus the encoder's ceiling rate for video.
        """
        ...

    def write(self, tick: MixTick, start: int, end: int, chunk: OpenChunk, channels: int, silent: bool) -> None:
        """Write samples [start, end) of the tick (silence when `silent`) into the chunk."""
        ...

    def skip(self, tick: MixTick, start: int, end: int) -> None:
        """Samples [start, end) are cut by a SKIP pause (the output may still look at them)."""
        ...

    def pad(self, chunk: OpenChunk, paused: bool, position: int) -> None:
        """Write one tick of silence at `position` into an empty chunk: every chunk is a decodable file."""
        ...

    def channel_of(self, participant_id: str) -> int | None:
        """The participant's channel in the metadata (-1 mixed), None while it is not recorded."""
        ...

    def bit_rate(self, channels: int) -> int:
        """`audioConfiguration.bitRate` of a chunk with `channels` channels."""
        ...

    def journal(self, path: Path, journal: dict[str, Any], previous: Path | None) -> bool:
        """Queue the open chunk's journal (`journal_files.write_journal`: JSON to `path`, not fsynced, then
        `previous` removed) behind the media queued so far, where the media goes; False leaves it to the
        chunker, as a job of its own."""
        ...

    def close(self, closed: ClosedChunk, complete: Callable[[Callable[[], Path]], None]) -> None:
        """Finish the chunk's file; then call `complete(finish_file)` (at once, or when the worker is done).

        `finish_file` runs in the job queue, closes or fsyncs the media file and returns its path.
        """
        ...

    async def drain(self) -> None:
        """Wait until every closed chunk's file is written (and `complete` was called for it)."""
        ...


class Chunker:
    """Rotation, chunk bookkeeping and in-order completion of one recording (module docstring).

    It is the `TimelineListener` of the recording's `RecordingTimeline`.
    """

    def __init__(
        self,
        *,
        recording_id: str,
        call_id: str,
        resource_id: str,
        options: RecordingOptions,
        spool_dir: Path,
        output: ChunkOutput,
        jobs: SerialJobs,
        on_chunk_finished: OnChunkFinished,
        log_fields: LogFields,
        first_index: int = 0,
        journal_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """`first_index` continues a recording recovered after a restart (its earlier chunks are stored);
        `journal_extra` adds fields to each journal (the video worker's pid)."""
        self.recording_id = recording_id
        self.call_id = call_id
        self.resource_id = resource_id
        self.options = options
        self.spool_dir = spool_dir
        self.output = output
        self.jobs = jobs
        self._on_chunk_finished = on_chunk_finished
        self._log_fields = log_fields
        self._skip_pauses = options.pause_mode == PauseMode.SKIP
        self._max_samples = max(TICK_SAMPLES, int(options.chunk_max_duration.total_seconds() * OUTPUT_SAMPLE_RATE))
        self._stem = spool_stem(recording_id)
        self._paused = False
        self.current: OpenChunk | None = None
        self.total_samples = 0
        self.participants: dict[str, RecordedParticipant] = {}
        self.done: list[FinishedChunk] = []
        self._first_index = first_index
        self._journal_extra = journal_extra
        self._journal_dirty = False
        self._journaled_position = 0
        self._journal_seq = 0
        self._last_journal: Path | None = None  # the open chunk's newest journal
        self._position = 0  # call timeline position after the last sample taken
        self._chunk_start_position = 0
        spool_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ TimelineListener
    def began(self, mark: Mark, paused: bool) -> None:
        """Open the first chunk at the recording's first sample."""
        self._paused = paused
        self._position = mark.position
        self._open(self._first_index, mark.time, mark.position)
        if paused:
            self.output.set_paused(True)
            self._chunk().pauses.append(PauseSpan(mark.time, mark.position))
        self._journal()

    def paused(self, mark: Mark) -> None:
        """A pause starts: it is listed in the open chunk."""
        self._paused = True
        self.output.set_paused(True)
        self._chunk().pauses.append(PauseSpan(mark.time, mark.position))
        self._journal_dirty = True

    def resumed(self, mark: Mark) -> None:
        """The pause ends."""
        self._paused = False
        self.output.set_paused(False)
        for pause in self._chunk().pauses:
            pause.close(mark.position)
        self._journal_dirty = True

    def media(self, tick: MixTick, start: int, end: int, paused: bool) -> None:
        """Write samples [start, end) of `tick`, rotating wherever a chunk is full."""
        self._position = tick.index * TICK_SAMPLES + end
        if paused and self._skip_pauses:
            self.output.skip(tick, start, end)
            # nothing reaches the disk: only the journal can say how long the pause has lasted at a crash
            if self._journal_dirty or self._position - self._journaled_position >= JOURNAL_EVERY_SAMPLES:
                self._journal()
            return
        position = start
        while position < end:
            chunk = self._chunk()
            channels = self.output.width(tick, chunk, paused)
            room = self._room(chunk, channels)
            if room <= 0:
                self._rotate(tick, position)
                continue
            take = min(end - position, room)
            self.output.write(tick, position, position + take, chunk, channels, paused)
            chunk.samples += take
            chunk.channels = channels
            self.total_samples += take
            if not paused:
                self._note_participants(chunk, tick)
            position += take
        if self._journal_dirty:  # the media itself tells recovery where it ended: no rewrite for time alone
            self._journal()

    # ------------------------------------------------------------------ rotation
    def _chunk(self) -> OpenChunk:
        assert self.current is not None, "no chunk is open: the recording has not begun"
        return self.current

    def _room(self, chunk: OpenChunk, channels: int) -> int:
        limit = self._max_samples
        if self.options.chunk_max_bytes > 0:
            limit = min(limit, self.output.cap(chunk, channels, self.options.chunk_max_bytes, limit))
        return limit - chunk.samples

    def _rotate(self, tick: MixTick, offset: int) -> None:
        old = self._chunk()
        position = tick.index * TICK_SAMPLES + offset
        moment = tick.time + timedelta(seconds=offset / OUTPUT_SAMPLE_RATE)
        for pause in old.pauses:
            pause.close(position)
        self._close(old, ChunkEndReason.CHUNK_MAXIMUM_SIZE_EXCEEDED)
        self._open(old.index + 1, moment, position)
        if self._paused:  # SILENCE mode: the pause goes on in the new chunk
            self._chunk().pauses.append(PauseSpan(moment, position))
        self._journal()

    def _open(self, index: int, start_time: datetime, position: int) -> None:
        stem = f"{self._stem}-{index}"
        self._chunk_start_position = position
        self._last_journal = None  # the chunk before keeps its journals until it is announced
        self.current = OpenChunk(
            index=index,
            document_id=new_document_id(),
            start_time=start_time,
            media_path=self.spool_dir / f"{stem}.{self.output.extension}",
            metadata_path=self.spool_dir / f"{stem}-metadata.json",
        )
        self.output.open(self.current)

    def _note_participants(self, chunk: OpenChunk, tick: MixTick) -> None:
        for participant_id in tick.participants:
            if participant_id in chunk.participants:
                continue
            channel = self.output.channel_of(participant_id)
            if channel is None:
                continue
            info = RecordedParticipant(participant_id, tick.names.get(participant_id, ""), channel)
            chunk.participants[participant_id] = info
            self.participants.setdefault(participant_id, info)
            self._journal_dirty = True

    # ------------------------------------------------------------------ closing
    def close_last(self, end_position: int) -> None:
        """The recording ends at `end_position`: close the open chunk (never empty) as SessionEnded."""
        chunk = self._chunk()
        if chunk.samples == 0:
            self.output.pad(chunk, self._paused, end_position)
            chunk.samples = TICK_SAMPLES
            self.total_samples += TICK_SAMPLES
        for pause in chunk.pauses:
            pause.close(end_position)
        self._close(chunk, ChunkEndReason.SESSION_ENDED)

    def _document(self, chunk: OpenChunk) -> dict[str, Any]:
        """The chunk's metadata document as of now."""
        channels = max(1, chunk.channels)
        participants = sorted(chunk.participants.values(), key=lambda p: p.channel)
        return chunk_metadata(
            resource_id=self.resource_id,
            call_id=self.call_id,
            document_id=chunk.document_id,
            index=chunk.index,
            start_time=chunk.start_time,
            duration_ms=milliseconds(chunk.samples, OUTPUT_SAMPLE_RATE),
            pauses=[(p.start_time, p.duration_ms) for p in chunk.pauses],
            content_type=self.options.content_type,
            channel_type=self.options.channel_type,
            format=self.options.format,
            sample_rate=OUTPUT_SAMPLE_RATE,
            bit_rate=self.output.bit_rate(channels),
            channels=channels,
            participants=participants,
            video=self.output.video,
        )

    def _journal(self) -> None:
        """Queue a rewrite of the open chunk's journal, after the media queued so far."""
        chunk = self._chunk()
        self._journal_dirty = False
        self._journaled_position = self._position
        journal: dict[str, Any] = {
            "recording_id": self.recording_id,
            "index": chunk.index,
            "media_file": chunk.media_path.name,
            "content_type": self.output.content_type,
            "samples": chunk.samples,
            "position": self._position,
            "start_position": self._chunk_start_position,
            "paused": self._paused,
            "skip_pauses": self._skip_pauses,
            "pauses": [{"start_time": rfc3339(p.start_time), "start_pos": p.start_pos, "end_pos": p.end_pos}
                       for p in chunk.pauses],
            "participants": [dataclasses.asdict(p) for p in chunk.participants.values()],
            "document": self._document(chunk),
            **(self._journal_extra() if self._journal_extra is not None else {}),
        }
        self._journal_seq += 1
        path = journal_path(chunk.media_path, self._journal_seq)
        previous, self._last_journal = self._last_journal, path
        if not self.output.journal(path, journal, previous):
            self.jobs.submit(lambda: write_journal(path, journal, previous))

    def _close(self, chunk: OpenChunk, reason: ChunkEndReason) -> None:
        participants = tuple(sorted(chunk.participants.values(), key=lambda p: p.channel))
        intervals = tuple(PauseInterval(p.start_time, timedelta(milliseconds=p.duration_ms)) for p in chunk.pauses)
        closed = ClosedChunk(chunk, reason, max(1, chunk.channels), self._document(chunk), intervals,
                             milliseconds(chunk.samples, OUTPUT_SAMPLE_RATE), participants)
        self.output.close(closed, lambda finish_file: self._complete(closed, finish_file))

    def _complete(self, closed: ClosedChunk, finish_file: Callable[[], Path]) -> None:
        """Queue the chunk's last job: `finish_file()` (close / fsync the media), then its metadata.

        The job queue keeps chunk order, so chunks are announced in index order.
        """
        chunk = closed.chunk
        content_type = self.output.content_type

        def finish() -> FinishedChunk:
            path = finish_file()
            write_json_atomically(chunk.metadata_path, closed.document)
            return FinishedChunk(
                index=chunk.index,
                end_reason=closed.reason,
                media_path=path,
                metadata_path=chunk.metadata_path,
                document_id=chunk.document_id,
                start_time=chunk.start_time,
                duration_ms=round(closed.duration_ms),
                participants=closed.participants,
                content_type=content_type,
                samples=chunk.samples,
                channels=closed.channels,
                size_bytes=path.stat().st_size,
                pause_intervals=closed.pause_intervals,
            )

        self.jobs.submit(finish, self._announce)

    async def _announce(self, finished: FinishedChunk) -> None:
        self.done.append(finished)
        try:
            result = self._on_chunk_finished(finished)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_chunk_finished failed", chunk_index=finished.index, **self._log_fields)
            return  # the journal stays: recovery will index the chunk
        forget_journals(finished.media_path)

    async def drain(self) -> list[FinishedChunk]:
        """Wait for every chunk's files; returns the chunks finished."""
        await self.output.drain()
        await self.jobs.join()
        return list(self.done)
