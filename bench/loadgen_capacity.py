"""Row 9: the load generator drives 1000 participants from one process without being the bottleneck.

Every capacity row trusts `bench.loadgen` to keep real time; if it could not, a failing step would
blame the server for the client's slowness. So the generator is measured alone: the same process,
driven by the same `LoadGen` as `bench.server_load.run_step`, streams 100 calls x 10 participants
(one `media_batch` of pre-encoded frames per call per 20 ms tick) to `bench.null_sink`, a
MediaService that only counts frames and acks them, so the sink costs little and the generator is
what is measured. Quick mode streams 10 calls (100 participants) for 4 s: a smoke run, not the goal.

It passes ("not the bottleneck") when the generator kept its schedule (slip at most
`server_load.SLIP_LIMIT_MS`, and no call's unsent media queued longer than that), every frame sent
was acked as received, and it used less than
`CPU_LIMIT_PCT` of one core (its event loop is one thread: above that it has no headroom left).
Otherwise the row says plainly that the load generator is the bottleneck, and why. CPU comes from
the generator's own `streamed` report (process time over wall time of the streaming phase),
cross-checked with /proc; a linear extrapolation of it gives how many participants one process
could drive. The machine is shared (other benchmarks may run): the CPU of everything else during
the streaming phase is printed beside the figures.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import ROOT
from bench.common import CORES, Row, Section, machine_busy, proc_cpu, wait_quiet
from bench.server_load import SLIP_LIMIT_MS, LoadGen

PARTICIPANTS = 10
GOAL_PARTICIPANTS = 1000
#: The generator's share of one core above which it counts as saturated (its event loop is one thread).
CPU_LIMIT_PCT = 90.0
SINK_START_S = 30.0


class NullSinkProcess:
    """`python -m bench.null_sink` as a child process: its port, its pid, and a clean stop."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(cls, timeout: float = SINK_START_S) -> NullSinkProcess:
        # stderr to a file, not a pipe: nobody reads it while the sink runs, and a full pipe would stall it
        with tempfile.TemporaryFile() as errors:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.null_sink", cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors,
            )
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout)
                ready = json.loads(line or b"{}")
                if ready.get("event") != "ready":
                    errors.seek(0)
                    raise RuntimeError(f"null sink did not start: {line!r}\n"
                                       f"{errors.read().decode(errors='replace')[-2000:]}")
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
        return cls(proc, int(ready["port"]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """EOF on stdin (the sink stops by itself), then SIGTERM, then SIGKILL: each bounded."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        for escalate in (None, self.proc.terminate, self.proc.kill):
            if self.proc.returncode is not None:
                return
            if escalate is not None:
                with contextlib.suppress(ProcessLookupError):
                    escalate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)


@dataclass
class Measurement:
    """What one run of the generator against the sink showed."""

    calls: int
    seconds: float
    wall_s: float = 0.0
    gen_pct: float = 0.0  # % of one core, from the generator's own report
    gen_proc_pct: float = 0.0  # the same from /proc, as a cross-check
    sink_pct: float = 0.0
    others_pct: float = 0.0  # every other process on the machine, % of one core
    slip_max_ms: float = 0.0
    slip_p99_ms: float = 0.0
    backlog_max_ms: float = 0.0
    sent: int = 0
    received: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)  # errors and warnings the generator reported

    @property
    def participants(self) -> int:
        return self.calls * PARTICIPANTS

    def bottleneck_reasons(self) -> list[str]:
        """Why the generator held things back; empty when it did not."""
        reasons = []
        if self.slip_max_ms > SLIP_LIMIT_MS:
            reasons.append(f"it slipped {self.slip_max_ms:.0f} ms behind its 20 ms schedule "
                           f"(limit {SLIP_LIMIT_MS:.0f} ms)")
        if self.backlog_max_ms > SLIP_LIMIT_MS:
            reasons.append(f"its writes fell {self.backlog_max_ms:.0f} ms behind its schedule (media queued "
                           f"that gRPC had not taken; limit {SLIP_LIMIT_MS:.0f} ms)")
        if self.received < self.sent or self.rejected:
            reasons.append(f"only {self.received} of {self.sent} frames were acked as received")
        if self.gen_pct >= CPU_LIMIT_PCT:
            reasons.append(f"it used {self.gen_pct:.0f} % of its one core (limit {CPU_LIMIT_PCT:.0f} %)")
        if self.problems:
            reasons.append("; ".join(self.problems)[:200])
        return reasons

    def cpu_estimate(self) -> float:
        """Participants one generator process could drive before `CPU_LIMIT_PCT` of a core, linearly."""
        return self.participants * CPU_LIMIT_PCT / self.gen_pct if self.gen_pct > 0 else float("inf")


def config(target: str, calls: int, seconds: float, codec: str) -> dict[str, Any]:
    """The generator's config, as `server_load.run_step` builds it (audio only)."""
    tag = uuid.uuid4().hex[:6]
    return {"target": target, "calls": [f"loadgen-{tag}-{n}" for n in range(calls)],
            "participants": PARTICIPANTS, "seconds": seconds, "codec": codec, "video": None}


async def stream(gen: LoadGen, sink: NullSinkProcess, m: Measurement) -> None:
    """`go` -> `streamed` -> `acked` -> `done`, with the CPU of both processes over the streaming phase."""
    self_pid = os.getpid()
    gen0, sink0, self0 = proc_cpu(gen.pid), proc_cpu(sink.pid), proc_cpu(self_pid)
    busy0, total0 = machine_busy()
    t0 = time.monotonic()
    await gen.go()
    streamed = await gen.wait("streamed", m.seconds + 60)
    wall = max(time.monotonic() - t0, 1e-6)
    busy1, total1 = machine_busy()
    m.gen_proc_pct = 100 * (proc_cpu(gen.pid) - gen0) / wall
    m.sink_pct = 100 * (proc_cpu(sink.pid) - sink0) / wall
    machine = 100 * CORES * (busy1 - busy0) / max(total1 - total0, 1)
    m.others_pct = max(0.0, machine - m.gen_proc_pct - m.sink_pct - 100 * (proc_cpu(self_pid) - self0) / wall)
    m.wall_s = streamed["wall_s"]
    m.gen_pct = 100 * streamed["cpu_s"] / max(streamed["wall_s"], 1e-6)
    m.slip_max_ms = streamed["slip_max_ms"]
    m.slip_p99_ms = streamed["slip_p99_ms"]
    m.backlog_max_ms = streamed["backlog_max_ms"]
    acked = await gen.wait("acked", 30)
    for call in acked["calls"]:
        m.sent += call["sent"]
        m.received += call["received"]
        m.rejected += sum(call["rejected"].values())
        if call["error"]:
            m.problems.append(f"{call['call']}: {call['error']}")
    await gen.wait("done", 90)
    m.problems += [e["message"] for e in gen.events if e["event"] == "warning"]


async def measure(calls: int, seconds: float, codec: str, log: Callable[[str], None]) -> Measurement:
    """One run of the generator against a fresh null sink; both processes stopped afterwards."""
    m = Measurement(calls, seconds)
    sink = await NullSinkProcess.start()
    gen: LoadGen | None = None
    try:
        log(f"  null sink on {sink.target} (pid {sink.pid}); opening {calls} calls x {PARTICIPANTS}")
        gen = await LoadGen.start(config(sink.target, calls, seconds, codec))
        await stream(gen, sink, m)
    finally:
        if gen is not None:
            await gen.close()
        await sink.stop()
    return m


def summary(m: Measurement) -> str:
    """The figures, for the log and the row's detail."""
    return (f"slip max {m.slip_max_ms:.0f} ms / p99 {m.slip_p99_ms:.0f} ms, backlog max {m.backlog_max_ms:.0f} ms "
            f"(limit {SLIP_LIMIT_MS:.0f}); "
            f"generator {m.gen_pct:.0f} % of a core (/proc {m.gen_proc_pct:.0f} %), ~{m.cpu_estimate():.0f} "
            f"participants per process by CPU (linear to {CPU_LIMIT_PCT:.0f} %); sink {m.sink_pct:.0f} %, "
            f"other processes {m.others_pct:.0f} %; frames acked {m.received}/{m.sent}")


def row(m: Measurement, quick: bool, codec: str) -> Row:
    reasons = m.bottleneck_reasons()
    verdict = ("not the bottleneck" if not reasons else
               f"the load generator is the bottleneck at {m.participants} participants: " + "; ".join(reasons))
    how = (f"{m.calls} calls x {PARTICIPANTS} ({codec}, pre-encoded, one media_batch per call per 20 ms) for "
           f"{m.seconds:.0f} s to a null sink that only counts: ")
    if quick:
        how = f"quick: {m.participants} participants only, the goal is not tested; " + how
    value = f"{m.participants}" if not reasons else f"< {m.participants}"
    return Row("9", "load generator: participants driven from one process", value,
               f"{how}{summary(m)} -> {verdict}", goal=f">= {GOAL_PARTICIPANTS}")


async def run(quick: bool, codec: str, log: Callable[[str], None]) -> Section:
    calls = GOAL_PARTICIPANTS // PARTICIPANTS // (10 if quick else 1)
    seconds = 4.0 if quick else 18.0
    if not quick:
        await wait_quiet(log)
    log(f"loadgen: one bench.loadgen process, {calls} calls x {PARTICIPANTS} participants ({codec}) "
        f"-> bench.null_sink, {seconds:.0f} s")
    m = await measure(calls, seconds, codec, log)
    log("  " + summary(m))
    return Section([row(m, quick, codec)])
