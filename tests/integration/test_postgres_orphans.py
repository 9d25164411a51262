"""The test PostgreSQL helper stops clusters whose test run was killed (a timeout never runs `stop()`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.postgres_service import PREFIX, reap_orphans

ROOT = Path(__file__).resolve().parents[2]
STARTER = (
    "import sys, time\n"
    "from tests.postgres_service import PostgresServer\n"
    "server = PostgresServer().start()\n"
    "print(server.root, server.pid(), flush=True)\n"
    "time.sleep(600)\n"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_cluster_whose_owner_was_killed_is_stopped_and_deleted_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", STARTER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    root_text, pid_text = owner.stdout.readline().split()
    root, postmaster = Path(root_text), int(pid_text)
    try:
        kept = reap_orphans()
        assert root not in kept and alive(postmaster), "its owner still runs: left alone"
        owner.send_signal(signal.SIGKILL)  # what `timeout` does to a hung pytest, finalizers unrun
        owner.wait(10)
        assert alive(postmaster), "nothing stops the orphan by itself"
        assert root in reap_orphans()
        deadline = time.monotonic() + 10
        while alive(postmaster) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(postmaster) and not root.exists()
    finally:
        owner.kill()
        reap_orphans()


def test_directories_without_an_owner_file_are_not_touched(tmp_path: Path) -> None:
    legacy = tmp_path / f"{PREFIX}legacy"
    (legacy / "data").mkdir(parents=True)
    assert reap_orphans(tmp_path) == [] and legacy.exists()
    (legacy / "owner.pid").write_text(str(os.getpid()))
    assert reap_orphans(tmp_path) == [] and legacy.exists(), "this process is alive"
