"""Row 8g's parts (`make bench ARGS="--only cluster"`): the probe process at real-time priority
(`bench.control_probe.ProbeProcess`) and `bench.cluster.realtime_tree`, which puts PostgreSQL's and HAProxy's
processes under SCHED_RR. Real processes on loopback: the probe reads `bench.null_sink`, a gRPC server that
answers GetRecordingState."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from bench.cluster import realtime_tree
from bench.control_probe import ProbeProcess
from bench.loadgen_capacity import NullSinkProcess
from callrec.runtime_priority import thread_ids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real-time scheduling needs root (CI runs as root)")


async def test_the_probe_process_runs_at_sched_rr_and_times_every_read() -> None:
    sink = await NullSinkProcess.start()
    try:
        probe = await ProbeProcess.start(sink.target, "rec-1", seconds=1.0, priority=10, interval=0.05)
        policies = {os.sched_getscheduler(tid) for tid in thread_ids(probe.proc.pid)}
        await asyncio.sleep(1.5)  # its 1 s of reads; then `finish` closes its stdin, as run_step does
        latencies, errors = await probe.finish()
    finally:
        await sink.stop()
    assert policies == {os.SCHED_RR}, policies  # chrt execs the probe: every one of its threads inherits it
    assert errors == []
    assert 10 <= len(latencies) <= 21, latencies  # 1 s at one read every 50 ms, each read's own time added
    assert all(0 < ms < 1000 for ms in latencies), latencies


def test_realtime_tree_reaches_every_thread_of_a_process_and_of_its_children() -> None:
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        for _ in range(50):  # until both children are forked
            kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            if len(kids) == 2:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert len(kids) == 2
        realtime_tree(parent.pid, 9)
        for pid in (parent.pid, *map(int, kids)):
            assert os.sched_getscheduler(pid) == os.SCHED_RR and os.sched_getparam(pid).sched_priority == 9
    finally:
        parent.kill()
        parent.wait()
