"""Connects the control plane to the media pipeline and the upload outbox.

- `CallMediaHub` is the `MediaIngest` the StreamMedia handler drives: one `CallMedia`
  (jitter buffers, decoders, the call's one mixer pass on its clock) per call.
- `Recorder` is the `RecordingMedia` the recording registry drives: per recording a
  sink of the call's ticks that writes chunks into the spool; each finished chunk is
  indexed and queued in the outbox; `finish` waits until every file is stored.

Only wiring lives here; the media work is in core/ and media/, storage in storage/.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from callrec.core.call_media import AudioCodecs, CallMedia, MixTick, TickSink
from callrec.core.calls import CALL_ENDED, SERVER_RESTARTED, Call, Participant
from callrec.core.clock import Clock, MediaClock, RealtimeClock
from callrec.core.errors import CallrecError, ErrorCode
from callrec.core.model import (
    ChunkEndReason,
    ChunkInfo,
    Format,
    MediaStats,
    ParticipantInfo,
    RecordingOptions,
    VideoFormat,
)
from callrec.core.recording import Recording
from callrec.core.recording_media import AudioWriterFactory, FinishedChunk, RecordingMedia, RecordingMediaError
from callrec.core.recordings import FinishedMedia
from callrec.logs import get_logger
from callrec.state.chunks import ChunkIndex, StoredChunk
from callrec.storage.keys import ChunkKeys
from callrec.storage.outbox import Outbox, UploadFailed
from callrec.storage.resolver import StoreResolver, describe_target, external_target

log = get_logger("recorder")

#: Sessions that end because the call is gone: play out everything buffered first.
CALL_GONE = (CALL_ENDED, SERVER_RESTARTED)


class VideoSink(Protocol):
    """What an mp4 recording needs besides ticks: participants and their video frames."""

    def on_tick(self, tick: MixTick) -> None:
        """The call's mixed audio and speaking flags, every 20 ms."""

    def join(self, participant_id: str, display_name: str, video: VideoFormat | None) -> None:
        """A participant is in the call (also called for those present when the recording starts)."""

    def leave(self, participant_id: str) -> None:
        """A participant left."""

    def video(self, participant_id: str, data: bytes, call_us: int, width: int, height: int,
              keyframe: bool) -> str | None:
        """A video frame placed on the call timeline; returns a rejection reason or None."""


@dataclass
class _CallEntry:
    media: CallMedia
    task: asyncio.Task[None]
    ended: bool = False
    video_sinks: list[VideoSink] = field(default_factory=list)


class CallMediaHub:
    """One CallMedia per open call, created on demand, ended when the call ends."""

    def __init__(self, make_clock: Callable[[], Clock], codecs: AudioCodecs) -> None:
        self.make_clock = make_clock
        self.codecs = codecs
        self._calls: dict[str, _CallEntry] = {}

    def media(self, server_call_id: str) -> CallMedia:
        """The call's media pipeline (started on first use)."""
        entry = self._calls.get(server_call_id)
        if entry is None or entry.ended:
            media = CallMedia(server_call_id, self.make_clock(), self.codecs)
            task = asyncio.get_running_loop().create_task(media.run(), name=f"call-media-{server_call_id}")
            entry = _CallEntry(media, task)
            self._calls[server_call_id] = entry
        return entry.media

    def is_realtime(self, server_call_id: str) -> bool:
        """True when the call's pipeline runs on the real-time clock."""
        entry = self._calls.get(server_call_id)
        return entry is not None and isinstance(entry.media.clock, RealtimeClock)

    def media_time(self, server_call_id: str, wall: datetime) -> datetime:
        """Where a control command issued at `wall` falls on the call's media timeline.

        The real-time clock's ticks carry capture times, so `wall` maps to itself; the
        media clock runs as fast as media arrives, so "now" is the tick being produced.
        """
        entry = self._calls.get(server_call_id)
        if entry is None or isinstance(entry.media.clock, RealtimeClock):
            return wall
        return entry.media.clock.tick_time(entry.media.next_tick)

    def detach(self, server_call_id: str, sink: TickSink) -> None:
        """Stop feeding a sink (no-op when the call's pipeline is gone)."""
        entry = self._calls.get(server_call_id)
        if entry is not None:
            entry.media.detach(sink)
            if sink in entry.video_sinks:
                entry.video_sinks.remove(sink)  # type: ignore[arg-type]

    def attach_video(self, call: Call | None, server_call_id: str, sink: VideoSink) -> None:
        """Feed a video sink ticks, participants (those present now first) and video frames."""
        media = self.media(server_call_id)
        entry = self._calls[server_call_id]
        if call is not None:
            for p in call.participants.values():
                sink.join(p.participant_id, p.display_name, p.video_format)
        entry.video_sinks.append(sink)
        media.attach(sink)

    def stats(self, server_call_id: str) -> MediaStats | None:
        """The call's media counters so far (None when its pipeline is gone)."""
        entry = self._calls.get(server_call_id)
        return entry.media.call_stats() if entry is not None else None

    async def end_call(self, server_call_id: str) -> MediaStats | None:
        """The call is over: play out what is buffered, stop the tick loop; idempotent."""
        entry = self._calls.get(server_call_id)
        if entry is None:
            return None
        entry.ended = True
        await entry.media.close()
        with contextlib.suppress(asyncio.CancelledError):
            await entry.task
        if self._calls.get(server_call_id) is entry:
            del self._calls[server_call_id]
        return entry.media.call_stats()

    async def on_call_ended(self, call: Call, reason: str) -> None:
        """CallRegistry hook."""
        await self.end_call(call.server_call_id)

    async def close(self) -> None:
        """End every call's pipeline (server shutdown)."""
        for server_call_id in list(self._calls):
            await self.end_call(server_call_id)

    # ---- MediaIngest ---------------------------------------------------------------------------
    def joined(self, call: Call, participant: Participant) -> None:
        media = self.media(call.server_call_id)
        stream = call.streams.get(participant.connection_id)
        gateway_id = stream.gateway_id if stream is not None else participant.connection_id
        if participant.participant_id in media.participant_ids:
            media.remove_participant(participant.participant_id)
        media.add_participant(participant.participant_id, participant.display_name, participant.audio_format,
                              gateway_id)
        for sink in self._calls[call.server_call_id].video_sinks:
            sink.join(participant.participant_id, participant.display_name, participant.video_format)

    def left(self, call: Call, participant: Participant) -> None:
        entry = self._calls.get(call.server_call_id)
        if entry is not None:
            entry.media.remove_participant(participant.participant_id)
            for sink in entry.video_sinks:
                sink.leave(participant.participant_id)

    def audio(self, call: Call, participant: Participant, sequence: int, timestamp_us: int, data: bytes) -> str | None:
        return self.media(call.server_call_id).push_audio(participant.participant_id, sequence, timestamp_us, data)

    def video(
        self,
        call: Call,
        participant: Participant,
        sequence: int,
        timestamp_us: int,
        data: bytes,
        keyframe: bool,
        width: int,
        height: int,
    ) -> str | None:
        if participant.video_format is None:
            return "no_video_format"
        if not data:
            return "empty_frame"
        entry = self._calls.get(call.server_call_id)
        if entry is None or not entry.video_sinks:
            return None  # counted; no mp4 recording consumes video right now
        stream = call.streams.get(participant.connection_id)
        gateway_id = stream.gateway_id if stream is not None else participant.connection_id
        call_us = entry.media.clock.place(gateway_id, timestamp_us)
        reasons = [sink.video(participant.participant_id, data, call_us, width, height, keyframe)
                   for sink in entry.video_sinks]
        return next((r for r in reasons if r), None)


def make_clock_factory(kind: str, playout_delay_ms: int) -> Callable[[], Clock]:
    """The clock of each call: "realtime" (production) or "media" (tests, benchmarks)."""
    if kind == "media":
        return MediaClock
    return lambda: RealtimeClock(playout_delay_ms=playout_delay_ms)


@dataclass
class _Active:
    sink: RecordingMedia
    keys: ChunkKeys
    target: str
    errors: list[BaseException] = field(default_factory=list)


class Recorder:
    """Drives each recording's media: start, pause, resume, finish (store every chunk)."""

    def __init__(
        self,
        hub: CallMediaHub,
        outbox: Outbox,
        index: ChunkIndex,
        stores: StoreResolver,
        spool_dir: Path,
        resource_id: str,
        writer_factory_for: Callable[[RecordingOptions], AudioWriterFactory],
        video_sink_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.hub = hub
        self.outbox = outbox
        self.index = index
        self.stores = stores
        self.spool_dir = spool_dir
        self.resource_id = resource_id
        self.writer_factory_for = writer_factory_for
        self.video_sink_factory = video_sink_factory
        self.on_media_error: Callable[[str, BaseException], None] | None = None
        self._active: dict[str, _Active] = {}

    def _error_handler(self, recording_id: str, active: _Active) -> Callable[[BaseException], None]:
        """Record a sink's failure and report it at once (sinks may call this from a worker thread)."""
        loop = asyncio.get_running_loop()

        def failed(exc: BaseException) -> None:
            active.errors.append(exc)
            log.error("recording media failed", recording_id=recording_id, error=str(exc))
            if self.on_media_error is not None:
                loop.call_soon_threadsafe(self.on_media_error, recording_id, exc)

        return failed

    @staticmethod
    def target_of(rec: Recording) -> str:
        """The storage target string of a recording (a configured name or an external container)."""
        ext = rec.options.external_storage
        return external_target(ext.kind, ext.container_url) if ext else rec.options.destination

    async def start(self, rec: Recording, call: Call | None) -> None:
        target = self.target_of(rec)
        try:
            self.stores(target)
        except ValueError as exc:
            raise CallrecError(str(exc), ErrorCode.INVALID_ARGUMENT) from None
        if rec.options.format is Format.MP4 and self.video_sink_factory is None:
            raise CallrecError(
                "mp4 (audio_video) recordings are not available in this build; record audio as wav or mp3",
                ErrorCode.FAILED_PRECONDITION,
            )
        unique = hashlib.sha256(rec.recording_id.encode()).hexdigest()[:16]
        keys = ChunkKeys.for_recording(started=rec.start_time, call_id=rec.call_id, recording_id=rec.recording_id,
                                       unique_id=unique)
        active = _Active(sink=None, keys=keys, target=target)  # type: ignore[arg-type]
        media = self.hub.media(rec.server_call_id)
        start_at = self.hub.media_time(rec.server_call_id, rec.start_time)
        on_chunk = lambda chunk: self._chunk_finished(rec.recording_id, chunk)  # noqa: E731
        if rec.options.format is Format.MP4:
            assert self.video_sink_factory is not None
            active.sink = self.video_sink_factory(
                rec.recording_id, rec.call_id, rec.options, self.spool_dir / rec.recording_id, self.resource_id,
                on_chunk, start_at=start_at, on_error=self._error_handler(rec.recording_id, active),
            )
            self._active[rec.recording_id] = active
            self.hub.attach_video(call, rec.server_call_id, active.sink)
            return
        active.sink = RecordingMedia(
            rec.recording_id,
            rec.call_id,
            rec.options,
            self.spool_dir / rec.recording_id,
            self.resource_id,
            self.writer_factory_for(rec.options),
            on_chunk,
            start_at=start_at,
            on_error=self._error_handler(rec.recording_id, active),
        )
        self._active[rec.recording_id] = active
        media.attach(active.sink)

    def pause(self, rec: Recording, at: datetime) -> None:
        active = self._active.get(rec.recording_id)
        if active is not None:
            active.sink.pause(self.hub.media_time(rec.server_call_id, at))

    def resume(self, rec: Recording, at: datetime) -> None:
        active = self._active.get(rec.recording_id)
        if active is not None:
            active.sink.resume(self.hub.media_time(rec.server_call_id, at))

    def _chunk_finished(self, recording_id: str, chunk: FinishedChunk) -> None:
        """Index the chunk and queue its two files; runs in chunk order."""
        active = self._active[recording_id]
        ext = chunk.media_path.suffix.lstrip(".")
        kind = "video" if ext == "mp4" else "audio"
        media_key = active.keys.media(chunk.index, kind, ext)
        metadata_key = active.keys.metadata(chunk.index)
        store = self.stores(active.target)
        self.index.add(StoredChunk(
            document_id=chunk.document_id,
            recording_id=recording_id,
            chunk_index=chunk.index,
            end_reason=chunk.end_reason.value,
            target=active.target,
            media_key=media_key,
            metadata_key=metadata_key,
            media_type=chunk.content_type,
            content_location=store.location(media_key),
            metadata_location=store.location(metadata_key),
            delete_location=store.location(f"{active.keys.directory}/{chunk.index}-"),
            samples=chunk.samples,
            participants=json.dumps([dataclasses.asdict(p) for p in chunk.participants]),
        ))
        self.outbox.enqueue(recording_id, active.target, media_key, chunk.media_path, chunk.content_type)
        self.outbox.enqueue(recording_id, active.target, metadata_key, chunk.metadata_path, "application/json")
        log.info("chunk finished", recording_id=recording_id, index=chunk.index, end_reason=chunk.end_reason.value,
                 duration_ms=chunk.duration_ms, bytes=chunk.size_bytes)

    async def finish(self, rec: Recording) -> FinishedMedia:
        active = self._active.get(rec.recording_id)
        stats: MediaStats | None = None
        if active is not None:
            if rec.session_end_reason in CALL_GONE:
                stats = await self.hub.end_call(rec.server_call_id)
                at = None
            elif self.hub.is_realtime(rec.server_call_id):
                at = rec.stop_time or datetime.now(UTC)
            else:  # media clock: "now" is whatever has been mixed so far
                at = None
            try:
                await active.sink.finish(at)  # the last chunk reaches the index through on_chunk
            except RecordingMediaError as exc:
                raise CallrecError(f"writing the recording failed: {exc}", ErrorCode.INTERNAL) from exc
            finally:
                self.hub.detach(rec.server_call_id, active.sink)
                self._active.pop(rec.recording_id, None)
            participants = active.sink.participants
            stats = stats or self.hub.stats(rec.server_call_id)
            for reason, count in getattr(active.sink, "frames_rejected_by_reason", {}).items():
                if stats is not None:  # video frames the worker could not decode
                    stats.reject(reason, count)
        else:
            participants = []  # finalised by a process that wrote none of the chunks (after a restart)
        try:
            await self.outbox.wait_group(rec.recording_id)
        except UploadFailed as exc:
            raise CallrecError(f"{exc} ({describe_target(self.target_of(rec))})", ErrorCode.UNAVAILABLE) from exc
        stored = self.index.for_recording(rec.recording_id)
        if active is None:  # after a restart: what the index kept of each chunk
            seen: dict[str, ParticipantInfo] = {}
            for c in stored:
                for p in json.loads(c.participants):
                    seen.setdefault(p["participant_id"], ParticipantInfo(**p))
            participants = list(seen.values())
        chunks = [
            ChunkInfo(c.document_id, c.chunk_index, ChunkEndReason(c.end_reason), c.metadata_location,
                      c.content_location, c.delete_location)
            for c in stored
        ]
        duration = timedelta(milliseconds=sum(c.samples for c in stored) / 16)  # all chunks, any process
        if stats is not None:
            rec.media_stats = stats
        return FinishedMedia(chunks=chunks, duration=duration, participants=participants)
