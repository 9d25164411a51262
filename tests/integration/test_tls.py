"""TLS and mTLS on the gRPC port (and /metrics), with the Python client, the CLI, the Node client and buf curl.

The certificates (a CA, a server certificate for 127.0.0.1 / localhost, a client certificate, and
a stranger's certificate from a CA the server does not trust) are made with `cryptography` in a
tmp dir. One server requires client certificates and tokens (the production shape: mTLS plus
[auth]); a second speaks TLS without asking for a client certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callrec.v1 import recording_pb2
from callrec_client import AsyncCallrecClient, CallrecClient, CallrecError
from callrec_client.client import TlsOptions
from callrec_client.gateway import GatewayConnection
from tests.harness import ROOT, free_port, unique
from tests.integration.test_buf import BUF, CURL_TIMEOUT_S
from tests.integration.test_node_client import NODE_DIR, _require_node
from tests.security_helpers import Pki, SecureServerProcess, auth_config, make_pki, record_short_call, token


@dataclass
class MtlsServer:
    server: SecureServerProcess
    pki: Pki
    metrics_port: int
    admin: str

    @property
    def tls(self) -> TlsOptions:
        """What a legitimate client presents: trusts the CA, has a client certificate."""
        return TlsOptions(self.pki.ca, self.pki.client_cert, self.pki.client_key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsServer]:
    folder = tmp_path_factory.mktemp("mtls")
    metrics_port = free_port()
    server = SecureServerProcess(
        folder / "data", pki, "--config", str(auth_config(folder)), "--clock", "media",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
    )
    server.start()
    try:
        yield MtlsServer(server, pki, metrics_port, token("admin", ttl_s=3600))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_only(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServerProcess]:
    """TLS without client certificates and without [auth] (allowed: it listens on loopback)."""
    folder = tmp_path_factory.mktemp("tls")
    server = SecureServerProcess(folder / "data", pki, "--clock", "media",
                                 "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- Python client -----------------------------------------------------------------------------

async def test_python_clients_record_a_call_over_mtls(mtls: MtlsServer) -> None:
    call = unique("tls-call")
    rec = await record_short_call(mtls.server.target, call, mtls.admin, tls=mtls.tls)
    assert rec.state == recording_pb2.RECORDING_STATE_COMPLETED and rec.chunks
    async with AsyncCallrecClient(mtls.server.target, token=mtls.admin, tls=mtls.tls) as client:
        data = b"".join([p.data async for p in client.download(rec.chunks[0].content_location)])
        assert data[:4] == b"RIFF"
    with CallrecClient(mtls.server.target, token=token("controller", calls=[call]), tls=mtls.tls) as sync:
        assert [r.recording_id for r in sync.list_recordings(call).recordings] == [rec.recording_id]


@pytest.mark.parametrize("who", ["no client certificate", "a certificate of another CA", "plaintext",
                                 "a client that does not trust the server"])
def test_mtls_refuses_clients_without_a_trusted_certificate(mtls: MtlsServer, who: str) -> None:
    pki = mtls.pki
    tls = {
        "no client certificate": TlsOptions(pki.ca),
        "a certificate of another CA": TlsOptions(pki.ca, pki.stranger_cert, pki.stranger_key),
        "plaintext": None,
        "a client that does not trust the server": TlsOptions(pki.other_ca, pki.client_cert, pki.client_key),
    }[who]
    with CallrecClient(mtls.server.target, timeout=5, token=mtls.admin, tls=tls) as client, \
            pytest.raises(CallrecError) as info:
        client.list_recordings()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE, info.value


def test_health_over_tls_needs_no_token(mtls: MtlsServer) -> None:
    with grpc.secure_channel(mtls.server.target, mtls.server.channel_credentials()) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_without_client_certificates(tls_only: SecureServerProcess, pki: Pki) -> None:
    with CallrecClient(tls_only.target, tls=TlsOptions(pki.ca)) as client:
        assert client.list_recordings().recordings is not None
    with CallrecClient(tls_only.target, timeout=5) as plain, pytest.raises(CallrecError) as info:
        plain.list_recordings()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


# ---- CLI ---------------------------------------------------------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    return subprocess.run([sys.executable, "-m", "callrec_client.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**clean, **(env or {})}, check=False)


def test_cli_over_mtls(mtls: MtlsServer) -> None:
    pki, target = mtls.pki, mtls.server.target
    call = unique("tls-cli")
    tls_args = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    sim = _cli("gateway-sim", call, "-n", "1", "--duration", "0.5", "--fast", "--server", target, *tls_args,
               "--token", token("gateway", calls=[call]))
    assert sim.returncode == 0, sim.stdout + sim.stderr
    # the same options from the environment
    env = {"CALLREC_SERVER": target, "CALLREC_TOKEN": token("controller"), "CALLREC_TLS_CA": str(pki.ca),
           "CALLREC_TLS_CLIENT_CERT": str(pki.client_cert), "CALLREC_TLS_CLIENT_KEY": str(pki.client_key)}
    listed = _cli("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    no_cert = _cli("list", "--server", target, "--tls-ca", str(pki.ca), "--token", mtls.admin)
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr and "--tls-cert" in no_cert.stderr
    lone = _cli("list", "--server", target, "--tls-cert", str(pki.client_cert))
    assert lone.returncode == 2 and "--tls-cert and --tls-key go together" in lone.stderr


def test_cli_with_tls_ca_only(tls_only: SecureServerProcess, pki: Pki) -> None:
    listed = _cli("list", "--server", tls_only.target, "--tls-ca", str(pki.ca))
    assert listed.returncode == 0, listed.stderr


# ---- Node client -------------------------------------------------------------------------------

def test_node_example_over_mtls(mtls: MtlsServer) -> None:
    node = _require_node()
    pki = mtls.pki
    args = [node, "clients/node/example.js", "--server", mtls.server.target, "--json", "--token", mtls.admin,
            "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"example.js exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    summary = json.loads(proc.stdout)
    assert summary["recording_id"] and len(summary["events"]) == 4

    without_cert = subprocess.run(args[:-4], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert without_cert.returncode == 1 and "UNAVAILABLE" in without_cert.stderr, without_cert.stderr
    without_token = subprocess.run([a for a in args if a not in ("--token", mtls.admin)], cwd=ROOT,
                                   capture_output=True, text=True, timeout=120, check=False)
    assert without_token.returncode == 1 and "UNAUTHENTICATED" in without_token.stderr, without_token.stderr


def test_node_library_reads_tls_and_token_from_the_environment(mtls: MtlsServer) -> None:
    node = _require_node()
    script = ("const { connect, connectionOptionsFromEnv } = require('./client');"
              "const c = connect(process.env.CALLREC_SERVER, connectionOptionsFromEnv());"
              "c.listRecordings({}).then((r) => { console.log(JSON.stringify({n: r.recordings.length})); c.close(); },"
              " (e) => { console.error(e.message); c.close(); process.exitCode = 1; });")
    env = {**os.environ, "CALLREC_SERVER": mtls.server.target, "CALLREC_TOKEN": token("controller"),
           "CALLREC_TLS_CA": str(mtls.pki.ca), "CALLREC_TLS_CLIENT_CERT": str(mtls.pki.client_cert),
           "CALLREC_TLS_CLIENT_KEY": str(mtls.pki.client_key)}
    proc = subprocess.run([node, "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    assert proc.returncode == 0 and "n" in json.loads(proc.stdout), proc.stderr


# ---- buf curl ----------------------------------------------------------------------------------

async def _buf_curl(*args: str) -> tuple[int, str, str]:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: `make test` installs it")
    proc = await asyncio.create_subprocess_exec(str(BUF), "curl", "--protocol", "grpc", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), CURL_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_buf_curl_over_mtls_with_a_bearer_token(mtls: MtlsServer) -> None:
    pki, url = mtls.pki, f"https://{mtls.server.target}"
    tls = ["--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    rc, out, err = await _buf_curl(*tls, "--list-methods", url)  # reflection is open: no token
    assert rc == 0 and "callrec.v1.RecordingService/StartRecording" in out.split(), out + err

    call = unique("tls-buf")
    gateway = GatewayConnection(mtls.server.target, call, gateway_id="buf-gw", token=mtls.admin, tls=mtls.tls)
    await gateway.open()
    try:
        await gateway.join("alice")
        bearer = f"authorization: Bearer {token('controller', calls=[call])}"
        rc, out, err = await _buf_curl(*tls, "-H", bearer, "--reflect-header", bearer, "-d", json.dumps({
            "server_call_id": call, "content_type": "RECORDING_CONTENT_TYPE_AUDIO",
            "channel_type": "RECORDING_CHANNEL_TYPE_MIXED", "format": "RECORDING_FORMAT_WAV",
        }), f"{url}/callrec.v1.RecordingService/StartRecording")
        assert rc == 0, out + err
        assert json.loads(out)["recording"]["state"] == "RECORDING_STATE_ACTIVE"

        # buf curl exits with the gRPC code << 3: 16 UNAUTHENTICATED, 7 PERMISSION_DENIED
        rc, out, err = await _buf_curl(*tls, "-d", json.dumps({"server_call_id": call}),
                                       f"{url}/callrec.v1.RecordingService/ListRecordings")
        assert rc == 16 << 3 and json.loads(err)["code"] == "unauthenticated", err
        other = f"authorization: Bearer {token('controller', calls=['someone-else'])}"
        rc, out, err = await _buf_curl(*tls, "-H", other, "-d", json.dumps({"server_call_id": call}),
                                       f"{url}/callrec.v1.RecordingService/ListRecordings")
        assert rc == 7 << 3 and json.loads(err)["code"] == "permission_denied", err

        rc, out, err = await _buf_curl("--cacert", str(pki.ca), "-H", bearer, "--list-methods", url)  # no cert
        assert rc != 0
    finally:
        await gateway.end()


# ---- /metrics ----------------------------------------------------------------------------------

def test_metrics_are_served_over_https_with_client_certificates(mtls: MtlsServer) -> None:
    url = f"https://127.0.0.1:{mtls.metrics_port}/metrics"
    context = ssl.create_default_context(cafile=str(mtls.pki.ca))
    context.load_cert_chain(str(mtls.pki.client_cert), str(mtls.pki.client_key))
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        assert b"callrec_frames_received_total" in response.read()
    no_cert = ssl.create_default_context(cafile=str(mtls.pki.ca))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        urllib.request.urlopen(url, context=no_cert, timeout=10).read()

