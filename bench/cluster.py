"""A callrec cluster on this machine: PostgreSQL, Redis, N nodes and HAProxy, all on loopback.

`make cluster` (python -m bench.cluster) starts the layout of deploy/haproxy.cfg (three nodes that take calls
and a control node that answers the state reads, `--role control`) for a person
to try, prints how to reach it, and stops everything on Ctrl-C. The tests (tests/integration/
test_cluster_proxy.py) and the capacity benchmark start the same thing on free ports: `Cluster(...)`.

The engines are Debian's: `postgresql` (initdb/pg_ctl as the `postgres` user when we are root),
`redis-server` (append-only file, fsync always: a published sequence is never reused) and `haproxy`
(rendered from deploy/haproxy.cfg with this run's ports; `haproxy -c` checks it first).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import ROOT
from bench.common import children
from callrec.runtime_priority import thread_ids
from tests.harness import ServerProcess, free_port
from tests.postgres_service import PostgresServer
from tests.redis_service import RedisServer, start_redis

HAPROXY_TEMPLATE = ROOT / "deploy" / "haproxy.cfg"
FIXED_PROXY_PORT = 50050
FIXED_NODE_PORTS = (50061, 50062, 50063)
FIXED_HEALTH_PORTS = (50071, 50072, 50073)
FIXED_CONTROL_PORTS = (50064,)
FIXED_CONTROL_HEALTH_PORTS = (50074,)


def render_haproxy(template: str, proxy_port: int, nodes: list[tuple[str, int, int]],
                   control: list[tuple[str, int, int]] | None = None) -> str:
    """deploy/haproxy.cfg with this run's proxy port, one `server` line per (name, port, health port) of `nodes` in
    `callrec_nodes` and of `control` (control nodes) in `callrec_control`; the proxy checks grpc.health.v1 on the
    gRPC port (the /healthz port is each node's, for HTTP checkers). A control backend without servers is never
    used: the proxy sends the state reads to the nodes then."""
    text = re.sub(r"bind 127\.0\.0\.1:\d+", f"bind 127.0.0.1:{proxy_port}", template)
    servers = {"callrec_nodes": nodes, "callrec_control": control or []}
    lines: list[str] = []
    backend = ""
    for line in text.splitlines():
        if line.startswith("backend "):
            backend = line.split()[1]
        elif line and not line[0].isspace():
            backend = ""
        if line.strip().startswith("server "):
            continue
        lines.append(line)
        if backend and line.strip().startswith("default-server "):
            # grpc.health.v1 on each gRPC port
            lines.extend(f"    server {name} 127.0.0.1:{port} check" for name, port, _health in servers.pop(backend))
    if servers:
        raise ValueError(f"the HAProxy template has no backend (with a default-server line) for {sorted(servers)}")
    return "\n".join(lines).rstrip("\n") + "\n"


class HaproxyProcess:
    """`haproxy -db -f <config>` in the foreground of a subprocess."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HaproxyProcess:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("HAProxy is not installed: `apt-get install haproxy` (make test-deps does it)")
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {self.config}:\n{check.stdout}{check.stderr}")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_routed(target: str, proxy: HaproxyProcess | None, nodes: int, timeout: float = 30.0) -> None:
    """Until a gRPC health check through the proxy on `target` answers SERVING 2 x `nodes` times in a row (and
    one more round of HAProxy's checks passed: every node UP); RuntimeError with the proxy's log if it exits."""
    deadline = time.monotonic() + timeout
    ok = 0
    last: Exception | None = None
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proxy is not None and proxy.proc is not None and proxy.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited ({proxy.proc.returncode}):\n"
                                   f"{proxy.log.read_text(errors='replace')[-2000:]}")
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                ok = ok + 1 if answer.status == health_pb2.HealthCheckResponse.SERVING else 0
                if ok >= 2 * nodes:
                    time.sleep(1.5)  # one more round of HAProxy's checks (inter 1s): every node UP
                    return
            except grpc.RpcError as exc:
                ok, last = 0, exc
            time.sleep(0.1)
    raise RuntimeError(f"the proxy on {target} did not route within {timeout} s: {last}")


NODE_HEADER = "x-callrec-node"
"""Set by the proxy on every answer (deploy/haproxy.cfg): the name of the node that answered."""


def answered_by(target: str, method: str = "GetRecordingState") -> str:
    """The node the proxy on `target` routes a RecordingService `method` to now (any answer counts: an
    unknown recording's NOT_FOUND too), by the proxy's `x-callrec-node` header."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/callrec.v1.RecordingService/{method}")
        try:
            _response, rpc = call.with_call(b"\n\x07unknown", timeout=5)
            metadata = rpc.initial_metadata()
        except grpc.RpcError as exc:  # an error alone is a trailers-only answer: the header is among the trailers
            metadata = (*(exc.initial_metadata() or ()), *(exc.trailing_metadata() or ()))  # type: ignore[attr-defined]
    return dict(metadata or ()).get(NODE_HEADER, "")


def wait_controlled(target: str, proxy: HaproxyProcess | None, timeout: float = 30.0) -> None:
    """Until the proxy sends state reads to a control node (its health check passed)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        if proxy is not None and proxy.proc is not None and proxy.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited ({proxy.proc.returncode})")
        seen = answered_by(target)
        if seen.startswith("control"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the proxy on {target} did not send state reads to a control node within {timeout} s "
                       f"(last answered by {seen or 'no node'})")


def realtime_tree(pid: int, priority: int) -> None:
    """Every thread of `pid` and of its descendants under SCHED_RR `priority` (what `chrt -r -a -p` does to one
    process); processes they start later inherit it. PermissionError without root or CAP_SYS_NICE."""
    for tid in thread_ids(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setscheduler(tid, os.SCHED_RR, os.sched_param(priority))
    for child in children(pid):
        realtime_tree(child, priority)


@dataclass
class Cluster:
    """PostgreSQL + Redis + `nodes` callrec nodes + HAProxy, under `root` (by default a temporary directory, which
    `stop` leaves for the caller to read or remove)."""

    nodes: int = 3
    control_nodes: int = 0
    """Nodes started with `--role control` (take no calls; the proxy sends them GetRecordingState and
    ListRecordings), named control1...; in `servers` after the `nodes`."""
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="callrec-cluster-")))
    fixed_ports: bool = False
    """The ports of deploy/haproxy.cfg (make cluster) instead of free ones (tests)."""
    node_args: tuple[str, ...] = ()
    """Extra `callrec serve` arguments of every node (a --config with storage targets, --clock media...)."""
    node_env: dict[str, str] = field(default_factory=dict)
    lease_s: float = 3.0
    realtime_priority: int = 0
    """The control path at SCHED_RR priority (row 8g): control nodes get `--realtime-priority`, and PostgreSQL's
    and HAProxy's processes (every thread, PostgreSQL's backends to come too) that priority, as a deployment sets
    with systemd's `CPUSchedulingPolicy=rr` (README, "Cluster mode"). 0: everything at normal priority."""
    postgres: PostgresServer | None = None
    redis: RedisServer | None = None
    servers: list[ServerProcess] = field(default_factory=list)
    health_ports: list[int] = field(default_factory=list)
    proxy: HaproxyProcess | None = None
    proxy_port: int = 0

    @property
    def target(self) -> str:
        """Where clients connect: the proxy."""
        return f"127.0.0.1:{self.proxy_port}"

    def node_url_args(self) -> tuple[str, ...]:
        assert self.postgres is not None and self.redis is not None
        return ("--database-url", self.postgres.url, "--events-url", self.redis.url)

    def start(self) -> Cluster:
        """Start everything and wait until the proxy routes to every node; stops what started on failure."""
        try:
            self.postgres = PostgresServer().start()
            self.redis = start_redis(self.root / "redis")
            for i in range(self.nodes + self.control_nodes):
                self.servers.append(self._node(i))
                self._start_node(self.servers[-1])
            self._start_proxy()
            if self.realtime_priority:
                assert self.proxy is not None and self.proxy.proc is not None
                for root in (self.postgres.pid(), self.proxy.proc.pid):
                    realtime_tree(root, self.realtime_priority)
            self.wait_routed()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, server: ServerProcess, attempts: int = 3) -> None:
        """Start a node; on the fixed ports, again after a second when its port was taken. Those ports are in
        Linux's ephemeral range (32768-60999), so an outgoing connection (a node's PostgreSQL pool) can hold one
        for a moment: seen once in `make cluster` ("Address already in use" on 50062)."""
        for attempt in range(attempts):
            try:
                server.start(timeout=60)
                return
            except RuntimeError as exc:
                if not self.fixed_ports or "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(1.0)

    def _name(self, i: int) -> str:
        return f"node{i + 1}" if i < self.nodes else f"control{i - self.nodes + 1}"

    def _node(self, i: int) -> ServerProcess:
        control = i >= self.nodes
        ports, health_ports = ((FIXED_CONTROL_PORTS, FIXED_CONTROL_HEALTH_PORTS) if control
                               else (FIXED_NODE_PORTS, FIXED_HEALTH_PORTS))
        index = i - self.nodes if control else i
        health = health_ports[index] if self.fixed_ports else free_port()
        self.health_ports.append(health)
        name = self._name(i)
        role: tuple[str, ...] = ("--role", "control") if control else ()
        if control and self.realtime_priority:
            role += ("--realtime-priority", str(self.realtime_priority))
        server = ServerProcess(self.root / name, *self.node_url_args(), "--node-id", name,
                               "--health-listen", f"127.0.0.1:{health}", "--node-lease", str(self.lease_s),
                               *role, *self.node_args, env=self.node_env)
        if self.fixed_ports:
            server.port = ports[index]
        return server

    def restart_node(self, i: int) -> ServerProcess:
        """Start node i again on its data directory and ports (after `kill -9`)."""
        server = self.servers[i]
        server.start(timeout=60)
        return server

    def _start_proxy(self) -> None:
        self.proxy_port = FIXED_PROXY_PORT if self.fixed_ports else free_port()
        config = self.root / "haproxy.cfg"
        every = [(self._name(i), s.port, self.health_ports[i]) for i, s in enumerate(self.servers)]
        config.write_text(render_haproxy(HAPROXY_TEMPLATE.read_text(), self.proxy_port, every[:self.nodes],
                                         every[self.nodes:]))
        self.proxy = HaproxyProcess(config, self.root / "haproxy.log").start()

    def wait_routed(self, timeout: float = 30.0) -> None:
        """Until a gRPC health check through the proxy answers SERVING for a handful of calls in a row."""
        wait_routed(self.target, self.proxy, self.nodes, timeout)
        if self.control_nodes:
            wait_controlled(self.target, self.proxy, timeout)

    def process_roots(self, *, but: int | None = None) -> list[int]:
        """The pids of the cluster's processes (PostgreSQL's postmaster, Redis, HAProxy, every node), but the
        node at index `but`: for a CPU count of the whole system beside the one node a step measures."""
        pids = [s.proc.pid for i, s in enumerate(self.servers) if s.proc is not None and i != but]
        if self.postgres is not None:
            pids.append(self.postgres.pid())
        if self.redis is not None and self.redis.process is not None:
            pids.append(self.redis.process.pid)
        if self.proxy is not None and self.proxy.proc is not None:
            pids.append(self.proxy.proc.pid)
        return pids

    def stop(self) -> None:
        """Stop the proxy, the nodes, Redis and PostgreSQL (in that order)."""
        if self.proxy is not None:
            self.proxy.stop()
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="callrec nodes (default 3; ports 50061...)")
    parser.add_argument("--control-nodes", type=int, default=1, choices=(0, 1),
                        help="control nodes (--role control: no calls, they answer the proxy's state reads; "
                        "default 1, port 50064)")
    parser.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                        help="the control path at SCHED_RR N: the control node's --realtime-priority, HAProxy and "
                        "PostgreSQL under it too (README 'Cluster mode'; needs root or CAP_SYS_NICE; default 0: off)")
    parser.add_argument("--dir", type=Path, default=ROOT / "cluster-data",
                        help="where the nodes and Redis keep their data (default ./cluster-data; PostgreSQL runs in a "
                        "temporary directory, removed on exit)")
    args = parser.parse_args(argv)
    if args.nodes > len(FIXED_NODE_PORTS):
        parser.error(f"at most {len(FIXED_NODE_PORTS)} nodes on the fixed ports of deploy/haproxy.cfg")
    args.dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(nodes=args.nodes, control_nodes=args.control_nodes, root=args.dir, fixed_ports=True,
                      lease_s=15.0, realtime_priority=args.realtime_priority)
    print(f"starting PostgreSQL, Redis, {args.nodes} callrec nodes, {args.control_nodes} control node and HAProxy "
          f"under {args.dir} ...", flush=True)
    cluster.start()
    assert cluster.postgres is not None and cluster.redis is not None
    nodes = ", ".join(s.target for s in cluster.servers[:args.nodes])
    controls = ", ".join(s.target for s in cluster.servers[args.nodes:]) or "none"
    print(f"""
callrec cluster is up:
  proxy (clients connect here)  {cluster.target}
  nodes                         {nodes}  (logs: {args.dir}/node*/server.log)
  control node (state reads)    {controls}  (logs: {args.dir}/control*/server.log)
  PostgreSQL                    {cluster.postgres.url}
  Redis                         {cluster.redis.url}

try (another terminal; every command goes through the proxy):
  callrec gateway-sim call-1 -s {cluster.target} --duration 30 &
  callrec start call-1 -s {cluster.target} --content audio --format mp3
  callrec list -s {cluster.target}
  callrec events -s {cluster.target} --follow

Ctrl-C stops everything.""", flush=True)
    stop = False

    def interrupted(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        print("stopping ...", flush=True)
        cluster.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
