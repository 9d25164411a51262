"""A real PostgreSQL server for tests: Debian's `initdb`/`pg_ctl`, in a temporary directory, on loopback.

Debian's PostgreSQL tools refuse to run as root (tests and CI run as root), so when we are root they
run as the `postgres` user the package creates (`runuser -u postgres -- ...`), in a directory that
user owns. The server listens on 127.0.0.1 only, on a free port, with its Unix socket in its own
directory; authentication is `trust` for loopback (a throwaway test cluster, never a deployment).

A plain class with `start()` / `stop()` / `kill()` (no pytest here), so tests, `make cluster` and
benchmarks can share it. Each cluster's directory names the process that started it (`owner.pid`):
a test run killed by a timeout never stops its server, so `start()` first stops the clusters whose
owner is gone (several such orphans made later runs hang).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.integration.storage_servers import free_port


def _bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    if which:
        return Path(which).resolve().parent
    raise RuntimeError("PostgreSQL is not installed: `apt-get install postgresql` (make test-deps does it)")


PREFIX = "callrec-pg-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(tmp_dir: Path | None = None) -> list[Path]:
    """Stop and delete the test clusters whose owning process is gone; returns their directories."""
    reaped = []
    for root in sorted(Path(tmp_dir or tempfile.gettempdir()).glob(f"{PREFIX}*")):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours to judge (an older layout, or being created right now)
        if _alive(owner):
            continue
        pidfile = root / "data" / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


class PostgresServer:
    """One throwaway PostgreSQL cluster; `url` is a `postgresql://` URL of its `callrec` database."""

    def __init__(self, port: int | None = None) -> None:
        self.bin = _bin_dir()
        self.port = port or free_port()
        reap_orphans()
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "postgres.log"
        self.as_root = os.geteuid() == 0
        self.database = "callrec"

    @property
    def url(self) -> str:
        """The URL of the test database (loopback, trust authentication)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()}\n{log}")

    def start(self) -> PostgresServer:
        """initdb (first time), start, and create the `callrec` database; returns self."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        first = not self.data.exists()
        if first:
            self._check(self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                  "--no-sync"), "initdb")
        self._check(self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", "-o",
                              f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} "
                              "-c max_connections=200 -c fsync=on"), "pg_ctl start")
        if first:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def pid(self) -> int:
        """The postmaster's pid."""
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def kill(self) -> None:
        """`kill -9` the postmaster (its backends exit when it is gone); `start()` brings it back."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # the backends notice the postmaster's death

    def reset(self) -> None:
        """Drop and recreate the `callrec` database (a clean slate for the next test)."""
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
