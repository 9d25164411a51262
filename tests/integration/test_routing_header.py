"""Every client sends `x-callrec-server-call-id` on call-scoped RPCs (cluster mode, SPEC §8).

A proxy hashing on that header sends a call's streams and control RPCs to one node, so the header
must be exactly the call's id on every call-scoped RPC and absent where the client cannot know
the call. These tests run a recording gRPC server on 127.0.0.1 (the generated servicers with
canned answers, an interceptor noting each RPC's method and metadata) and drive the sync and async
Python clients, the gateway helper, the `callrec` CLI and its gateway simulator, and the Node
client against it.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

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
)
from callrec_client import ROUTING_HEADER, AsyncCallrecClient, CallrecClient, RecordingCalls
from callrec_client.gateway import GatewayConnection
from callrec_client.routing import DEFAULT_RECORDING_CACHE_SIZE, routing_value
from tests.harness import ROOT

NODE_DIR = ROOT / "clients" / "node"
NODE_DRIVER = Path(__file__).with_name("node_routing_driver.js")

#: A recording the server knows but no client has seen: its call is learnt from the first answer.
PREKNOWN_RECORDING, PREKNOWN_CALL = "rec-preknown", "call-z"
TOKEN = "t0ken"
LOCATION = "file://localhost/recordings/x/0-audio.wav"
CONTENT = b"RIFF-not-really-a-wav"

RECORDING = "/callrec.v1.RecordingService/"
START, GET, PAUSE, RESUME, STOP, LIST = (RECORDING + m for m in (
    "StartRecording", "GetRecordingState", "PauseRecording", "ResumeRecording", "StopRecording", "ListRecordings"))
LIST_UPLOADS, RETRY = "/callrec.v1.UploadService/ListUploads", "/callrec.v1.UploadService/RetryUploads"
SUBSCRIBE = "/callrec.v1.EventService/SubscribeEvents"
DOWNLOAD, DELETE = "/callrec.v1.ContentService/DownloadContent", "/callrec.v1.ContentService/DeleteContent"
STREAM_MEDIA = "/callrec.v1.MediaService/StreamMedia"


@dataclass(frozen=True)
class Seen:
    """One RPC as the server saw it."""

    method: str
    metadata: tuple[tuple[str, str | bytes], ...]

    def values(self, key: str) -> list[str | bytes]:
        return [v for k, v in self.metadata if k == key]

    @property
    def route(self) -> str | None:
        """The routing header's value; None when absent (AssertionError when sent twice)."""
        values = self.values(ROUTING_HEADER)
        assert len(values) <= 1, f"{self.method}: {ROUTING_HEADER} sent {len(values)} times: {values}"
        return str(values[0]) if values else None


class Recorder(grpc.ServerInterceptor):
    """Notes the method and invocation metadata of every RPC as it starts."""

    def __init__(self) -> None:
        self._seen: list[Seen] = []
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        with self._lock:
            self._seen.append(Seen(details.method, tuple(details.invocation_metadata)))
        return continuation(details)

    def take(self) -> list[Seen]:
        """The RPCs seen since the last `take`, oldest first."""
        with self._lock:
            seen, self._seen = self._seen, []
        return seen

    def routes(self) -> list[tuple[str, str | None]]:
        """(method, routing header or None) of the RPCs since the last `take`."""
        return [(s.method, s.route) for s in self.take()]


class Calls:
    """The server side of recordings: which call each recording belongs to (as a real node knows)."""

    def __init__(self) -> None:
        self.call_of: dict[str, str] = {PREKNOWN_RECORDING: PREKNOWN_CALL}
        self._started = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, recording_id: str, server_call_id: str) -> recording_pb2.Recording:
        with self._lock:
            self.call_of[recording_id] = server_call_id
        return self.recording(recording_id)

    def start(self, server_call_id: str) -> recording_pb2.Recording:
        """A new recording `rec-1`, `rec-2`, ... of the call."""
        return self.add(f"rec-{next(self._started)}", server_call_id)

    def recording(self, recording_id: str) -> recording_pb2.Recording:
        return recording_pb2.Recording(recording_id=recording_id, server_call_id=self.call_of.get(recording_id, ""),
                                       state=recording_pb2.RECORDING_STATE_ACTIVE)


class RecordingServicer(recording_pb2_grpc.RecordingServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def StartRecording(self, request: Any, context: Any) -> Any:
        return recording_pb2.StartRecordingResponse(recording=self.calls.start(request.server_call_id))

    def GetRecordingState(self, request: Any, context: Any) -> Any:
        return recording_pb2.GetRecordingStateResponse(recording=self.calls.recording(request.recording_id))

    def PauseRecording(self, request: Any, context: Any) -> Any:
        return recording_pb2.PauseRecordingResponse(recording=self.calls.recording(request.recording_id))

    def ResumeRecording(self, request: Any, context: Any) -> Any:
        return recording_pb2.ResumeRecordingResponse(recording=self.calls.recording(request.recording_id))

    def StopRecording(self, request: Any, context: Any) -> Any:
        return recording_pb2.StopRecordingResponse(recording=self.calls.recording(request.recording_id))

    def ListRecordings(self, request: Any, context: Any) -> Any:
        """Filtered by call: that call's recordings. Else `page_size` recordings `rec-list-i` of calls `call-list-i`."""
        if request.server_call_id:
            ids = [r for r, c in self.calls.call_of.items() if c == request.server_call_id]
            return recording_pb2.ListRecordingsResponse(recordings=[self.calls.recording(r) for r in ids])
        return recording_pb2.ListRecordingsResponse(recordings=[
            self.calls.add(f"rec-list-{i}", f"call-list-{i}") for i in range(request.page_size or 2)])


class MediaServicer(media_pb2_grpc.MediaServiceServicer):
    """`opened` for `open`, an ack with the counters after each frame or batch, close on `end`."""

    def StreamMedia(self, request_iterator: Iterator[Any], context: Any) -> Iterator[Any]:
        received: dict[str, int] = {}
        for req in request_iterator:
            kind = req.WhichOneof("message")
            if kind == "open":
                yield media_pb2.StreamMediaResponse(opened=media_pb2.StreamOpened(
                    server_call_id=req.open.server_call_id, call_connection_id="conn-1"))
            elif kind == "join":
                received.setdefault(req.join.participant_id, 0)
            elif kind in ("audio", "video", "media_batch"):
                frames = ([req.audio] if kind == "audio" else [req.video] if kind == "video"
                          else [*req.media_batch.audio, *req.media_batch.video])
                for frame in frames:
                    received[frame.participant_id] = received.get(frame.participant_id, 0) + 1
                yield media_pb2.StreamMediaResponse(ack=media_pb2.MediaAck(participants=[
                    media_pb2.ParticipantAck(participant_id=p, received=n) for p, n in received.items()]))
            elif kind == "end":
                return


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def SubscribeEvents(self, request: Any, context: Any) -> Iterator[Any]:
        yield events_pb2.SubscribeEventsResponse(event=events_pb2.Event(
            sequence=1, id="e1", event_type="Microsoft.Communication.RecordingStateChanged",
            subject=f"/recording/call/x/serverCallId/{request.server_call_id}", json="{}"))


class ContentServicer(content_pb2_grpc.ContentServiceServicer):
    def DownloadContent(self, request: Any, context: Any) -> Iterator[Any]:
        yield content_pb2.DownloadContentResponse(data=CONTENT[request.offset:], offset=request.offset,
                                                  total_size=len(CONTENT), content_type="audio/wav")

    def DeleteContent(self, request: Any, context: Any) -> Any:
        return content_pb2.DeleteContentResponse(deleted_locations=[request.location])


class UploadServicer(uploads_pb2_grpc.UploadServiceServicer):
    def ListUploads(self, request: Any, context: Any) -> Any:
        return uploads_pb2.ListUploadsResponse()

    def RetryUploads(self, request: Any, context: Any) -> Any:
        return uploads_pb2.RetryUploadsResponse()


@dataclass
class RecordingServer:
    """The recording server of a test: `target` to connect to, `recorder` holding what it saw."""

    target: str
    recorder: Recorder


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    """A threaded gRPC server on 127.0.0.1 (threads: the sync client, CLI and Node all block)."""
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[recorder])
    recording_pb2_grpc.add_RecordingServiceServicer_to_server(RecordingServicer(Calls()), server)
    media_pb2_grpc.add_MediaServiceServicer_to_server(MediaServicer(), server)
    events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(), server)
    content_pb2_grpc.add_ContentServiceServicer_to_server(ContentServicer(), server)
    uploads_pb2_grpc.add_UploadServiceServicer_to_server(UploadServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield RecordingServer(f"127.0.0.1:{port}", recorder)
    finally:
        server.stop(grace=None)


# --- the Python clients: one scenario, run by the sync and the async client -----------------------

#: (method, routing header) of each RPC of the scenario below, in order; None: no header.
SCENARIO = [
    (START, "call-a"),                    # start_recording("call-a"): the request's call
    (GET, "call-a"),                      # the recording's call, remembered from StartRecording
    (PAUSE, "call-a"),
    (RESUME, "call-a"),
    (STOP, "call-b"),                     # server_call_id="call-b" wins over the remembered call-a
    (GET, None),                          # rec-preknown: nobody told this client its call: no header
    (PAUSE, PREKNOWN_CALL),               # ... and the answer to that GET named it
    (LIST, "call-a"),                     # list_recordings(server_call_id="call-a")
    (LIST, None),                         # list_recordings(): not call-scoped
    (STOP, "call-list-1"),                # a recording learnt from the unfiltered ListRecordings answer
    (LIST_UPLOADS, None),                 # list_uploads(): no recording, no call
    (LIST_UPLOADS, "call-a"),             # list_uploads(recording_id=rec-1)
    (RETRY, "call-a"),                    # retry_uploads(rec-1)
    (RETRY, "call-c"),                    # retry_uploads(rec-1, server_call_id="call-c")
    (RETRY, None),                        # retry_uploads("rec-never-seen")
    (SUBSCRIBE, "call-a"),                # subscribe_events(server_call_id="call-a")
    (SUBSCRIBE, None),                    # subscribe_events(recording_id=...): not filtered by call
    (DOWNLOAD, None),                     # download(location): a location names no call
    (DOWNLOAD, "call-a"),                 # download(location, server_call_id="call-a")
    (DELETE, None),
    (DELETE, "call-a"),
]


def run_sync_scenario(client: CallrecClient) -> str:
    rid = client.start_recording("call-a").recording_id
    client.get_recording_state(rid)
    client.pause_recording(rid)
    client.resume_recording(rid)
    client.stop_recording(rid, server_call_id="call-b")
    client.get_recording_state(PREKNOWN_RECORDING)
    client.pause_recording(PREKNOWN_RECORDING)
    assert [r.recording_id for r in client.list_recordings(server_call_id="call-a").recordings] == [rid]
    client.list_recordings()
    client.stop_recording("rec-list-1")
    client.list_uploads()
    client.list_uploads(recording_id=rid)
    client.retry_uploads(rid)
    client.retry_uploads(rid, server_call_id="call-c")
    client.retry_uploads("rec-never-seen")
    assert [e.sequence for e in client.subscribe_events(server_call_id="call-a")] == [1]
    assert [e.sequence for e in client.subscribe_events(recording_id=rid)] == [1]
    assert b"".join(p.data for p in client.download(LOCATION)) == CONTENT
    assert b"".join(p.data for p in client.download(LOCATION, server_call_id="call-a")) == CONTENT
    assert list(client.delete(LOCATION).deleted_locations) == [LOCATION]
    client.delete(LOCATION, server_call_id="call-a")
    return rid


async def run_async_scenario(client: AsyncCallrecClient) -> str:
    rid = (await client.start_recording("call-a")).recording_id
    await client.get_recording_state(rid)
    await client.pause_recording(rid)
    await client.resume_recording(rid)
    await client.stop_recording(rid, server_call_id="call-b")
    await client.get_recording_state(PREKNOWN_RECORDING)
    await client.pause_recording(PREKNOWN_RECORDING)
    assert [r.recording_id for r in (await client.list_recordings(server_call_id="call-a")).recordings] == [rid]
    await client.list_recordings()
    await client.stop_recording("rec-list-1")
    await client.list_uploads()
    await client.list_uploads(recording_id=rid)
    await client.retry_uploads(rid)
    await client.retry_uploads(rid, server_call_id="call-c")
    await client.retry_uploads("rec-never-seen")
    assert [e.sequence async for e in client.subscribe_events(server_call_id="call-a")] == [1]
    assert [e.sequence async for e in client.subscribe_events(recording_id=rid)] == [1]
    assert b"".join([p.data async for p in client.download(LOCATION)]) == CONTENT
    assert b"".join([p.data async for p in client.download(LOCATION, server_call_id="call-a")]) == CONTENT
    assert list((await client.delete(LOCATION)).deleted_locations) == [LOCATION]
    await client.delete(LOCATION, server_call_id="call-a")
    return rid


def assert_scenario(seen: list[Seen], rid: str) -> None:
    assert rid == "rec-1"  # the scenario's expectations name rec-1 (the server's first new recording)
    assert [(s.method, s.route) for s in seen] == SCENARIO
    for s in seen:  # the routing header comes in addition to the token, never instead of it
        assert s.values("authorization") == [f"Bearer {TOKEN}"], s


def test_sync_client_sends_the_call_on_every_call_scoped_rpc(recording_server: RecordingServer) -> None:
    with CallrecClient(recording_server.target, token=TOKEN) as client:
        rid = run_sync_scenario(client)
        assert client.recording_calls.get(rid) == "call-a"  # call-b was a one-off override, not remembered
        assert client.recording_calls.get(PREKNOWN_RECORDING) == PREKNOWN_CALL
    assert_scenario(recording_server.recorder.take(), rid)


async def test_async_client_sends_the_call_on_every_call_scoped_rpc(recording_server: RecordingServer) -> None:
    async with AsyncCallrecClient(recording_server.target, token=TOKEN) as client:
        rid = await run_async_scenario(client)
        assert client.recording_calls.get(rid) == "call-a"
    assert_scenario(recording_server.recorder.take(), rid)


def test_without_a_token_only_the_routing_header_is_added(recording_server: RecordingServer) -> None:
    with CallrecClient(recording_server.target) as client:
        client.start_recording("call-a")
        client.list_recordings()
    start, listed = recording_server.recorder.take()
    assert start.values("authorization") == [] and start.route == "call-a"
    assert listed.values("authorization") == [] and listed.route is None
    assert client.call_metadata("call-a") == ((ROUTING_HEADER, "call-a"),)
    assert client.call_metadata() == ()


def test_recordings_cache_is_bounded_and_least_recently_used_goes_first(recording_server: RecordingServer) -> None:
    with CallrecClient(recording_server.target, recording_calls=RecordingCalls(3)) as client:
        client.list_recordings(page_size=5)  # rec-list-0 .. rec-list-4: the first two do not fit
        assert len(client.recording_calls) == 3
        client.get_recording_state("rec-list-2")  # a use: rec-list-2 is now the most recent
        client.start_recording("call-new")  # rec-1 of call-new pushes out the least recent: rec-list-3
        kept = ["rec-list-4", "rec-list-2", "rec-1"]
        assert {rid for rid in [*(f"rec-list-{i}" for i in range(5)), "rec-1"] if rid in client.recording_calls} \
            == set(kept)
        for rid in [*kept, "rec-list-3", "rec-list-0"]:  # hits first: a miss's answer would evict one
            client.get_recording_state(rid)
        assert len(client.recording_calls) == 3  # the misses' answers were learnt, and still only 3 kept
        assert client.recording_calls.get("rec-list-0") == "call-list-0"
    assert recording_server.recorder.routes() == [
        (LIST, None),
        (GET, "call-list-2"),
        (START, "call-new"),
        (GET, "call-list-4"), (GET, "call-list-2"), (GET, "call-new"),
        (GET, None), (GET, None),  # evicted: no header
    ]


def test_default_cache_keeps_the_last_10000_recordings(recording_server: RecordingServer) -> None:
    assert DEFAULT_RECORDING_CACHE_SIZE == 10_000
    with CallrecClient(recording_server.target) as client:
        client.list_recordings(page_size=10_001)
        assert len(client.recording_calls) == 10_000
        assert "rec-list-0" not in client.recording_calls
        assert client.recording_calls.get("rec-list-1") == "call-list-1"
        client.stop_recording("rec-list-10000")
    assert recording_server.recorder.routes() == [(LIST, None), (STOP, "call-list-10000")]


def test_recording_calls_rejects_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecordingCalls(0)


def test_a_call_id_that_is_not_printable_ascii_is_percent_encoded(recording_server: RecordingServer) -> None:
    with CallrecClient(recording_server.target) as client:
        client.start_recording("réunion 1")
        client.start_recording(" padded")
        client.start_recording("ASCII id/with:punctuation")
    assert [s.route for s in recording_server.recorder.take()] == [
        "r%C3%A9union%201", "%20padded", "ASCII id/with:punctuation"]
    assert routing_value("a\tb") == "a%09b"


# --- the gateway side: the stream carries the header from its creation ----------------------------

async def test_gateway_connection_stream_carries_the_call(recording_server: RecordingServer) -> None:
    async with GatewayConnection(recording_server.target, "call-gw", gateway_id="gw-1", token=TOKEN) as gw:
        assert gw.opened is not None and gw.opened.server_call_id == "call-gw"
        await gw.join("alice")
        await gw.audio("alice", 1, 0, b"\0\0" * 320)
        assert (await gw.next_response("ack")).ack.participants[0].received == 1
        await gw.end()
    (stream,) = recording_server.recorder.take()
    assert (stream.method, stream.route) == (STREAM_MEDIA, "call-gw")
    assert stream.values("authorization") == [f"Bearer {TOKEN}"]


# --- the CLI, through its entry point, one process per command ------------------------------------

def cli(server: RecordingServer, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "callrec_client.cli", *args, "--server", server.target],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, f"callrec {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.parametrize(("args", "expected"), [
    (("start", "call-cli", "--content", "audio", "--format", "wav"), [(START, "call-cli")]),
    # a new process knows no recording: only --server-call-id routes the recording-id commands
    (("state", PREKNOWN_RECORDING), [(GET, None)]),
    (("state", PREKNOWN_RECORDING, "--server-call-id", "call-cli"), [(GET, "call-cli")]),
    (("pause", PREKNOWN_RECORDING, "--server-call-id", "call-cli"), [(PAUSE, "call-cli")]),
    (("resume", PREKNOWN_RECORDING, "--server-call-id", "call-cli"), [(RESUME, "call-cli")]),
    (("stop", PREKNOWN_RECORDING, "--server-call-id", "call-cli"), [(STOP, "call-cli")]),
    (("stop", PREKNOWN_RECORDING), [(STOP, None)]),
    (("list", "--call", "call-cli"), [(LIST, "call-cli")]),
    (("list",), [(LIST, None)]),
    (("events", "--call", "call-cli"), [(SUBSCRIBE, "call-cli")]),
    (("events", "--recording", PREKNOWN_RECORDING), [(SUBSCRIBE, None)]),
    (("delete", LOCATION, "--server-call-id", "call-cli"), [(DELETE, "call-cli")]),
    (("delete", LOCATION), [(DELETE, None)]),
    (("uploads", "list"), [(LIST_UPLOADS, None)]),
    (("uploads", "list", "--recording", PREKNOWN_RECORDING, "--server-call-id", "call-cli"),
     [(LIST_UPLOADS, "call-cli")]),
    (("uploads", "retry", PREKNOWN_RECORDING, "--server-call-id", "call-cli"), [(RETRY, "call-cli")]),
    (("uploads", "retry", PREKNOWN_RECORDING), [(RETRY, None)]),
])
def test_cli_commands_send_the_call_they_know(
    recording_server: RecordingServer, args: tuple[str, ...], expected: list[tuple[str, str | None]]
) -> None:
    cli(recording_server, *args, "--token", TOKEN)
    seen = recording_server.recorder.take()
    assert [(s.method, s.route) for s in seen] == expected
    assert all(s.values("authorization") == [f"Bearer {TOKEN}"] for s in seen)


def test_cli_download_routes_with_server_call_id(recording_server: RecordingServer, tmp_path: Path) -> None:
    out = tmp_path / "call.wav"
    cli(recording_server, "download", LOCATION, "-o", str(out), "--quiet", "--server-call-id", "call-cli")
    assert out.read_bytes() == CONTENT
    cli(recording_server, "download", LOCATION, "-o", str(tmp_path / "again.wav"), "--quiet")
    assert recording_server.recorder.routes() == [(DOWNLOAD, "call-cli"), (DOWNLOAD, None)]


def test_cli_help_offers_server_call_id_where_a_recording_or_location_is_taken() -> None:
    for command in (("state",), ("pause",), ("resume",), ("stop",), ("download",), ("delete",),
                    ("uploads", "retry"), ("uploads", "list")):
        shown = subprocess.run([sys.executable, "-m", "callrec_client.cli", *command, "--help"],
                               capture_output=True, text=True, cwd=ROOT, timeout=60, check=True).stdout
        unwrapped = re.sub(r"-\s+", "-", " ".join(shown.split()))  # click wraps at 80 columns, also after "-"
        assert "--server-call-id <str>" in unwrapped and f"sent as the {ROUTING_HEADER} header" in unwrapped, (
            command, shown)


def test_gateway_sim_streams_with_the_call_header(recording_server: RecordingServer) -> None:
    proc = cli(recording_server, "gateway-sim", "call-sim", "-n", "2", "--duration", "0.2", "--fast", "--json",
               "--token", TOKEN)
    report = json.loads(proc.stdout)
    assert report["received"] == {"participant-1": 10, "participant-2": 10}  # 0.2 s of 20 ms frames, acked
    (stream,) = recording_server.recorder.take()
    assert (stream.method, stream.route) == (STREAM_MEDIA, "call-sim")
    assert stream.values("authorization") == [f"Bearer {TOKEN}"]


# --- the Node client ----------------------------------------------------------------------------

def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: the Node client tests need `node` (18 or newer) on PATH")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_DIR / 'node_modules'} is missing: `make test` installs it (npm install in clients/node)")
    return node


def test_node_client_sends_the_call_on_every_call_scoped_rpc(recording_server: RecordingServer) -> None:
    node = _require_node()
    proc = subprocess.run([node, str(NODE_DRIVER), recording_server.target, TOKEN], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, f"node driver exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    summary = json.loads(proc.stdout)
    seen = recording_server.recorder.take()
    assert [(s.method, s.route) for s in seen] == [
        (STREAM_MEDIA, "call-node"),          # openGateway: before `open`, on the stream itself
        (START, "call-node"),
        (GET, "call-node"),                   # remembered from StartRecording
        (PAUSE, None),                        # rec-preknown, unknown to this client
        (RESUME, PREKNOWN_CALL),              # learnt from the PauseRecording answer
        (STOP, "call-explicit"),              # { serverCallId } wins
        (LIST, "call-node"),
        (LIST, None),
        (GET, "call-list-1"),                 # learnt from the unfiltered ListRecordings answer
        (SUBSCRIBE, "call-node"),
        (SUBSCRIBE, None),
        (DOWNLOAD, "call-node"),
        (DOWNLOAD, None),
        (DELETE, "call-node"),
        (DELETE, None),
        (START, "r%C3%A9union%201"),          # the same encoding as the Python client's
        (LIST, None),                         # a connection with recordingCacheSize 3 lists 5 recordings
        (GET, None),                          # rec-list-0: evicted
        (GET, "call-list-4"),
    ]
    assert routing_value("réunion 1") == "r%C3%A9union%201"
    assert all(s.values("authorization") == [f"Bearer {TOKEN}"] for s in seen)
    assert summary == {"recording_id": "rec-1", "opened": "call-node", "downloaded": 2 * CONTENT.decode(),
                       "events": 2, "small_cache_size": 3, "exported_header": ROUTING_HEADER}


def test_node_routing_unit_tests_pass() -> None:
    """clients/node/test/routing.test.js (its own recording server in Node; also part of `npm test`)."""
    node = _require_node()
    proc = subprocess.run([node, "--test", "test/routing.test.js"], capture_output=True, text=True,
                          cwd=NODE_DIR, timeout=120)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert "# fail 0" in proc.stdout and "# skipped 0" in proc.stdout, output
    assert "# pass 0" not in proc.stdout, output
