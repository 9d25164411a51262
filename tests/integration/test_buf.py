"""The API as a debugging user sees it with buf: `buf lint` and `buf curl` via server reflection only."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from google.protobuf.descriptor import ServiceDescriptor

from callrec.v1 import content_pb2, events_pb2, media_pb2, recording_pb2
from callrec_client.gateway import GatewayConnection
from tests.harness import ROOT, ServerProcess, unique

BUF = ROOT / "tools" / "node_modules" / ".bin" / "buf"
CURL_TIMEOUT_S = 60.0


def _buf() -> Path:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: `make test` installs it (target tools/node_modules/.installed "
                    "runs `npm install` in tools/)")
    return BUF


def _curl_args(target: str, *extra: str) -> list[str]:
    """`buf curl` over plaintext HTTP/2 gRPC; the schema comes from server reflection only."""
    return [str(_buf()), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *extra, f"http://{target}"]


async def _buf_curl(target: str, method: str, body: dict[str, object]) -> tuple[int, str, str]:
    """Runs `buf curl http://target/<method> -d <json>` without blocking the event loop."""
    args = _curl_args(target, "-d", json.dumps(body))
    args[-1] = f"http://{target}/{method}"
    proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CURL_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"buf curl {method} did not finish within {CURL_TIMEOUT_S} s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_buf_lint_passes() -> None:
    proc = subprocess.run([str(_buf()), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"buf lint failed:\n{proc.stdout}{proc.stderr}"


async def test_buf_curl_via_reflection(server: ServerProcess) -> None:
    call_id = unique("buf-curl")
    async with GatewayConnection(server.target, call_id, gateway_id=unique("buf-gw")) as gw:
        await gw.join("alice")

        rc, out, err = await _buf_curl(server.target, "callrec.v1.RecordingService/StartRecording", {
            "server_call_id": call_id,
            "content_type": "RECORDING_CONTENT_TYPE_AUDIO",
            "channel_type": "RECORDING_CHANNEL_TYPE_MIXED",
            "format": "RECORDING_FORMAT_WAV",
        })
        assert rc == 0, f"buf curl StartRecording exited {rc}:\n{out}{err}"
        started = json.loads(out)["recording"]
        recording_id = started["recordingId"]
        assert recording_id
        assert started["serverCallId"] == call_id
        assert started["state"] == "RECORDING_STATE_ACTIVE"
        assert started["format"] == "RECORDING_FORMAT_WAV"

        rc, out, err = await _buf_curl(server.target, "callrec.v1.RecordingService/GetRecordingState",
                                       {"recordingId": recording_id})
        assert rc == 0, f"buf curl GetRecordingState exited {rc}:\n{out}{err}"
        got = json.loads(out)["recording"]
        assert got["recordingId"] == recording_id
        assert got["state"] == "RECORDING_STATE_ACTIVE"

        rc, out, err = await _buf_curl(server.target, "callrec.v1.RecordingService/GetRecordingState",
                                       {"recording_id": unique("no-such-recording")})
        # buf curl exits with the gRPC code shifted left by 3 and prints the error as JSON on stderr.
        assert rc == 5 << 3, f"expected NOT_FOUND (exit 40), got exit {rc}:\n{out}{err}"
        error = json.loads(err)
        assert error["code"] == "not_found", error
        assert error.get("message"), error

        rc, out, err = await _buf_curl(server.target, "callrec.v1.RecordingService/StopRecording",
                                       {"recording_id": recording_id})
        assert rc == 0, f"buf curl StopRecording exited {rc}:\n{out}{err}"
        assert json.loads(out)["recording"]["state"] in ("RECORDING_STATE_STOPPING", "RECORDING_STATE_COMPLETED")
        await gw.end()


def _methods(service: ServiceDescriptor) -> set[str]:
    return {f"{service.full_name}/{m.name}" for m in service.methods}


def test_buf_curl_lists_methods_via_reflection(server: ServerProcess) -> None:
    proc = subprocess.run(_curl_args(server.target, "--list-methods"), cwd=ROOT, capture_output=True, text=True,
                          timeout=CURL_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"buf curl --list-methods failed:\n{proc.stdout}{proc.stderr}"
    listed = set(proc.stdout.split())

    required = (_methods(recording_pb2.DESCRIPTOR.services_by_name["RecordingService"])
                | _methods(media_pb2.DESCRIPTOR.services_by_name["MediaService"])
                | _methods(events_pb2.DESCRIPTOR.services_by_name["EventService"])
                | {"grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"})
    assert not required - listed, f"missing from reflection: {sorted(required - listed)}\nlisted: {sorted(listed)}"

    # ContentService is optional until the server registers it, but then completely.
    content = _methods(content_pb2.DESCRIPTOR.services_by_name["ContentService"])
    if content & listed:
        assert content <= listed, f"ContentService only partly listed: {sorted(content & listed)}"
