"""`MediaRecorder`: the media side of recordings, as the recording registry drives it.

Per recording it builds the sink of the call's ticks (an `AudioRecording`, or a
`VideoRecording` that also takes the call's participants and video), routes pause and
resume to it at their media time, indexes each finished chunk and queues its two files
for upload, and on `finish` waits until every file is stored. It reaches the chunk
index, the upload outbox and the storage targets through core's ports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from callrec.core.audio_recording import AudioRecording
from callrec.core.call_hub import CallMediaHub
from callrec.core.call_registry import CALL_ENDED, SERVER_RESTARTED, Call
from callrec.core.chunk_recovery import forget_journal, recover_chunks
from callrec.core.chunker import FinishedChunk, OnChunkFinished, RecordingMediaError, spool_stem
from callrec.core.errors import CallrecError, ErrorCode
from callrec.core.log import get_logger
from callrec.core.model import (
    Format,
    MediaStats,
    RecordedParticipant,
    RecordingOptions,
    RecordingState,
)
from callrec.core.object_keys import ChunkKeys
from callrec.core.ports import (
    AudioWriterFactory,
    AudioWriterHost,
    ChunkIndexPort,
    ChunkRepairPort,
    FinishedMedia,
    StorageTargetsPort,
    StoredChunk,
    UploadQueuePort,
)
from callrec.core.recording_engine import RecordingEngine
from callrec.core.recording_state import Recording
from callrec.core.video_recording import VideoRecording

__all__ = ["MediaRecorder", "VideoRecordingFactory"]

log = get_logger(__name__)

#: Sessions that end because the call is gone: play out everything buffered first.
CALL_GONE = (CALL_ENDED, SERVER_RESTARTED)


class VideoRecordingFactory(Protocol):
    """Builds an mp4 recording with its worker (`callrec.media.video_output`)."""

    def __call__(self, recording_id: str, call_id: str, options: RecordingOptions, spool_dir: Path,
                 resource_id: str, on_chunk_finished: OnChunkFinished, *, start_at: datetime | None = None,
                 on_error: Callable[[BaseException], None] | None = None, first_index: int = 0,
                 start_paused: bool | None = None) -> VideoRecording:
        """A started recording (its worker process running)."""
        ...


@dataclass
class _Active:
    keys: ChunkKeys
    target: str
    sink: RecordingEngine | None = None
    errors: list[BaseException] = field(default_factory=list)


class MediaRecorder:
    """Drives each recording's media: start, pause, resume, finish (store every chunk)."""

    def __init__(
        self,
        hub: CallMediaHub,
        uploads: UploadQueuePort,
        index: ChunkIndexPort,
        targets: StorageTargetsPort,
        spool_dir: Path,
        resource_id: str,
        writer_factory_for: Callable[[RecordingOptions], AudioWriterFactory],
        video_recording_factory: VideoRecordingFactory | None = None,
        on_media_error: Callable[[str, BaseException], None] | None = None,
        repair: ChunkRepairPort | None = None,
        audio_writer_host: AudioWriterHost | None = None,
    ) -> None:
        self.hub = hub
        self.uploads = uploads
        self.index = index
        self.targets = targets
        self.spool_dir = spool_dir
        self.resource_id = resource_id
        self.writer_factory_for = writer_factory_for
        self.video_recording_factory = video_recording_factory
        self.on_media_error = on_media_error
        self.repair = repair
        self.audio_writer_host = audio_writer_host
        """Where audio recordings' writers run (the writer process); None: in writer threads."""
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

    def target_of(self, rec: Recording) -> str:
        """The storage target string of a recording (a configured name or an external container)."""
        ext = rec.options.external_storage
        return self.targets.external_target(ext.kind, ext.container_url) if ext else rec.options.destination

    async def start(self, rec: Recording, call: Call | None, *, first_index_gap: int = 1) -> None:
        """Attach the recording's sink to its call's media, starting at the recording's start time.

        `first_index_gap`: the first chunk index is this far after the last one indexed (a node taking
        over a dead node's recording leaves room for the chunks that node may still finish from its spool).
        """
        target = self.target_of(rec)
        try:
            self.targets.check(target)
        except ValueError as exc:
            raise CallrecError(str(exc), ErrorCode.INVALID_ARGUMENT) from None
        video = rec.options.format is Format.MP4
        if video and self.video_recording_factory is None:
            raise CallrecError(
                "mp4 (audio_video) recordings are not available in this build; record audio as wav or mp3",
                ErrorCode.FAILED_PRECONDITION,
            )
        active = _Active(keys=self._keys(rec), target=target)
        start_at = self.hub.media_time(rec.server_call_id, rec.start_time)
        spool = self.spool_dir / rec.recording_id
        on_error = self._error_handler(rec.recording_id, active)
        # A recording recovered after a restart goes on after its stored chunks, paused if it was.
        stored = await self.index.for_recording(rec.recording_id)
        first_index = first_index_gap + max(c.chunk_index for c in stored) if stored else first_index_gap - 1
        paused = rec.state is RecordingState.INACTIVE

        async def on_chunk(chunk: FinishedChunk) -> None:
            await self._chunk_finished(rec.recording_id, chunk)

        if video:
            assert self.video_recording_factory is not None
            try:
                sink = self.video_recording_factory(rec.recording_id, rec.call_id, rec.options, spool,
                                                    self.resource_id, on_chunk, start_at=start_at, on_error=on_error,
                                                    first_index=first_index, start_paused=paused)
            except OSError as exc:
                raise CallrecError(f"could not start the video worker: {exc}", ErrorCode.INTERNAL) from exc
            active.sink = sink
            self._active[rec.recording_id] = active
            self.hub.attach_video(call, rec.server_call_id, sink)
            return
        audio = AudioRecording(rec.recording_id, rec.call_id, rec.options, spool, self.resource_id,
                               self.writer_factory_for(rec.options), on_chunk, start_at=start_at, on_error=on_error,
                               first_index=first_index, start_paused=paused, writer_host=self.audio_writer_host)
        active.sink = audio
        self._active[rec.recording_id] = active
        self.hub.attach(rec.server_call_id, audio)

    def pause(self, rec: Recording, at: datetime) -> None:
        """Pause the recording's media at the media time of `at`."""
        active = self._active.get(rec.recording_id)
        if active is not None and active.sink is not None:
            active.sink.pause(self.hub.media_time(rec.server_call_id, at))

    def resume(self, rec: Recording, at: datetime) -> None:
        """Resume the recording's media at the media time of `at`."""
        active = self._active.get(rec.recording_id)
        if active is not None and active.sink is not None:
            active.sink.resume(self.hub.media_time(rec.server_call_id, at))

    @staticmethod
    def _keys(rec: Recording) -> ChunkKeys:
        """The recording's object names (the same in every process: chunk indexes keep them apart)."""
        unique = hashlib.sha256(rec.recording_id.encode()).hexdigest()[:16]
        return ChunkKeys.for_recording(started=rec.start_time, call_id=rec.call_id, recording_id=rec.recording_id,
                                       unique_id=unique)

    async def _chunk_finished(self, recording_id: str, chunk: FinishedChunk) -> None:
        """Index the chunk and queue its two files; runs in chunk order."""
        active = self._active[recording_id]
        await self._index_and_queue(recording_id, active.keys, active.target, chunk)

    async def _index_and_queue(self, recording_id: str, keys: ChunkKeys, target: str, chunk: FinishedChunk) -> None:
        ext = chunk.media_path.suffix.lstrip(".")
        media_key = keys.media(chunk.index, "video" if ext == "mp4" else "audio", ext)
        metadata_key = keys.metadata(chunk.index)
        location = self.targets.location
        await self.index.add(StoredChunk(
            document_id=chunk.document_id,
            recording_id=recording_id,
            chunk_index=chunk.index,
            end_reason=chunk.end_reason.value,
            target=target,
            media_key=media_key,
            metadata_key=metadata_key,
            media_type=chunk.content_type,
            content_location=location(target, media_key),
            metadata_location=location(target, metadata_key),
            delete_location=location(target, f"{keys.directory}/{chunk.index}-"),
            samples=chunk.samples,
            participants=json.dumps([dataclasses.asdict(p) for p in chunk.participants]),
        ))
        await self.uploads.enqueue(recording_id, target, media_key, chunk.media_path, chunk.content_type)
        await self.uploads.enqueue(recording_id, target, metadata_key, chunk.metadata_path, "application/json")
        log.info("chunk finished", recording_id=recording_id, index=chunk.index, end_reason=chunk.end_reason.value,
                 duration_ms=chunk.duration_ms, bytes=chunk.size_bytes)

    async def recover(self, rec: Recording) -> list[int]:
        """After a crash: finish the chunks the last process left open, index and queue them.

        Returns the indexes of the chunks it indexed. Raises CallrecError when the recording's storage
        target is gone from the config (the registry then fails the recording, and the server starts all
        the same).
        """
        spool = self.spool_dir / rec.recording_id
        if self.repair is None or not spool.is_dir():
            return []
        target = self.target_of(rec)
        try:
            self.targets.check(target)
        except ValueError as exc:
            raise CallrecError(f"cannot recover the recording's files: {exc}", ErrorCode.FAILED_PRECONDITION) \
                from None
        indexed = {c.chunk_index for c in await self.index.for_recording(rec.recording_id)}
        factory = None if rec.options.format is Format.MP4 else self.writer_factory_for(rec.options)
        repair = self.repair
        chunks = await asyncio.get_running_loop().run_in_executor(
            None, lambda: recover_chunks(spool, indexed, repair, factory.bit_rate if factory else None))
        keys = self._keys(rec)
        for chunk in chunks:
            await self._index_and_queue(rec.recording_id, keys, target, chunk)
            forget_journal(chunk)
        await self._requeue_unqueued(rec.recording_id, spool)
        return [chunk.index for chunk in chunks]

    async def wait_stored(self, recording_id: str) -> str | None:
        """This node's files of the recording are stored: None, or why some failed for good."""
        return await self.uploads.wait_stored(recording_id)

    async def stored_chunks(self, recording_id: str) -> list[StoredChunk]:
        """The recording's indexed chunks (of every node), by index."""
        return await self.index.for_recording(recording_id)

    async def _requeue_unqueued(self, recording_id: str, spool: Path) -> None:
        """Queue the files of indexed chunks that never reached the outbox (a crash between the two)."""
        queued = await self.uploads.queued_keys(recording_id)
        stem = spool_stem(recording_id)
        for c in await self.index.for_recording(recording_id):
            ext = c.media_key.rsplit(".", 1)[-1]
            files = ((c.media_key, spool / f"{stem}-{c.chunk_index}.{ext}", c.media_type),
                     (c.metadata_key, spool / f"{stem}-{c.chunk_index}-metadata.json", "application/json"))
            for key, path, content_type in files:
                if key not in queued and path.exists():
                    log.warning("indexed chunk file was never queued; queueing it now", recording_id=recording_id,
                                index=c.chunk_index, key=key)
                    await self.uploads.enqueue(recording_id, c.target, key, path, content_type)

    def spooled(self) -> list[str]:
        """Recording ids with a spool directory on this node (what a crash may have left open)."""
        if not self.spool_dir.is_dir():
            return []
        return sorted(entry.name for entry in self.spool_dir.iterdir() if entry.is_dir())

    async def finish(self, rec: Recording) -> FinishedMedia:
        """Close the recording's last chunk and wait until every chunk is stored."""
        active = self._active.get(rec.recording_id)
        stats: MediaStats | None = None
        participants: list[RecordedParticipant] = []
        if active is not None and active.sink is not None:
            sink = active.sink
            at: datetime | None
            if rec.session_end_reason in CALL_GONE:
                stats = await self.hub.end_call(rec.server_call_id)
                at = None
            elif self.hub.is_realtime(rec.server_call_id):
                at = rec.stop_time or datetime.now(UTC)
            else:  # media clock: "now" is whatever has been mixed so far
                at = None
            try:
                await sink.finish(at)  # the last chunk reaches the index through on_chunk
            except RecordingMediaError as exc:
                raise CallrecError(f"writing the recording failed: {exc}", ErrorCode.INTERNAL) from exc
            finally:
                self.hub.detach(rec.server_call_id, sink)
                self._active.pop(rec.recording_id, None)
            participants = sink.participants
            stats = stats or self.hub.stats(rec.server_call_id)
            if stats is not None:
                for reason, count in sink.rejected_counts().items():
                    stats.reject(reason, count)  # video frames the worker could not decode
        failure = await self.uploads.wait_stored(rec.recording_id)
        if failure is not None:
            raise CallrecError(f"{failure} ({self.targets.describe(self.target_of(rec))})", ErrorCode.UNAVAILABLE)
        stored = await self.index.for_recording(rec.recording_id)
        if active is None:  # finalised by a process that wrote none of the chunks (after a restart)
            seen: dict[str, RecordedParticipant] = {}
            for c in stored:
                for p in json.loads(c.participants):
                    seen.setdefault(p["participant_id"], RecordedParticipant(**p))
            participants = list(seen.values())
        chunks = [c.info() for c in stored]
        duration = timedelta(milliseconds=sum(c.samples for c in stored) / 16)  # all chunks, any process
        if stats is not None:
            rec.media_stats = stats
        return FinishedMedia(chunks=chunks, duration=duration, participants=participants)
