"""One load step against a real server: N calls streamed by `bench.loadgen`, each recorded.

`run_step` opens the calls through the load generator (a separate process), starts one
recording per call, lets the generator stream in real time, and meanwhile watches the server
from outside: CPU of the process and of its main thread (the event loop: gRPC + mixer) from
/proc, RSS (plus the PSS of its child processes: video workers, decode workers), and the latency of a
GetRecordingState probe every 250 ms (a stall of the shared event loop shows up there).
Afterwards it reads each recording's final state and media_stats, and the generator's acks.

A step passes when every recording completed, every frame sent was accepted (acks and
media_stats: nothing rejected, nothing late, no gap filled), the sender kept its schedule and its
writes kept up with it (no call's media queued unsent in the generator beyond `SLIP_LIMIT_MS`),
the probe never waited longer than `LOOP_LAG_LIMIT_MS`, the main thread stayed below
`MAIN_THREAD_LIMIT_PCT` of a core, and (video) the recordings were finished within
`FINALIZE_LIMIT_S` of the call's end (a worker behind real time needs longer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from bench import ROOT
from bench.common import (
    CORES,
    CpuWindow,
    children,
    median,
    percentile,
    proc_cpu,
    pss_mb,
    rss_mb,
)
from bench.control_probe import ProbeProcess
from callrec.v1 import recording_pb2 as rpb
from callrec_client import AsyncCallrecClient, CallrecError
from tests.harness import ServerProcess

#: The probe RPC may wait this long before the mixer counts as lagging: the real-time clock's playout
#: delay (200 ms by default); a longer stall of the shared event loop makes frames late.
LOOP_LAG_LIMIT_MS = 200.0
#: The sender may fall this far behind its 20 ms schedule (half the playout delay).
SLIP_LIMIT_MS = 100.0
#: The event loop's thread busier than this (% of one core) is saturated.
MAIN_THREAD_LIMIT_PCT = 95.0
#: Video: call end -> recording COMPLETED; longer means the worker was behind real time.
FINALIZE_LIMIT_S = 3.0
PROBE_INTERVAL_S = 0.25
#: A step that failed while processes outside the bench used more than this (% of one core) is run
#: once more (at most `RETRIES_UNDER_LOAD` times per ramp): the machine is shared.
BUSY_PCT = 50.0
RETRIES_UNDER_LOAD = 2
#: Failures of the load generator, not of the server: a step that failed by these alone is run once more
#: too (within `RETRIES_UNDER_LOAD`). Measured: the first step of a full `make bench` (100 participants,
#: the generator at 3 % of a core) failed by a 258 ms slip once, and the ramp bisected row 1 down to 90.
SLIPPED = "sender slipped"
BACKLOG = "the generator's writes fell"
DONE_STATES = (rpb.RECORDING_STATE_COMPLETED, rpb.RECORDING_STATE_FAILED)


class LoadGen:
    """The `bench.loadgen` process and its JSON-lines protocol."""

    def __init__(self, proc: asyncio.subprocess.Process, errors: IO[bytes]) -> None:
        self.proc = proc
        self.errors = errors
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, cfg: dict[str, Any], timeout: float = 120.0) -> LoadGen:
        # stderr to a file, not a pipe: nobody reads it while the load runs, and a full pipe would stall it
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.loadgen", json.dumps(cfg),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors,
            cwd=ROOT, limit=1 << 20,
        )
        gen = cls(proc, errors)
        try:
            await gen.wait("ready", timeout)
        except BaseException:
            await gen.close()
            raise
        return gen

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last `limit` characters the generator wrote to stderr."""
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace")[-limit:]

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load generator: no {event!r} within {timeout:.0f} s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            if not line:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5)
                raise RuntimeError(f"load generator exited before {event!r}:\n{self.stderr_tail()}")
            msg = json.loads(line)
            self.events.append(msg)
            if msg["event"] == event:
                return msg
            if msg["event"] == "error":
                raise RuntimeError(f"load generator: {msg.get('message', msg)}")

    async def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)
        self.errors.close()


@dataclass
class StepResult:
    """Everything one step measured."""

    calls: int
    participants: int
    media_s: float = 0.0
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    server_cpu_s: float = 0.0  # from `go` until every recording finished
    stream: dict[str, float] = field(default_factory=dict)  # CpuWindow over the streaming phase
    client_cpu_pct: float = 0.0
    system_pct: float = 0.0  # CPU of the system's other processes during streaming (`system_pids`; % of one core)
    others_pct: float = 0.0  # CPU used by processes not of this bench during streaming (% of one core)
    steal_pct: float = 0.0  # CPU the hypervisor gave to other VMs during streaming (% of one core)
    slip_max_ms: float = 0.0
    backlog_max_ms: float = 0.0
    """The most media a call had queued in the generator that gRPC had not taken (sampled every 100 ms)."""
    probe_ms: list[float] = field(default_factory=list)
    floor_probe_ms: list[float] = field(default_factory=list)
    """The same probe sent to a gRPC server without callrec code right after each one (`floor_target`)."""
    floor_errors: list[str] = field(default_factory=list)
    remote_probe_ms: list[float] = field(default_factory=list)
    """GetRecordingState every 100 ms from a probe process of its own at real-time priority (`probe_priority`):
    a client whose wake-ups the load does not delay, as one on another machine."""
    remote_probe_errors: list[str] = field(default_factory=list)
    rss_base_mb: float = 0.0
    rss_load_mb: float = 0.0  # server RSS (+ children PSS), median over the 2nd half of streaming
    finalize_s: float = 0.0  # call end -> all recordings finished
    sent: int = 0
    received: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    late: int = 0
    gap_fill_ms: int = 0
    states: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def total_participants(self) -> int:
        return self.calls * self.participants

    @property
    def only_the_generator_failed(self) -> bool:
        """Failed by the load generator's own lateness alone: every frame reached the server and was taken."""
        return bool(self.reasons) and all(r.startswith((SLIPPED, BACKLOG)) for r in self.reasons)

    @property
    def cpu_per_participant_minute(self) -> float:
        minutes = self.total_participants * self.media_s / 60
        return self.server_cpu_s / minutes if minutes else float("nan")

    @property
    def mem_per_call_mb(self) -> float:
        return (self.rss_load_mb - self.rss_base_mb) / self.calls if self.calls else float("nan")

    def cpu_bound_estimate(self, per: str = "participant") -> tuple[float, str]:
        """How many units (participants, or calls with per="call") the CPU would allow on an otherwise idle
        machine, extrapolated linearly from this step: (estimate, which bound)."""
        units = self.total_participants if per == "participant" else self.calls
        s = self.stream
        loop = s.get("main_thread_pct", 0.0) / units
        machine = (s.get("server_pct", 0.0) + s.get("children_pct", 0.0) + self.client_cpu_pct) / units
        by_loop = MAIN_THREAD_LIMIT_PCT / loop if loop else float("inf")
        by_machine = 0.9 * 100 * CORES / machine if machine else float("inf")
        return (by_loop, "event-loop thread") if by_loop <= by_machine else (by_machine, "all cores incl. client")

    def summary(self) -> str:
        s = self.stream
        verdict = "ok" if self.passed else "FAIL: " + "; ".join(self.reasons)
        return (
            f"{self.calls:>3} calls x {self.participants} = {self.total_participants:>4} participants, "
            f"{self.media_s:.0f} s: server {s.get('server_pct', 0):5.1f}% (loop thread "
            f"{s.get('main_thread_pct', 0):5.1f}%, workers {s.get('children_pct', 0):5.1f}%), client "
            f"{self.client_cpu_pct:5.1f}%, "
            + (f"the rest of the system {self.system_pct:5.1f}%, " if self.system_pct else "")
            + f"other processes {self.others_pct:5.1f}%, steal {self.steal_pct:4.1f}% "
            f"(% of one core); "
            f"slip max {self.slip_max_ms:.0f} ms, backlog max {self.backlog_max_ms:.0f} ms; "
            f"probe p99 {percentile(self.probe_ms, 99):.1f} ms; "
            f"frames {self.received}/{self.sent}; finalize {self.finalize_s:.1f} s; "
            f"RSS +{self.rss_load_mb - self.rss_base_mb:.0f} MB -> {verdict}"
        )


def _tree_cpu(pid: int) -> float:
    """CPU seconds of the server and its live child processes (a child started later counts from its start)."""
    total = proc_cpu(pid)
    for child in children(pid):
        with contextlib.suppress(OSError, ValueError):
            total += proc_cpu(child)
    return total


def _footprint(pid: int) -> float:
    """Server RSS plus its child processes' PSS (video workers, decode workers)."""
    return rss_mb(pid) + sum(pss_mb(c) for c in children(pid))


def interference_note(results: Iterable[StepResult], threshold_pct: float = 20.0) -> str:
    """A capacity row's warning when something outside the bench took CPU during its steps: other processes,
    or the hypervisor (steal: this VM's vCPUs given to another). Empty when neither passed `threshold_pct`."""
    steps = list(results)
    others = max((r.others_pct for r in steps), default=0.0)
    steal = max((r.steal_pct for r in steps), default=0.0)
    notes = []
    if others > threshold_pct:
        notes.append(f"other processes used up to {others:.0f}% of a core meanwhile")
    if steal > threshold_pct:
        notes.append(f"the hypervisor took up to {steal:.0f}% of a core (steal)")
    return f" [{'; '.join(notes)}]" if notes else ""


async def run_step(
    srv: ServerProcess,
    calls: int,
    seconds: float,
    *,
    participants: int = 10,
    codec: str = "opus",
    record: dict[str, str] | None = None,
    video: dict[str, Any] | None = None,
    ticks_per_batch: int = 1,
    floor_target: str | None = None,
    system_pids: Sequence[int] = (),
    probe_priority: int = 0,
) -> StepResult:
    """Stream `calls` calls of `participants` for `seconds` through `srv`, recording each.

    `ticks_per_batch`: the generator sends each call's audio every that many ticks, all of them in one
    `media_batch` (1: one message per call per 20 ms tick). `floor_target`: HOST:PORT of a server that
    answers GetRecordingState without callrec code (`bench.null_sink`); each control probe is followed by
    the same request there (`StepResult.floor_probe_ms`), so the step shows what any grpc.aio server
    answers in on this machine under this load. `system_pids`: the rest of the system under test (a cluster's
    other nodes, PostgreSQL, Redis, HAProxy), whose CPU (with their children's) is the step's own, reported as
    `system_pct`, not as other processes (which make the ramp run a failed step again). `probe_priority`: also
    probe from a process of its own at that SCHED_RR priority (`bench.control_probe`), into
    `StepResult.remote_probe_ms`; the step's verdict stays with the probe in this process."""
    assert srv.proc is not None
    pid = srv.proc.pid
    record = record or {"content_type": "audio", "channel_type": "mixed", "format": "mp3"}
    result = StepResult(calls, participants)
    result.rss_base_mb = _footprint(pid)
    tag = uuid.uuid4().hex[:6]
    call_ids = [f"bench-{tag}-{n}" for n in range(calls)]
    cfg = {"target": srv.target, "calls": call_ids, "participants": participants, "seconds": seconds,
           "codec": codec, "video": video, "ticks_per_batch": ticks_per_batch}
    try:
        gen = await LoadGen.start(cfg)
    except (RuntimeError, TimeoutError) as exc:  # the calls could not even be opened: a failed step, not a crash
        result.errors.append(f"load generator: {exc}")
        result.reasons.append(f"errors: {str(exc).strip().splitlines()[0]}"[:300])
        result.passed = False
        return result
    try:
        ready = gen.events[-1]
        result.media_s = ready["ticks"] * 0.02
        async with AsyncCallrecClient(srv.target) as client, contextlib.AsyncExitStack() as stack:
            floor_client = (await stack.enter_async_context(AsyncCallrecClient(floor_target))
                            if floor_target else None)
            try:
                recs = [await client.start_recording(cid, **record) for cid in call_ids]
            except CallrecError as exc:  # the server could not even start the recordings in time: a failed step
                result.errors.append(f"StartRecording: {exc}")
                result.reasons.append(f"errors: StartRecording: {exc}"[:300])
                result.passed = False
                return result
            ids = [r.recording_id for r in recs]
            cpu_go = _tree_cpu(pid)
            client_cpu0 = proc_cpu(gen.pid)
            self_cpu0 = proc_cpu(os.getpid())
            window = CpuWindow(pid, with_children=True)  # video and decode workers count
            # the rest of the system (a postmaster and its backends, the other nodes and their workers)
            system_windows = [CpuWindow(p, with_children=True) for p in system_pids]
            await gen.go()
            remote_probe = None
            if probe_priority:
                try:
                    remote_probe = await ProbeProcess.start(srv.target, ids[0], seconds, probe_priority)
                except (RuntimeError, TimeoutError) as exc:  # not permitted here: the figure is missing, said so
                    result.remote_probe_errors.append(str(exc))
            stop_probe = asyncio.Event()
            rss_samples: list[tuple[float, float]] = []

            async def probe() -> None:
                t0 = time.monotonic()
                for _ in range(int((seconds + 120) / PROBE_INTERVAL_S)):
                    if stop_probe.is_set():
                        return
                    start = time.perf_counter()
                    try:
                        await client.get_recording_state(ids[0])
                    except CallrecError as exc:  # an overloaded server may miss the client's deadline: a failed step
                        result.errors.append(f"control probe: {exc}")
                    result.probe_ms.append(1000 * (time.perf_counter() - start))
                    if floor_client is not None:
                        start = time.perf_counter()
                        try:
                            await floor_client.get_recording_state(ids[0])
                            result.floor_probe_ms.append(1000 * (time.perf_counter() - start))
                        except CallrecError as exc:  # the floor's trouble, not the server's: no step fails by it
                            result.floor_errors.append(str(exc))
                    rss_samples.append((time.monotonic() - t0, _footprint(pid)))
                    window.sample()
                    for system_window in system_windows:
                        system_window.sample()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_probe.wait(), PROBE_INTERVAL_S)

            probe_task = asyncio.create_task(probe())
            try:
                streamed = await gen.wait("streamed", seconds + 120)
            finally:
                stop_probe.set()
                await probe_task
                if remote_probe is not None:
                    result.remote_probe_ms, result.remote_probe_errors = await remote_probe.finish()
            result.stream = window.stop()
            wall = max(result.stream["wall_s"], 1e-6)
            result.client_cpu_pct = 100 * (proc_cpu(gen.pid) - client_cpu0) / wall
            ours = (result.stream["server_pct"] + result.stream["children_pct"] + result.client_cpu_pct
                    + 100 * (proc_cpu(os.getpid()) - self_cpu0) / wall)
            result.system_pct = 100 * sum(w.cpu_s() for w in system_windows) / wall
            ours += result.system_pct
            result.steal_pct = result.stream["steal_pct"]
            result.others_pct = max(0.0, result.stream["machine_pct"] * CORES - ours - result.steal_pct)
            result.slip_max_ms = streamed["slip_max_ms"]
            result.backlog_max_ms = streamed["backlog_max_ms"]
            late_half = [mb for t, mb in rss_samples if t >= seconds / 2] or [mb for _, mb in rss_samples]
            result.rss_load_mb = median(late_half) if late_half else result.rss_base_mb

            acked = await gen.wait("acked", 30)
            t_end = time.monotonic()
            await gen.wait("done", 90)
            finals: dict[str, rpb.Recording] = {}
            deadline = time.monotonic() + 180
            while len(finals) < len(ids) and time.monotonic() < deadline:
                for rid in ids:
                    if rid not in finals:
                        try:
                            rec = await client.get_recording_state(rid)
                        except CallrecError as exc:  # the server stalled past the client's deadline: say so
                            result.errors.append(f"GetRecordingState while recordings finish: {exc}")
                            continue
                        if rec.state in DONE_STATES:
                            finals[rid] = rec
                if len(finals) < len(ids):
                    await asyncio.sleep(0.05)
            result.finalize_s = time.monotonic() - t_end
            result.server_cpu_s = _tree_cpu(pid) - cpu_go
    finally:
        await gen.close()

    for call in acked["calls"]:
        result.sent += call["sent"]
        result.received += call["received"]
        for reason, count in call["rejected"].items():
            result.rejected[reason] = result.rejected.get(reason, 0) + count
        if call["error"]:
            result.errors.append(call["error"])
    for rid in ids:
        rec = finals.get(rid)
        state = rpb.RecordingState.Name(rec.state) if rec else "NOT_FINISHED"
        result.states[state] = result.states.get(state, 0) + 1
        if rec is None:
            continue
        if rec.state == rpb.RECORDING_STATE_FAILED:
            result.errors.append(f"{rid}: {rec.error.message}")
        stats = rec.media_stats
        result.late += stats.frames_late
        result.gap_fill_ms += stats.gap_fill_ms
        for reason, count in stats.frames_rejected_by_reason.items():
            key = f"{reason} (media_stats)"
            result.rejected[key] = result.rejected.get(key, 0) + count

    reasons = result.reasons
    if result.states.get("RECORDING_STATE_COMPLETED", 0) != calls:
        reasons.append(f"recordings {result.states}")
    if result.errors:
        reasons.append("errors: " + " | ".join(result.errors)[:300])
    if result.received < result.sent:
        reasons.append(f"{result.sent - result.received} frames not accepted")
    if result.rejected:
        reasons.append(f"rejected {result.rejected}")
    if result.late:
        reasons.append(f"{result.late} frames late")
    if result.gap_fill_ms:
        reasons.append(f"{result.gap_fill_ms} ms gap-filled")
    if result.slip_max_ms > SLIP_LIMIT_MS:
        reasons.append(f"{SLIPPED} {result.slip_max_ms:.0f} ms behind real time")
    if result.backlog_max_ms > SLIP_LIMIT_MS:
        reasons.append(f"{BACKLOG} {result.backlog_max_ms:.0f} ms behind (media queued that gRPC "
                       "had not taken)")
    worst_probe = max(result.probe_ms, default=0.0)
    if worst_probe > LOOP_LAG_LIMIT_MS:
        reasons.append(f"event loop lag: probe took {worst_probe:.0f} ms")
    if result.stream.get("main_thread_pct", 0.0) > MAIN_THREAD_LIMIT_PCT:
        reasons.append(f"event-loop thread at {result.stream['main_thread_pct']:.0f}% of a core")
    if video is not None and result.finalize_s > FINALIZE_LIMIT_S:
        reasons.append(f"recordings took {result.finalize_s:.1f} s to finish after the call ended (worker behind)")
    result.passed = not reasons
    return result


async def ramp(
    step: Any,
    *,
    start: int,
    max_steps: int,
    budget_s: float,
    step_cost_s: float,
    levels: list[int] | None = None,
    log: Any = print,
) -> tuple[int, dict[int, StepResult]]:
    """Find the largest N for which `await step(N)` passes: double until a failure, then bisect.

    With `levels`, run exactly those (quick mode). Returns (largest passing N or 0, results).
    Stops early when the next step would not fit into `budget_s`, judged by the last passing step's time
    (or `step_cost_s` before any passed).
    """
    deadline = time.monotonic() + budget_s
    retries = RETRIES_UNDER_LOAD
    results: dict[int, StepResult] = {}
    best, first_fail = 0, None
    plan = list(levels) if levels else None
    n = plan.pop(0) if plan else start
    for _ in range(max_steps):
        if time.monotonic() + step_cost_s > deadline and results:
            log(f"  (time budget used up: stopping the ramp at {len(results)} steps)")
            break
        began = time.monotonic()
        res = await step(n)
        if res.passed:  # the next, larger step costs a little more
            step_cost_s = 1.2 * (time.monotonic() - began)
        # A failed step says nothing about the next one, which is smaller (bisection): an overloaded
        # step's finalize can take minutes, and its time would stop the ramp before the step it needs.
        log("  " + res.summary())
        taken = res.others_pct + res.steal_pct  # CPU the bench's processes could not have
        suspect = taken > BUSY_PCT or res.only_the_generator_failed
        if not res.passed and suspect and retries and time.monotonic() + step_cost_s < deadline:
            retries -= 1
            why = (f"other processes and the hypervisor took {res.others_pct:.0f}% and {res.steal_pct:.0f}% of a "
                   "core during that step" if taken > BUSY_PCT else "only the load generator fell behind")
            log(f"  ({why}: trying N={n} again)")
            res = await step(n)
            log("  " + res.summary())
        results[n] = res
        if res.passed:
            best = max(best, n)
        else:
            first_fail = n if first_fail is None else min(first_fail, n)
        if plan is not None:
            if not plan or not res.passed:
                break
            n = plan.pop(0)
            continue
        if first_fail is None:
            n = n * 2
        else:
            if first_fail - best <= max(1, round(0.12 * best)):
                break
            n = (best + first_fail) // 2
            if n in results:
                break
    return best, results
