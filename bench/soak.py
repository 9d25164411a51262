"""`python -m bench.soak [--quick]`: a soak run through crashes and a store outage (issue 9).

For `--minutes` (default 30), `--calls` gateways (default 20) each stream one participant (or
`--participants` of them: the first carries the clock tone, the others quiet noise, to load the server), in real
time, into a `callrec serve` on the real-time clock whose default storage target is moto's S3
server. Every recording is chunked every `--chunk-seconds` (60), in a mix of formats: mixed wav,
mixed mp3, unmixed wav, and one mixed mp4 (at most one: a 1080p composite is the heaviest thing a
2-core machine runs). Meanwhile:

* the server is killed with SIGKILL at random moments, one kill every `--kill-every MIN MAX`
  minutes (default 2 to 5), and started again on the same port and data directory (reconnect
  grace 60 s, upload backoff at most 5 s); every gateway re-opens its call when its stream ends;
* once, at a random moment away from the restarts, the store goes away for `--outage-minutes`
  (default 10). moto's server keeps its state in memory only (a restarted moto has no bucket, no
  credentials, no objects), so moto keeps running and the server reaches it through a TCP forwarder
  on loopback (`PortForward` of the outage tests), which is switched off (connections refused,
  connections in flight cut) and on again on the same port.

Each participant's audio encodes the gateway's clock: second s of a call is two tones,
300 + 40 (s mod 50) Hz and 2400 + 40 (s div 50) Hz, unique for 3500 s (the crash test's single
tone, 300 + 40 s Hz, runs out of spectrum after ~190 s). At the end every recording
is stopped, the bench waits until each is COMPLETED or FAILED, downloads every chunk through
ContentService, decodes it, labels every 100 ms with the second heard (as the crash test does), and
reports:

* media lost per kill and call: from the last recorded instant before the kill to the kill
  (100 ms resolution); also, for information, the gap between the gateway re-opening the call and
  the first recorded instant after the restart, and gaps that no kill explains;
* uploads lost: chunks listed by the recording whose media or metadata could not be downloaded or
  decoded, chunk indexes missing from 0..n-1, the recording's outbox files not stored at the end,
  and recordings FAILED;
* seconds recorded twice (or out of order), objects overwritten in the bucket (it is versioned);
* the outage and how long after it every upload queued before its end took to be stored;
* per minute: media recorded, frames the server rejected as late (its /metrics, on loopback), and
  the CPU of the server, its video workers, moto, the bench's gateways and the whole machine, so
  that media missing where no kill explains it can be told apart (a warning, not an exit
  criterion): the gateways and moto share the machine with the server, and so does anything else
  running on it.

Exit status 1 if any call lost more than 1 s at a kill, any upload was lost, or anything was recorded
twice. Progress goes to stderr, the tables to stdout; the server's log and the measurements (JSON)
are kept in the temp directory (their paths are printed).
Not part of the test suite (pytest collects `tests/` only). Everything listens on and talks to
127.0.0.1 only; every loop is bounded in count and time, and the run has a hard deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

import bench  # noqa: F401  (sys.path)
from bench.common import children, machine_busy, proc_cpu
from callrec.v1 import recording_pb2 as pb
from callrec.v1 import uploads_pb2 as upb
from callrec_client import AsyncCallrecClient
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, free_port, unique
from tests.integration.audio_recording import FILE_STATUS, download
from tests.integration.storage_servers import TEST_BUCKET, MotoServer
from tests.integration.test_crash_recovery import RATE, WINDOW, decoded_audio
from tests.integration.test_outbox_outages import PortForward
from tests.integration.test_storage_e2e import isolated_aws_env, write_config

FRAME_SAMPLES = RATE // 50  # 20 ms frames
LOW_HZ, HIGH_HZ, STEP_HZ = 300.0, 2400.0, 40.0
LOW_STEPS, HIGH_STEPS = 50, 70  # low tone 300..2260 Hz, high tone 2400..5160 Hz
MAX_SECONDS = LOW_STEPS * HIGH_STEPS  # seconds of gateway clock with a unique pair of tones
AMPLITUDE = 0.15  # each tone; the pair peaks at 0.3
MAX_PARTICIPANTS = 20  # per call (`--participants`): the server's default limit is higher
LOST_LIMIT_S = 1.0  # media lost per kill above this fails the run
GRACE_S = 60.0
BACKOFF_MAX_S = 5.0
KILL_TAIL_S = 30.0  # no kill in the last 30 s: the server records a while after its last restart
AWAY_FROM_RESTART_S = 15.0  # the outage starts and ends at least this far from a kill
PROXIMITY_S = 0.3  # gaps under this are resolution, not loss
LIST_BELOW = 200  # pending uploads: below this the monitor lists them (after the outage), above it counts only


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- the tone


def tones(second: int) -> tuple[float, float]:
    """The two frequencies of one second of gateway clock."""
    return LOW_HZ + STEP_HZ * (second % LOW_STEPS), HIGH_HZ + STEP_HZ * (second // LOW_STEPS)


def frame_pcm(frame: int) -> bytes:
    """Frame `frame` (20 ms each from the gateway's epoch) as 16 kHz mono pcm16le, phase-continuous."""
    start = frame * FRAME_SAMPLES
    low, high = tones(start // RATE)
    t = (np.arange(FRAME_SAMPLES) + start) / RATE
    signal = AMPLITUDE * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
    return (signal * 32767).astype("<i2").tobytes()


#: What the extra participants of `--participants` send: quiet noise (rms 0.001; the same frame from each, so 9 of
#: them mix to 0.009 in phase, under the silence threshold of `label_windows`; spread over the spectrum where the
#: tones are peaks).
NOISE_PCM = (np.random.default_rng(7).normal(0.0, 0.001, FRAME_SAMPLES) * 32767).astype("<i2").tobytes()

_FREQS = np.fft.rfftfreq(WINDOW, 1 / RATE)
_LOW_BAND = (_FREQS >= LOW_HZ - STEP_HZ / 2) & (_FREQS < LOW_HZ + STEP_HZ * (LOW_STEPS - 0.5))
_HIGH_BAND = (_FREQS >= HIGH_HZ - STEP_HZ / 2) & (_FREQS < HIGH_HZ + STEP_HZ * (HIGH_STEPS - 0.5))
_HANN = np.hanning(WINDOW)


def label_windows(audio: np.ndarray) -> list[int]:
    """The gateway second heard in each whole 100 ms window of `audio` (float, [-1, 1]); -1 = silence."""
    n = len(audio) // WINDOW
    if n == 0:
        return []
    blocks = audio[: n * WINDOW].reshape(n, WINDOW).astype(np.float64)
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    spectrum = np.abs(np.fft.rfft(blocks * _HANN, axis=1))
    low = _FREQS[_LOW_BAND][np.argmax(spectrum[:, _LOW_BAND], axis=1)]
    high = _FREQS[_HIGH_BAND][np.argmax(spectrum[:, _HIGH_BAND], axis=1)]
    labels = np.rint((high - HIGH_HZ) / STEP_HZ) * LOW_STEPS + np.rint((low - LOW_HZ) / STEP_HZ)
    labels[rms < 0.02] = -1
    return [int(v) for v in labels]


# ------------------------------------------------------------------------------------ the analysis


@dataclass
class Run:
    """Consecutive windows hearing the same second."""

    second: int
    n: int
    first: int  # window indexes in the recording
    last: int


def clean_runs(labels: list[int]) -> tuple[list[Run], int]:
    """Runs of equal labels; short runs (< 3 windows) that do not follow on are noise (a window across a
    second's change or a codec's edge). Returns (runs, noise windows)."""
    raw: list[Run] = []
    for k, second in enumerate(labels):
        if second < 0:
            continue
        if raw and raw[-1].second == second and raw[-1].last == k - 1:
            raw[-1].n += 1
            raw[-1].last = k
        else:
            raw.append(Run(second, 1, k, k))
    runs: list[Run] = []
    noise = 0
    for run in raw:
        prev = runs[-1] if runs else None
        if run.n < 3 and (prev is None or run.second not in (prev.second, prev.second + 1)):
            noise += run.n
            continue
        if prev is not None and prev.second == run.second and run.first - prev.last <= 3:
            prev.n += run.n  # one second split by a noise window or a chunk edge's silence
            prev.last = run.last
            continue
        runs.append(run)
    return runs, noise


def segments_of(runs: list[Run]) -> list[tuple[float, float]]:
    """The recorded spans of gateway clock, [from, to) in seconds, in recording order.

    A second whose neighbour is recorded right before it starts at its whole second; one whose
    neighbour follows it ends at the next whole second; a run of n windows lasts n / 10 s.
    """
    spans: list[tuple[float, float]] = []
    for i, run in enumerate(runs):
        before = i > 0 and runs[i - 1].second == run.second - 1 and run.first - runs[i - 1].last <= 3
        after = i + 1 < len(runs) and runs[i + 1].second == run.second + 1 and runs[i + 1].first - run.last <= 3
        length = min(run.n, 10) / 10
        if before and after:
            spans.append((run.second, run.second + 1.0))
        elif after:
            spans.append((run.second + 1.0 - length, run.second + 1.0))
        else:
            spans.append((run.second, run.second + length))
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and merged[-1][0] <= start <= merged[-1][1] + 0.15:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass
class CallResult:
    """What one call's recording holds, from its decoded chunks."""

    seconds_recorded: float = 0.0
    lost: list[float] = field(default_factory=list)  # per kill: last recorded instant before it -> kill
    resume: list[float] = field(default_factory=list)  # per kill: gateway re-opened -> first recorded instant
    duplicates: int = 0  # seconds heard for more than 1.2 s in all
    out_of_order: int = 0  # runs of a second earlier than one already heard
    other_gaps: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds) no kill explains
    noise_windows: int = 0
    segments: list[tuple[float, float]] = field(default_factory=list)  # recorded spans of gateway clock


def analyse(labels: list[int], kills: list[float], reopens: list[float | None]) -> CallResult:
    runs, noise = clean_runs(labels)
    segs = segments_of(runs)
    out = CallResult(noise_windows=noise, segments=segs)
    out.seconds_recorded = sum(end - start for start, end in segs)
    heard = Counter[int]()
    latest = -1
    for run in runs:
        heard[run.second] += run.n
        if run.n >= 3:
            if run.second < latest:
                out.out_of_order += 1
            latest = max(latest, run.second)
    out.duplicates = sum(1 for n in heard.values() if n > 12)
    for kill, reopened in zip(kills, reopens, strict=True):
        before = [min(end, kill) for start, end in segs if start < kill]
        out.lost.append(max(0.0, kill - max(before)) if before else math.inf)
        # a span that runs across the kill (the gateway re-sent what the server had not acknowledged)
        # resumed at once: its start is before the kill, so the gap comes out as 0
        after = [start for start, end in segs if end > kill]
        out.resume.append(max(0.0, min(after) - reopened) if after and reopened is not None else math.nan)
    ordered = sorted(segs)
    for (_, end0), (start1, _) in itertools.pairwise(ordered):
        gap = start1 - end0
        if gap > PROXIMITY_S and not any(end0 - 2.0 <= k <= start1 for k in kills):
            out.other_gaps.append((end0, gap))
    return out


# ------------------------------------------------------------------------------------- the calls


@dataclass
class Call:
    index: int
    fmt: str  # wav, mp3, mp4
    channel_type: str  # mixed, unmixed
    call_id: str = field(default_factory=lambda: unique("soak"))
    recording_id: str = ""

    @property
    def name(self) -> str:
        kind = "unmixed-wav" if self.channel_type == "unmixed" else self.fmt
        return f"{self.index:02d}-{kind}"

    def options(self, chunk_seconds: float) -> dict[str, Any]:
        return {"content_type": "audio_video" if self.fmt == "mp4" else "audio", "format": self.fmt,
                "channel_type": self.channel_type, "chunk_max_duration": timedelta(seconds=chunk_seconds)}


def plan_calls(count: int, mp4: bool) -> list[Call]:
    cycle = [("wav", "mixed"), ("mp3", "mixed"), ("wav", "unmixed")]
    calls = []
    for i in range(count):
        fmt, channels = ("mp4", "mixed") if mp4 and i == 3 else cycle[i % len(cycle)]
        calls.append(Call(i, fmt, channels))
    return calls


class Gateway:
    """Streams one call's clock tone in real time; re-opens the call whenever its stream ends.

    Frames are timed from the shared epoch (frame i at i x 20 ms), so the gateway clock is the
    bench's clock; frames due while the stream is down are dropped (as a live gateway would).
    """

    def __init__(self, target: str, call: Call, epoch: float, deadline: float, participants: int = 1) -> None:
        self.target, self.call, self.epoch, self.deadline = target, call, epoch, deadline
        self.participants = participants
        self.stopped = False
        self.frame = 0
        self.sequence = 0
        self.opens: list[float] = []  # gateway seconds of the first frame of each stream
        self.failures = 0
        self.last_error = ""
        self.skipped_frames = 0  # the loop fell more than a second behind and skipped ahead
        self.max_late_s = 0.0  # how far behind its schedule the gateway sent a frame, at worst
        self.window_late_s = 0.0  # the same since the sampler last looked

    def now(self) -> float:
        return time.monotonic() - self.epoch

    async def run(self) -> None:
        while not self.stopped and time.monotonic() < self.deadline:
            gw = GatewayConnection(self.target, self.call.call_id, gateway_id=f"gw-{self.call.index}")
            try:
                async with gw:
                        await gw.join("p", f"Speaker {self.call.index}", audio="pcm16le", sample_rate=RATE, channels=1)
                        for extra in range(1, self.participants):  # after "p": channel 0 of unmixed stays its tone
                            await gw.join(f"q{extra}", f"Listener {extra}", audio="pcm16le", sample_rate=RATE,
                                          channels=1)
                        self.frame = max(self.frame, int(self.now() * 50))
                        self.opens.append(self.frame / 50)
                        stream = asyncio.create_task(self._stream(gw))
                        closed = asyncio.create_task(gw.closed.wait())
                        try:
                            done, _ = await asyncio.wait({stream, closed}, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            for task in (stream, closed):
                                task.cancel()
                        if stream in done and stream.exception() is not None:
                            raise stream.exception()  # type: ignore[misc]
                        if stream not in done:
                            raise EOFError(f"stream ended: {gw.error}")
                        with contextlib.suppress(Exception):
                            await gw.end(timeout=10)
                        return
            except Exception as exc:  # the server went away: re-open the call once it is back
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                await asyncio.sleep(0.2)
            finally:
                # GatewayConnection.close() half-closes only a stream still open: after a failed one its
                # request iterator waits forever in grpc's consumer task ("Task was destroyed but it is
                # pending", "aclose(): asynchronous generator is already running" at GC). End it here.
                with contextlib.suppress(asyncio.QueueFull):
                    gw._requests.put_nowait(None)

    async def _stream(self, gw: GatewayConnection) -> None:
        while not self.stopped and time.monotonic() < self.deadline:
            due = int(self.now() * 50)
            self.max_late_s = max(self.max_late_s, (due - self.frame) / 50)
            self.window_late_s = max(self.window_late_s, (due - self.frame) / 50)
            if due - self.frame > 50:
                self.skipped_frames += due - self.frame
                self.frame = due
            while self.frame <= due and not self.stopped:
                self.sequence += 1
                timestamp_us = 1_000_000 + self.frame * 20_000
                if self.participants == 1:
                    await gw.audio("p", self.sequence, timestamp_us, frame_pcm(self.frame))
                else:  # one media_batch a tick, as gateways send many participants
                    await gw.batch(audio=[gw.audio_frame("p", self.sequence, timestamp_us, frame_pcm(self.frame))]
                                   + [gw.audio_frame(f"q{k}", self.sequence, timestamp_us, NOISE_PCM)
                                      for k in range(1, self.participants)])
                self.frame += 1
            await asyncio.sleep(max(0.0, self.frame / 50 - self.now()))


# ------------------------------------------------------------------------------------------ the run


@dataclass
class Kill:
    at: float  # gateway seconds
    during_outage: bool
    playout_delay_s: float = math.nan  # the server's largest playout delay just before (its /metrics)
    restart_s: float = math.nan  # SIGKILL -> the new server answers health checks
    reopen_s: float = math.nan  # SIGKILL -> every gateway streams again
    error: str = ""


@dataclass
class Outage:
    planned_at: float = math.nan
    duration_s: float = 0.0
    started: float = math.nan  # gateway seconds
    ended: float = math.nan
    ended_wall: float = math.nan  # time.time() at the end
    catch_up_s: float = math.nan  # end -> every upload queued before the end is stored
    pending_peak: int = 0
    pending_at_end: int = -1  # uploads queued before the end, still pending at the first look after it


@dataclass
class Sample:
    """5 s of the run."""

    at: float  # gateway seconds at the end
    server_pct: float  # of one core
    bench_pct: float  # this process (the gateways), of one core
    machine_pct: float  # of all cores together
    bench_lag_s: float  # the gateways' worst send lag
    moto_pct: float  # the store (moto), of one core: it shares the machine with the server
    workers_pct: float  # the server's child processes (video workers), of one core
    late_per_s: float  # frames the server rejected as late, all calls
    playout_delay_s: float = math.nan  # the server's largest playout delay at the end of the sample


@dataclass
class Settings:
    minutes: float
    calls: int
    kill_every: tuple[float, float]
    outage_minutes: float
    seed: int
    chunk_seconds: float
    mp4: bool
    final_wait_s: float
    keep: bool
    playout_delay_ms: int | None = None  # None: the server's default
    participants: int = 1  # per call: "p" with the tone, the rest quiet noise


def plan_chaos(s: Settings, rng: random.Random, start: float, end: float) -> tuple[list[float], float]:
    """Kill moments (gateway seconds) and the outage's start."""
    kills: list[float] = []
    low, high = (60 * v for v in s.kill_every)
    t = start + rng.uniform(low, high)
    while t < end - KILL_TAIL_S and len(kills) < 10_000:
        kills.append(t)
        t += rng.uniform(low, high)
    duration = 60 * s.outage_minutes
    if duration <= 0:
        return kills, math.nan
    earliest, latest = start + 10.0, end - duration - 20.0
    if latest < earliest:
        raise SystemExit(f"--outage-minutes {s.outage_minutes} does not fit in a {s.minutes}-minute run")

    def clear(at: float) -> bool:
        return all(abs(at - k) >= AWAY_FROM_RESTART_S and abs(at + duration - k) >= AWAY_FROM_RESTART_S
                   for k in kills)

    for _ in range(2000):
        at = rng.uniform(earliest, latest)
        if clear(at):
            return kills, at
    # no clear moment: the best one (the chaos runs one thing at a time, so a restart is still never cut)
    candidates = [earliest + (latest - earliest) * i / 200 for i in range(201)]
    return kills, max(candidates, key=lambda a: min([abs(a - k) for k in kills] + [abs(a + duration - k)
                                                                                  for k in kills] + [1e9]))


async def list_uploads(client: AsyncCallrecClient, state: str | None = None, recording_id: str = "") -> list[Any]:
    """Every upload (all pages, bounded)."""
    out: list[Any] = []
    token = ""
    for _ in range(1000):
        page = await client.list_uploads(state=state, recording_id=recording_id, page_size=1000, page_token=token)
        out.extend(page.uploads)
        token = page.next_page_token
        if not token:
            break
    return out


class Soak:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.rng = random.Random(s.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="callrec-soak-"))
        self.moto: MotoServer | None = None
        self.forward: PortForward | None = None
        self.server: ServerProcess | None = None
        self.calls = plan_calls(s.calls, s.mp4)
        self.gateways: list[Gateway] = []
        self.kills: list[Kill] = []
        self.outage = Outage(duration_s=60 * s.outage_minutes)
        self.epoch = time.monotonic()
        self.recording_from = math.nan
        self.stopped_at = math.nan
        self.monitor_done = False
        self.states: dict[str, pb.Recording] = {}
        self.results: dict[str, CallResult] = {}
        self.uploads: dict[str, dict[str, int]] = {}  # call -> counters
        self.events: dict[str, int] = {}
        self.media: dict[str, dict[str, float]] = {}  # call -> media_stats of the final state
        self.overwritten = (0, 0)  # (keys with more than one version, of them with different content)
        self.objects = 0
        self.errors: list[str] = []
        self.samples: list[Sample] = []  # every 5 s
        self.metrics_port = free_port()

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def stamp(self) -> str:
        t = self.now()
        return f"[{int(t // 60):02d}:{t % 60:04.1f}]"

    # -------------------------------------------------------------------------------- set-up

    def start_services(self) -> None:
        self.moto = MotoServer().start()
        self.moto.create_bucket(TEST_BUCKET)
        self.moto.client().put_bucket_versioning(Bucket=TEST_BUCKET, VersioningConfiguration={"Status": "Enabled"})
        self.forward = PortForward(self.moto.port).start()
        target = self.moto.target(prefix="soak", endpoint_url=f"http://127.0.0.1:{self.forward.port}")
        config = write_config(self.tmp / "callrec.toml", {"soak": target}, default="soak")
        self.server = ServerProcess(
            self.tmp / "data", "--config", str(config), "--clock", "realtime", "--reconnect-grace", str(GRACE_S),
            "--upload-backoff-max", str(BACKOFF_MAX_S), "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            *(("--playout-delay-ms", str(self.s.playout_delay_ms)) if self.s.playout_delay_ms is not None else ()),
            env=isolated_aws_env(),
        ).start(timeout=60)
        log(f"moto on 127.0.0.1:{self.moto.port}, its forwarder on 127.0.0.1:{self.forward.port}, "
            f"callrec on {self.server.target}; data in {self.tmp}")

    def stop_services(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
        if self.forward is not None:
            with contextlib.suppress(Exception):
                self.forward.stop()
        if self.moto is not None:
            with contextlib.suppress(Exception):
                self.moto.stop()

    # ----------------------------------------------------------------------------------- run

    async def run(self) -> None:
        assert self.server is not None
        s = self.s
        hard_deadline = time.monotonic() + 60 * s.minutes + 300 + s.final_wait_s + 600
        self.epoch = time.monotonic()
        self.gateways = [Gateway(self.server.target, c, self.epoch, hard_deadline, s.participants)
                         for c in self.calls]
        tasks = [asyncio.create_task(g.run()) for g in self.gateways]
        monitor: asyncio.Task[None] | None = None
        sampler: asyncio.Task[None] | None = None
        try:
            await self._until(lambda: all(g.opens for g in self.gateways), 60, "gateways open their calls")
            async with AsyncCallrecClient(self.server.target) as client:
                for call in self.calls:
                    rec = await client.start_recording(call.call_id, **call.options(s.chunk_seconds))
                    call.recording_id = rec.recording_id
                self.recording_from = self.now()
                end = self.recording_from + 60 * s.minutes
                kills, outage_at = plan_chaos(s, self.rng, self.recording_from, end)
                self.outage.planned_at = outage_at
                log(f"{self.stamp()} {len(self.calls)} recordings started ({', '.join(c.name for c in self.calls)}); "
                    f"{len(kills)} kills planned; outage of {s.outage_minutes:g} min at "
                    f"{self._clock(outage_at - self.recording_from)}")
                monitor = asyncio.create_task(self._monitor_uploads(client, hard_deadline))
                sampler = asyncio.create_task(self._sample(hard_deadline))
                await self._chaos(kills, outage_at, end)
                await self._sleep_until(end)
                await self._finish(client, tasks)
                self.monitor_done = True
                await asyncio.wait_for(monitor, 30)
                await asyncio.wait_for(sampler, 30)
                await self._collect(client)
        finally:
            self.monitor_done = True
            for g in self.gateways:
                g.stopped = True
            for task in [*tasks, *(t for t in (monitor, sampler) if t is not None)]:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    @staticmethod
    def _clock(seconds: float) -> str:
        if math.isnan(seconds):
            return "-"
        return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"

    async def _until(self, condition: Any, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.errors.append(f"timed out after {timeout:.0f} s waiting until {what}")
                log(f"{self.stamp()} ! {self.errors[-1]}")
                return False
            await asyncio.sleep(0.1)
        return True

    async def _sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))

    async def _chaos(self, kills: list[float], outage_at: float, end: float) -> None:
        plan: list[tuple[float, str]] = [(k, "kill") for k in kills]
        if not math.isnan(outage_at):
            plan += [(outage_at, "outage-start"), (outage_at + self.outage.duration_s, "outage-end")]
        plan.sort()
        last_kill = -math.inf
        for at, kind in plan:
            if kind == "kill":
                at = max(at, last_kill + 10.0)  # a slow restart pushes the next kill back
                if at > end - 5.0:
                    continue
            await self._sleep_until(at)
            if kind == "kill":
                await self._kill()
                last_kill = self.kills[-1].at
            elif kind == "outage-start":
                assert self.forward is not None
                await asyncio.to_thread(self.forward.stop)
                self.outage.started = self.now()
                log(f"{self.stamp()} store outage: the forwarder to moto is off")
            else:
                assert self.forward is not None
                await asyncio.to_thread(self.forward.start)
                self.outage.ended = self.now()
                self.outage.ended_wall = time.time()
                log(f"{self.stamp()} store back after {self.outage.ended - self.outage.started:.0f} s")

    def _in_outage(self) -> bool:
        return not math.isnan(self.outage.started) and math.isnan(self.outage.ended)

    async def _kill(self) -> None:
        assert self.server is not None
        delay = await asyncio.to_thread(self._metric, "callrec_playout_delay_max_seconds")
        at = self.now()
        self.server.kill()
        kill = Kill(at, self._in_outage(), playout_delay_s=math.nan if delay is None else delay)
        self.kills.append(kill)
        for attempt in range(3):
            try:
                await asyncio.to_thread(self.server.start, 60.0)
                break
            except Exception as exc:
                kill.error = f"restart {attempt + 1} failed: {type(exc).__name__}: {str(exc)[-300:]}"
                log(f"{self.stamp()} ! {kill.error}")
                with contextlib.suppress(Exception):
                    self.server.kill()
        else:
            self.errors.append(f"the server did not restart after the kill at {at:.1f} s")
            raise RuntimeError(self.errors[-1])
        kill.restart_s = self.now() - at
        await self._until(lambda: all(g.opens and g.opens[-1] > at for g in self.gateways), 90,
                          f"every gateway re-opened after the kill at {at:.1f} s")
        kill.reopen_s = self.now() - at
        log(f"{self.stamp()} kill #{len(self.kills)} at {self._clock(at - self.recording_from)}"
            f"{' (store down)' if kill.during_outage else ''}: "
            f"restarted in {kill.restart_s:.1f} s, every call re-opened after {kill.reopen_s:.1f} s")

    async def _monitor_uploads(self, client: AsyncCallrecClient, deadline: float) -> None:
        """Pending uploads every second: the peak, and when those queued before the outage's end are stored.

        The count comes from the `callrec_uploads_pending` gauge; the uploads themselves are listed only
        after the outage, once fewer than `LIST_BELOW` are pending (listing a thousand uploads every
        second is a load of its own, which a monitor should not put on the server it measures).
        """
        while not self.monitor_done and time.monotonic() < deadline:
            count = await asyncio.to_thread(self._metric, "callrec_uploads_pending")
            if count is None:  # the server is restarting
                await asyncio.sleep(0.5)
                continue
            if not math.isnan(self.outage.started):
                self.outage.pending_peak = max(self.outage.pending_peak, int(count))
            ended = self.outage.ended_wall
            if not math.isnan(ended) and math.isnan(self.outage.catch_up_s) and count < LIST_BELOW:
                try:
                    pending = await list_uploads(client, "pending")
                except Exception:  # the server is restarting
                    await asyncio.sleep(0.5)
                    continue
                queued_before = [u for u in pending if u.create_time.ToMicroseconds() / 1e6 <= ended]
                if self.outage.pending_at_end < 0:
                    self.outage.pending_at_end = len(queued_before)
                if not queued_before:
                    self.outage.catch_up_s = time.time() - ended
                    log(f"{self.stamp()} uploads caught up {self.outage.catch_up_s:.1f} s after the store came back")
            await asyncio.sleep(1.0)

    def _metrics_text(self) -> str | None:
        """The running server's /metrics (None if it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def _metric(self, name: str) -> float | None:
        """One unlabelled sample of the running server's /metrics (None if it does not answer)."""
        text = self._metrics_text()
        if text is None:
            return None
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")), None)

    def _late_frames(self) -> float | None:
        """callrec_frames_rejected_total{reason="late"} of the running server (None if it does not answer)."""
        text = self._metrics_text()
        if text is None:
            return None
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("callrec_frames_rejected_total{") and 'reason="late"' in line)

    async def _sample(self, deadline: float) -> None:
        """Every 5 s: the server's CPU, the bench's own CPU and send lag, the machine's CPU, late frames."""
        assert self.server is not None
        bench_pid = os.getpid()
        while not self.monitor_done and time.monotonic() < deadline:
            proc = self.server.proc
            pid = proc.pid if proc is not None else 0
            late0 = await asyncio.to_thread(self._late_frames)
            moto_pid = self.moto.process.pid if self.moto is not None and self.moto.process is not None else 0
            kids = children(pid) if pid else []
            kids0 = {k: proc_cpu(k) for k in kids}
            cpu0, bench0, busy0, t0 = proc_cpu(pid), proc_cpu(bench_pid), machine_busy(), time.monotonic()
            moto0 = proc_cpu(moto_pid)
            for g in self.gateways:
                g.window_late_s = 0.0
            await asyncio.sleep(5.0)
            proc1 = self.server.proc
            late1 = await asyncio.to_thread(self._late_frames)
            delay = await asyncio.to_thread(self._metric, "callrec_playout_delay_max_seconds")
            if proc1 is None or proc1.pid != pid or late0 is None or late1 is None:
                continue  # restarted in between
            wall = time.monotonic() - t0
            busy1 = machine_busy()
            self.samples.append(Sample(
                at=self.now(), server_pct=100 * (proc_cpu(pid) - cpu0) / wall,
                bench_pct=100 * (proc_cpu(bench_pid) - bench0) / wall,
                machine_pct=100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1),
                bench_lag_s=max((g.window_late_s for g in self.gateways), default=0.0),
                moto_pct=100 * (proc_cpu(moto_pid) - moto0) / wall,
                workers_pct=100 * sum(max(0.0, proc_cpu(k) - c) for k, c in kids0.items()) / wall,
                late_per_s=max(0.0, late1 - late0) / wall,
                playout_delay_s=math.nan if delay is None else delay))

    async def _finish(self, client: AsyncCallrecClient, tasks: list[asyncio.Task[None]]) -> None:
        """Stop every recording, end the calls, wait until each recording is COMPLETED or FAILED."""
        self.stopped_at = self.now()
        log(f"{self.stamp()} stopping the recordings")
        for call in self.calls:
            for attempt in range(30):
                try:
                    await client.stop_recording(call.recording_id)
                    break
                except Exception as exc:
                    if attempt == 29:
                        self.errors.append(f"{call.name}: StopRecording failed: {exc}")
                    await asyncio.sleep(1.0)
        for g in self.gateways:
            g.stopped = True
        await asyncio.wait(tasks, timeout=30)
        deadline = time.monotonic() + self.s.final_wait_s
        final = (pb.RECORDING_STATE_COMPLETED, pb.RECORDING_STATE_FAILED)
        while time.monotonic() < deadline:
            for call in self.calls:
                if call.recording_id in self.states and self.states[call.recording_id].state in final:
                    continue
                with contextlib.suppress(Exception):
                    self.states[call.recording_id] = await client.get_recording_state(call.recording_id)
            if all(r.state in final for r in self.states.values()) and len(self.states) == len(self.calls):
                break
            await asyncio.sleep(1.0)
        late = [c.name for c in self.calls
                if c.recording_id not in self.states or self.states[c.recording_id].state not in final]
        if late:
            self.errors.append(f"not COMPLETED or FAILED {self.s.final_wait_s:.0f} s after the stop: {', '.join(late)}")
        log(f"{self.stamp()} recordings final ({len(self.calls) - len(late)}/{len(self.calls)})")

    # ------------------------------------------------------------------------------- collect

    async def _collect(self, client: AsyncCallrecClient) -> None:
        files = self.tmp / "downloads"
        files.mkdir(exist_ok=True)
        kill_at = [k.at for k in self.kills]
        for call, gateway in zip(self.calls, self.gateways, strict=True):
            counters = Counter[str]()
            rec = self.states.get(call.recording_id)
            if rec is None:
                counters["recording unknown"] += 1
                self.uploads[call.name] = dict(counters)
                continue
            stats = rec.media_stats
            self.media[call.name] = {"received": stats.frames_received, "late": stats.frames_late,
                                     "gap_fill_s": stats.gap_fill_ms / 1000,
                                     "rejected": sum(stats.frames_rejected_by_reason.values()),
                                     "duration_s": rec.duration.ToMilliseconds() / 1000}
            if rec.state == pb.RECORDING_STATE_FAILED:
                counters["recording FAILED"] += 1
                self.errors.append(f"{call.name} FAILED: {rec.error.message[:300]}")
            elif rec.state != pb.RECORDING_STATE_COMPLETED:
                counters["recording not final"] += 1
            indexes = sorted(c.index for c in rec.chunks)
            expected = max(indexes, default=-1) + 1
            counters["chunk index missing"] += expected - len(set(indexes))
            counters["chunk listed twice"] += len(indexes) - len(set(indexes))
            labels: list[int] = []
            rest = np.zeros(0, dtype=np.float32)
            for chunk in sorted(rec.chunks, key=lambda c: c.index):
                path = files / f"{call.name}-{chunk.index}{Path(chunk.content_location).suffix}"
                try:
                    path.write_bytes(await asyncio.wait_for(download(client, chunk.content_location), 300))
                    await asyncio.wait_for(download(client, chunk.metadata_location), 60)
                except Exception as exc:
                    counters["chunk not downloadable"] += 1
                    self.errors.append(f"{call.name} chunk {chunk.index}: {type(exc).__name__}: {exc}"[:300])
                    continue
                try:
                    audio = await asyncio.to_thread(decoded_audio, path)
                except Exception as exc:
                    counters["chunk not decodable"] += 1
                    self.errors.append(f"{call.name} chunk {chunk.index} does not decode: {exc}"[:300])
                    continue
                finally:
                    path.unlink(missing_ok=True)
                joined = np.concatenate([rest, audio])
                whole = len(joined) // WINDOW * WINDOW
                labels += label_windows(joined[:whole])
                rest = joined[whole:]
            counters["chunks"] = len(rec.chunks)
            try:
                uploads = await list_uploads(client, recording_id=call.recording_id)
                states = Counter(upb.UploadState.Name(u.state) for u in uploads)
                counters["files stored"] = states.get("UPLOAD_STATE_STORED", 0)
                counters["files not stored"] = sum(n for st, n in states.items() if st != "UPLOAD_STATE_STORED")
            except Exception as exc:
                self.errors.append(f"{call.name}: ListUploads failed: {exc}")
            self.uploads[call.name] = dict(counters)
            self.events[call.name] = await self._file_status_events(client, call.recording_id)
            reopens = [next((t for t in gateway.opens if t > k), None) for k in kill_at]
            self.results[call.name] = analyse(labels, kill_at, reopens)
        await asyncio.to_thread(self._check_bucket)

    async def _file_status_events(self, client: AsyncCallrecClient, recording_id: str) -> int:
        """How many RecordingFileStatusUpdated events the recording has (read until 2 s of quiet)."""
        seen = 0
        stream = client.subscribe_events(recording_id=recording_id, event_types=[FILE_STATUS], from_oldest=True)
        try:
            for _ in range(1000):
                await asyncio.wait_for(anext(stream), 2.0)
                seen += 1
        except (TimeoutError, StopAsyncIteration):
            pass
        except Exception as exc:
            self.errors.append(f"events of {recording_id}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
        return seen

    def _check_bucket(self) -> None:
        """Objects in the (versioned) bucket, and any key written more than once."""
        assert self.moto is not None
        versions: dict[str, list[str]] = {}
        pages = self.moto.client().get_paginator("list_object_versions").paginate(Bucket=TEST_BUCKET, Prefix="soak/")
        for page in pages:
            for v in page.get("Versions", []):
                versions.setdefault(v["Key"], []).append(v["ETag"])
        self.objects = len(versions)
        rewritten = [k for k, tags in versions.items() if len(tags) > 1]
        changed = [k for k in rewritten if len(set(versions[k])) > 1]
        self.overwritten = (len(rewritten), len(changed))
        for key in changed[:5]:
            self.errors.append(f"object overwritten with other content: {key}")

    # --------------------------------------------------------------------------------- report

    def dump(self, path: Path) -> None:
        """Everything measured, as JSON (for a closer look at a failed run)."""
        doc = {
            "settings": self.s.__dict__, "recording_from": self.recording_from, "stopped_at": self.stopped_at,
            "kills": [k.__dict__ for k in self.kills], "outage": self.outage.__dict__,
            "samples": [x.__dict__ for x in self.samples],
            "calls": {c.name: {"recording_id": c.recording_id, "opens": g.opens, "failures": g.failures,
                               "last_error": g.last_error, "max_late_s": g.max_late_s,
                               "uploads": self.uploads.get(c.name), "media_stats": self.media.get(c.name),
                               "result": self.results[c.name].__dict__ if c.name in self.results else None}
                      for c, g in zip(self.calls, self.gateways, strict=False)},
            "errors": self.errors,
        }
        path.write_text(json.dumps(doc, indent=1, default=str))

    def server_log_problems(self) -> list[tuple[str, int, str]]:
        """(message, count, first line) of the server log's warnings and errors, most frequent first."""
        if self.server is None:
            return []
        counts: Counter[str] = Counter()
        first: dict[str, str] = {}
        pattern = re.compile(r"^\S+ \[(warning|error|critical)\s*\] (.+?)(?:\s{2,}|$)")
        for line in self.server.log_text().splitlines():
            match = pattern.match(line)
            if match:
                key = f"{match.group(1)}: {match.group(2)}"
            elif line.startswith("Traceback") or "Error:" in line[:80]:
                key = "traceback: " + line[:100]
            else:
                continue
            counts[key] += 1
            first.setdefault(key, line)
        return [(k, n, first[k]) for k, n in counts.most_common(12)]


# ------------------------------------------------------------------------------------------ output


def fmt_s(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "all"
    return f"{value:.{digits}f}"


def timeline(console: Any, soak: Soak, results: list[CallResult]) -> None:
    """Per minute: media recorded (mean over calls), late frames, CPU, the bench's lag: where loss came from."""
    from rich.table import Table

    if math.isnan(soak.recording_from) or not results:
        return
    table = Table(title="per minute (recorded: mean over calls; late: frames/s the server rejected as late; delay: the "
                        "server's largest playout delay, sampled every 5 s)",
                  title_justify="left")
    for column in ("minute", "recorded %", "late /s", "delay max s", "server %", "workers %", "moto %", "bench %",
                   "bench lag max s", "machine %", ""):
        table.add_column(column, justify="right" if column else "left")
    stop = soak.stopped_at if not math.isnan(soak.stopped_at) else max((x.at for x in soak.samples), default=0.0)
    minute = 0
    while soak.recording_from + 60 * minute < stop - 10 and minute < 1000:
        a = soak.recording_from + 60 * minute
        b = min(a + 60, stop)
        covered = [sum(max(0.0, min(e, b) - max(s0, a)) for s0, e in r.segments) / (b - a) for r in results]
        xs = [x for x in soak.samples if a < x.at <= b]

        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else math.nan

        notes = []
        if any(a <= k.at < b for k in soak.kills):
            notes.append("kill")
        o = soak.outage
        if not math.isnan(o.started) and o.started < b and (math.isnan(o.ended) or o.ended > a):
            notes.append("store down")
        delays = [x.playout_delay_s for x in xs if math.isfinite(x.playout_delay_s)]
        table.add_row(f"{minute:02d}", f"{100 * mean(covered):.0f}", fmt_s(mean([x.late_per_s for x in xs]), 0),
                      fmt_s(max(delays, default=math.nan), 2),
                      fmt_s(mean([x.server_pct for x in xs]), 0), fmt_s(mean([x.workers_pct for x in xs]), 0),
                      fmt_s(mean([x.moto_pct for x in xs]), 0), fmt_s(mean([x.bench_pct for x in xs]), 0),
                      fmt_s(max((x.bench_lag_s for x in xs), default=math.nan), 2),
                      fmt_s(mean([x.machine_pct for x in xs]), 0), ", ".join(notes))
        minute += 1
    console.print(table)


def report(soak: Soak, elapsed: float, command: str) -> bool:
    """Print the tables; True when the run passes."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    s = soak.s
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    names = [c.name for c in soak.calls]
    results = [soak.results[n] for n in names if n in soak.results]
    console.print(Text(f"callrec soak, {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}"))
    console.print(Text(f"{s.minutes:g} min, {s.calls} calls of {s.participants} ({', '.join(names)}), "
                       f"chunks of {s.chunk_seconds:g} s, "
                       f"kill every {s.kill_every[0]:g}-{s.kill_every[1]:g} min, outage {s.outage_minutes:g} min, "
                       f"seed {s.seed}; reconnect grace {GRACE_S:g} s, upload backoff max {BACKOFF_MAX_S:g} s, "
                       f"playout delay {s.playout_delay_ms if s.playout_delay_ms is not None else 'default'} ms"))

    kills = Table(title="per kill (media lost: last recorded instant before the kill -> the kill; delay: the "
                        "server's largest playout delay just before it)",
                  title_justify="left")
    for column, justify in (("#", "right"), ("at", "right"), ("store", "left"), ("restart s", "right"),
                            ("re-open s", "right"), ("delay s", "right"), ("lost max s", "right"),
                            ("lost mean s", "right"),
                            ("worst call", "left"), ("resume gap max s", "right")):
        kills.add_column(column, justify=justify)
    per_kill_max: list[float] = []
    for i, kill in enumerate(soak.kills):
        lost = [r.lost[i] for r in results if i < len(r.lost)]
        resume = [r.resume[i] for r in results if i < len(r.resume) and not math.isnan(r.resume[i])]
        worst = max(range(len(lost)), key=lambda j: lost[j]) if lost else None
        top = max(lost, default=math.nan)
        per_kill_max.append(top)
        finite = [v for v in lost if math.isfinite(v)]
        kills.add_row(str(i + 1), Soak._clock(kill.at - soak.recording_from), "down" if kill.during_outage else "up",
                      fmt_s(kill.restart_s), fmt_s(kill.reopen_s), fmt_s(kill.playout_delay_s, 2),
                      Text(fmt_s(top), style="bold red" if top > LOST_LIMIT_S else None),
                      fmt_s(sum(finite) / len(finite) if finite else math.nan, 2),
                      names[worst] if worst is not None else "-", fmt_s(max(resume, default=math.nan)))
    console.print(kills)

    calls = Table(title="per call", title_justify="left")
    for column in ("call", "recorded min", "lost max s", "lost sum s", "other gaps s", "dup s", "out of order",
                   "late frames", "gap fill s", "chunks", "files stored", "uploads lost", "file-status events",
                   "re-opens", "state"):
        calls.add_column(column, justify="left" if column in ("call", "state") else "right")
    uploads_lost = 0
    for call, gateway in zip(soak.calls, soak.gateways, strict=False):
        r = soak.results.get(call.name, CallResult())
        u = soak.uploads.get(call.name, {})
        m = soak.media.get(call.name, {})
        lost_here = sum(u.get(k, 0) for k in ("recording FAILED", "recording not final", "recording unknown",
                                               "chunk index missing", "chunk listed twice", "chunk not downloadable",
                                               "chunk not decodable", "files not stored"))
        uploads_lost += lost_here
        rec = soak.states.get(call.recording_id)
        state = pb.RecordingState.Name(rec.state).removeprefix("RECORDING_STATE_").lower() if rec else "?"
        events = soak.events.get(call.name, 0)
        calls.add_row(call.name, f"{r.seconds_recorded / 60:.2f}", fmt_s(max(r.lost, default=0.0)),
                      fmt_s(sum(v for v in r.lost if math.isfinite(v))),
                      fmt_s(sum(g for _, g in r.other_gaps)), str(r.duplicates), str(r.out_of_order),
                      str(int(m.get("late", 0))), fmt_s(m.get("gap_fill_s", math.nan)), str(u.get("chunks", 0)),
                      str(u.get("files stored", 0)),
                      Text(str(lost_here), style="bold red" if lost_here else None),
                      Text(str(events), style=None if events == 1 else "bold red"),
                      str(len(gateway.opens) - 1), state)
    console.print(calls)

    all_lost = [v for r in results for v in r.lost]
    duplicates = sum(r.duplicates + r.out_of_order for r in results)
    overwritten, changed = soak.overwritten
    recorded_min = sum(r.seconds_recorded for r in results) / 60
    other = [g for r in results for _, g in r.other_gaps]
    o = soak.outage

    def in_outage(t: float) -> bool:
        return not math.isnan(o.started) and o.started <= t <= (o.ended if not math.isnan(o.ended) else math.inf)

    other_in_outage = sum(g for r in results for at, g in r.other_gaps if in_outage(at))
    cpu_in = [x for x in soak.samples if in_outage(x.at)]
    cpu_out = [x for x in soak.samples if not in_outage(x.at)]
    saturated = sum(1 for x in soak.samples if x.machine_pct >= 90)

    def cpu_text(samples: list[Sample]) -> str:
        if not samples:
            return "-"
        n = len(samples)
        return (f"server {sum(x.server_pct for x in samples) / n:.0f}%, "
                f"bench {sum(x.bench_pct for x in samples) / n:.0f}% of a core; "
                f"machine {sum(x.machine_pct for x in samples) / n:.0f}% of all cores")
    failures: list[str] = []
    if any(v > LOST_LIMIT_S for v in all_lost):
        failures.append(f"media lost at a kill above {LOST_LIMIT_S:g} s")
    if uploads_lost:
        failures.append(f"{uploads_lost} uploads lost")
    if duplicates or changed:
        failures.append("media recorded twice")
    if len(results) < len(soak.calls):
        failures.append("calls not analysed")
    totals = Table(title="totals", title_justify="left")
    totals.add_column("metric", no_wrap=True)
    totals.add_column("value", justify="right", no_wrap=True)
    totals.add_column("notes")
    rows = [
        ("kills", str(len(soak.kills)),
         f"{sum(k.during_outage for k in soak.kills)} while the store was down; restart "
         f"{fmt_s(min((k.restart_s for k in soak.kills), default=math.nan))}-"
         f"{fmt_s(max((k.restart_s for k in soak.kills), default=math.nan))} s"),
        ("calls", str(len(soak.calls)), ", ".join(names)),
        ("minutes recorded", f"{recorded_min:.1f}",
         f"all calls; {s.minutes:g} min x {len(soak.calls)} calls minus the restarts"),
        ("media lost at kills, total s", fmt_s(sum(v for v in all_lost if math.isfinite(v))),
         f"over {len(all_lost)} call-kills; mean "
         f"{fmt_s(sum(all_lost) / len(all_lost) if all_lost else math.nan, 2)} s"),
        ("media lost per kill, max s", fmt_s(max(all_lost, default=0.0)), f"limit {LOST_LIMIT_S:g} s per call"),
        ("resume gap per kill, max s",
         fmt_s(max((v for r in results for v in r.resume if not math.isnan(v)), default=math.nan)),
         "gateway re-opened -> first recorded instant (information)"),
        ("gaps no kill explains, s", fmt_s(sum(other)),
         f"{len(other)} gaps > {PROXIMITY_S:g} s, longest {fmt_s(max(other, default=0.0))} s; "
         f"{fmt_s(other_in_outage)} s of them while the store was down (information)"),
        ("late frames / gap fill (server), s",
         f"{int(sum(m.get('late', 0) for m in soak.media.values()))} / "
         f"{fmt_s(sum(m.get('gap_fill_s', 0.0) for m in soak.media.values()))}",
         "the final recordings' media_stats, all calls (since the last restart, if the server counts so)"),
        ("CPU while the store was down", cpu_text(cpu_in), f"{len(cpu_in)} samples of 5 s"),
        ("CPU otherwise", cpu_text(cpu_out),
         f"{len(cpu_out)} samples of 5 s; the machine was >= 90% busy in {saturated} of {len(soak.samples)}"),
        ("gateways behind real time, max s", fmt_s(max((g.max_late_s for g in soak.gateways), default=0.0), 2),
         f"{sum(g.skipped_frames for g in soak.gateways)} frames skipped (the bench's own lag; information)"),
        ("uploads lost", str(uploads_lost),
         "chunks missing or not downloadable/decodable, files not stored, recordings not COMPLETED"),
        ("seconds recorded twice / out of order", str(duplicates), ""),
        ("objects overwritten", f"{overwritten} ({changed} with other content)",
         f"{soak.objects} objects in the versioned bucket"),
        ("outage, s", fmt_s(o.ended - o.started if not math.isnan(o.ended) else math.nan, 0),
         f"from {Soak._clock(o.started - soak.recording_from)}; {o.pending_peak} uploads pending at most"),
        ("uploads caught up after, s", fmt_s(o.catch_up_s),
         f"until every upload queued before the store came back ({o.pending_at_end}) was stored"),
    ]
    for metric, value, notes in rows:
        bad = (metric == "uploads lost" and uploads_lost) or (metric.startswith("seconds recorded") and duplicates) \
            or (metric == "media lost per kill, max s" and any(v > LOST_LIMIT_S for v in all_lost))
        totals.add_row(metric, Text(value, style="bold red" if bad else None), Text(notes))
    console.print(totals)
    timeline(console, soak, results)
    problems = soak.server_log_problems()
    if problems:
        table = Table(title="server log: warnings and errors", title_justify="left")
        table.add_column("count", justify="right")
        table.add_column("message")
        table.add_column("first")
        for key, count, line in problems:
            table.add_row(str(count), Text(key), Text(line[:160]))
        console.print(table)
    recorded_s = sum(r.seconds_recorded for r in results)
    if other and sum(other) > 0.01 * max(recorded_s, 1.0):
        share = 100 * sum(other) / max(recorded_s + sum(other), 1.0)
        console.print(Text(f"WARNING: {sum(other):.0f} s of media missing where no kill explains it ({share:.0f}% "
                           "of the calls; see the per-minute table: late frames, CPU). Not an exit criterion.",
                           style="bold yellow"))
    for error in soak.errors[:20]:
        console.print(Text(f"! {error}", style="red"))
    console.print(Text(f"{'PASS' if not failures else 'FAIL: ' + '; '.join(failures)} ({elapsed / 60:.1f} min)",
                       style="bold green" if not failures else "bold red"))
    return not failures


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, help="recording time (default 30; --quick 6)")
    parser.add_argument("--calls", type=int, help="calls (default 20; --quick 6)")
    parser.add_argument("--participants", type=int, default=1,
                        help=f"participants per call (default 1, at most {MAX_PARTICIPANTS}): the first carries the "
                             "tone, the others quiet noise, sent in one media_batch a tick (a loaded server)")
    parser.add_argument("--kill-every", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="minutes between kills, drawn uniformly (default 2 5; --quick 1 2)")
    parser.add_argument("--outage-minutes", type=float, help="store outage, 0 for none (default 10; --quick 2)")
    parser.add_argument("--seed", type=int, help="random seed (default: a random one, printed)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 min, 6 calls, kills every 1-2 min, "
                        "a 2-minute outage (explicit options override it)")
    parser.add_argument("--chunk-seconds", type=float, default=60.0, help="chunk_max_duration (default 60)")
    parser.add_argument("--no-mp4", action="store_true", help="no mp4 call (else call 03 records mp4)")
    parser.add_argument("--final-wait", type=float, default=600.0,
                        help="seconds to wait after the stop for every recording to be COMPLETED or FAILED")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (spool, SQLite, log)")
    parser.add_argument("--playout-delay-ms", type=int,
                        help="the server's --playout-delay-ms (default: its own, 200): a larger one absorbs a "
                             "loaded machine's lag")
    a = parser.parse_args(argv)
    quick = {"minutes": 6.0, "calls": 6, "kill_every": (1.0, 2.0), "outage_minutes": 2.0}
    full = {"minutes": 30.0, "calls": 20, "kill_every": (2.0, 5.0), "outage_minutes": 10.0}
    base = quick if a.quick else full
    minutes = a.minutes if a.minutes is not None else base["minutes"]
    calls = a.calls if a.calls is not None else base["calls"]
    kill_every = tuple(a.kill_every) if a.kill_every is not None else base["kill_every"]
    outage = a.outage_minutes if a.outage_minutes is not None else base["outage_minutes"]
    if not 0 < minutes * 60 + 600 < MAX_SECONDS:
        parser.error(f"--minutes must be in (0, {(MAX_SECONDS - 600) / 60:.0f}]: the tones are unique for "
                     f"{MAX_SECONDS} s")
    if calls < 1:
        parser.error("--calls must be at least 1")
    if not 1 <= a.participants <= MAX_PARTICIPANTS:
        parser.error(f"--participants must be in [1, {MAX_PARTICIPANTS}]")
    if not 0 < kill_every[0] <= kill_every[1]:
        parser.error("--kill-every needs 0 < MIN <= MAX")
    if kill_every[0] * 60 < 20:
        parser.error("--kill-every MIN must be at least 20 s (a restart takes a few seconds)")
    if outage < 0:
        parser.error("--outage-minutes must be >= 0")
    return Settings(minutes=minutes, calls=calls, kill_every=(kill_every[0], kill_every[1]), outage_minutes=outage,
                    seed=a.seed if a.seed is not None else random.randrange(2**31), chunk_seconds=a.chunk_seconds,
                    mp4=not a.no_mp4, final_wait_s=a.final_wait, keep=a.keep, playout_delay_ms=a.playout_delay_ms,
                    participants=a.participants)


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    command = "python -m bench.soak " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    log(f"{command}  (seed {settings.seed})")
    soak = Soak(settings)
    started = time.monotonic()
    ok = False
    hard_limit = 60 * settings.minutes + settings.final_wait_s + 1200
    try:
        soak.start_services()
        asyncio.run(asyncio.wait_for(soak.run(), hard_limit))
    except BaseException as exc:  # report what was measured, then fail
        soak.errors.insert(0, f"the run stopped: {type(exc).__name__}: {exc}"[:500])
        log(f"the run stopped: {type(exc).__name__}: {exc}")
        if isinstance(exc, KeyboardInterrupt):
            soak.stop_services()
            raise
    finally:
        soak.stop_services()
        kept_log = Path(tempfile.gettempdir()) / f"callrec-soak-{time.strftime('%Y%m%d-%H%M%S')}-server.log"
        if soak.server is not None and soak.server.log_path.exists():
            shutil.copyfile(soak.server.log_path, kept_log)
            log(f"server log: {kept_log}")
    try:
        ok = report(soak, time.monotonic() - started, command + f"  (seed {settings.seed})") and not soak.errors
    finally:
        with contextlib.suppress(Exception):
            dumped = kept_log.with_name(kept_log.name.replace("-server.log", "-analysis.json"))
            soak.dump(dumped)
            log(f"measurements: {dumped}")
        if settings.keep:
            log(f"data kept in {soak.tmp}")
        else:
            shutil.rmtree(soak.tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
