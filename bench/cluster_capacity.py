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

Row 8e is row 8a with a control node beside the node (`--role control`: it takes no calls, and the proxy sends
it the state reads, GetRecordingState included); row 8f is the control probe at row 8e's largest passing step,
answered by that control node on a loop no call's media shares: row 1d's goal (p99 <= 5 ms) with the means
cluster mode offers on one machine. Row 8g runs row 8f's step again with the control path at real-time priority
(the control node's `--realtime-priority`, HAProxy and PostgreSQL under SCHED_RR, as the README's "Cluster
mode" sets them up) and probes from a process of its own at that priority, the stand-in for a client on another
machine: on a machine whose cores the media keeps busy, a control RPC's time is mostly its threads' wake-ups,
and at normal priority each may wait milliseconds for a core (docs/performance.md, "The control path at
real-time priority").

Row 8c runs 1:1 calls on one node, and row 8d fits admission's two audio costs to rows 8a and 8c (one node
at a load of 1.0 in both shapes): `config.CLUSTER_AUDIO_PARTICIPANTS` and `config.CLUSTER_CALLS` are its
figures, and a machine of one's own gets its own with `--capacity-audio-participants` and `--capacity-calls`.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.audio_capacity import RAMP_LIMITS
from bench.cluster import Cluster
from bench.common import Row, Section, percentile, wait_quiet, write_limits
from bench.server_load import StepResult, ramp, run_step
from callrec.runtime_priority import PriorityError, RealtimePriority

PARTICIPANTS = 10
#: The 10-person shapes' first step, in calls a node: its doublings reach row 1's goal, 80 calls, exactly.
FIRST_CALLS = 10
#: Row 8g's SCHED_RR priority for the control path (control node, HAProxy, PostgreSQL, the probe).
REALTIME_PRIORITY = 10
NO_ADMISSION = ("--capacity-audio-participants", "1000000", "--capacity-video-composites", "1000000")


def fit_capacity(large: tuple[int, int], small: tuple[int, int]) -> tuple[float, float] | None:
    """Admission's audio costs from two shapes a node keeps at a load of 1.0, each (calls, participants per call).

    Solves `calls * k / P + calls / C = 1` for both shapes (P: capacity_audio_participants, C: capacity_calls).
    None when the two do not give two positive costs (a machine where calls cost nothing apart, or noise).
    """
    (n1, k1), (n2, k2) = large, small
    det = n1 * k1 * n2 - n1 * n2 * k2
    if det == 0:
        return None
    per_participant = (n2 - n1) / det  # 1 / P
    per_call = (n1 * k1 - n2 * k2) / det  # 1 / C
    if per_participant <= 0 or per_call <= 0:
        return None
    return 1 / per_participant, 1 / per_call


def probe_row(result: StepResult) -> Row:
    """Row 8f: the control probe of one step (row 8e's best), answered by the control node through the proxy."""
    probes = result.probe_ms
    value = f"{percentile(probes, 50):.1f} / {percentile(probes, 99):.1f} ms" if probes else "n/a"
    return Row("8f", "control RPC p50 / p99 via the proxy from the control node, row 8e's load",
               value, f"GetRecordingState every 250 ms ({len(probes)} probes) while {result.total_participants} "
               f"participants stream into the other node; max {max(probes, default=float('nan')):.0f} ms",
               goal="p99 <= 5 ms")


def realtime_row(result: StepResult | None, refused: str = "") -> Row:
    """Row 8g: row 8f's step again with the control path at real-time priority, probed by a process at that
    priority too (a client on another machine, whose wake-ups the load does not delay)."""
    what = "control RPC p50 / p99 via the proxy, the control path at real-time priority, row 8e's load"
    probes = result.remote_probe_ms if result is not None else []
    if result is None or not probes:
        why = refused or "; ".join(result.remote_probe_errors if result is not None else [])
        return Row("8g", what, "n/a", f"no real-time priority here: {why}"[:300], goal="p99 <= 5 ms")
    verdict = "every frame on time" if result.passed else f"the step failed: {'; '.join(result.reasons) or '?'}"
    return Row("8g", what, f"{percentile(probes, 50):.1f} / {percentile(probes, 99):.1f} ms",
               f"GetRecordingState every 100 ms ({len(probes)} probes, max {max(probes):.0f} ms) from a process at "
               f"SCHED_RR {REALTIME_PRIORITY} while {result.total_participants} participants stream into the other "
               f"node ({verdict}); control node --realtime-priority {REALTIME_PRIORITY}, HAProxy and PostgreSQL "
               f"at SCHED_RR {REALTIME_PRIORITY}; the bench's own probe at normal priority, the same moments: "
               f"{percentile(result.probe_ms, 50):.1f} / {percentile(result.probe_ms, 99):.1f} ms",
               goal="p99 <= 5 ms")


async def run(quick: bool, codec: str, budget_s: float, log: Callable[[str], None],
              node_counts: tuple[int, ...] = (1, 2)) -> Section:
    seconds = 4.0 if quick else 18.0
    section = Section()
    # (row, nodes, participants per call, first step in calls a node, control nodes)
    # From 10 calls a node: a node holds 300-800 participants since 2026-12-03 (the ramp from 2 calls a node
    # spent its six steps doubling and stopped at the first failure, unbisected), and from 10 the doublings
    # step on the goal itself (80 calls: 800 participants on one node with a control node, or on two nodes);
    # from 8 they went 640 -> 1280 and the bisection's budget ran out before 800 (2026-12-04). 1:1 calls from 80.
    shapes = [(f"8{'abcdefgh'[nodes - 1]}", nodes, PARTICIPANTS, FIRST_CALLS, 0) for nodes in node_counts]
    if 1 in node_counts:
        shapes.append(("8c", 1, 2, 80, 0))
        shapes.append(("8e", 1, PARTICIPANTS, FIRST_CALLS, 1))
    best_of: dict[tuple[int, int, int], int] = {}  # (nodes, participants, control nodes)
    bounded: dict[tuple[int, int, int], bool] = {}  # a step above the best failed: the best is the capacity
    # a ramp of 1:1 calls meets [limits] max_recordings (200) before the machine's capacity: raised, as in row 1c
    with tempfile.TemporaryDirectory(prefix="callrec-bench-limits-") as limits_dir:
        limits = write_limits(Path(limits_dir) / "limits.toml", RAMP_LIMITS)
        node_args = ("--clock", "realtime", *NO_ADMISSION, "--config", str(limits))
        for row, nodes, participants, first, control in shapes:
            async def step(n: int, nodes: int = nodes, participants: int = participants,
                           control: int = control, realtime: int = 0) -> StepResult:
                if not quick:
                    await wait_quiet(log)
                cluster = Cluster(nodes=nodes, control_nodes=control, lease_s=15.0, node_args=node_args,
                                  node_env={"CALLREC_LOG_LEVEL": "warning"}, realtime_priority=realtime)
                await asyncio.to_thread(cluster.start)
                try:
                    # run_step measures one process: node 1 stands in for it (see the module docstring)
                    front: Any = SimpleNamespace(target=cluster.target, proc=cluster.servers[0].proc)
                    return await run_step(front, n, seconds, participants=participants, codec=codec,
                                          system_pids=cluster.process_roots(but=0), probe_priority=realtime)
                finally:
                    await asyncio.to_thread(cluster.stop)
                    # its temporary directory (nodes' data and spools, Redis, logs): 1-17 MB a step, 180 MB a run
                    await asyncio.to_thread(shutil.rmtree, cluster.root, True)

            shape = f"{participants}-person calls" if participants > 2 else "1:1 calls"
            log(f"cluster: {nodes} node(s){' and a control node' if control else ''} behind HAProxy, N {shape} "
                f"({codec}, real time)")
            best, results = await ramp(step, start=first * nodes, max_steps=7, budget_s=budget_s / len(shapes),
                                       step_cost_s=seconds + 45, levels=[1] if quick else None, log=log)
            best_of[(nodes, participants, control)] = best
            failed = sorted(n for n, r in results.items() if not r.passed)
            bounded[(nodes, participants, control)] = bool(failed)
            value = f"{best * participants}" if best else f"< {first * nodes * participants}"
            if best and not failed:
                value = f">= {value}"
            detail = f"{best} x {shape} through HAProxy, PostgreSQL, Redis; zero frames lost/late"
            if failed:
                detail += f"; {failed[0] * participants} failed: {results[failed[0]].reasons[0]}"[:300]
            if (nodes > 1 or control) and best_of.get((1, participants, 0)):
                detail += f"; {best / best_of[(1, participants, 0)]:.2f}x one node alone"
            what = f"audio participants at real time, cluster of {nodes} node(s) on this machine"
            if control:
                what += ", with a control node"
            if participants != PARTICIPANTS:
                what += f", {shape}"
            section.rows.append(Row(row, what, value, detail, goal=">= 800" if nodes > 1 or control else ""))
            if control and best:
                section.rows.append(probe_row(results[best]))
                log(f"cluster: the control path at real-time priority (SCHED_RR {REALTIME_PRIORITY}), "
                    f"{best} x {shape}")
                try:
                    RealtimePriority(REALTIME_PRIORITY, 1.0).check()
                except PriorityError as exc:  # not root, no CAP_SYS_NICE: the row says so
                    section.rows.append(realtime_row(None, str(exc)))
                else:
                    realtime = await step(best, realtime=REALTIME_PRIORITY)
                    log(realtime.summary())
                    section.rows.append(realtime_row(realtime))
    large, small = best_of.get((1, PARTICIPANTS, 0)), best_of.get((1, 2, 0))
    if large and small and not quick:
        fitted = fit_capacity((large, PARTICIPANTS), (small, 2))
        value = (f"--capacity-audio-participants {fitted[0]:.0f} --capacity-calls {fitted[1]:.0f}" if fitted
                 else "no fit (calls cost nothing apart here): --capacity-audio-participants "
                 f"{large * PARTICIPANTS}")
        if not (bounded.get((1, PARTICIPANTS, 0)) and bounded.get((1, 2, 0))):
            value += " (a ramp ended without a failure: its figure is a floor, and so is the fit)"
        section.rows.append(Row("8d", "admission capacity of one node, fitted to rows 8a and 8c", value,
                                f"a load of 1.0 at {large} x {PARTICIPANTS}-person and at {small} x 1:1 calls "
                                "(core.admission; the cluster defaults in callrec.config)"))
    return section
