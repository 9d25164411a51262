"""The upload outbox under storage outages, crashes and bad credentials, through `callrec serve`.

"Down" is real: the storage target points at a loopback port where nothing listens (connection
refused), and "back" starts a TCP forwarder on that port to the session's moto / Azurite server, so
the very same endpoint URL (and, for Azure, the same locations) starts working.

- store down when the recording stops, back later: the recording waits in STOPPING with its files in
  the spool and counted as pending (resource, metrics), then everything uploads, the event is
  published exactly once and the recording COMPLETES;
- `kill -9` while uploads are pending: after a restart (store up) the same files are uploaded and
  the event is published once;
- a wrong credential: the recording ends FAILED with a message naming the target and the cause, a
  StartRecordingFailed event, and the spool still holds every file.

In the outage test the store stays down for `DOWN_S` seconds (the issue's scenario says 30 s). The
outbox backs off 1, 2, 4, 8, 16, 30 s (capped, ±20 % jitter) and the target has `max_attempts = 1`
(no SDK retries on top), so 12 s of outage already means several failed attempts per file (four
each with today's per-file backoff) and the upload follows at the next attempt, ~15 s after the
stop. A 30 s outage would add up to a full backoff cap (~30 s) of waiting per test, as long as
`backoff_max_s` cannot be configured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from callrec.testing import decode_file, dominant_frequencies
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient
from tests.harness import ROOT, ServerProcess, free_port
from tests.integration.audio_recording import FILE_STATUS
from tests.integration.storage_servers import MotoServer
from tests.integration.test_recording_service import wait_state
from tests.integration.test_storage_e2e import (
    FAILED_EVENT,
    RATE,
    TONE_HZ,
    Bucket,
    bucket_for,
    check_stored,
    event_types,
    events_of,
    file_status_event,
    new_prefix,
    server_args,
    stream_call,
    write_config,
)

DOWN_S = 30.0
"""How long the store stays unreachable after the first failed upload attempt (the issue's 30 s)."""
BACKOFF_MAX_S = "2"
"""`--upload-backoff-max` for the outage test, so the upload follows soon after the store is back."""


class PortForward:
    """A TCP forwarder 127.0.0.1:`port` -> 127.0.0.1:`backend_port`, run in a thread of its own.

    Nothing listens on `port` until `start()`; `stop()` closes the listener and every connection.
    Its own event loop keeps it serving while the test blocks (e.g. in `ServerProcess.start`).
    """

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.port = free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> PortForward:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
                )
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"forward-{self.port}", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(256 * 1024):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        self._writers.difference_update((writer, up_writer))

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()
            loop.call_later(0.05, loop.stop)

        loop.call_soon_threadsafe(close)
        thread.join(10)


@pytest.fixture(params=["s3", "azure_blob"])
def bucket(request: pytest.FixtureRequest) -> Bucket:
    """Each test using it runs once against moto and once against Azurite."""
    return bucket_for(request)


@pytest.fixture
def forward(bucket: Bucket):
    """A forwarder to the backend under test, not yet started (the store is down)."""
    proxy = PortForward(bucket.server.port)
    yield proxy
    proxy.stop()


def metric(port: int, name: str) -> float:
    """A sample of the server's Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def cli(*args: str) -> str:
    """`callrec ARGS...` output (exit code 0 asserted)."""
    shown = subprocess.run(
        [sys.executable, "-m", "callrec_client.cli", *args], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def spool_files(data_dir: Path, recording_id: str) -> list[str]:
    """The files a recording has in the server's spool, relative names, sorted."""
    root = data_dir / "spool" / recording_id
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


SPOOLED = ["0-metadata.json", "0.wav", "1-metadata.json", "1.wav"]
"""A recording's spool files (`<data_dir>/spool/<id>/<id>-<name>`) without the id."""


def spool_names(data_dir: Path, recording_id: str) -> list[str]:
    return [name.removeprefix(f"{recording_id}-") for name in spool_files(data_dir, recording_id)]


async def wait_pending(client: AsyncCallrecClient, recording_id: str, files: int, timeout: float = 30) -> pb.Recording:
    """Wait until the recording is STOPPING with `files` pending uploads, at least one attempt failed."""
    deadline = time.monotonic() + timeout
    while True:
        rec = await client.get_recording_state(recording_id)
        status = rec.upload_status
        if rec.state == pb.RECORDING_STATE_STOPPING and status.pending_files == files and status.last_error:
            return rec
        assert rec.state in (pb.RECORDING_STATE_ACTIVE, pb.RECORDING_STATE_STOPPING), rec
        assert time.monotonic() < deadline, f"uploads not pending after {timeout} s: {rec.upload_status}"
        await asyncio.sleep(0.1)


def vault_config(bucket: Bucket, tmp_path: Path, prefix: str, **target) -> Path:
    """A config whose default target `vault` is on the backend under test."""
    return write_config(tmp_path / "callrec.toml", {"vault": bucket.target(prefix, **target)}, default="vault")


async def check_completed_once(client, bucket, prefix, recording_id, tmp_path, validate_json, port):
    """COMPLETED, stored byte-exact under the SPEC names, exactly one RecordingFileStatusUpdated."""
    done = await wait_state(client, recording_id, pb.RECORDING_STATE_COMPLETED, timeout=90)
    await check_stored(client, bucket, prefix, done, tmp_path, validate_json, endpoint_port=port)
    events = await events_of(client, recording_id)
    assert event_types(events) == ["RecordingStateChanged", "RecordingStateChanged", "RecordingFileStatusUpdated"]
    doc = await file_status_event(client, done, validate_json)
    assert doc["data"]["sessionEndReason"] == "CallEnded"
    status = done.upload_status
    assert (status.stored_files, status.pending_files, status.failed_files, status.last_error) == (4, 0, 0, "")
    return done, doc


@pytest.mark.slow  # ~40 s per backend: a minute-long outage scenario (make test-slow)
async def test_store_down_at_stop_then_back_uploads_everything_once(
    bucket: Bucket, forward: PortForward, make_server, tmp_path, validate_json
):
    """`max_attempts = 1`: no SDK-level retries, so every failed attempt is the outbox's own (1, 2, 2, 2 s...)."""
    prefix = new_prefix("outage")
    metrics_port = free_port()
    config = vault_config(bucket, tmp_path, prefix, endpoint_port=forward.port, max_attempts=1)
    srv = make_server(*server_args(config, "--metrics-listen", f"127.0.0.1:{metrics_port}",
                                   "--upload-backoff-max", BACKOFF_MAX_S))
    async with AsyncCallrecClient(srv.target) as client:
        rec = await stream_call(srv.target)
        down_since = time.monotonic()
        waiting = await wait_pending(client, rec.recording_id, 4)
        # while down: nothing announced, everything kept and counted
        assert not waiting.chunks
        assert FILE_STATUS not in [e.event_type for e in await events_of(client, rec.recording_id, settle=0.3)]
        assert spool_names(srv.data_dir, rec.recording_id) == SPOOLED
        assert metric(metrics_port, "callrec_uploads_pending") == 4
        assert bucket.names(prefix) == []
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))
        still = await client.get_recording_state(rec.recording_id)
        assert still.state == pb.RECORDING_STATE_STOPPING and still.upload_status.pending_files == 4
        # retried with backoff (more failed attempts than files), none given up
        assert metric(metrics_port, "callrec_uploads_failed_total") >= 6
        assert "attempt=2" in srv.log_text() and "permanently" not in srv.log_text()
        listed = cli("list", "--server", srv.target)
        assert f"{rec.recording_id}  stopping" in listed and "uploads pending=4 failed=0" in listed

        forward.start()  # the store is back
        await check_completed_once(client, bucket, prefix, rec.recording_id, tmp_path, validate_json, forward.port)
        assert spool_files(srv.data_dir, rec.recording_id) == [], "spool copies are removed once stored"
        assert metric(metrics_port, "callrec_uploads_pending") == 0


async def crash_with_uploads_pending(
    bucket: Bucket, forward: PortForward, make_server, tmp_path: Path, prefix: str
) -> tuple[ServerProcess, pb.Recording]:
    """Record into a store that is down, `kill -9` the server with the four uploads pending, bring the
    store up and restart the server on the same data directory; returns the new server."""
    data = tmp_path / "data"
    config = vault_config(bucket, tmp_path, prefix, endpoint_port=forward.port)
    first = make_server(*server_args(config), data_dir=data)
    async with AsyncCallrecClient(first.target) as client:
        rec = await stream_call(first.target)
        await wait_pending(client, rec.recording_id, 4)
    spooled = spool_files(data, rec.recording_id)
    assert spool_names(data, rec.recording_id) == SPOOLED
    first.kill()  # SIGKILL with four uploads pending
    assert spool_files(data, rec.recording_id) == spooled
    assert bucket.names(prefix) == []
    forward.start()
    return make_server(*server_args(config), data_dir=data), rec


@pytest.mark.slow  # 12-16 s per backend (make test-slow); keeps make test under 10 minutes
async def test_kill_9_with_uploads_pending_completes_after_restart(
    bucket: Bucket, forward: PortForward, make_server, tmp_path, validate_json
):
    """Default SDK retry settings here (the outage test uses `max_attempts = 1`)."""
    prefix = new_prefix("crash")
    second, rec = await crash_with_uploads_pending(bucket, forward, make_server, tmp_path, prefix)
    async with AsyncCallrecClient(second.target) as client:
        await check_completed_once(client, bucket, prefix, rec.recording_id, tmp_path, validate_json, forward.port)
        assert spool_files(second.data_dir, rec.recording_id) == []
    assert "uploaded" in second.log_text()


async def test_duration_and_participants_survive_a_restart_before_the_uploads(moto_server, make_server, tmp_path):
    s3 = Bucket("s3", moto_server)
    forward = PortForward(moto_server.port)
    try:
        prefix = new_prefix("crash-duration")
        second, rec = await crash_with_uploads_pending(s3, forward, make_server, tmp_path, prefix)
        async with AsyncCallrecClient(second.target) as client:
            done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=60)
            (event,) = [e for e in await events_of(client, rec.recording_id) if e.event_type == FILE_STATUS]
        reported = (done.duration.ToMilliseconds(), json.loads(event.json)["data"]["recordingDurationMs"])
        assert all(abs(ms - 3000) <= 20 for ms in reported), reported
        assert [(p.participant_id, p.display_name) for p in done.participants] == [("alice", "Alice")]
    finally:
        forward.stop()


def wrong_credential(bucket: Bucket) -> dict[str, str]:
    """Target fields with a credential the store refuses (the user and account exist)."""
    if isinstance(bucket.server, MotoServer):
        return {"secret_access_key": "not-the-secret-" + uuid.uuid4().hex}
    wrong_key = base64.b64encode(uuid.uuid4().bytes * 4).decode()
    return {"connection_string": bucket.server.connection_string.replace(bucket.server.account_key, wrong_key)}


async def test_wrong_credential_fails_the_recording_and_keeps_the_spool(
    bucket: Bucket, make_server, tmp_path, validate_json
):
    prefix = new_prefix("denied")
    metrics_port = free_port()
    config = vault_config(bucket, tmp_path, prefix, **wrong_credential(bucket))
    srv = make_server(*server_args(config, "--metrics-listen", f"127.0.0.1:{metrics_port}"))
    async with AsyncCallrecClient(srv.target) as client:
        rec = await stream_call(srv.target)
        failed = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_FAILED, timeout=30)
        message = failed.error.message
        assert "'vault'" in message, message  # the target
        assert "403" in message, message  # the cause: the store refused the credential
        if bucket.kind == "azure_blob":
            assert re.search(r"authori[sz]ation_?failure", message, re.IGNORECASE), message
        assert failed.error.code == 14, failed.error  # UNAVAILABLE
        assert not failed.chunks
        status = failed.upload_status
        assert (status.failed_files, status.pending_files, status.stored_files) == (4, 0, 0)
        assert "403" in status.last_error

        events = await events_of(client, rec.recording_id)
        assert event_types(events) == ["RecordingStateChanged", "RecordingStateChanged", "StartRecordingFailed"]
        data = json.loads(events[-1].json)["data"]
        assert events[-1].event_type == FAILED_EVENT
        assert data["recordingId"] == rec.recording_id and data["resultInformation"]["message"] == message

    # the spool keeps every file, intact
    spooled = spool_files(srv.data_dir, rec.recording_id)
    assert spool_names(srv.data_dir, rec.recording_id) == SPOOLED
    root = srv.data_dir / "spool" / rec.recording_id
    assert str(root) in message, "the message points at the kept files"
    samples = 0
    for name in spooled:
        path = root / name
        if name.endswith(".json"):
            validate_json("recording-chunk-metadata", json.loads(path.read_text()))
        else:
            audio = decode_file(path)
            assert abs(dominant_frequencies(audio.channel(0), RATE)[0] - TONE_HZ) < 10
            samples += len(audio.samples)
    assert abs(samples / RATE - 3.0) <= 0.05
    assert bucket.names(prefix) == []
    assert metric(metrics_port, "callrec_uploads_failed_total") >= 4

    # what an operator sees
    shown = cli("state", rec.recording_id, "--server", srv.target)
    assert "state      failed" in shown
    assert "uploads    0 stored, 0 pending, 4 failed (last error: " in shown
    assert "error      upload to storage target 'vault' failed" in shown
