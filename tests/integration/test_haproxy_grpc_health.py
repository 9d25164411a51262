"""HAProxy checks each node with grpc.health.v1 (deploy/haproxy.cfg's tcp-check, the HTTP/2 exchange written
out): a real HAProxy against a real gRPC health service on loopback marks the node UP while it answers
SERVING, DOWN once it answers NOT_SERVING (what a draining node says), and UP again."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.cluster import HAPROXY_TEMPLATE, HaproxyProcess, render_haproxy
from tests.harness import free_port


def server_state(admin: Path) -> int:
    """`srv_op_state` of the only server (2: UP, 0: DOWN), from HAProxy's admin socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(admin))
        s.sendall(b"show servers state callrec_nodes\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = [line.split() for line in data.decode().splitlines() if line and not line.startswith("#")]
    (row,) = [r for r in rows if len(r) > 5 and r[3] == "node1"]
    return int(row[5])


async def until_state(admin: Path, want: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while server_state(admin) != want:
            await asyncio.sleep(0.2)


async def test_haproxy_follows_the_grpc_health_of_a_node(tmp_path: Path) -> None:
    servicer = health.HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    admin = tmp_path / "admin.sock"
    config = render_haproxy(HAPROXY_TEMPLATE.read_text(), free_port(), [("node1", port, 0)])
    config = config.replace("global\n", f"global\n    stats socket {admin} mode 600 level admin\n", 1)
    (tmp_path / "haproxy.cfg").write_text(config)
    proxy = HaproxyProcess(tmp_path / "haproxy.cfg", tmp_path / "haproxy.log").start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await asyncio.sleep(1.0)
        await until_state(admin, 2)
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await until_state(admin, 0)
        assert "is DOWN" in (tmp_path / "haproxy.log").read_text()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await until_state(admin, 2)
    except TimeoutError:
        pytest.fail("HAProxy did not follow the health: " + (tmp_path / "haproxy.log").read_text())
    finally:
        proxy.stop()
        await server.stop(None)
