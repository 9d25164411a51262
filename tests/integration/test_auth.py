"""Tokens on a real server (SPEC §5): every RPC × every kind of token, JWKS keys, rotation, the CLI.

One server with `[auth]` (HS256 keys k1 and k2, an RS256 and an ES256 key in a JWKS file) serves
the whole module on a loopback port (tokens without TLS are allowed there; TLS is
tests/integration/test_tls.py). Call CALL_A has a completed recording, so every call-scoped RPC
has something of CALL_A to name; tokens limited to CALL_B must be refused for it.

"passes auth" means any status but UNAUTHENTICATED / PERMISSION_DENIED: NOT_FOUND for a call no
gateway has open, FAILED_PRECONDITION for pausing a completed recording, and so on.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from callrec.v1 import (
    content_pb2,
    content_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    media_pb2,
    media_pb2_grpc,
    recording_pb2,
    recording_pb2_grpc,
    uploads_pb2,
    uploads_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from tests.harness import ROOT, ServerProcess, unique
from tests.security_helpers import SECRET_K2, JwksKeys, auth_config, jwks_keys, record_short_call, token

CALL_A = unique("auth-a")
CALL_B = unique("auth-b")
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
PASS = "passes auth"


@dataclass
class Env:
    """The module's server and what the matrix needs of it."""

    server: ServerProcess
    keys: JwksKeys
    channel: grpc.Channel
    recording: recording_pb2.Recording
    tokens: dict[str, str]
    """Every token handed out, by kind (checked against the server's log at the end)."""


# the kinds of caller, and the token each sends (None: no authorization metadata)
KINDS: dict[str, Callable[[], str | None]] = {
    "no_token": lambda: None,
    "bad_signature": lambda: token("admin", kid="k1", key="a-different-secret-" + "z" * 40),
    "expired": lambda: token("admin", ttl_s=-3600),
    "admin": lambda: token("admin"),
    "controller": lambda: token("controller"),
    "controller_this_call": lambda: token("controller", calls=[CALL_A]),
    "controller_other_call": lambda: token("controller", kid="k2", key=SECRET_K2, calls=[CALL_B]),
    "gateway": lambda: token("gateway"),
    "gateway_this_call": lambda: token("gateway", calls=[CALL_A]),
    "gateway_other_call": lambda: token("gateway", calls=[CALL_B]),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("auth")
    keys = jwks_keys()
    config = auth_config(folder, keys.jwks)
    server = ServerProcess(folder / "data", "--config", str(config), "--clock", "media", "--reconnect-grace", "2")
    server.start()
    try:
        admin = token("admin", ttl_s=3600)
        recording = asyncio.run(record_short_call(server.target, CALL_A, admin))
        with grpc.insecure_channel(server.target) as channel:
            yield Env(server, keys, channel, recording, {"setup": admin})
    finally:
        server.stop()


def _md(jwt_text: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {jwt_text}"),) if jwt_text is not None else ()


# ---- one callable per RPC: does the call, returns normally if it was not refused ---------------------

def _start(e: Env, md: Any) -> None:
    recording_pb2_grpc.RecordingServiceStub(e.channel).StartRecording(
        recording_pb2.StartRecordingRequest(server_call_id=CALL_A), metadata=md, timeout=10)


def _by_id(method: str, request: type) -> Callable[[Env, Any], None]:
    def call(e: Env, md: Any) -> None:
        stub = recording_pb2_grpc.RecordingServiceStub(e.channel)
        getattr(stub, method)(request(recording_id=e.recording.recording_id), metadata=md, timeout=10)
    return call


def _list(e: Env, md: Any) -> None:
    recording_pb2_grpc.RecordingServiceStub(e.channel).ListRecordings(
        recording_pb2.ListRecordingsRequest(server_call_id=CALL_A), metadata=md, timeout=10)


def _stream_media(e: Env, md: Any) -> None:
    """Open CALL_A (the interceptor checks the role, the servicer the `open`'s call), then half-close."""
    opening = media_pb2.StreamMediaRequest(open=media_pb2.StreamOpen(
        server_call_id=CALL_A, gateway_id=unique("gw-matrix")))
    responses = media_pb2_grpc.MediaServiceStub(e.channel).StreamMedia(iter([opening]), metadata=md, timeout=10)
    first = next(responses)
    assert first.WhichOneof("message") == "opened"
    responses.cancel()


def _subscribe(e: Env, md: Any) -> None:
    events = events_pb2_grpc.EventServiceStub(e.channel).SubscribeEvents(
        events_pb2.SubscribeEventsRequest(server_call_id=CALL_A, from_oldest=True), metadata=md, timeout=10)
    assert next(events).event.sequence >= 1
    events.cancel()


def _download(e: Env, md: Any) -> None:
    location = e.recording.chunks[0].metadata_location
    pieces = content_pb2_grpc.ContentServiceStub(e.channel).DownloadContent(
        content_pb2.DownloadContentRequest(location=location), metadata=md, timeout=10)
    assert b"".join(p.data for p in pieces)


def _delete(e: Env, md: Any) -> None:
    """A contentLocation (not the deleteLocation): past auth it answers INVALID_ARGUMENT and deletes nothing."""
    content_pb2_grpc.ContentServiceStub(e.channel).DeleteContent(
        content_pb2.DeleteContentRequest(location=e.recording.chunks[0].content_location), metadata=md, timeout=10)


def _list_uploads(e: Env, md: Any) -> None:
    uploads_pb2_grpc.UploadServiceStub(e.channel).ListUploads(uploads_pb2.ListUploadsRequest(), metadata=md,
                                                              timeout=10)


def _retry_uploads(e: Env, md: Any) -> None:
    uploads_pb2_grpc.UploadServiceStub(e.channel).RetryUploads(
        uploads_pb2.RetryUploadsRequest(recording_id=e.recording.recording_id), metadata=md, timeout=10)


def _webhooks(method: str, request: Any) -> Callable[[Env, Any], None]:
    """A WebhookService RPC; past auth a bad URL or an unknown id answers INVALID_ARGUMENT / NOT_FOUND."""
    def call(e: Env, md: Any) -> None:
        getattr(webhooks_pb2_grpc.WebhookServiceStub(e.channel), method)(request, metadata=md, timeout=10)
    return call


RPCS: dict[str, tuple[str, Callable[[Env, Any], None]]] = {
    "StartRecording": ("RecordingService", _start),
    "GetRecordingState": ("RecordingService", _by_id("GetRecordingState", recording_pb2.GetRecordingStateRequest)),
    "PauseRecording": ("RecordingService", _by_id("PauseRecording", recording_pb2.PauseRecordingRequest)),
    "ResumeRecording": ("RecordingService", _by_id("ResumeRecording", recording_pb2.ResumeRecordingRequest)),
    "StopRecording": ("RecordingService", _by_id("StopRecording", recording_pb2.StopRecordingRequest)),
    "ListRecordings": ("RecordingService", _list),
    "StreamMedia": ("MediaService", _stream_media),
    "SubscribeEvents": ("EventService", _subscribe),
    "DownloadContent": ("ContentService", _download),
    "DeleteContent": ("ContentService", _delete),
    "ListUploads": ("UploadService", _list_uploads),
    "RetryUploads": ("UploadService", _retry_uploads),
    "AddWebhook": ("WebhookService", _webhooks("AddWebhook", webhooks_pb2.AddWebhookRequest(url="ftp://x"))),
    "ListWebhooks": ("WebhookService", _webhooks("ListWebhooks", webhooks_pb2.ListWebhooksRequest())),
    "RemoveWebhook": ("WebhookService", _webhooks(
        "RemoveWebhook", webhooks_pb2.RemoveWebhookRequest(webhook_id="wh_x"))),
    "EnableWebhook": ("WebhookService", _webhooks(
        "EnableWebhook", webhooks_pb2.EnableWebhookRequest(webhook_id="wh_x"))),
    "ListWebhookDeliveries": ("WebhookService", _webhooks(
        "ListWebhookDeliveries", webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id="wh_x"))),
    "RedeliverWebhookEvent": ("WebhookService", _webhooks(
        "RedeliverWebhookEvent", webhooks_pb2.RedeliverWebhookEventRequest(webhook_id="wh_x", event_id="e"))),
}


def test_the_matrix_covers_every_rpc_of_the_six_services() -> None:
    services = {"RecordingService": recording_pb2, "MediaService": media_pb2, "EventService": events_pb2,
                "ContentService": content_pb2, "UploadService": uploads_pb2, "WebhookService": webhooks_pb2}
    every = {(s, m.name) for s, module in services.items() for m in module.DESCRIPTOR.services_by_name[s].methods}
    assert every == {(service, rpc) for rpc, (service, _) in RPCS.items()}


ROLE_SERVICES = {
    "admin": {"RecordingService", "MediaService", "EventService", "ContentService", "UploadService",
              "WebhookService"},
    "controller": {"RecordingService", "EventService", "ContentService"},
    "gateway": {"MediaService"},
}


def expected(kind: str, service: str) -> grpc.StatusCode | str:
    """SPEC §5: no or bad token -> UNAUTHENTICATED; wrong role or call -> PERMISSION_DENIED."""
    if kind in ("no_token", "bad_signature", "expired"):
        return UNAUTH
    role = kind.split("_")[0]
    if service not in ROLE_SERVICES[role]:
        return DENIED
    return DENIED if kind.endswith("_other_call") else PASS


def outcome(rpc: Callable[[Env, Any], None], e: Env, md: Any) -> tuple[grpc.StatusCode | str, str]:
    try:
        rpc(e, md)
    except grpc.RpcError as exc:
        code = exc.code()
        return (code if code in (UNAUTH, DENIED) else PASS), f"{code.name}: {exc.details()}"
    return PASS, "OK"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("rpc_name", list(RPCS))
def test_auth_matrix(env: Env, rpc_name: str, kind: str) -> None:
    service, rpc = RPCS[rpc_name]
    jwt_text = KINDS[kind]()
    if jwt_text is not None:
        env.tokens[f"{rpc_name}-{kind}"] = jwt_text
    got, detail = outcome(rpc, env, _md(jwt_text))
    want = expected(kind, service)
    assert got == want, f"{service}/{rpc_name} with {kind}: want {want}, got {detail}"
    if jwt_text is not None:
        assert jwt_text not in detail and jwt_text.split(".")[2] not in detail, "a status echoed the token"
    if want == DENIED and kind.endswith("_other_call") and service in ROLE_SERVICES[kind.split("_")[0]]:
        assert repr(CALL_B) in detail and CALL_A in detail, detail  # names the token's calls and the one asked for
    elif want == DENIED:
        assert f"role '{kind.split('_')[0]}' may not call callrec.v1.{service}/{rpc_name}" in detail, detail


@pytest.mark.parametrize("kind,fragment", [
    ("no_token", "no authorization metadata: send 'authorization: Bearer <jwt>'; "
                 "create one with `callrec token create`"),
    ("bad_signature", "token signature does not verify with key 'k1'"),
    ("expired", "token expired at "),
])
def test_unauthenticated_says_what_is_wrong(env: Env, kind: str, fragment: str) -> None:
    got, detail = outcome(_list, env, _md(KINDS[kind]()))
    assert got == UNAUTH and fragment in detail, detail


def test_unknown_kid_names_the_known_ones(env: Env) -> None:
    got, detail = outcome(_list, env, _md(token("admin", kid="k3")))
    assert got == UNAUTH and detail.endswith("unknown kid 'k3'; the server knows ec-1, k1, k2, rsa-1"), detail


def test_not_bearer(env: Env) -> None:
    got, detail = outcome(_list, env, (("authorization", "Basic dXNlcjpwYXNz"),))
    assert got == UNAUTH and "must be 'Bearer <jwt>'" in detail, detail


def test_key_rotation_two_kids_at_once(env: Env) -> None:
    assert outcome(_list, env, _md(token("controller", kid="k1")))[0] == PASS
    assert outcome(_list, env, _md(token("controller", kid="k2", key=SECRET_K2)))[0] == PASS


def test_rs256_and_es256_tokens_from_the_jwks_file(env: Env) -> None:
    rs = token("controller", kid="rsa-1", key=env.keys.rsa_private, algorithm="RS256")
    es = token("gateway", kid="ec-1", key=env.keys.ec_private, algorithm="ES256", calls=[CALL_A])
    env.tokens.update(rs256=rs, es256=es)
    assert outcome(_list, env, _md(rs)) == (PASS, "OK")
    assert outcome(_stream_media, env, _md(es)) == (PASS, "OK")
    assert outcome(_list, env, _md(es))[0] == DENIED  # an ES256 gateway token is still a gateway token
    # a key's algorithm is fixed: an RS256 token under the EC key's kid fails
    assert outcome(_list, env, _md(token("admin", kid="ec-1", key=env.keys.rsa_private, algorithm="RS256")))[0] \
        == UNAUTH


def test_health_and_reflection_need_no_token(env: Env) -> None:
    health = health_pb2_grpc.HealthStub(env.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(env.channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=5)
    names = {s.name for s in answer.list_services_response.service}
    assert {"callrec.v1.RecordingService", "callrec.v1.MediaService", "grpc.health.v1.Health"} <= names


def _cli(*args: str, token_env: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    if token_env:
        env["CALLREC_TOKEN"] = token_env
    proc = subprocess.run([sys.executable, "-m", "callrec_client.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    if check:
        assert proc.returncode == 0, f"callrec {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc


def test_cli_token_create_and_use(env: Env, tmp_path: Path) -> None:
    config = env.server.args[env.server.args.index("--config") + 1]
    made = _cli("token", "create", "--role", "controller", "--call", CALL_A, "--ttl", "5m", "--kid", "k2",
                "--config", config).stdout.strip()
    env.tokens["cli"] = made
    listed = _cli("list", "--server", env.server.target, "--call", CALL_A, "--json", "--token", made).stdout
    assert env.recording.recording_id in listed
    # CALLREC_TOKEN works as --token does; a limited token cannot list another call
    refused = _cli("list", "--server", env.server.target, "--call", CALL_B, token_env=made, check=False)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr and made not in refused.stderr
    none = _cli("state", env.recording.recording_id, "--server", env.server.target, check=False)
    assert none.returncode == 1 and "UNAUTHENTICATED" in none.stderr and "callrec token create" in none.stderr
    several = _cli("token", "create", "--role", "admin", "--config", config, check=False)
    assert several.returncode == 2 and "several keys (k1, k2): choose one with --kid" in several.stderr
    admin_call = _cli("token", "create", "--role", "admin", "--call", CALL_A, "--kid", "k1", "--config", config,
                      check=False)
    assert admin_call.returncode == 2 and "admin tokens are not limited to calls" in admin_call.stderr


def test_cli_gateway_sim_with_a_gateway_token(env: Env) -> None:
    config = env.server.args[env.server.args.index("--config") + 1]
    call = unique("auth-sim")
    gateway = _cli("token", "create", "--role", "gateway", "--call", call, "--kid", "k1", "--config",
                   config).stdout.strip()
    env.tokens["sim"] = gateway
    sim = _cli("gateway-sim", call, "-n", "1", "--duration", "0.5", "--fast", "--json", "--server", env.server.target,
               "--token", gateway)
    assert '"participant-1": 25' in sim.stdout
    other = _cli("gateway-sim", unique("auth-sim-other"), "-n", "1", "--duration", "0.5", "--fast",
                 "--server", env.server.target, "--token", gateway, check=False)
    assert other.returncode == 1 and "PERMISSION_DENIED" in other.stderr and "is not one of them" in other.stderr


def test_a_call_limited_controller_deletes_its_calls_chunks_only(env: Env) -> None:
    """Runs late in the module: it deletes CALL_A's chunk that the matrix downloads."""
    chunk = env.recording.chunks[0]
    stub = content_pb2_grpc.ContentServiceStub(env.channel)
    other = token("controller", calls=[CALL_B])
    with pytest.raises(grpc.RpcError) as info:
        stub.DeleteContent(content_pb2.DeleteContentRequest(location=chunk.delete_location), metadata=_md(other),
                           timeout=10)
    assert info.value.code() == DENIED
    own = token("controller", calls=[CALL_A])
    deleted = stub.DeleteContent(content_pb2.DeleteContentRequest(location=chunk.delete_location), metadata=_md(own),
                                 timeout=10)
    assert set(deleted.deleted_locations) == {chunk.content_location, chunk.metadata_location}
    env.tokens.update(delete_other=other, delete_own=own)


def test_no_token_or_secret_ever_reaches_the_log(env: Env) -> None:
    """Last: every token the module sent, and the HS256 secrets, are absent from the server's log."""
    log = env.server.log_text()
    assert "rpc refused" in log  # the refusals are logged (without the token)
    for name, jwt_text in env.tokens.items():
        assert jwt_text.split(".")[2] not in log, f"token {name} was logged"
    assert SECRET_K2 not in log
