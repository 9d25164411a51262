"""VideoWorker: a recording's video in its own process; failures reach the parent as status."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from callrec.core.call_media import MixTick
from callrec.core.model import VideoEncoding, i420_size
from callrec.core.ports import (
    ChunkWritten,
    FrameRejected,
    VideoWorkerError,
    VideoWorkerEvent,
    WorkerFailed,
    WorkerProgress,
)
from callrec.media.video_worker import VideoWorker
from callrec.media.writers.mp4 import Mp4Settings

FAST = Mp4Settings(preset="ultrafast")


def h264_clip(n: int, w: int = 320, h: int = 240) -> list[bytes]:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 30), Fraction(30)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "30"}
    out: list[bytes] = []
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), (i * 7) % 255, np.uint8), format="rgb24")
        frame.pts = i
        out += [bytes(p) for p in ctx.encode(frame.reformat(format="yuv420p"))]
    return out + [bytes(p) for p in ctx.encode(None)]


class Events:
    """Collects worker events (they arrive on the worker's reader thread)."""

    def __init__(self) -> None:
        self.items: list[VideoWorkerEvent] = []
        self.failed = threading.Event()

    def __call__(self, event: VideoWorkerEvent) -> None:
        self.items.append(event)
        if isinstance(event, WorkerFailed):
            self.failed.set()

    def of(self, kind: type) -> list:
        return [e for e in self.items if isinstance(e, kind)]


def stream(worker: VideoWorker, seconds: float, start: float = 0.0, clip: list[bytes] | None = None) -> None:
    raw = bytes(i420_size(160, 120))
    for tick in range(round(seconds / 0.02)):
        t = start + tick * 0.02
        worker.video("cam", raw, t, width=160, height=120, raw=True)
        if clip is not None and tick < len(clip):
            worker.video("h264", clip[tick], t)
        worker.audio(np.zeros(320, np.int16), t, {"cam": True})


def test_worker_records_rotates_and_reports(tmp_path: Path) -> None:
    events = Events()
    worker = VideoWorker(tmp_path / "0.mp4", FAST, on_event=events)
    worker.start()
    worker.join("cam", "Camera", VideoEncoding.I420, 160, 120)
    worker.join("h264", "김민수", VideoEncoding.H264)
    worker.join("voice", "Voice only", None)
    clip = h264_clip(50)
    stream(worker, 1.0, clip=clip)
    worker.rotate(tmp_path / "1.mp4")
    stream(worker, 1.0, start=1.0)
    worker.video("h264", b"\x00\x00\x00\x01\x65" + b"\xff" * 50, 2.0)  # a damaged slice
    worker.leave("voice")
    chunks = worker.finish(timeout=60)
    assert [(c.path.name, c.duration_s, c.video_frames) for c in chunks] == [("0.mp4", 1.0, 16), ("1.mp4", 1.0, 16)]
    assert events.of(ChunkWritten) == chunks
    assert [p.duration_s for p in events.of(WorkerProgress)] == [1.0, 1.0]
    assert [(r.participant_id, r.reason) for r in events.of(FrameRejected)] == [("h264", "corrupt")]
    assert not worker.failed and worker.exitcode == 0
    assert worker.video_frames_dropped >= 40  # raw frames beyond one per 1/16 s slot
    for chunk in chunks:
        with av.open(str(chunk.path)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 16
            assert chunk.bytes_written == chunk.path.stat().st_size


def test_killed_worker_is_a_failure_in_the_parent(tmp_path: Path) -> None:
    events = Events()
    worker = VideoWorker(tmp_path / "crash.mp4", FAST, on_event=events)
    worker.start()
    worker.join("cam", "Camera", VideoEncoding.I420, 160, 120)
    stream(worker, 0.5)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)  # what a segfault in FFmpeg looks like from outside
    assert events.failed.wait(20)
    assert worker.failed and "exited unexpectedly" in (worker.error or "")
    assert worker.audio(np.zeros(320, np.int16), 1.0, {}) is False  # commands after failure: no-ops
    with pytest.raises(VideoWorkerError, match="exited unexpectedly"):
        worker.finish(timeout=10)


def test_encoder_error_in_the_worker_is_reported(tmp_path: Path) -> None:
    events = Events()
    worker = VideoWorker(tmp_path / "missing-dir" / "x.mp4", FAST, on_event=events)
    worker.start()
    stream(worker, 0.1)
    assert events.failed.wait(20)
    with pytest.raises(VideoWorkerError, match=r"video worker: .*Error"):
        worker.finish(timeout=10)
    assert worker.exitcode == 1


def test_a_worker_that_falls_behind_fails_instead_of_growing_without_bound(tmp_path: Path) -> None:
    worker = VideoWorker(tmp_path / "slow.mp4", FAST, max_backlog_s=0.2)
    worker.start()  # the worker needs ~0.5 s to import: ticks pile up meanwhile
    accepted = [worker.audio(np.zeros(320, np.int16), i * 0.02, {}) for i in range(2000)]
    assert not all(accepted)
    assert worker.failed and "behind real time" in (worker.error or "")
    with pytest.raises(VideoWorkerError):
        worker.finish(timeout=10)


def test_parent_going_away_leaves_a_playable_file(tmp_path: Path) -> None:
    worker = VideoWorker(tmp_path / "orphan.mp4", FAST)
    worker.start()
    worker.join("cam", "Camera", VideoEncoding.I420, 160, 120)
    raw = bytes(i420_size(160, 120))
    for index in range(50):  # fed as a TickSink, the way CallMedia delivers ticks
        worker.video("cam", raw, index * 0.02, width=160, height=120, raw=True)
        block = np.zeros(320, np.int16)
        worker.on_tick(MixTick(index, index * 20_000, datetime.now(UTC), block, {"cam": block}, {"cam": True},
                               {"cam": "Camera"}))
    deadline = time.monotonic() + 20
    while worker.backlog_s > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker._cmd is not None
    worker._cmd.close()  # as if the server process died: the worker sees EOF and finalises
    worker._process.wait(20)  # type: ignore[union-attr]
    with av.open(str(tmp_path / "orphan.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 16
