"""The `callrec` command against a real server: --help, human output and --json."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest

from callrec.v1 import media_pb2 as pb
from callrec_client.gateway import GatewayConnection
from tests.harness import ROOT, ServerProcess, unique


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "callrec_client.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_every_command_and_serve_option():
    top = cli("--help").stdout
    for command in ("serve", "start", "state", "pause", "resume", "stop", "list", "events", "uploads", "webhooks"):
        assert command in top
    serve = cli("serve", "--help").stdout
    for option in ("--listen", "--data-dir", "--config", "--metrics-listen", "--clock", "--resource-id",
                   "--log-level", "--log-format", "--insecure", "--reconnect-grace", "--playout-delay-ms",
                   "--event-retention-h", "--local-retention-h", "--default-storage", "--drain-timeout",
                   "--upload-backoff-max", "--upload-concurrency", "--housekeeping-interval",
                   "--upload-timeout", "--upload-deadline-h", "--upload-retention-h",
                   "--failed-retention-h",
                   "CALLREC_LISTEN"):
        assert option in serve, option
    for command in ("start", "state", "pause", "resume", "stop", "list", "events"):
        assert "--json" in cli(command, "--help").stdout
    for command in (("uploads", "list"), ("uploads", "retry")):
        shown = cli(*command, "--help").stdout
        assert "--json" in shown and f"callrec {' '.join(command)} " in shown, shown  # with examples


def test_serve_refuses_bad_config_with_a_clear_message(tmp_path):
    bad = cli("serve", "--listen", "0.0.0.0:5", "--data-dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and "pass --insecure" in bad.stderr
    bad = cli("serve", "--clock", "sundial", "--data-dir", str(tmp_path), check=False)
    assert bad.returncode == 2 and "clock must be one of realtime, media" in bad.stderr


async def test_recording_lifecycle_from_the_cli(server: ServerProcess):
    call_id = unique("cli")
    s = ("--server", server.target)
    async with GatewayConnection(server.target, call_id) as gw:
        started = json.loads(cli("start", call_id, "--content", "audio", "--format", "wav", "--json", *s).stdout)
        rid = started["recording_id"]
        assert started["state"] == "RECORDING_STATE_ACTIVE"
        text = cli("state", rid, *s).stdout
        assert f"recording  {rid}" in text and "state      active" in text
        assert "inactive" in cli("pause", rid, *s).stdout
        assert json.loads(cli("resume", rid, "--json", *s).stdout)["state"] == "RECORDING_STATE_ACTIVE"
        stopped = json.loads(cli("stop", rid, "--json", *s).stdout)
        assert stopped["session_end_reason"] == "StoppedByRequest"
        for _ in range(50):
            text = cli("state", rid, *s).stdout
            if "completed" in text:
                break
        assert "uploads    2 stored, 0 pending, 0 failed" in text  # the chunk's media + metadata
        listed = [json.loads(line) for line in cli("list", "--call", call_id, "--json", *s).stdout.splitlines()]
        assert [r["recording_id"] for r in listed] == [rid]
        assert rid in cli("list", "--call", call_id, *s).stdout
        lines = cli("events", "--recording", rid, "--type", "Microsoft.Communication.RecordingStateChanged",
                    "--json", *s).stdout.splitlines()
        states = [json.loads(line)["data"]["state"] for line in lines]
        assert states == ["active", "inactive", "active", "inactive"]
        assert "RecordingStateChanged" in cli("events", "--recording", rid, *s).stdout
        await gw.end()


@pytest.mark.parametrize("args,fragment", [
    (("state", "nope"), "NOT_FOUND: no recording with id 'nope'"),
    (("start", "no-call", "--content", "audio", "--format", "mp3"), "NOT_FOUND"),
    (("start", "no-call", "--format", "mp3"), "INVALID_ARGUMENT"),
    (("start", "no-call", "--format", "flac"), "format must be one of wav, mp3, mp4"),
])
def test_cli_errors_are_readable(server: ServerProcess, args, fragment):
    proc = cli(*args, "--server", server.target, check=False)
    assert proc.returncode != 0 and fragment in proc.stderr


async def test_metrics_endpoint(make_server, tmp_path):
    import urllib.request

    from tests.harness import free_port

    port = free_port()
    srv = make_server("--clock", "media", "--metrics-listen", f"127.0.0.1:{port}")
    async with GatewayConnection(srv.target, "m") as gw:
        await gw.join("alice")
        await gw.join("bob")
        for seq in range(1, 6):
            await gw.audio("alice", seq, seq * 20_000, b"\0\0" * 320)
        await gw.audio("alice", 6, 6 * 20_000, b"")
        await gw.next_response("warning")
        # a batch is counted once per message: every frame in it still counts
        await gw.batch(audio=[pb.AudioFrame(participant_id=pid, sequence=seq, timestamp_us=seq * 20_000,
                                            data=b"\0\0" * 320)
                              for seq in (7, 8) for pid in ("alice", "bob")]
                       + [pb.AudioFrame(participant_id="bob", sequence=9, timestamp_us=9 * 20_000, data=b"")])
        await gw.next_response("warning")
        await gw.end()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'callrec_frames_received_total{kind="audio"} 9.0' in body
    assert 'callrec_frames_rejected_total{kind="audio",reason="empty_frame"} 2.0' in body
    # the serving loop watches its own lag (a timer every 100 ms) from start-up on; the gateway's exchange
    # above can take less than the first 100 ms, so the first observation may still be due: wait for it
    deadline = time.monotonic() + 5
    while True:
        lag_count = re.search(r"^callrec_event_loop_lag_seconds_count (\S+)$", body, re.M)
        if lag_count is None or float(lag_count.group(1)) >= 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert lag_count is not None and float(lag_count.group(1)) >= 1
