"""The deployment files in deploy/ stay true to the server they deploy.

`deploy/haproxy.cfg` itself is run by the cluster tests (bench/cluster.py renders it with free ports);
the docker-compose files cannot run here (no Docker daemon), so this checks what can go stale: every
flag and environment variable they give `callrec serve` exists, the storage config loads, the compose
proxy's routing rules are the tested file's, and Envoy hashes on the header the clients send.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from callrec.config import load_config
from callrec_client import ROUTING_HEADER

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def serve_help() -> str:
    result = subprocess.run([sys.executable, "-m", "callrec_client.cli", "serve", "--help"], capture_output=True,
                            text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, check=True)
    return result.stdout


def test_compose_nodes_use_only_flags_and_variables_that_serve_knows() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "minio", "node1", "node2", "node3", "control1", "haproxy"} <= set(services)
    assert services["control1"]["command"][-2:] == ["--role", "control"]
    control = services["control1"]["command"]  # its guard thread runs one above: RLIMIT_RTPRIO 11
    assert control[control.index("--realtime-priority") + 1] == "10"
    assert services["control1"]["ulimits"]["rtprio"] == 11
    for name, command in (("haproxy", services["haproxy"]["command"]),
                          ("postgres", services["postgres"]["entrypoint"])):
        assert command[:3] == ["chrt", "-r", "10"] and services[name]["ulimits"]["rtprio"] == 10, name
    text = serve_help()
    flat = " ".join(text.split())
    for name in ("node1", "node2", "node3", "control1"):
        node = services[name]
        command = node["command"]
        assert command[0] == "serve" and "--node-id" in command and name in command
        for flag in (arg for arg in command if arg.startswith("--")):
            assert re.search(rf"(^|\s){re.escape(flag)}[\s/,]", text, re.M), f"{name}: unknown flag {flag}"
        for variable in node["environment"]:
            if variable.startswith("CALLREC_"):
                assert f"env var: {variable}" in flat, f"{name}: unknown environment variable {variable}"
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendfsync") + 1] == "always", "a published sequence must never be reused"


def test_the_compose_storage_config_loads() -> None:
    config = load_config(config_file=DEPLOY / "callrec-cluster.toml")
    assert config.default_storage == "archive" and config.storage_targets["archive"]["kind"] == "s3"


def backend_rules(text: str) -> list[str]:
    """The routing and health-check lines of the proxy (server lines and addresses left out)."""
    keep = ("acl", "use_backend", "default_backend", "backend", "balance", "hash-type", "option tcp-check",
            "tcp-check", "timeout check")
    return [line.strip() for line in text.splitlines() if line.strip().startswith(keep)]


def backends(text: str) -> dict[str, list[str]]:
    """Each backend's lines, by name."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("backend "):
            current = found.setdefault(line.split()[1], [])
        elif line and not line[0].isspace():
            current = None
        elif current is not None and line.strip():
            current.append(line.strip())
    return found


def test_the_compose_proxy_routes_like_the_tested_one() -> None:
    tested = (DEPLOY / "haproxy.cfg").read_text()
    compose = (DEPLOY / "haproxy-compose.cfg").read_text()
    assert backend_rules(compose) == backend_rules(tested)
    assert f"balance hdr({ROUTING_HEADER})" in backend_rules(tested)
    for text in (tested, compose):
        assert re.search(r"default-server proto h2 ", text) and re.search(r"bind \S+ proto h2", text)
        # a gateway's calls share one connection: HAProxy's default of 100 streams on it stalled the 101st call
        assert int(re.search(r"tune\.h2\.max-concurrent-streams (\d+)", text)[1]) >= 1000  # type: ignore[index]
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed: `apt-get install haproxy` (make test-deps does it)")
    check = subprocess.run(["haproxy", "-c", "-f", str(DEPLOY / "haproxy-compose.cfg")], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_both_proxies_check_grpc_health_with_the_generated_exchange() -> None:
    """The tcp-check bytes are what deploy/haproxy_grpc_health.py builds: an HTTP/2 request for
    grpc.health.v1.Health/Check whose frames parse back, ending with an empty HealthCheckRequest."""
    spec = importlib.util.spec_from_file_location("haproxy_grpc_health", DEPLOY / "haproxy_grpc_health.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name in ("haproxy.cfg", "haproxy-compose.cfg"):
        found = backends((DEPLOY / name).read_text())
        assert set(found) == {"callrec_nodes", "callrec_control"}, name
        for backend, lines in found.items():
            rules = [line for line in lines if line.startswith(("option", "tcp"))]
            assert rules == generator.rules(), (name, backend)
    data = generator.request()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert data.startswith(preface)
    frames, offset = [], len(preface)
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 3], "big")
        kind, flags, stream = data[offset + 3], data[offset + 4], int.from_bytes(data[offset + 5:offset + 9], "big")
        frames.append((kind, flags, stream, data[offset + 9:offset + 9 + length]))
        offset += 9 + length
    assert offset == len(data)
    assert [(k, f, s) for k, f, s, _ in frames] == [(4, 0, 0), (1, 4, 1), (0, 1, 1)]  # SETTINGS, HEADERS, DATA
    headers = frames[1][3]
    for text in (b"/grpc.health.v1.Health/Check", b"application/grpc", b"trailers"):
        assert text in headers
    assert frames[2][3] == b"\x00" * 5


def test_envoy_hashes_on_the_routing_header_and_checks_healthz() -> None:
    envoy = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    listener = envoy["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["hash_policy"] == [{"header": {"header_name": ROUTING_HEADER}}]
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["health_checks"][0]["http_health_check"]["path"] == "/healthz"


@pytest.mark.parametrize("control", [[], [("control1", 7003, 0)]])
def test_the_rendered_proxy_puts_nodes_and_control_nodes_in_their_backends(tmp_path: Path, control) -> None:
    """bench.cluster renders deploy/haproxy.cfg for the tests and `make cluster`: the nodes that take calls in
    `callrec_nodes`, control nodes in `callrec_control` (without any, the state reads go to the nodes)."""
    from bench.cluster import HAPROXY_TEMPLATE, render_haproxy

    text = render_haproxy(HAPROXY_TEMPLATE.read_text(), 7000, [("node1", 7001, 0), ("node2", 7002, 0)], control)
    found = backends(text)
    assert [line for line in found["callrec_nodes"] if line.startswith("server")] == [
        "server node1 127.0.0.1:7001 check", "server node2 127.0.0.1:7002 check"]
    assert [line for line in found["callrec_control"] if line.startswith("server")] == [
        f"server {name} 127.0.0.1:{port} check" for name, port, _ in control]
    assert "bind 127.0.0.1:7000 proto h2" in text
    # the reads a control node answers, and only while one is up
    assert "use_backend callrec_control if state_read control_up" in text
    (tmp_path / "haproxy.cfg").write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
