"""Row 8: audio participants at real time through the cluster on this machine, against one node.

The same step as row 1 (`bench.server_load.run_step`: N calls of 10 Opus participants in real time,
each recorded as mixed mp3, a step fails on any late, lost or rejected frame or an unfinished
recording), but the load generator and the control client talk to HAProxy in front of a cluster
(`bench.cluster.Cluster`: PostgreSQL, a Redis Stream, K nodes), started fresh for each step. K = 1
is the baseline through the same proxy and shared state; K = 2 is one node per core. Admission is
set out of the way (a huge capacity): this measures what the nodes keep at real time, not where
admission would stop them.

The CPU and loop-thread figures `run_step` samples are node 1's only (a cluster has no one process);
what decides a step is the recordings' own counters, read through the proxy.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from bench.cluster import Cluster
from bench.common import Row, Section, wait_quiet
from bench.server_load import StepResult, ramp, run_step

PARTICIPANTS = 10
NO_ADMISSION = ("--capacity-audio-participants", "1000000", "--capacity-video-composites", "1000000")


async def run(quick: bool, codec: str, budget_s: float, log: Callable[[str], None],
              node_counts: tuple[int, ...] = (1, 2)) -> Section:
    seconds = 4.0 if quick else 18.0
    section = Section()
    best_of: dict[int, int] = {}
    for nodes in node_counts:
        async def step(n: int, nodes: int = nodes) -> StepResult:
            if not quick:
                await wait_quiet(log)
            cluster = Cluster(nodes=nodes, lease_s=15.0, node_args=("--clock", "realtime", *NO_ADMISSION),
                              node_env={"CALLREC_LOG_LEVEL": "warning"})
            await asyncio.to_thread(cluster.start)
            try:
                # run_step measures one process: node 1 stands in for it (see the module docstring)
                front: Any = SimpleNamespace(target=cluster.target, proc=cluster.servers[0].proc)
                return await run_step(front, n, seconds, participants=PARTICIPANTS, codec=codec)
            finally:
                await asyncio.to_thread(cluster.stop)
                # its temporary directory (nodes' data and spools, Redis, logs): 1-17 MB a step, 180 MB a run
                await asyncio.to_thread(shutil.rmtree, cluster.root, True)

        log(f"cluster: {nodes} node(s) behind HAProxy, N calls x {PARTICIPANTS} participants ({codec}, real time)")
        # From 8 calls a node: a node holds 320-640 participants since 2026-12-03 (the ramp from 2 calls a node
        # spent its six steps doubling and stopped at the first failure, unbisected).
        best, results = await ramp(step, start=8 * nodes, max_steps=7, budget_s=budget_s / len(node_counts),
                                   step_cost_s=seconds + 45, levels=[1] if quick else None, log=log)
        best_of[nodes] = best
        failed = sorted(n for n, r in results.items() if not r.passed)
        value = f"{best * PARTICIPANTS}" if best else "< 10"
        if best and not failed:
            value = f">= {value}"
        detail = f"{best} x {PARTICIPANTS}-person calls through HAProxy, PostgreSQL, Redis; zero frames lost/late"
        if failed:
            detail += f"; {failed[0] * PARTICIPANTS} failed: {results[failed[0]].reasons[0]}"[:300]
        if nodes > 1 and best_of.get(1):
            detail += f"; {best / best_of[1]:.2f}x one node"
        section.rows.append(Row(f"8{'abcdefgh'[nodes - 1]}",
                                f"audio participants at real time, cluster of {nodes} node(s) on this machine",
                                value, detail, goal=">= 800" if nodes > 1 else ""))
    return section
