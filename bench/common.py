"""Shared pieces of the bench: the table's row type, /proc readings, a server on loopback.

CPU and memory come from /proc (no psutil): `utime + stime` of a process (all its threads) or of
one thread, `VmRSS`, and `Pss` from smaps_rollup for worker processes whose pages are shared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import ServerProcess

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


@dataclass
class Row:
    """One line of the table: what, the value, and how it was measured."""

    key: str  # the brief's row number (1-7), with a letter where one number has two rows
    metric: str
    value: str
    detail: str = ""
    ok: bool = True  # False: the measurement itself did not work (the value says why)
    goal: str = ""  # the target this figure is measured against (issue 11), printed beside it


@dataclass
class Section:
    """The rows one module measured."""

    rows: list[Row] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ /proc


def _stat_fields(path: str) -> list[str]:
    text = Path(path).read_text()
    # comm may hold spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, all threads; 0.0 if it is gone."""
    try:
        f = _stat_fields(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0
    return (int(f[11]) + int(f[12])) / TICKS


def thread_cpu(pid: int, tid: int) -> float:
    """CPU seconds of one thread (tid == pid: the main thread, which runs the event loop)."""
    try:
        f = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0.0
    return (int(f[11]) + int(f[12])) / TICKS


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def rss_mb(pid: int) -> float:
    """Resident set size in MB (10^6 bytes)."""
    return _status_kb(pid, "VmRSS") * 1024 / 1e6


def pss_mb(pid: int) -> float:
    """Proportional set size in MB (shared pages split between sharers); RSS if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss_mb(pid)


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (the video workers of a server)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            f = _stat_fields(f"/proc/{entry}/stat")
        except (FileNotFoundError, ProcessLookupError, ValueError, PermissionError):
            continue
        if int(f[1]) == pid:
            out.append(int(entry))
    return out


def cpu_jiffies(stat_text: str) -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all cores from the text of /proc/stat.

    Steal is time the hypervisor gave this VM's vCPUs to someone else: it counts as busy (no process here
    could run), and a step measured while it was high measured a slower machine, not slower code."""
    values = [int(v) for v in stat_text.splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    steal = values[7] if len(values) > 7 else 0
    return total - idle, steal, total


def machine_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine now."""
    return cpu_jiffies(Path("/proc/stat").read_text())


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    busy, _, total = machine_jiffies()
    return busy, total


class CpuWindow:
    """CPU used by a process (and optionally its main thread, its children) over a window.

    Children are sampled while alive: `sample()` remembers the last reading of each, so a
    worker that exits before `stop()` still counts up to its last sample.
    """

    def __init__(self, pid: int, with_children: bool = False) -> None:
        self.pid = pid
        self.with_children = with_children
        self.t0 = time.monotonic()
        self.cpu0 = proc_cpu(pid)
        self.main0 = thread_cpu(pid, pid)
        self.machine0 = machine_jiffies()
        self._child_first: dict[int, float] = {}
        self._child_last: dict[int, float] = {}
        if with_children:  # children alive now count from here; later ones from their start
            for child in children(pid):
                self._child_first[child] = self._child_last[child] = proc_cpu(child)

    def sample(self) -> None:
        """Read the children's CPU (call now and then: a child that exits is gone from /proc)."""
        if not self.with_children:
            return
        for child in children(self.pid):
            cpu = proc_cpu(child)
            self._child_first.setdefault(child, 0.0)
            self._child_last[child] = cpu

    def cpu_s(self) -> float:
        """CPU seconds of the process and (with children) of its children since the window began."""
        stopped = self.stop()
        return stopped["server_cpu_s"] + stopped["children_cpu_s"]

    def stop(self) -> dict[str, float]:
        self.sample()
        wall = max(time.monotonic() - self.t0, 1e-6)
        busy1, steal1, total1 = machine_jiffies()
        busy0, steal0, total0 = self.machine0
        server = proc_cpu(self.pid) - self.cpu0
        main = thread_cpu(self.pid, self.pid) - self.main0
        kids = sum(self._child_last[c] - self._child_first[c] for c in self._child_last)
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "main_thread_cpu_s": main,
            "children_cpu_s": kids,
            "server_pct": 100 * server / wall,
            "main_thread_pct": 100 * main / wall,
            "children_pct": 100 * kids / wall,
            "machine_pct": 100 * (busy1 - busy0) / max(total1 - total0, 1),  # % of all cores together
            # what the hypervisor took (part of machine_pct), % of one core
            "steal_pct": 100 * CORES * (steal1 - steal0) / max(total1 - total0, 1),
        }


# ------------------------------------------------------------------------------------------ stats


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------------------ server


def write_limits(path: Path, limits: dict[str, int]) -> Path:
    """A config file of `[limits]` settings at `path` (`--config`), where a ramp would meet a default limit."""
    path.write_text("[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))
    return path


@contextlib.contextmanager
def server(*args: str, keep: bool = False, limits: dict[str, int] | None = None) -> Iterator[ServerProcess]:
    """A fresh `callrec serve` on a loopback port with its own data directory, stopped after.

    `limits`: [limits] settings for it (a config file), where a capacity ramp would meet a default limit
    before the machine's capacity (e.g. 400 one-to-one calls are 400 recordings; `max_recordings` is 200)."""
    tmp = Path(tempfile.mkdtemp(prefix="callrec-bench-"))
    if limits:
        args = (*args, "--config", str(write_limits(tmp / "bench.toml", limits)))
    proc = ServerProcess(tmp / "data", *args, env={"CALLREC_LOG_LEVEL": "warning"})
    try:
        proc.start(timeout=60)
        yield proc
    finally:
        proc.stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def log_problems(srv: ServerProcess, limit: int = 3) -> list[str]:
    """The server log's warning/error lines (first few), for the detail log."""
    lines = [line for line in srv.log_text().splitlines()
             if any(w in line.lower() for w in ("warning", "error", "exception", "traceback"))]
    return lines[:limit]


async def wait_quiet(log: object, max_wait_s: float = 6.0, limit_pct: float = 40.0) -> float:
    """Wait (bounded) until other processes use less than `limit_pct` of a core; returns their last share.

    Called between steps, when nothing of the bench runs: whatever keeps the machine busy then
    (other test suites...) would take CPU from the server under test.
    """
    import asyncio

    deadline = time.monotonic() + max_wait_s
    while True:
        busy0, total0 = machine_busy()
        await asyncio.sleep(1.0)
        busy1, total1 = machine_busy()
        pct = 100 * CORES * (busy1 - busy0) / max(total1 - total0, 1)
        if pct < limit_pct or time.monotonic() >= deadline:
            if pct >= limit_pct:
                log(f"  (machine still busy: other processes use {pct:.0f}% of a core; measuring anyway)")  # type: ignore[operator]
            return pct


def child_cpu(cmd: list[str]) -> float:
    """Run `cmd` to its end; its user + system CPU seconds (`os.wait4`). RuntimeError with the end of its
    stderr if it fails (give tools a quiet log level: stderr is read after the end)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if code != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({code}): {err[-500:]}")
    return usage.ru_utime + usage.ru_stime
