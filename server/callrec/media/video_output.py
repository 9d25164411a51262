"""Builds mp4 recordings: core's `VideoRecording` on a `VideoWorker` process with our encoder settings.

Test hook: with `CALLREC_TEST_VIDEO_WORKER_CRASH_AFTER_S=<seconds>` in the server's
environment, each mp4 recording's worker is SIGKILLed once that much audio was sent to
it: from the parent's side exactly what an FFmpeg segfault looks like. Integration tests
use it to prove that a crashed worker fails only its recording.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from callrec.core.chunker import OnChunkFinished
from callrec.core.model import RecordingOptions
from callrec.core.ports import VideoWorkerEvent, VideoWorkerPort
from callrec.core.video_recording import VideoOutputSpec, VideoRecording
from callrec.logs import get_logger
from callrec.media.video_worker import VideoWorker
from callrec.media.writers.mp4 import Mp4Settings

__all__ = ["CRASH_AFTER_ENV", "VideoRecordingFactory", "bits_per_second", "make_video_recording_factory",
           "output_spec"]

log = get_logger("video_output")

#: Environment variable of the crash test hook (see the module docstring).
CRASH_AFTER_ENV = "CALLREC_TEST_VIDEO_WORKER_CRASH_AFTER_S"

VideoRecordingFactory = Callable[..., VideoRecording]


def bits_per_second(rate: str | int) -> int:
    """FFmpeg-style rate ("1M", "800k", 1000000) as bits per second."""
    if isinstance(rate, int):
        return rate
    text = rate.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    return round(float(text[:-1] if scale != 1 else text) * scale)


def output_spec(settings: Mp4Settings) -> VideoOutputSpec:
    """What core needs to know of the encoder settings (metadata, chunk size estimate)."""
    return VideoOutputSpec(settings.width, settings.height, bits_per_second(settings.maxrate),
                           settings.audio_bit_rate)


def make_video_recording_factory(
    clock: str = "realtime",
    settings: Mp4Settings | None = None,
    environ: Mapping[str, str] | None = None,
) -> VideoRecordingFactory:
    """The `MediaRecorder`'s factory of mp4 recordings for a server running on `clock`.

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
    settings = settings or Mp4Settings()
    max_backlog_s = 600.0 if clock == "media" else 10.0
    finish_timeout = 600.0 if clock == "media" else 120.0

    def start_worker(path: Path, on_event: Callable[[VideoWorkerEvent], None]) -> VideoWorkerPort:
        worker = VideoWorker(path, settings, on_event=on_event, max_backlog_s=max_backlog_s,
                             crash_after_s=crash_after)
        worker.start()
        return worker

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
        first_index: int = 0,
        start_paused: bool | None = None,
    ) -> VideoRecording:
        return VideoRecording(
            recording_id, call_id, options, spool_dir, resource_id, on_chunk_finished,
            worker_factory=start_worker, spec=output_spec(settings), start_at=start_at, on_error=on_error,
            finish_timeout=finish_timeout, first_index=first_index, start_paused=start_paused,
        )

    return factory
