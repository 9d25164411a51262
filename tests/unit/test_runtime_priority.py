"""A control node at real-time priority (`realtime_priority`, issue 11): every thread under SCHED_RR, its workers
back at normal priority, a CPU budget that puts it back to normal priority when it is exceeded, and a clear
error when the process may not use real-time scheduling.

The real scheduling runs in a child interpreter (real threads, a real worker process, real CPU spent), so the
test process itself never runs at real-time priority.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from callrec.config import ConfigError, load_config
from callrec.runtime_priority import guard_decision

ROOT = Path(__file__).resolve().parents[2]


def run_python(script: str, *prefix: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "server"), str(ROOT)]))
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_the_guard_demotes_past_the_budget_and_restores_only_after_the_cooldown_under_budget() -> None:
    under = guard_decision(True, 0.4, 0.5, 0.0, 10.0)
    assert (under.realtime, under.changed) == (True, False)
    over = guard_decision(True, 0.6, 0.5, 99.0, 10.0)
    assert (over.realtime, over.changed) == (False, True)
    early = guard_decision(False, 0.1, 0.5, 9.9, 10.0)  # under budget, but the cooldown is not over
    assert (early.realtime, early.changed) == (False, False)
    still_busy = guard_decision(False, 0.7, 0.5, 60.0, 10.0)  # the flood goes on: stay at normal priority
    assert (still_busy.realtime, still_busy.changed) == (False, False)
    back = guard_decision(False, 0.1, 0.5, 10.0, 10.0)
    assert (back.realtime, back.changed) == (True, True)


SCRIPT = """
    import json, os, threading, time
    from callrec.runtime_priority import RealtimePriority, thread_ids
    from callrec.child_process import start_child

    def policies():
        out = {}
        for tid in thread_ids():
            try:
                out[tid] = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
            except ProcessLookupError:
                pass  # a thread that just ended
        return out

    changes = []
    rt = RealtimePriority(7, 0.3, period_s=0.1, cooldown_s=0.6, on_change=lambda r, c: changes.append([r, c]))
    before = threading.Thread(target=time.sleep, args=(5,), daemon=True)
    before.start()  # a thread that exists before the priority is taken
    rt.start()
    later = []
    t = threading.Thread(target=lambda: later.append(os.sched_getscheduler(0)), daemon=True)
    t.start(); t.join()  # a thread started afterwards inherits it
    started = policies()
    guard = rt._thread.native_id
    child = start_child("callrec.storage.upload_worker")
    time.sleep(0.3)  # the child's interpreter starts its threads meanwhile
    child_threads = {tid: os.sched_getscheduler(tid) for tid in thread_ids(child.process.pid)}
    child.commands.close(); child.events.close(); child.process.kill(); child.process.wait()
    end = time.monotonic() + 3
    while rt.realtime and time.monotonic() < end:
        sum(i * i for i in range(20000))  # spin: well over 0.3 of a core
    demoted = policies()
    demoted_flag = rt.realtime
    end = time.monotonic() + 5
    while not rt.realtime and time.monotonic() < end:
        time.sleep(0.05)
    restored = policies()
    rt.stop()
    stopped = policies()
    print(json.dumps({"started": started, "later": later, "guard": guard, "child": child_threads,
                      "demoted": demoted, "demoted_flag": demoted_flag, "restored": restored,
                      "restored_flag": rt.demotions, "stopped": stopped, "changes": changes,
                      "rr": os.SCHED_RR, "other": os.SCHED_OTHER}))
"""


def _may_use_realtime() -> bool:
    try:
        return os.sched_get_priority_max(os.SCHED_RR) > 0 and (os.geteuid() == 0 or _rtprio_limit() >= 8)
    except OSError:
        return False


def _rtprio_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_RTPRIO)[0]


@pytest.mark.skipif(not _may_use_realtime(), reason="needs root or RLIMIT_RTPRIO >= 8 (CI runs as root)")
def test_every_thread_runs_at_sched_rr_workers_at_normal_and_the_budget_puts_it_back_and_forth() -> None:
    done = run_python(SCRIPT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    rr, other, guard = out["rr"], out["other"], str(out["guard"])
    started = {tid: tuple(p) for tid, p in out["started"].items()}
    assert started.pop(guard) == (rr, 8)  # the guard one above the rest
    assert started and set(started.values()) == {(rr, 7)}, started  # the thread from before too
    assert out["later"] == [rr]
    assert out["child"] and set(out["child"].values()) == {other}, out["child"]  # a worker never inherits it
    assert out["demoted_flag"] is False and out["changes"][0][0] is False and out["changes"][0][1] > 0.3
    demoted = {tid: tuple(p) for tid, p in out["demoted"].items() if tid != guard}
    assert set(demoted.values()) == {(other, 0)}, demoted
    assert out["changes"][1][0] is True and out["restored_flag"] == 1
    restored = {tid: tuple(p) for tid, p in out["restored"].items() if tid != guard}
    assert set(restored.values()) == {(rr, 7)}, restored
    stopped = {tid: tuple(p) for tid, p in out["stopped"].items() if tid != guard}
    assert set(stopped.values()) == {(other, 0)}, stopped


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) drops the capability")
def test_without_the_permission_the_error_says_what_to_grant() -> None:
    done = run_python("""
        from callrec.runtime_priority import RealtimePriority, PriorityError
        try:
            RealtimePriority(10, 0.5).start()
        except PriorityError as exc:
            print(exc)
        else:
            print("started")
    """, "setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "--", "sh", "-c", 'ulimit -r 0; exec "$@"',
        "sh")
    assert done.returncode == 0, done.stderr
    message = done.stdout
    assert "realtime_priority 10 needs permission" in message, message
    assert "CAP_SYS_NICE" in message and "LimitRTPRIO=11" in message and "--ulimit rtprio=11" in message
    assert "realtime_priority = 0" in message


def test_realtime_priority_is_a_control_nodes_setting_with_a_range_and_a_budget(tmp_path: Path) -> None:
    control = {"role": "control", "database_url": "postgresql://u:p@127.0.0.1:5432/db"}
    assert load_config({**control, "realtime_priority": 10}).realtime_priority == 10
    assert load_config({}).realtime_priority == 0 and load_config({}).realtime_cpu_budget == 0.5
    with pytest.raises(ConfigError, match=r"realtime_priority 10 is for control nodes \(role = control\).*'full'"):
        load_config({"realtime_priority": 10})
    for bad in (-1, 99, True, "10"):
        with pytest.raises(ConfigError, match=r"realtime_priority must be 0 .* 1-98; got"):
            load_config({**control, "realtime_priority": bad})
    for budget in (0, -0.5, (os.cpu_count() or 1) + 1):
        with pytest.raises(ConfigError, match=r"realtime_cpu_budget must be in \(0, "):
            load_config({**control, "realtime_priority": 10, "realtime_cpu_budget": budget})
    path = tmp_path / "callrec.toml"
    path.write_text('[server]\nrole = "control"\ndatabase_url = "postgresql://u:p@127.0.0.1/db"\n'
                    "realtime_priority = 20\nrealtime_cpu_budget = 0.25\n")
    from_file = load_config({}, path)
    assert (from_file.realtime_priority, from_file.realtime_cpu_budget) == (20, 0.25)
    assert load_config({"realtime_priority": 5}, path).realtime_priority == 5  # a flag over the file


def test_serve_refuses_real_time_priority_on_a_node_that_takes_calls(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "callrec_client.cli", "serve", "--data-dir", str(tmp_path), "--realtime-priority", "10"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "realtime_priority 10 is for control nodes (role = control)" in done.stderr
    assert "set realtime_priority = 0" in done.stderr
