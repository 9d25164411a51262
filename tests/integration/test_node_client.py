"""The Node.js example client (clients/node) against a real server.

Runs `node clients/node/example.js --server <target> --json` and the client's own
`npm test`; needs Node.js and clients/node/node_modules (`make test` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest

from callrec.v1 import recording_pb2
from callrec_client import CallrecClient
from tests.harness import ROOT, ServerProcess

NODE_DIR = ROOT / "clients" / "node"
STATE_CHANGED = "Microsoft.Communication.RecordingStateChanged"


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: the Node client tests need `node` (18 or newer) on PATH")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_DIR / 'node_modules'} is missing: `make test` installs it "
                    "(target clients/node/node_modules/.installed runs `npm install` in clients/node)")
    return node


def _run(cmd: list[str], cwd: os.PathLike[str] | str, timeout: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s; output so far:\n{exc.stdout}\n{exc.stderr}")


def _wait_completed(target: str, recording_id: str, timeout: float = 30.0) -> recording_pb2.Recording:
    deadline = time.monotonic() + timeout
    with CallrecClient(target) as client:
        while True:
            rec = client.get_recording_state(recording_id)
            if rec.state in (recording_pb2.RECORDING_STATE_COMPLETED, recording_pb2.RECORDING_STATE_FAILED):
                return rec
            if time.monotonic() > deadline:
                return rec
            time.sleep(0.1)


def test_node_example_records_a_call(server: ServerProcess, validate_json: Callable[[str, object], None]) -> None:
    node = _require_node()
    proc = _run([node, "clients/node/example.js", "--server", server.target, "--json"], cwd=ROOT, timeout=120)
    assert proc.returncode == 0, f"example.js exited {proc.returncode}:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    summary = json.loads(proc.stdout)

    assert summary["server_call_id"].startswith("node-example-")
    recording_id = summary["recording_id"]
    assert recording_id
    states = summary["states"]
    assert states[:3] == ["RECORDING_STATE_ACTIVE", "RECORDING_STATE_INACTIVE", "RECORDING_STATE_ACTIVE"], states
    assert len(states) == 4 and states[3] in ("RECORDING_STATE_STOPPING", "RECORDING_STATE_COMPLETED"), states

    rec = _wait_completed(server.target, recording_id)
    assert rec.state == recording_pb2.RECORDING_STATE_COMPLETED, (
        f"{recording_pb2.RecordingState.Name(rec.state)}: {rec.error.message}")
    assert rec.server_call_id == summary["server_call_id"]
    assert rec.session_end_reason == "StoppedByRequest"

    events = summary["events"]
    assert len(events) == 4, events
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == sorted(set(sequences)), f"sequences not strictly increasing: {sequences}"
    event_states = []
    for event in events:
        assert event["event_type"] == STATE_CHANGED
        doc = json.loads(event["json"])
        validate_json("recording-state-changed", doc)
        assert doc["type"] == STATE_CHANGED
        assert doc["data"]["recordingId"] == recording_id
        assert doc["data"]["serverCallId"] == summary["server_call_id"]
        event_states.append(doc["data"]["state"])
    assert event_states == ["active", "inactive", "active", "inactive"]


def test_node_npm_test_against_server(server: ServerProcess) -> None:
    _require_node()
    npm = shutil.which("npm")
    assert npm is not None, "npm is not installed"
    proc = _run([npm, "test"], cwd=NODE_DIR, timeout=180, env={"CALLREC_SERVER": server.target})
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, f"npm test exited {proc.returncode}:\n{output}"
    assert "# fail 0" in proc.stdout, output
    assert "# skipped 0" in proc.stdout, f"npm test skipped tests although CALLREC_SERVER was set:\n{output}"
