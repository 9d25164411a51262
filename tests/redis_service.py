"""A real `redis-server` for tests: on a free loopback port, durable (AOF, fsync always), killable.

The event log's cluster-mode contract (`RedisEventLog`) is tested against Debian's `redis-server`
rather than a fake, because what matters is Redis's own behaviour: Lua atomicity, stream ids, XTRIM,
and what survives a `kill -9` with `appendonly yes` and `appendfsync always`. A restart reuses the
port and the data directory, so clients reconnect to the same address and Redis replays its AOF.

Missing `redis-server` is a failure (with the install command), not a skip: a skipped contract
would quietly leave the cluster backend untested. Test modules make their own fixture with
`start_redis` (see `tests/integration/test_event_log_contract.py`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = "redis-server is not installed: apt-get install redis-server"


def find_redis_server() -> str:
    """The `redis-server` binary, or a RuntimeError that says how to install it."""
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if not found:
        raise RuntimeError(INSTALL_HINT)
    return found


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """`redis-server` in a subprocess, bound to 127.0.0.1 only, with its data in `workdir`."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redis-")))
    password: str | None = None
    """`requirepass`, when set (to test that messages never show it)."""
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start on a free port and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a free port may be taken between probing and binding
            self.port = free_port()
            try:
                self._launch(timeout)
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def kill(self) -> None:
        """`kill -9`: no shutdown, no final write; only what the AOF already holds survives."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self, timeout: float = 15.0) -> RedisServer:
        """Kill (if running) and start again on the same port and directory: Redis replays its AOF."""
        self.kill()
        deadline = time.monotonic() + timeout
        while True:  # the port may be held for a moment after the kill
            try:
                self._launch(max(0.5, deadline - time.monotonic()))
                return self
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Terminate and remove the data directory."""
        self._terminate()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def command(self, *parts: str) -> bytes:
        """One command over a raw socket (RESP), for setup and readiness checks: the raw reply."""
        payload = f"*{len(parts)}\r\n".encode() + b"".join(
            f"${len(p.encode())}\r\n".encode() + p.encode() + b"\r\n" for p in parts
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            if self.password:
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n" + f"${len(self.password)}\r\n{self.password}\r\n".encode())
                sock.recv(1024)
            sock.sendall(payload)
            return sock.recv(65536)

    def _launch(self, timeout: float) -> None:
        """Run redis-server on `self.port` and wait for PING; RuntimeError (and no process) if it fails."""
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        try:
            self._wait_ready(timeout)
        except RuntimeError:
            self._terminate()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Until PING answers PONG (not LOADING while the AOF is replayed), or RuntimeError."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; log:\n{self._tail()}")
            try:
                reply = self.command("PING")
                if reply.startswith(b"+PONG"):
                    return
                last = reply.decode(errors="replace").strip()
            except OSError as exc:
                last = str(exc)
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout} s ({last}); "
                           f"log:\n{self._tail()}")

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def _tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_redis(tmp_path: Path, password: str | None = None) -> RedisServer:
    """A started `RedisServer` in `tmp_path`, or a test failure naming the package to install."""
    try:
        find_redis_server()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    return RedisServer(workdir=tmp_path, password=password).start()
