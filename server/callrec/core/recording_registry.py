"""The recording registry: start/pause/resume/stop, idempotency, one recording per call,
events on every change, and recovery after a restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from callrec.core.call_registry import SERVER_RESTARTED, Call, CallRegistry, RecordingNotice
from callrec.core.errors import (
    RPC_CODE_NUMBERS,
    CallrecError,
    ErrorCode,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RecordedElsewhere,
)
from callrec.core.limits import Limits, check_count, check_text
from callrec.core.log import get_logger
from callrec.core.model import (
    Format,
    PauseInterval,
    PauseMode,
    RecordedParticipant,
    RecordingError,
    RecordingOptions,
    RecordingState,
)
from callrec.core.options import check_option_sizes, validate_options
from callrec.core.ports import (
    ChunkIndexPort,
    FinishedMedia,
    MediaRecorderPort,
    OrphanRecordingsPort,
    RecordingEventsPort,
    RecordingRepositoryPort,
    UploadQueuePort,
)
from callrec.core.recording_state import Recording, new_recording_id

log = get_logger(__name__)

STOPPED_BY_REQUEST = "StoppedByRequest"
#: A node taking over a dead node's recording starts this many chunk indexes after the last indexed one:
#: the dead node may still finish its open chunk (and one finished but not yet indexed) from its spool.
TAKEOVER_INDEX_GAP = 3
LATE_CHUNK_POLL_S = 5.0
"""How often a returned node looks whether a recording it left chunks in has ended elsewhere."""
SERVER_SHUTDOWN = "ServerShutdown"


class NoMedia:
    """A media side that records nothing: the duration is the unpaused wall time, no chunks."""

    async def start(self, recording: Recording, call: Call | None) -> None:
        return None

    def pause(self, recording: Recording, at: datetime) -> None:
        return None

    def resume(self, recording: Recording, at: datetime) -> None:
        return None

    async def recover(self, recording: Recording) -> None:
        return None

    async def finish(self, recording: Recording) -> FinishedMedia:
        end = recording.stop_time or datetime.now(UTC)
        elapsed = end - recording.start_time
        if recording.options.pause_mode is PauseMode.SKIP:
            elapsed -= recording.paused_time(end)
        return FinishedMedia(chunks=(), duration=max(elapsed, timedelta(0)))


@dataclass(frozen=True)
class RegistrySettings:
    """What the registry needs from the server config."""

    resource_id: str
    idempotency_window: timedelta
    limits: Limits
    default_destination: str
    destinations: Collection[str]


class RecordingRegistry:
    """Owns every recording's life cycle; the only writer of recording state."""

    def __init__(
        self,
        repo: RecordingRepositoryPort,
        events: RecordingEventsPort,
        calls: CallRegistry,
        media: MediaRecorderPort,
        settings: RegistrySettings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.repo = repo
        self.events = events
        self.calls = calls
        self.media = media
        self.settings = settings
        self.now = now
        self._live: dict[str, Recording] = {}
        self._finalizers: dict[str, asyncio.Task[None]] = {}
        self._late_announcers: set[asyncio.Task[None]] = set()
        """Cluster mode: tasks announcing chunks this node finished after its recording ended elsewhere."""
        self._lock = asyncio.Lock()
        self.orphans: OrphanRecordingsPort | None = None
        """Cluster mode: dead nodes' recordings this node may take over (None on a single node)."""
        calls.on_call_ended(self._on_call_ended)

    # ---- queries -------------------------------------------------------------------------------
    async def get(self, recording_id: str) -> Recording:
        """The recording, or NotFound."""
        if not recording_id:
            raise InvalidArgument("recording_id is required")
        check_text(recording_id, "recording_id", self.settings.limits.max_id_bytes, "max_id_bytes")
        rec = self._live.get(recording_id) or await self.repo.get(recording_id)
        if rec is None:
            raise NotFound(f"no recording with id {recording_id!r}; ListRecordings shows the known ones")
        return rec

    async def finalized(self, recording_id: str) -> Recording:
        """The recording once its finalising (files stored, events published) is over."""
        task = self._finalizers.get(recording_id)
        if task is not None:
            await asyncio.shield(task)
        return await self.get(recording_id)

    def composite_count(self) -> int:
        """mp4 recordings in progress here (each runs a video composite: what admission counts)."""
        return sum(1 for r in self._live.values() if r.state.in_progress and r.options.format is Format.MP4)

    def is_live(self, recording_id: str) -> bool:
        """Whether this node records (or finalises) the recording now."""
        return recording_id in self._live

    def has_call(self, server_call_id: str) -> bool:
        """Whether a gateway has the call open on this node (or it waits here for a reconnect)."""
        return self.calls.get(server_call_id) is not None

    def in_progress_for_call(self, server_call_id: str) -> Recording | None:
        """The call's active or paused recording, if any."""
        for rec in self._live.values():
            if rec.server_call_id == server_call_id and rec.state.in_progress:
                return rec
        return None

    async def list(
        self, server_call_id: str, state: RecordingState | None, page_size: int, page_token: str
    ) -> tuple[list[Recording], str]:
        """A page of recordings, newest first."""
        limits = self.settings.limits
        check_text(server_call_id, "server_call_id", limits.max_id_bytes, "max_id_bytes")
        check_text(page_token, "page_token", limits.max_location_bytes, "max_location_bytes")
        if page_size == 0:
            page_size = 50
        if not 1 <= page_size <= 1000:
            raise InvalidArgument(f"page_size must be between 1 and 1000 (0 = 50); got {page_size}")
        try:
            recs, token = await self.repo.list(server_call_id, state, page_size, page_token)
        except ValueError:
            raise InvalidArgument(
                "page_token is not valid: pass the next_page_token of a previous ListRecordings response"
            ) from None
        return [self._live.get(r.recording_id, r) for r in recs], token

    def check_request_sizes(self, server_call_id: str, options: RecordingOptions) -> None:
        """InvalidArgument for a StartRecording field or list over its `[limits]` setting."""
        limits = self.settings.limits
        check_text(server_call_id, "server_call_id", limits.max_id_bytes, "max_id_bytes")
        check_text(options.request_id, "request_id", limits.max_id_bytes, "max_id_bytes")
        check_option_sizes(options, limits)

    # ---- commands ------------------------------------------------------------------------------
    async def start(self, server_call_id: str, options: RecordingOptions) -> Recording:
        """Start recording a call (or return the recording of a repeated request_id)."""
        if not server_call_id:
            raise InvalidArgument("server_call_id is required: the call to record")
        self.check_request_sizes(server_call_id, options)
        async with self._lock:
            if options.request_id:
                earlier = await self.repo.recall_request(options.request_id, self.settings.idempotency_window)
                if earlier is not None:
                    rec = await self.get(earlier)
                    if rec.server_call_id != server_call_id:
                        raise InvalidArgument(
                            f"request_id {options.request_id!r} was already used to start recording "
                            f"{earlier} of call {rec.server_call_id!r}; use a new request_id per start"
                        )
                    return rec
            validate_options(options, {"local", *self.settings.destinations}, self.settings.limits)
            call = self.calls.get(server_call_id)
            if call is None:
                raise NotFound(
                    f"no gateway has opened call {server_call_id!r}: a media gateway must send `open` "
                    "on MediaService.StreamMedia before a recording can start"
                )
            current = self.in_progress_for_call(server_call_id)
            if current is not None:
                raise FailedPrecondition(f"recording already in progress: {current.recording_id}")
            limits = self.settings.limits
            in_progress = [r for r in self._live.values() if r.state.in_progress]
            check_count(len(in_progress), limits.max_recordings, "too many recordings in progress",
                        "max_recordings")
            if options.format is Format.MP4:
                videos = sum(1 for r in in_progress if r.options.format is Format.MP4)
                check_count(videos, limits.max_video_recordings,
                            "too many mp4 recordings (each runs a video worker)", "max_video_recordings")
                if self.calls.admission is not None:
                    self.calls.admission.check_composite()
            if not options.destination and options.external_storage is None:
                options = replace(options, destination=self.settings.default_destination)
            now = self.now()
            rec = Recording(
                recording_id=new_recording_id(),
                server_call_id=server_call_id,
                call_id=call.call_id,
                call_connection_id=call.first_connection_id,
                options=options,
                state=RecordingState.INACTIVE if options.pause_on_start else RecordingState.ACTIVE,
                start_time=now,
            )
            if options.pause_on_start:
                rec.pause_intervals.append(PauseInterval(start_time=now))
            self._live[rec.recording_id] = rec
            async with self.repo.transaction():
                await self.repo.save(rec)
                if options.request_id:
                    await self.repo.remember_request(options.request_id, rec.recording_id)
            try:
                await self.media.start(rec, call)
            except CallrecError as exc:
                await self._fail(rec, exc)
                raise
            log.info("recording started", recording_id=rec.recording_id, server_call_id=server_call_id,
                     format=options.format.value, channel_type=options.channel_type.value)
            await self._state_changed(rec, active=not options.pause_on_start)
            return rec

    async def pause(self, recording_id: str) -> Recording:
        """Pause (a no-op when paused)."""
        async with self._lock:
            rec = await self._require_in_progress(recording_id, "paused")
            at = self.now()
            if rec.pause(at):
                self.media.pause(rec, at)
                await self.repo.save(rec)
                log.info("recording paused", recording_id=recording_id)
                await self._state_changed(rec, active=False)
            return rec

    async def resume(self, recording_id: str) -> Recording:
        """Resume (a no-op when active)."""
        async with self._lock:
            rec = await self._require_in_progress(recording_id, "resumed")
            at = self.now()
            if rec.resume(at):
                self.media.resume(rec, at)
                await self.repo.save(rec)
                log.info("recording resumed", recording_id=recording_id)
                await self._state_changed(rec, active=True)
            return rec

    async def stop(self, recording_id: str, reason: str = STOPPED_BY_REQUEST) -> Recording:
        """Stop and finalise in the background (idempotent)."""
        async with self._lock:
            rec = await self.get(recording_id)
            self._require_here(rec, "stopped")
            await self._begin_stop(rec, reason)
            return rec

    async def _begin_stop(self, rec: Recording, reason: str) -> None:
        if not rec.begin_stop(self.now(), reason):
            return
        await self.repo.save(rec)
        log.info("recording stopping", recording_id=rec.recording_id, reason=reason)
        await self._state_changed(rec, active=False)
        self._finalizers[rec.recording_id] = asyncio.get_running_loop().create_task(self._finalize(rec))

    async def _require_in_progress(self, recording_id: str, verb: str) -> Recording:
        rec = await self.get(recording_id)
        if not rec.state.in_progress:
            raise FailedPrecondition(
                f"recording {recording_id} is {rec.state.value} and cannot be {verb}; start a new recording"
            )
        self._require_here(rec, verb)
        return rec

    def _require_here(self, rec: Recording, verb: str) -> None:
        """FailedPrecondition for a recording in progress that another node records (cluster mode).

        A node holds every recording it records in `_live` (recovered ones too), so one in progress
        that is not there is another node's: changing it here would write a state its media never
        follows.
        """
        if rec.state.in_progress and rec.recording_id not in self._live:
            raise RecordedElsewhere(
                f"recording {rec.recording_id} is recorded by another node of the cluster (call "
                f"{rec.server_call_id!r}), and cannot be {verb} here; send the RPC with the header "
                "x-callrec-server-call-id so the proxy routes it to that node",
                rec.recording_id, rec.server_call_id,
            )

    async def _finalize(self, rec: Recording) -> None:
        try:
            finished = await self.media.finish(rec)
        except CallrecError as exc:
            await self._fail(rec, exc)
            return
        except Exception as exc:
            log.exception("finalising failed", recording_id=rec.recording_id)
            await self._fail(rec, CallrecError(f"internal error while finalising: {exc}"))
            return
        finally:
            self._finalizers.pop(rec.recording_id, None)
        rec.chunks = list(finished.chunks)
        rec.duration = finished.duration
        if finished.participants:
            rec.participants = list(finished.participants)
        if rec.chunks:
            await self.events.file_status_updated(rec)
        rec.transition(RecordingState.COMPLETED)
        await self.repo.save(rec)
        self._live.pop(rec.recording_id, None)
        log.info("recording completed", recording_id=rec.recording_id, chunks=len(rec.chunks),
                 duration_s=rec.duration.total_seconds())
        self.calls.notify(rec.server_call_id, RecordingNotice(rec.recording_id, rec.state))

    async def _fail(self, rec: Recording, exc: CallrecError) -> None:
        code = RPC_CODE_NUMBERS.get(exc.code, RPC_CODE_NUMBERS[ErrorCode.INTERNAL])
        rec.fail(RecordingError(code, exc.message), self.now())
        await self.repo.save(rec)
        self._live.pop(rec.recording_id, None)
        log.error("recording failed", recording_id=rec.recording_id, error=exc.message)
        await self.events.failed(rec, code, exc.message)
        self.calls.notify(rec.server_call_id, RecordingNotice(rec.recording_id, rec.state))

    async def _state_changed(self, rec: Recording, active: bool) -> None:
        await self.events.state_changed(rec, active)
        self.calls.notify(rec.server_call_id, RecordingNotice(rec.recording_id, rec.state))

    async def _on_call_ended(self, call: Call, reason: str) -> None:
        async with self._lock:
            rec = self.in_progress_for_call(call.server_call_id)
            if rec is not None:
                await self._begin_stop(rec, reason)

    # ---- life cycle ----------------------------------------------------------------------------
    async def recover(self) -> None:
        """After a restart: resume finalising STOPPING recordings; give in-progress ones the
        reconnect grace period, after which they stop with ServerRestarted."""
        for rec in await self.repo.in_progress():
            self._live[rec.recording_id] = rec
            try:
                await self.media.recover(rec)  # the chunks the crash left open, finished and queued
                if rec.state is RecordingState.STOPPING:
                    self._finalizers[rec.recording_id] = asyncio.get_running_loop().create_task(self._finalize(rec))
                    continue
                self.calls.adopt(rec.server_call_id, rec.call_id, rec.call_connection_id, SERVER_RESTARTED)
                await self.media.start(rec, None)
            except CallrecError as exc:  # never a crash loop: this recording fails, the server starts
                log.error("recording could not be recovered", recording_id=rec.recording_id, error=exc.message)
                await self._fail(rec, CallrecError(f"could not recover after a restart: {exc.message}", exc.code))
                continue
            except Exception as exc:
                log.exception("recording could not be recovered", recording_id=rec.recording_id)
                await self._fail(rec, CallrecError(f"could not recover after a restart: {exc}"))
                continue
            log.info("recording recovered", recording_id=rec.recording_id, state=rec.state.value)

    async def recover_moved_away(self) -> int:
        """Cluster mode, after a restart: finish the chunks this node's crash left open in recordings that
        another node took over meanwhile (their gateway re-opened the call there), and queue them for
        upload, so nothing this node wrote is lost. Returns how many recordings had such leftovers."""
        if self.orphans is None:
            return 0
        count = 0
        for recording_id in self.media.spooled():
            if recording_id in self._live:
                continue
            rec = await self.repo.get(recording_id)
            if rec is None or rec.state is RecordingState.FAILED:
                continue
            try:
                indexes = await self.media.recover(rec)
                count += 1
            except CallrecError as exc:
                log.error("could not finish a chunk left by the crash", recording_id=recording_id, error=exc.message)
                continue
            if indexes:
                task = asyncio.get_running_loop().create_task(self._announce_late(recording_id, indexes))
                self._late_announcers.add(task)
                task.add_done_callback(self._late_announcers.discard)
        return count

    async def _announce_late(self, recording_id: str, indexes: Collection[int]) -> None:
        """Chunks this node finished after a crash, in a recording another node took over: once they are
        stored and the recording has ended (it may still be recorded elsewhere), the recording lists them
        and one more RecordingFileStatusUpdated announces those not announced yet (each chunk once)."""
        failure = await self.media.wait_stored(recording_id)
        if failure is not None:
            log.error("late chunks could not be stored", recording_id=recording_id, error=failure)
            return
        while True:
            rec = await self.repo.get(recording_id)
            if rec is None or rec.state is RecordingState.FAILED:
                return
            if rec.state is RecordingState.COMPLETED:
                break
            await asyncio.sleep(LATE_CHUNK_POLL_S)
        announced = {c.index for c in rec.chunks}
        stored = await self.media.stored_chunks(recording_id)
        late = [c for c in stored if c.chunk_index in indexes and c.chunk_index not in announced]
        if not late:
            return
        rec.chunks = sorted([*rec.chunks, *(c.info() for c in late)], key=lambda c: c.index)
        rec.duration = timedelta(milliseconds=sum(c.samples for c in stored) / 16)  # 16 kHz samples
        await self.repo.save(rec)
        await self.events.file_status_updated(replace(rec, chunks=[c.info() for c in late]))
        log.info("late chunks announced", recording_id=recording_id, indexes=[c.chunk_index for c in late])

    async def take_over(self, server_call_id: str) -> None:
        """Cluster mode: a gateway opens here a call whose recording node died: its recordings go on here.

        Same recording ids; the chunk indexes continue after the indexed ones, leaving room for the two
        chunks the dead node may still finish from its spool when it comes back (so no object key is
        ever used twice); a paused recording stays paused.
        """
        if self.orphans is None:
            return
        async with self._lock:
            for rec in await self.orphans.take_over_call(server_call_id):
                self._live[rec.recording_id] = rec
                try:
                    self.calls.adopt(rec.server_call_id, rec.call_id, rec.call_connection_id, SERVER_RESTARTED)
                    await self.media.start(rec, None, first_index_gap=TAKEOVER_INDEX_GAP)
                except CallrecError as exc:
                    await self._fail(rec, CallrecError(f"could not take over from a dead node: {exc.message}",
                                                       exc.code))
                    continue
                log.info("recording taken over from a dead node", recording_id=rec.recording_id,
                         server_call_id=server_call_id, state=rec.state.value)

    async def end_abandoned(self, dead_for_s: float) -> int:
        """Cluster mode: end the recordings of nodes dead for more than `dead_for_s` that no gateway
        re-opened anywhere (ServerRestarted, their stored chunks listed), so none stays ACTIVE forever."""
        if self.orphans is None:
            return 0
        ended = 0
        async with self._lock:
            for rec in await self.orphans.take_over_abandoned(dead_for_s):
                self._live[rec.recording_id] = rec
                log.warning("recording abandoned by a dead node; ending it", recording_id=rec.recording_id,
                            server_call_id=rec.server_call_id)
                if rec.state is RecordingState.STOPPING:
                    self._finalizers[rec.recording_id] = asyncio.get_running_loop().create_task(self._finalize(rec))
                else:
                    await self._begin_stop(rec, SERVER_RESTARTED)
                ended += 1
        return ended

    async def drain(self, timeout: float) -> None:
        """Stop every recording in progress and wait for them to be finalised (SIGTERM)."""
        async with self._lock:
            for rec in list(self._live.values()):
                if rec.state.in_progress:
                    await self._begin_stop(rec, SERVER_SHUTDOWN)
        for task in list(self._late_announcers):
            task.cancel()
        pending = list(self._finalizers.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def uploads_retried(self, recording_id: str, uploads: UploadQueuePort, index: ChunkIndexPort) -> Recording:
        """After RetryUploads re-queued a recording's failed files: wait until they are stored.

        A FAILED recording whose files all end up stored gets its chunks (from the chunk index),
        its duration and participants when the failure left them unset, and one
        RecordingFileStatusUpdated; it stays FAILED (terminal) and keeps its `error`. A recording
        still in progress or stopping needs nothing here: its own finalising waits for the files.
        """
        rec = await self.get(recording_id)
        if rec.state is not RecordingState.FAILED:
            return rec
        failure = await uploads.wait_stored(recording_id)
        rec = await self.get(recording_id)
        if failure is not None:
            log.warning("retried uploads failed again", recording_id=recording_id, error=failure)
            return rec
        stored = await index.for_recording(recording_id)
        rec.chunks = [c.info() for c in stored]
        if not rec.duration:
            rec.duration = timedelta(milliseconds=sum(c.samples for c in stored) / 16)  # 16 kHz samples
        if not rec.participants:
            seen: dict[str, RecordedParticipant] = {}
            for c in stored:
                for p in json.loads(c.participants):
                    seen.setdefault(p["participant_id"], RecordedParticipant(**p))
            rec.participants = list(seen.values())
        await self.repo.save(rec)
        if rec.chunks:
            await self.events.file_status_updated(rec)
        log.info("retried uploads stored", recording_id=recording_id, chunks=len(rec.chunks))
        return rec
