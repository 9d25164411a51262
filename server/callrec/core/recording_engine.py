"""`RecordingEngine`: one recording's media, the part audio and video recordings share.

A `RecordingTimeline` places the control commands on the call's ticks and drives a
`Chunker`, which writes through a `ChunkOutput`: the audio recording's writer jobs
(`core.audio_recording.AudioRecording`) or the video recording's worker process
(`core.video_recording.VideoRecording`). Those two subclasses only build their output
(`_make_output`, called at the end of this `__init__`, so they set their own fields
first); everything else (commands, ticks, failure, the stop wait, finishing) is here, once.

Threading: `on_tick` runs on the event loop and must return quickly; blocking work runs
in the chunker's `SerialJobs` (an executor) or the video worker process.
`on_chunk_finished(chunk)` is called on the event loop, in chunk order, once a chunk's
media and metadata files are complete and fsynced; it may be a coroutine function (later
chunks wait for it, so it should only enqueue the upload).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from datetime import datetime
from pathlib import Path
from typing import Any

from callrec.core.call_media import MixTick
from callrec.core.chunker import Chunker, ChunkOutput, FinishedChunk, OnChunkFinished, RecordingMediaError, SerialJobs
from callrec.core.clock import SystemTime
from callrec.core.log import LogFields, get_logger
from callrec.core.metadata import milliseconds
from callrec.core.model import OUTPUT_SAMPLE_RATE, PauseInterval, RecordedParticipant, RecordingOptions
from callrec.core.ports import TimeSource
from callrec.core.timeline import RecordingTimeline

__all__ = ["RecordingEngine"]

log = get_logger(__name__)


class RecordingEngine:
    """Commands and ticks in, chunk files out (see the module docstring)."""

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
        executor: Executor | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        max_pending_jobs: int = 300,
        idle_timeout: float = 0.5,
        time: TimeSource | None = None,
        first_index: int = 0,
        start_paused: bool | None = None,
    ) -> None:
        """`first_index` and `start_paused` continue a recording recovered after a restart: its
        chunk indexes go on after the stored ones, paused if it was paused (else `pause_on_start`)."""
        self.recording_id = recording_id
        self.call_id = call_id
        self.options = options
        self.spool_dir = spool_dir
        self.resource_id = resource_id
        self.time = time or SystemTime()
        self._on_error = on_error
        self._error: BaseException | None = None
        self._closing = False
        self._finish_task: asyncio.Future[list[FinishedChunk]] | None = None
        self.log_fields: LogFields = {"recording_id": recording_id, "call_id": call_id}
        self.timeline = RecordingTimeline(
            pause_on_start=options.pause_on_start if start_paused is None else start_paused,
            start_at=start_at,
            time=self.time,
            idle_timeout=idle_timeout,
            log_fields=self.log_fields,
        )
        self.jobs = SerialJobs(executor, max_pending_jobs, self.fail, lambda: self._error is not None,
                               self.log_fields)
        #: Video frames the output rejected, by reason (SPEC media_stats wording); audio has none.
        self.frames_rejected_by_reason: dict[str, int] = {}
        self.chunker = Chunker(
            recording_id=recording_id,
            call_id=call_id,
            resource_id=resource_id,
            options=options,
            spool_dir=spool_dir,
            output=self._make_output(),
            jobs=self.jobs,
            on_chunk_finished=on_chunk_finished,
            log_fields=self.log_fields,
            first_index=first_index,
            journal_extra=self._journal_fields,
        )

    def _journal_fields(self) -> dict[str, Any]:
        """Extra fields for the open chunk's journal (what recovery needs of the output)."""
        return {}

    def _make_output(self) -> ChunkOutput:
        """The writer side (audio writer jobs, video worker); called once, at the end of `__init__`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ commands
    def pause(self, at: datetime) -> None:
        """Pause at `at` (no-op if already paused then). SKIP cuts the span, SILENCE keeps silence."""
        self.timeline.pause(at)

    def resume(self, at: datetime) -> None:
        """Resume at `at` (no-op if not paused then)."""
        self.timeline.resume(at)

    def stop(self, at: datetime) -> None:
        """Ignore media after `at`; `finish()` closes the last chunk."""
        self.timeline.stop(at)

    # ------------------------------------------------------------------ state
    @property
    def paused(self) -> bool:
        """The state last requested by pause()/resume() (or pause_on_start)."""
        return self.timeline.paused

    @property
    def chunks(self) -> list[FinishedChunk]:
        """Chunks finished (media + metadata in the spool) so far."""
        return list(self.chunker.done)

    @property
    def pause_intervals(self) -> list[PauseInterval]:
        """Every pause applied so far (an ongoing one without duration)."""
        return self.timeline.pause_intervals

    @property
    def participants(self) -> list[RecordedParticipant]:
        """Participants whose media was recorded, with their channel when unmixed."""
        return list(self.chunker.participants.values())

    @property
    def duration_ms(self) -> int | float:
        """Media written so far (pauses excluded in SKIP mode)."""
        return milliseconds(self.chunker.total_samples, OUTPUT_SAMPLE_RATE)

    @property
    def start_time(self) -> datetime | None:
        """When the recording started on the call's timeline (None before its first tick)."""
        return self.timeline.start_time

    @property
    def error(self) -> BaseException | None:
        """The failure that ended the recording's media, if any."""
        return self._error

    @property
    def pending_jobs(self) -> int:
        """Blocking jobs queued behind the executor: a lag metric."""
        return self.jobs.pending

    def count_rejected(self, reason: str) -> str:
        """Count one rejected frame under `reason`; returns the reason."""
        self.frames_rejected_by_reason[reason] = self.frames_rejected_by_reason.get(reason, 0) + 1
        return reason

    def rejected_counts(self) -> Mapping[str, int]:
        """Frames rejected by this recording's output, by reason."""
        return dict(self.frames_rejected_by_reason)

    # ------------------------------------------------------------------ ticks and failure
    def on_tick(self, tick: MixTick) -> None:
        """Take one tick (called by `CallMedia` on the event loop)."""
        self.timeline.tick_arrived()
        if self._closing or self.timeline.stopped or self._error is not None:
            return
        try:
            self.timeline.take(tick, self.chunker)
        except Exception as exc:  # a bug here must fail the recording, not the call's mixer
            log.exception("recording failed on a tick", **self.log_fields)
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """The recording's media cannot go on: remember why and tell `on_error` (once)."""
        if self._error is None:
            self._error = exc
            if self._on_error is not None:
                self._on_error(exc)

    # ------------------------------------------------------------------ finish
    async def finish(self, at: datetime | None = None, timeout: float = 2.0) -> list[FinishedChunk]:
        """Stop (at `at`, else after the last tick taken), close the last chunk, wait for all files.

        With `at`, waits up to `timeout` seconds for the ticks that reach `at` (the
        real-time clock delivers media a playout delay late), or until ticks stopped
        coming. Idempotent. Returns every chunk; raises `RecordingMediaError` if writing failed.
        """
        if self._finish_task is None:
            self._finish_task = asyncio.ensure_future(self._finish(at, timeout))
        return list(await asyncio.shield(self._finish_task))

    async def _finish(self, at: datetime | None, timeout: float) -> list[FinishedChunk]:
        await self.timeline.settle_stop(at, timeout)
        self._closing = True
        self.timeline.begin_without_media(at, self.chunker)
        end = self.timeline.end_position
        self.chunker.close_last(end)
        self.timeline.close_pauses(end)
        chunks = await self.chunker.drain()
        log.info("recording media finished", chunks=len(chunks), rejected=self.rejected_counts(),
                 error=str(self._error) if self._error else None, **self.log_fields)
        if self._error is not None:
            raise RecordingMediaError(f"recording {self.recording_id}: {self._error}") from self._error
        return chunks
