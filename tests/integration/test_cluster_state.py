"""Two `callrec serve` nodes on one PostgreSQL (`database_url`, cluster mode; SPEC §8, issue 12).

Both nodes are real server processes with data directories of their own, sharing a real PostgreSQL
started by the fixture and one S3 store (moto). A call recorded on node A is visible on node B: its
state, its chunks (downloaded through B and decoded), the listing, and StartRecording's request_id.
Control RPCs that land on the node that does not record the call are forwarded to the one that does
(never twice); a call has one owner node until it ends there or that node dies; with a Redis event
log, every node serves the whole cluster's events in one order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from callrec.v1 import events_pb2 as epb
from callrec.v1 import recording_pb2 as pb
from callrec.v1 import uploads_pb2
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.client import start_request
from callrec_client.gateway import GatewayConnection
from tests.harness import unique
from tests.integration.audio_recording import download
from tests.integration.storage_servers import MotoServer
from tests.integration.test_recording_service import wait_state
from tests.integration.test_storage_e2e import (
    Bucket,
    check_stored,
    moto_env,
    new_prefix,
    server_args,
    stream_call,
    write_config,
)
from tests.redis_service import start_redis


def cluster_config(path: Path, moto: MotoServer, prefix: str, database_url: str) -> Path:
    """The storage config of the e2e tests, plus `[server] database_url`."""
    write_config(path, {"archive": moto.target(prefix=prefix)}, default="archive")
    with path.open("a") as f:
        f.write(f'\n[server]\ndatabase_url = "{database_url}"\n')
    return path


async def test_a_recording_made_on_one_node_is_served_by_another(
    make_server, moto_server: MotoServer, postgres_url: str, tmp_path: Path, validate_json
) -> None:
    prefix = new_prefix("cluster")
    config = cluster_config(tmp_path / "callrec.toml", moto_server, prefix, postgres_url)
    node_a = make_server(*server_args(config), data_dir=tmp_path / "node-a", env=moto_env(moto_server))
    node_b = make_server(*server_args(config), data_dir=tmp_path / "node-b", env=moto_env(moto_server))

    started = await stream_call(node_a.target)
    async with AsyncCallrecClient(node_a.target) as on_a, AsyncCallrecClient(node_b.target) as on_b:
        done = await wait_state(on_a, started.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
        # B answers GetRecordingState from PostgreSQL (the row A wrote, A's uploads): the resource A answers
        seen_by_b = await on_b.get_recording_state(started.recording_id)
        assert done.upload_status.stored_files == 4
        assert seen_by_b.SerializeToString(deterministic=True) == done.SerializeToString(deterministic=True)
        # the chunks: stored once, listed by B, downloaded through B byte for byte and decoded (440 Hz)
        await check_stored(on_b, Bucket("s3", moto_server), prefix, seen_by_b, tmp_path, validate_json)
        listed = await on_b.list_recordings(server_call_id=started.server_call_id)
        assert [r.recording_id for r in listed.recordings] == [started.recording_id]
        # its uploads were made by A (its spool has the files), and every node's are in PostgreSQL
        via_b = (await on_b.list_uploads(recording_id=started.recording_id)).uploads
        on_its_node = (await on_a.list_uploads(recording_id=started.recording_id)).uploads
        assert len(via_b) == 4 and list(via_b) == list(on_its_node)
        assert {u.state for u in via_b} == {uploads_pb2.UPLOAD_STATE_STORED}
        assert list((await on_b.list_uploads()).uploads) == list(on_its_node), "without a recording: the cluster's"
    # nothing of the recording is in B's own SQLite: B read it from PostgreSQL
    assert not (tmp_path / "node-b" / "spool" / started.recording_id).exists()


async def test_failed_uploads_are_listed_by_every_node_and_retried_on_the_node_whose_spool_holds_them(
    make_server, moto_server: MotoServer, postgres_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "callrec.toml"
    write_config(config, {"archive": moto_server.target(prefix=new_prefix("denied"),
                                                        secret_access_key="not-the-secret")}, default="archive")
    with config.open("a") as f:
        f.write(f'\n[server]\ndatabase_url = "{postgres_url}"\n')
    node_a = make_server(*server_args(config, "--node-id", "a"), data_dir=tmp_path / "a", env=moto_env(moto_server))
    node_b = make_server(*server_args(config, "--node-id", "b"), data_dir=tmp_path / "b", env=moto_env(moto_server))
    started = await stream_call(node_a.target)
    async with AsyncCallrecClient(node_a.target) as on_a, AsyncCallrecClient(node_b.target) as on_b:
        await wait_state(on_a, started.recording_id, pb.RECORDING_STATE_FAILED, timeout=30)
        listed = (await on_b.list_uploads(recording_id=started.recording_id)).uploads
        assert len(listed) == 4 and {u.node_id for u in listed} == {"a"}, listed
        assert {u.state for u in listed} == {uploads_pb2.UPLOAD_STATE_FAILED}
        assert all(u.spool_path.startswith(str(tmp_path / "a")) for u in listed)
        # B holds none of the files: the retry goes to A, whose spool does
        retried = await on_b.retry_uploads(started.recording_id)
        assert sorted(u.key for u in retried.uploads) == sorted(u.key for u in listed) and not retried.missing_uploads
    assert "uploads re-queued" in node_a.log_text() and "uploads re-queued" not in node_b.log_text()


async def test_request_ids_and_control_rpcs_across_nodes(
    make_server, moto_server: MotoServer, postgres_url: str, tmp_path: Path
) -> None:
    config = cluster_config(tmp_path / "callrec.toml", moto_server, new_prefix("cluster"), postgres_url)
    node_a = make_server(*server_args(config, "--clock", "realtime"), data_dir=tmp_path / "node-a",
                         env=moto_env(moto_server))
    node_b = make_server(*server_args(config), data_dir=tmp_path / "node-b", env=moto_env(moto_server))
    call_id = unique("cl")
    request = start_request(call_id, content_type="audio", format="wav", request_id=unique("req"),
                            chunk_max_duration=timedelta(seconds=60))
    async with (AsyncCallrecClient(node_a.target) as on_a, AsyncCallrecClient(node_b.target) as on_b,
                GatewayConnection(node_a.target, call_id, gateway_id="gw") as gw):
        await gw.join("alice", "Alice", audio="pcm16le", sample_rate=16_000, channels=1)
        rec = (await on_a.recordings.StartRecording(request, timeout=30)).recording
        # the same request_id on the other node: the same recording, not a second one (idempotency is shared)
        again = (await on_b.recordings.StartRecording(request, timeout=30)).recording
        assert again.recording_id == rec.recording_id
        # control RPCs that land on B are forwarded to A, which records the call (and answers them)
        assert (await on_b.pause_recording(rec.recording_id)).state == pb.RECORDING_STATE_INACTIVE
        assert (await on_a.get_recording_state(rec.recording_id)).state == pb.RECORDING_STATE_INACTIVE
        # ... and B, answering from PostgreSQL, reads the pause A wrote before it answered
        assert (await on_b.get_recording_state(rec.recording_id)).state == pb.RECORDING_STATE_INACTIVE
        assert (await on_b.resume_recording(rec.recording_id)).state == pb.RECORDING_STATE_ACTIVE
        # a request that was already forwarded once is answered where it lands, never bounced again
        bounced = on_b.recordings.PauseRecording(
            pb.PauseRecordingRequest(recording_id=rec.recording_id), timeout=10,
            metadata=(("x-callrec-forwarded-by", "node-x"),))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bounced
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = caught.value.details() or ""
        assert "recorded by another node" in details and call_id in details
        # StartRecording of A's call through B: forwarded too, so A answers that the call already records
        other = start_request(call_id, content_type="audio", format="mp3")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await on_b.recordings.StartRecording(other, timeout=30)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        stopped = await on_b.stop_recording(rec.recording_id)
        assert stopped.state in (pb.RECORDING_STATE_STOPPING, pb.RECORDING_STATE_COMPLETED)
        await gw.end()
        done = await wait_state(on_b, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
        assert done.session_end_reason == "StoppedByRequest", done


async def open_when_free(target: str, call_id: str, gateway_id: str, within_s: float) -> GatewayConnection:
    """Open the call on `target`, retrying while another node still owns it (at most `within_s`)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        gw = GatewayConnection(target, call_id, gateway_id=gateway_id)
        try:
            await gw.open()
            return gw
        except CallrecError as exc:
            await gw.close()
            # still owned elsewhere: refused (a forwarded open) or relayed to an owner that is dead but whose
            # lease has not lapsed yet (UNAVAILABLE)
            assert exc.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE), exc
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow  # ~9 s, two server processes racing (make test-slow)
async def test_a_call_has_one_owner_node_until_it_ends_there_or_that_node_dies(
    make_server, moto_server: MotoServer, postgres_url: str, tmp_path: Path
) -> None:
    config = cluster_config(tmp_path / "callrec.toml", moto_server, new_prefix("cluster"), postgres_url)
    node_a = make_server(*server_args(config, "--node-id", "node-a", "--node-lease", "2"),
                         data_dir=tmp_path / "node-a", env=moto_env(moto_server))
    node_b = make_server(*server_args(config, "--node-id", "node-b", "--node-lease", "2"),
                         data_dir=tmp_path / "node-b", env=moto_env(moto_server))
    call_id = unique("own")
    on_a = GatewayConnection(node_a.target, call_id, gateway_id="gw-1")
    await on_a.open()
    # another gateway (or a misrouted reconnect) opening the call on the other node: B relays the stream to A
    relayed = GatewayConnection(node_b.target, call_id, gateway_id="gw-2")
    await relayed.open()
    await relayed.join("bob", "Bob", audio="pcm16le", sample_rate=16_000, channels=1)
    for seq in range(50):
        await relayed.audio("bob", seq, 1_000_000 + seq * 20_000, b"\x00\x01" * 320)
    ack = await relayed.next_response("ack", timeout=10)
    while not any(p.participant_id == "bob" and p.last_audio_sequence == 49 for p in ack.ack.participants):
        ack = await relayed.next_response("ack", timeout=10)
    assert "relaying a stream to the call's owner" in node_b.log_text()
    await relayed.close()
    # a stream already relayed once is never relayed again: B itself refuses it, naming the owner
    refused = GatewayConnection(node_b.target, call_id, gateway_id="gw-3")
    refused.metadata = (*refused.metadata, ("x-callrec-forwarded-by", "node-x"))
    with pytest.raises(CallrecError) as caught:
        await refused.open()
    await refused.close()
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"node 'node-a' ({node_a.target})" in caught.value.details
    assert "x-callrec-server-call-id" in caught.value.details
    # the owner itself takes the gateway's reconnect after a broken stream
    await on_a.break_connection()
    again_on_a = GatewayConnection(node_a.target, call_id, gateway_id="gw-1")
    await again_on_a.open()
    # the call ends on node A: it is nobody's, and node B may open it (a new call of the same id)
    await again_on_a.end()
    await again_on_a.close()
    await on_a.close()
    on_b = await open_when_free(node_b.target, call_id, "gw-2", within_s=10)
    # node B dies (kill -9): its lease lapses within 2 s, then the gateway re-opens the call on node A
    node_b.kill()
    started = asyncio.get_running_loop().time()
    back_on_a = await open_when_free(node_a.target, call_id, "gw-2", within_s=10)
    took = asyncio.get_running_loop().time() - started
    assert took < 6, f"the dead node's call was free only after {took:.1f} s (lease 2 s)"
    await back_on_a.end()
    await back_on_a.close()
    await on_b.close()


async def collect_events(client: AsyncCallrecClient, until: Callable[[list[epb.Event]], bool], timeout: float = 30,
                         **filters: object) -> list[epb.Event]:
    """Events of a subscription until `until(events)` holds."""
    out: list[epb.Event] = []
    stream = client.subscribe_events(**filters).__aiter__()
    try:
        async with asyncio.timeout(timeout):
            while not until(out):
                out.append(await stream.__anext__())
    finally:
        await stream.aclose()
    return out


def recording_of(event: epb.Event) -> str:
    """The recording id at the end of the event's subject (`.../recordingId/{id}`)."""
    return event.subject.rsplit("/", 1)[-1]


def files_of(*recording_ids: str) -> Callable[[list[epb.Event]], bool]:
    """True once a RecordingFileStatusUpdated of each recording is among the events."""
    def done(events: list[epb.Event]) -> bool:
        seen = {recording_of(e) for e in events if e.event_type.endswith("RecordingFileStatusUpdated")}
        return set(recording_ids) <= seen
    return done


async def test_every_node_serves_the_whole_clusters_events_in_one_order(
    make_server, moto_server: MotoServer, postgres_url: str, tmp_path: Path
) -> None:
    redis = start_redis(tmp_path / "redis")
    try:
        config = cluster_config(tmp_path / "callrec.toml", moto_server, new_prefix("cluster"), postgres_url)
        with config.open("a") as f:
            f.write(f'events_url = "{redis.url}"\n')
        node_a = make_server(*server_args(config), data_dir=tmp_path / "node-a", env=moto_env(moto_server))
        node_b = make_server(*server_args(config), data_dir=tmp_path / "node-b", env=moto_env(moto_server))
        async with AsyncCallrecClient(node_a.target) as on_a, AsyncCallrecClient(node_b.target) as on_b:
            live_on_b = asyncio.create_task(collect_events(on_b, lambda evs: len(evs) >= 1, timeout=60))
            await asyncio.sleep(0.5)  # subscribed before anything happens
            rec_a, rec_b = await asyncio.gather(stream_call(node_a.target), stream_call(node_b.target))
            both = files_of(rec_a.recording_id, rec_b.recording_id)
            everything = await collect_events(on_a, both, from_oldest=True)
            # one order for the whole cluster: dense sequences from 1, both nodes' recordings interleaved
            assert [e.sequence for e in everything] == list(range(1, len(everything) + 1))
            for rec in (rec_a, rec_b):
                mine = [e for e in everything if recording_of(e) == rec.recording_id]
                assert [e.event_type.rsplit(".", 1)[-1] for e in mine] == [
                    "RecordingStateChanged", "RecordingStateChanged", "RecordingFileStatusUpdated"]
            # the same log through the other node, and a resume there after any sequence: no gap, no repeat
            same_on_b = await collect_events(on_b, both, from_oldest=True)
            assert [(e.sequence, e.id) for e in same_on_b] == [(e.sequence, e.id) for e in everything]
            middle = everything[len(everything) // 2].sequence
            resumed = await collect_events(on_b, lambda evs: bool(evs) and evs[-1].sequence == everything[-1].sequence,
                                           after_sequence=middle)
            assert [e.id for e in resumed] == [e.id for e in everything if e.sequence > middle]
            first_live = (await live_on_b)[0]
            assert first_live.sequence == 1 and first_live.id == everything[0].id
    finally:
        redis.stop()


async def test_a_full_node_refuses_new_calls_and_advertises_its_load(
    make_server, moto_server: MotoServer, postgres_url: str, tmp_path: Path
) -> None:
    import psycopg

    config = cluster_config(tmp_path / "callrec.toml", moto_server, new_prefix("cluster"), postgres_url)
    node = make_server(*server_args(config, "--node-id", "small", "--node-lease", "1.5",
                                    "--capacity-audio-participants", "4", "--admission-ceiling", "0.5"),
                       data_dir=tmp_path / "small", env=moto_env(moto_server))
    first = GatewayConnection(node.target, unique("full"), gateway_id="gw-1")
    await first.open()
    for pid in ("p1", "p2"):
        await first.join(pid, pid, audio="pcm16le", sample_rate=16_000, channels=1)
    await asyncio.sleep(0.3)
    # 2 of 4 participants = 50 %: the ceiling; a new call is refused with the figures and the setting
    refused_call = unique("full")
    second = GatewayConnection(node.target, refused_call, gateway_id="gw-2")
    with pytest.raises(CallrecError) as caught:
        await second.open()
    await second.close()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    for fragment in ("node 'small' is full", "2 audio participants of 4", "admission_ceiling"):
        assert fragment in caught.value.details, caught.value.details
    # a refused open gives its claim back: the call stays free for another node
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        owners = await (await conn.execute("SELECT node_id FROM call_owners WHERE server_call_id = %s",
                                           (refused_call,))).fetchall()
    assert owners == [], owners
    # the admitted call still grows to the node's full capacity, not past it
    for pid in ("p3", "p4"):
        await first.join(pid, pid, audio="pcm16le", sample_rate=16_000, channels=1)
    await first.join("p5", "p5", audio="pcm16le", sample_rate=16_000, channels=1)
    with pytest.raises(CallrecError) as caught:
        await first.next_response(timeout=10)
        await first.next_response(timeout=10)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "capacity_audio_participants" in \
        caught.value.details
    # the node advertises its load with its heartbeat (1.0 = all it keeps at real time)
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        for _ in range(50):
            row = await (await conn.execute("SELECT load FROM nodes WHERE node_id = 'small'")).fetchone()
            if row and row[0] >= 0.999:  # 4 of 4 participants, at the next heartbeat (every 0.5 s)
                break
            await asyncio.sleep(0.1)
    assert row is not None and row[0] == pytest.approx(1.0), row
    await first.close()


async def test_a_new_call_on_a_full_node_goes_to_a_node_with_room(
    make_server, postgres_url: str, tmp_path: Path
) -> None:
    """The proxy hashes calls without weighing them: a full node relays a new call to the least loaded node
    under the ceiling, which owns and records it; only when every node is full is the open refused."""
    import psycopg

    args = server_args(None, "--database-url", postgres_url, "--node-lease", "1.5")
    small = make_server(*args, "--node-id", "small", "--capacity-audio-participants", "4",
                        "--admission-ceiling", "0.5", data_dir=tmp_path / "small")
    make_server(*args, "--node-id", "roomy", "--capacity-audio-participants", "100", data_dir=tmp_path / "roomy")
    first = GatewayConnection(small.target, unique("busy"), gateway_id="gw-1")
    await first.open()
    for pid in ("p1", "p2"):  # 2 of 4: small is at its ceiling
        await first.join(pid, pid, audio="pcm16le", sample_rate=16_000, channels=1)
    await asyncio.sleep(0.3)
    spilled = unique("spill")
    async with GatewayConnection(small.target, spilled, gateway_id="gw-2") as second, \
            AsyncCallrecClient(small.target) as client:
        await second.join("alice", "Alice", audio="pcm16le", sample_rate=16_000, channels=1)
        rec = await client.start_recording(spilled, content_type="audio", format="wav")
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            owner = await (await conn.execute("SELECT node_id FROM call_owners WHERE server_call_id = %s",
                                              (spilled,))).fetchone()
            recorded_by = await (await conn.execute("SELECT node_id FROM recordings WHERE recording_id = %s",
                                                    (rec.recording_id,))).fetchone()
        assert owner == ("roomy",) and recorded_by == ("roomy",), (owner, recorded_by)
        for i in range(25):
            await second.audio("alice", i + 1, 1_000_000 + i * 20_000, b"\x01\x00" * 320)
        await second.end()
    async with AsyncCallrecClient(small.target) as client:
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
    assert len(done.chunks) == 1
    await first.close()


async def test_a_file_in_a_nodes_local_store_is_downloaded_and_deleted_through_another_node(
    make_server, postgres_url: str, tmp_path: Path
) -> None:
    """The built-in local store is on each node's own disk: the other node forwards to the one holding it."""
    args = server_args(None, "--database-url", postgres_url)
    node_a = make_server(*args, "--node-id", "disk-a", data_dir=tmp_path / "node-a")
    node_b = make_server(*args, "--node-id", "disk-b", data_dir=tmp_path / "node-b")
    started = await stream_call(node_a.target)
    async with AsyncCallrecClient(node_a.target) as on_a, AsyncCallrecClient(node_b.target) as on_b:
        done = await wait_state(on_a, started.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
        assert len(done.chunks) == 2 and done.chunks[0].content_location.startswith("file:"), done.chunks[0]
        for chunk in done.chunks:
            for location in (chunk.content_location, chunk.metadata_location):
                assert await download(on_b, location) == await download(on_a, location)
        assert not any((tmp_path / "node-b").rglob("*.wav")), "node B never had the files: it forwarded"
        # a range through the other node, then the delete through it
        part = await download(on_b, done.chunks[0].content_location, offset=100, length=50)
        assert part == (await download(on_a, done.chunks[0].content_location))[100:150]
        deleted = await on_b.delete(done.chunks[0].delete_location)
        assert sorted(deleted.deleted_locations) == sorted([done.chunks[0].content_location,
                                                            done.chunks[0].metadata_location])
        with pytest.raises(CallrecError) as caught:
            await download(on_a, done.chunks[0].content_location)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
