"""The capacity ramp (bench/server_load.py): which steps it runs within its time budget.

The ramp is a benchmark's driver, not a test, but a row of `make bench` is only as good as the steps it
tries: here each step "takes" fake time, so the budget decisions are checked without running a server.
"""

from __future__ import annotations

import asyncio

import pytest

from bench import common, server_load
from bench.server_load import StepResult, ramp


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def run_ramp(monkeypatch: pytest.MonkeyPatch, capacity: int, cost: dict[int, float], budget_s: float,
             start: int = 2) -> list[int]:
    """Ramp from `start` against a server that passes up to `capacity`; returns the steps run, in order."""
    clock = FakeClock()
    monkeypatch.setattr(server_load.time, "monotonic", clock.monotonic)
    ran: list[int] = []

    async def step(n: int) -> StepResult:
        ran.append(n)
        clock.now += cost.get(n, 30.0)
        return StepResult(n, 10, passed=n <= capacity)

    best, results = asyncio.run(ramp(step, start=start, max_steps=7, budget_s=budget_s, step_cost_s=33.0,
                                     log=lambda line: None))
    assert best == max((n for n in ran if n <= capacity), default=0)
    assert set(results) == set(ran)
    return ran


def test_a_failed_steps_overload_does_not_use_up_the_budget_of_the_smaller_step_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 32 overloads the server: its recordings take 100 s more to finish, as measured for row 1b; the
    # estimate for 24 is then 36 s (from 16), not 156 s (from 32), so 24 and 20 still fit
    ran = run_ramp(monkeypatch, capacity=20, cost={32: 130.0}, budget_s=330.0)
    assert ran == [2, 4, 8, 16, 32, 24, 20]


def test_the_ramp_stops_when_the_next_step_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # each step takes 30 s, so the next is estimated at 36 s: after 4 steps (120 s) of 150 s, no fifth
    ran = run_ramp(monkeypatch, capacity=100, cost={}, budget_s=150.0)
    assert ran == [2, 4, 8, 16]


def test_the_cluster_rows_ramp_steps_on_the_goal_of_800_participants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows 8b and 8e have row 1's goal, 80 ten-person calls. On 2026-12-04 row 8e's ramp from 8 calls ran 640,
    1280, 960 and used up its budget before trying 800: a node that holds 800 showed 640. From FIRST_CALLS the
    doublings try 80 calls (one node; 40 calls a node for two) within the shape's budget (a quarter of
    `--only cluster`'s 900 s)."""
    from bench.cluster_capacity import FIRST_CALLS

    for nodes in (1, 2):
        ran = run_ramp(monkeypatch, capacity=90 * nodes, cost={}, budget_s=225.0, start=FIRST_CALLS * nodes)
        assert 80 * nodes in ran[:4], (nodes, ran)


def test_the_load_generator_sends_every_tick_once_in_batches_of_at_most_n_and_never_early() -> None:
    """Row 1e's gateway: batches of N ticks, each sent at its last tick, the remainder at the end."""
    from bench.loadgen import ticks_to_send

    for ticks, per_batch in ((10, 1), (10, 3), (9, 3), (1, 3), (7, 10)):
        sent = [(k, list(ticks_to_send(k, ticks, per_batch))) for k in range(ticks)]
        flat = [tick for _, batch in sent for tick in batch]
        assert flat == list(range(ticks)), (ticks, per_batch)
        for k, batch in sent:
            assert len(batch) <= per_batch
            assert all(tick <= k for tick in batch)  # nothing before its own tick
            assert not batch or batch[-1] == k  # a batch goes out at its newest tick
    assert [list(ticks_to_send(k, 9, 3)) for k in (0, 1, 2)] == [[], [], [0, 1, 2]]


def test_admission_capacity_is_fitted_to_both_call_shapes() -> None:
    """Row 8d: the participant and call capacities that put both measured shapes at a load of exactly 1.0."""
    from bench.cluster_capacity import fit_capacity

    participants, calls = fit_capacity((64, 10), (160, 2))
    assert (participants, calls) == (pytest.approx(853.33, abs=0.01), pytest.approx(256.0))
    for n, k in ((64, 10), (160, 2)):
        assert n * k / participants + n / calls == pytest.approx(1.0)
    # twice the participants in 1:1 calls as in 10-person ones: calls cost nothing apart, no per-call share
    assert fit_capacity((64, 10), (320, 2)) is None
    assert fit_capacity((64, 10), (64, 10)) is None  # one shape twice says nothing about calls


def test_a_step_failed_by_the_load_generator_alone_is_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slip of the generator says nothing about the server: once, the first step of a full run failed by
    one and the ramp bisected row 1 from 100 down to 90. The server's own failures are not retried."""
    clock = FakeClock()
    monkeypatch.setattr(server_load.time, "monotonic", clock.monotonic)
    ran: list[int] = []
    hiccups = {10: ["sender slipped 258 ms behind real time", "the generator's writes fell 220 ms behind"]}

    async def step(n: int) -> StepResult:
        ran.append(n)
        clock.now += 30.0
        reasons = hiccups.pop(n, []) if n <= 40 else [f"{n} frames late"]
        return StepResult(n, 10, passed=not reasons, reasons=reasons)

    best, _ = asyncio.run(ramp(step, start=10, max_steps=7, budget_s=1000.0, step_cost_s=33.0,
                               log=lambda line: None))
    assert ran[:3] == [10, 10, 20], ran
    assert best == 40 and ran.count(80) == 1, ran  # 80 failed by the server: not retried
    assert StepResult(1, 1, reasons=["sender slipped 300 ms behind real time"]).only_the_generator_failed
    assert not StepResult(1, 1, reasons=["sender slipped 300 ms", "5 frames late"]).only_the_generator_failed
    assert not StepResult(1, 1).only_the_generator_failed


def test_a_step_failed_while_the_hypervisor_stole_the_cpu_is_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steal (this VM's vCPUs given to another) made the 2-core machine twofold slower within an hour on
    2026-12-04: a step failed then measured the machine, and is run again once, as one beside a busy process."""
    clock = FakeClock()
    monkeypatch.setattr(server_load.time, "monotonic", clock.monotonic)
    ran: list[int] = []
    lines: list[str] = []
    stolen = {20: 70.0}

    async def step(n: int) -> StepResult:
        ran.append(n)
        clock.now += 30.0
        steal = stolen.pop(n, 0.0)
        passed = n <= 40 and not steal
        return StepResult(n, 10, passed=passed, reasons=[] if passed else [f"{n} frames late"], steal_pct=steal)

    best, _ = asyncio.run(ramp(step, start=10, max_steps=7, budget_s=1000.0, step_cost_s=33.0, log=lines.append))
    assert ran[:3] == [10, 20, 20], ran
    assert best == 40 and ran.count(80) == 1, ran  # failed with no steal: the server's own, not retried
    assert any("the hypervisor took 0% and 70% of a core" in line for line in lines), lines
    assert "steal 70.0%" in next(line for line in lines if "20 frames late" in line)


def test_steal_is_read_from_proc_stat_and_counts_as_busy() -> None:
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    busy, steal, total = common.cpu_jiffies("cpu  100 0 50 800 20 0 5 25 0 0\ncpu0 1 2 3\n")
    assert (busy, steal, total) == (180, 25, 1000)
    assert common.cpu_jiffies("cpu  100 0 50 800\n") == (150, 0, 950)  # an old kernel without the column


def test_a_capacity_row_names_what_took_the_cpu_beside_its_steps() -> None:
    quiet = StepResult(1, 10, others_pct=5.0, steal_pct=3.0)
    assert server_load.interference_note([quiet]) == ""
    busy = StepResult(2, 10, others_pct=35.0, steal_pct=45.0)
    note = server_load.interference_note([quiet, busy])
    assert note == (" [other processes used up to 35% of a core meanwhile; the hypervisor took up to 45% of a core"
                    " (steal)]")


def test_the_rest_of_the_system_counts_its_children_and_not_as_other_processes() -> None:
    """A cluster step measures one node; PostgreSQL (a postmaster and its backends), Redis, HAProxy and the other
    nodes are the system under test too. On 2026-12-04 the two-node row's other node showed as 82 % "other
    processes", and the ramp ran its failed step again as if the machine had been busy."""
    import os
    import signal
    import subprocess
    import sys
    import time

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        window = common.CpuWindow(parent.pid, with_children=True)
        deadline = time.monotonic() + 20
        used = 0.0
        while used < 0.3 and time.monotonic() < deadline:  # the child's burn, counted under its parent
            time.sleep(0.05)
            used = window.cpu_s()
        assert 0.3 <= used < 5.0, used
        assert window.stop()["children_cpu_s"] >= 0.25  # the child's, not the parent's own
    finally:
        for child in common.children(parent.pid):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
    line = StepResult(8, 10, system_pct=82.5, others_pct=1.0).summary()
    assert "the rest of the system  82.5%, other processes   1.0%" in line, line
    assert "the rest of the system" not in StepResult(8, 10).summary()
