"""Real-time scheduling for a control node: its answers do not wait for the media's turn on a core.

Why: on a machine whose cores the calls' media keeps busy, a control RPC's time is mostly wake-ups. A request
crosses about six threads (the client's, the proxy's, gRPC's readers and poller, the event loop, PostgreSQL's
backend), and under Linux's fair scheduler each woken thread may wait a few milliseconds for a core that a
media thread holds. Measured on the 2-core development machine under row 1's 800 participants (2026-12-04):
a thread sleeping 100 ms woke p99 5.2-5.8 ms late at normal priority and 0.16 ms late at SCHED_FIFO, and a
GetRecordingState through HAProxy to a control node answered at p99 9-16 ms with the control path at normal
priority and 3.3-3.9 ms with it (control node, HAProxy, PostgreSQL and the client) at real-time priority
(docs/performance.md, "The control path at real-time priority").

What it does: `RealtimePriority.start` (once the server serves) puts every thread of this process under SCHED_RR
at the given priority (threads started later inherit it from the thread that starts them), and
`child_process.start_child` puts the worker processes back to normal priority (`normal_priority`): a control
node's children do bulk work (uploads) that must not outrank the media.

The danger of real time, and the guard against it: a thread at SCHED_RR runs before every normal thread of the
machine, so a control node flooded with requests could take the cores the media needs (Linux's RT throttling
still leaves normal threads 5 %). A guard thread, one priority above the rest, measures the process's CPU every
`period_s`; past `cpu_budget` (in cores) it puts every thread back to normal priority for `cooldown_s` and logs
it, then restores real time once the process is under budget again. The flood then competes fairly, as it
would at normal priority, and the guard's decisions are counted in the metrics.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["GuardDecision", "PriorityError", "RealtimePriority", "guard_decision", "normal_priority",
           "thread_ids"]

POLICY = os.SCHED_RR
#: SCHED_RR priorities are 1-99; the guard thread runs one above the rest, so the highest setting is 98.
MAX_PRIORITY = 98


class PriorityError(OSError):
    """The process may not take real-time priority; the message says which permission to grant."""


def thread_ids(pid: int | str = "self") -> list[int]:
    """The thread ids of a process (its own by default), from /proc."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def normal_priority(pid: int = 0) -> None:
    """Put `pid` (this thread when 0) back to SCHED_OTHER if it runs under a real-time policy.

    A child process started by a real-time thread inherits its policy; a worker calls this first (and its
    parent calls it on the worker's pid right after starting it) so the worker's bulk work never outranks the
    media. Lowering one's own priority needs no permission."""
    try:
        if os.sched_getscheduler(pid) in (os.SCHED_RR, os.SCHED_FIFO):
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    except (ProcessLookupError, PermissionError):
        pass  # gone already, or someone else's: nothing of ours to lower


@dataclass(frozen=True)
class GuardDecision:
    """What the guard does after a period: `realtime` is the state to be in; `changed` whether that is news."""

    realtime: bool
    changed: bool


def guard_decision(realtime: bool, cpu_cores: float, budget: float, since_demoted_s: float,
                   cooldown_s: float) -> GuardDecision:
    """Demote when a real-time period used more than `budget` cores; restore after `cooldown_s` of being demoted
    once a period stayed under budget. A pure function, so the policy is tested without a loaded machine."""
    if realtime:
        return GuardDecision(cpu_cores <= budget, cpu_cores > budget)
    restore = since_demoted_s >= cooldown_s and cpu_cores <= budget
    return GuardDecision(restore, restore)


class RealtimePriority:
    """This process's threads at SCHED_RR `priority`, watched by a guard thread that enforces `cpu_budget`."""

    def __init__(self, priority: int, cpu_budget: float, *, period_s: float = 0.5, cooldown_s: float = 10.0,
                 on_change: Callable[[bool, float], None] | None = None) -> None:
        if not 1 <= priority <= MAX_PRIORITY:
            raise ValueError(f"realtime_priority must be 1-{MAX_PRIORITY}; got {priority}")
        self.priority = priority
        self.cpu_budget = cpu_budget
        self.period_s = period_s
        self.cooldown_s = cooldown_s
        self.on_change = on_change
        """Called from the guard thread with (realtime, cpu cores of the period) when the state changes."""
        self.realtime = False
        self.demotions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """PriorityError, saying what to grant, unless this process may take the priority (and its guard's).

        Tried on the calling thread and undone, so a server can refuse to start before it serves anything."""
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        try:
            os.sched_setscheduler(0, POLICY, os.sched_param(self.priority + 1))
        except PermissionError as exc:
            raise PriorityError(
                exc.errno,
                f"realtime_priority {self.priority} needs permission to use real-time scheduling: run as root, "
                f"grant CAP_SYS_NICE (systemd: AmbientCapabilities=CAP_SYS_NICE; docker: --cap-add SYS_NICE), or "
                f"raise RLIMIT_RTPRIO to at least {self.priority + 1} (systemd: LimitRTPRIO={self.priority + 1}; "
                f"docker: --ulimit rtprio={self.priority + 1}); or set realtime_priority = 0",
            ) from None
        os.sched_setscheduler(0, policy, param)

    def start(self) -> None:
        """Take real-time priority for every thread now, and start the guard; PriorityError when not allowed.

        The guard's budget counts from here: a server calls this once it serves, so its start-up work (recovery,
        connection pools) is not taken for a flood."""
        self.check()
        self._apply(True)
        self.realtime = True
        self._thread = threading.Thread(target=self._guard, name="callrec-rt-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the guard and put every thread back to normal priority (the drain then competes fairly)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._apply(False)
        self.realtime = False

    def _apply(self, realtime: bool) -> None:
        """Every thread of the process (but the guard) to real time or back; new threads inherit from their
        creator, and each period applies it again to any thread started meanwhile by a thread not yet moved."""
        guard = self._thread.native_id if self._thread is not None else None
        for tid in thread_ids():
            if tid == guard:
                continue
            try:
                if realtime:
                    if os.sched_getscheduler(tid) != POLICY or os.sched_getparam(tid).sched_priority != self.priority:
                        os.sched_setscheduler(tid, POLICY, os.sched_param(self.priority))
                else:
                    normal_priority(tid)
            except ProcessLookupError:
                continue  # the thread ended meanwhile

    def _guard(self) -> None:
        os.sched_setscheduler(0, POLICY, os.sched_param(self.priority + 1))  # runs even when the rest spins
        last_cpu, last_at = _process_cpu_s(), time.monotonic()
        demoted_at = 0.0
        while not self._stop.wait(self.period_s):
            cpu, now = _process_cpu_s(), time.monotonic()
            cores = (cpu - last_cpu) / max(now - last_at, 1e-6)
            last_cpu, last_at = cpu, now
            decision = guard_decision(self.realtime, cores, self.cpu_budget, now - demoted_at, self.cooldown_s)
            if decision.realtime:
                self._apply(True)  # again each period: a thread started by one not yet moved
            if not decision.changed:
                continue
            if not decision.realtime:
                self._apply(False)
                self.demotions += 1
                demoted_at = now
            self.realtime = decision.realtime
            if self.on_change is not None:
                self.on_change(decision.realtime, cores)


def _process_cpu_s() -> float:
    """User and system CPU seconds of every thread of this process (not its children)."""
    times = os.times()
    return times.user + times.system
