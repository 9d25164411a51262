"""Issue 9.4 through `callrec serve`: a black-holed storage target delays no other target, its uploads
end FAILED at the upload deadline, `callrec uploads list` shows them and `callrec uploads retry`
stores them once the target works, publishing RecordingFileStatusUpdated.

The black hole is real: the target `vault` points at a loopback port where a socket listens but never
accepts, so the S3 client's connection is made by the kernel and its request is never answered (the
attempt timeout has to end it). "Fixed" closes that socket and starts a TCP forwarder on the same port
to the session's moto server (`PortForward`, shared with `test_outbox_outages.py`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import grpc
import pytest

from callrec.v1 import recording_pb2 as pb
from callrec.v1 import uploads_pb2 as up
from callrec_client import AsyncCallrecClient, CallrecError
from tests.harness import ROOT
from tests.integration.audio_recording import FILE_STATUS
from tests.integration.test_outbox_outages import PortForward, spool_names
from tests.integration.test_recording_service import wait_state
from tests.integration.test_storage_e2e import (
    Bucket,
    events_of,
    file_status_event,
    new_prefix,
    server_args,
    stream_call,
    write_config,
)

DEADLINE_H = "0.001"
"""`--upload-deadline-h`: 3.6 s (the local recording is stored well before)."""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callrec_client.cli", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def black_hole(port: int) -> socket.socket:
    """A listener on 127.0.0.1:`port` that never accepts: connections open, requests go unanswered."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


@pytest.mark.slow  # ~10 s (make test-slow); the deadline itself is unit-tested on fake time
async def test_black_holed_target_fails_at_the_deadline_and_retry_stores_it(moto_server, make_server, tmp_path,
                                                                            validate_json):
    bucket = Bucket("s3", moto_server)
    prefix = new_prefix("deadline")
    forward = PortForward(moto_server.port)
    hole = black_hole(forward.port)
    try:
        config = write_config(tmp_path / "callrec.toml",
                              {"vault": bucket.target(prefix, endpoint_port=forward.port, max_attempts=1)})
        srv = make_server(*server_args(config, "--upload-timeout", "1", "--upload-deadline-h", DEADLINE_H,
                                       "--upload-backoff-max", "1"))
        s = ("--server", srv.target)
        async with AsyncCallrecClient(srv.target) as client:
            stuck = await stream_call(srv.target, destination="vault")
            local = await stream_call(srv.target, destination="local")

            # the local recording completes while the vault's uploads hang in the black hole
            done = await wait_state(client, local.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=10)
            assert done.upload_status.stored_files == 4
            waiting = await client.get_recording_state(stuck.recording_id)
            assert waiting.state == pb.RECORDING_STATE_STOPPING and waiting.upload_status.pending_files == 4

            # the deadline ends it FAILED with the reason; the files stay in the spool
            failed = await wait_state(client, stuck.recording_id, pb.RECORDING_STATE_FAILED, timeout=30)
            message = failed.error.message
            assert "upload to storage target 'vault' failed" in message, message
            assert "not stored within the upload deadline of 3.6 s (storage target 'vault')" in message, message
            assert f"callrec uploads retry {stuck.recording_id}" in message, message
            assert (failed.upload_status.failed_files, failed.upload_status.pending_files) == (4, 0)
            assert spool_names(srv.data_dir, stuck.recording_id) == [
                "0-metadata.json", "0.wav", "1-metadata.json", "1.wav"]
            assert bucket.names(prefix) == []

            # what an operator sees
            listed = cli("uploads", "list", "--state", "failed", "--json", *s)
            assert listed.returncode == 0, listed.stderr
            rows = [json.loads(line) for line in listed.stdout.splitlines()]
            assert len(rows) == 4 and {r["recording_id"] for r in rows} == {stuck.recording_id}
            for row in rows:
                assert (row["state"], row["target"]) == ("UPLOAD_STATE_FAILED", "vault"), row
                assert "upload deadline of 3.6 s" in row["last_error"], row
                assert row["spool_path"].startswith(str(srv.data_dir / "spool" / stuck.recording_id)), row
            table = cli("uploads", "list", "--recording", stuck.recording_id, *s)
            assert table.returncode == 0, table.stderr
            assert table.stdout.startswith("STATE ") and table.stdout.count("\nfailed ") == 4, table.stdout
            assert "error: not stored within the upload deadline of 3.6 s" in table.stdout

            # the target is fixed: a retry stores everything and announces it (the recording stays FAILED)
            assert FILE_STATUS not in [e.event_type for e in await events_of(client, stuck.recording_id, 0.2)]
            hole.close()
            forward.start()
            retried = cli("uploads", "retry", stuck.recording_id, *s)
            assert retried.returncode == 0, retried.stderr
            assert f"re-queued 4 upload(s) of recording {stuck.recording_id}" in retried.stdout
            events = client.subscribe_events(recording_id=stuck.recording_id, event_types=[FILE_STATUS],
                                             from_oldest=True)
            event = await asyncio.wait_for(events.__anext__(), 30)
            await events.aclose()
            after = await client.get_recording_state(stuck.recording_id)
            assert after.state == pb.RECORDING_STATE_FAILED and after.error.message == message
            assert len(after.chunks) == 2 and after.upload_status.stored_files == 4
            doc = await file_status_event(client, after, validate_json)  # exactly one, schema-valid
            assert doc["id"] == event.id and doc["data"]["sessionEndReason"] == "CallEnded"
            assert len(bucket.names(prefix)) == 4
            assert spool_names(srv.data_dir, stuck.recording_id) == []
            # the client library: the same RPCs
            page = await client.list_uploads(recording_id=stuck.recording_id)
            assert {u.state for u in page.uploads} == {up.UPLOAD_STATE_STORED} and len(page.uploads) == 4
            assert all(u.location.startswith("s3://") and not u.spool_path for u in page.uploads)
            with pytest.raises(CallrecError) as again:
                await client.retry_uploads(stuck.recording_id)
            assert again.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "has no failed uploads to retry (0 pending, 4 stored)" in again.value.details
            with pytest.raises(CallrecError) as unknown:
                await client.retry_uploads("no-such-recording")
            assert unknown.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(CallrecError) as invalid:
                await client.list_uploads(page_size=1001)
            assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in invalid.value.details
    finally:
        hole.close()
        forward.stop()
