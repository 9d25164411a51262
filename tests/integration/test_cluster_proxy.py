"""Three callrec nodes behind HAProxy, with PostgreSQL and a Redis Stream (issue 12, points 3, 5 and 6).

Everything is real and on loopback: Debian's postgresql, redis-server and haproxy, started by
`bench.cluster.Cluster` from the shipped deploy/haproxy.cfg (rendered with free ports). Calls are
recorded through the proxy (which routes by `x-callrec-server-call-id`), stopped through a node that
does not own them (which forwards), and watched by a subscriber on a third node; the stored audio is
downloaded through the proxy and decoded. A node killed with `kill -9` mid-recording: its gateway
re-opens the call through the proxy, another node takes the call and the recording over (same id,
chunk indexes continuing, the new tone in the new chunks), and when the dead node returns it stores
the chunk it had open in the gap left for it; a recording no gateway re-opens is ended by another
node with ServerRestarted once the dead node's lease and the reconnect grace have passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bench.cluster import Cluster
from callrec.testing import decode_file, dominant_frequencies, interleave
from callrec.v1 import events_pb2 as epb
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import unique
from tests.integration.audio_recording import Speaker, download, frames_of
from tests.integration.storage_servers import MotoServer
from tests.integration.test_recording_service import wait_state
from tests.integration.test_storage_e2e import moto_env, new_prefix, write_config

# Three nodes, PostgreSQL, Redis and HAProxy per test (30-40 s each): `make test-slow` runs them, CI runs both.
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(moto_server: MotoServer, tmp_path: Path) -> Iterator[Cluster]:
    config = write_config(tmp_path / "callrec.toml", {"archive": moto_server.target(prefix=new_prefix("proxy"))},
                          default="archive")
    cluster = Cluster(nodes=3, root=tmp_path / "cluster", node_args=("--clock", "media", "--config", str(config)),
                      node_env=moto_env(moto_server), lease_s=3.0).start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def owner_of(cluster: Cluster, server_call_id: str) -> int:
    """Index of the node that owns the call (from the shared state)."""
    import psycopg

    assert cluster.postgres is not None
    async with await psycopg.AsyncConnection.connect(cluster.postgres.url) as conn:
        cur = await conn.execute("SELECT node_id FROM call_owners WHERE server_call_id = %s", (server_call_id,))
        row = await cur.fetchone()
    assert row is not None, f"no node owns {server_call_id}"
    return int(row[0].removeprefix("node")) - 1


async def indexed_chunks(cluster: Cluster, recording_id: str) -> list[int]:
    """The chunk indexes the shared chunk index holds for a recording."""
    import psycopg

    assert cluster.postgres is not None
    async with await psycopg.AsyncConnection.connect(cluster.postgres.url) as conn:
        cur = await conn.execute("SELECT chunk_index FROM chunks WHERE recording_id = %s ORDER BY chunk_index",
                                 (recording_id,))
        return [int(row[0]) for row in await cur.fetchall()]


async def record_through_proxy(cluster: Cluster, hz: float, seconds: float = 2.0) -> tuple[str, str]:
    """Open a call through the proxy, start a wav recording of one tone, send it; leave the call open."""
    call_id = unique("px")
    speaker = Speaker("alice", hz, seconds=seconds)
    gw = GatewayConnection(cluster.target, call_id, gateway_id=f"gw-{call_id}")
    await gw.open()
    f = speaker.audio_format
    await gw.join("alice", "Alice", audio=f.encoding.value, sample_rate=f.sample_rate, channels=f.channels)
    async with AsyncCallrecClient(cluster.target) as client:
        rec = await client.start_recording(call_id, content_type="audio", format="wav")
    for frame in interleave(frames_of([speaker])):
        await gw.audio(frame.participant_id, frame.sequence, frame.timestamp_us, frame.data)
    GATEWAYS[call_id] = gw
    return call_id, rec.recording_id


GATEWAYS: dict[str, GatewayConnection] = {}


async def test_calls_recorded_through_the_proxy_stopped_through_other_nodes_seen_by_a_third(
    cluster: Cluster, tmp_path: Path
) -> None:
    watcher = cluster.servers[2].target
    async with AsyncCallrecClient(watcher) as on_third:
        events: list[epb.Event] = []

        async def watch() -> None:
            async for event in on_third.subscribe_events():
                events.append(event)

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        tones = [300.0, 500.0, 700.0, 900.0, 1100.0, 1300.0]
        made = [await record_through_proxy(cluster, hz) for hz in tones]
        owners = [await owner_of(cluster, call_id) for call_id, _ in made]
        assert len(set(owners)) >= 2, f"the proxy spread 6 calls over the nodes by call id, got {owners}"
        for (call_id, recording_id), owner in zip(made, owners, strict=True):
            other = cluster.servers[(owner + 1) % 3].target
            async with AsyncCallrecClient(other) as elsewhere:
                stopped = await elsewhere.stop_recording(recording_id)  # forwarded to the owner
                assert stopped.state in (pb.RECORDING_STATE_STOPPING, pb.RECORDING_STATE_COMPLETED)
            await GATEWAYS.pop(call_id).end()
        async with AsyncCallrecClient(cluster.target) as client:
            for (_, recording_id), hz in zip(made, tones, strict=True):
                done = await wait_state(client, recording_id, pb.RECORDING_STATE_COMPLETED, timeout=60)
                assert done.session_end_reason == "StoppedByRequest"
                (chunk,) = done.chunks
                path = tmp_path / f"{recording_id[:12]}.wav"
                path.write_bytes(await download(client, chunk.content_location))
                audio = decode_file(path)
                assert audio.sample_rate == 16_000 and abs(audio.duration_s - 2.0) < 0.15, audio.duration_s
                assert abs(dominant_frequencies(audio.channel(0), audio.sample_rate, 1)[0] - hz) < 5
        # the subscriber on the third node saw every node's events, in one dense order
        for _ in range(100):
            files = {e.subject.rsplit("/", 1)[-1] for e in events
                     if e.event_type.endswith("RecordingFileStatusUpdated")}
            if files >= {r for _, r in made}:
                break
            await asyncio.sleep(0.1)
        watching.cancel()
        assert files >= {r for _, r in made}
        sequences = [e.sequence for e in events]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


async def reopen_through_proxy(cluster: Cluster, call_id: str, gateway_id: str, within_s: float) -> GatewayConnection:
    """Re-open a call through the proxy as a gateway does after its stream broke: retry until a node takes it."""
    deadline = asyncio.get_running_loop().time() + within_s
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        gw = GatewayConnection(cluster.target, call_id, gateway_id=gateway_id)
        try:
            await gw.open()
            return gw
        except (CallrecError, EOFError) as exc:
            last = exc
            await gw.close()
            await asyncio.sleep(0.25)
    raise AssertionError(f"no node took call {call_id} within {within_s} s: {last}")


async def send_tone(gw: GatewayConnection, hz: float, seconds: float, start_s: float = 0.0) -> None:
    speaker = Speaker("alice", hz, seconds=seconds, start_s=start_s)
    f = speaker.audio_format
    await gw.join("alice", "Alice", audio=f.encoding.value, sample_rate=f.sample_rate, channels=f.channels)
    for frame in interleave(frames_of([speaker])):
        await gw.audio(frame.participant_id, frame.sequence, frame.timestamp_us, frame.data)


def tone_of(path: Path) -> tuple[float, float]:
    """(duration s, dominant frequency of the middle half) of a stored chunk."""
    audio = decode_file(path)
    middle = audio.channel(0)[len(audio.samples) // 4: 3 * len(audio.samples) // 4]
    peaks = dominant_frequencies(middle, audio.sample_rate, 1) if len(middle) else [0.0]
    return audio.duration_s, peaks[0]


def kill_cluster(moto_server: MotoServer, tmp_path: Path, grace_s: float) -> Cluster:
    config = write_config(tmp_path / "callrec.toml", {"archive": moto_server.target(prefix=new_prefix("kill"))},
                          default="archive")
    return Cluster(nodes=3, root=tmp_path / "cluster", lease_s=3.0, node_env=moto_env(moto_server),
                   node_args=("--clock", "media", "--config", str(config), "--reconnect-grace", str(grace_s))).start()


async def test_a_killed_nodes_recording_goes_on_where_its_gateway_reopens_the_call(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    cluster = kill_cluster(moto_server, tmp_path, grace_s=30)
    try:
        call_id = unique("kill")
        gw = GatewayConnection(cluster.target, call_id, gateway_id="gw-kill")
        await gw.open()
        async with AsyncCallrecClient(cluster.target) as client:
            rec = await client.start_recording(call_id, content_type="audio", format="wav",
                                               chunk_max_duration=timedelta(seconds=1))
            await send_tone(gw, 440.0, 3.0)
            owner = await owner_of(cluster, call_id)
            await asyncio.sleep(1.5)  # the first chunks are finished and stored
            before = await indexed_chunks(cluster, rec.recording_id)
            assert before, "chunks of 1 s were finished before the kill"
            cluster.servers[owner].kill()
            await gw.close()
            # the gateway re-opens through the proxy: another node takes the call, and the recording with it
            started = asyncio.get_running_loop().time()
            moved = await reopen_through_proxy(cluster, call_id, "gw-kill", within_s=20)
            took = asyncio.get_running_loop().time() - started
            new_owner = await owner_of(cluster, call_id)
            assert new_owner != owner and took < 10, (owner, new_owner, took)
            print(f"kill -> call re-opened on another node: {took:.1f} s (lease 3 s)")  # for the closing note
            assert [r.recording_id for r in moved.opened.recordings] == [rec.recording_id], moved.opened
            assert (await client.get_recording_state(rec.recording_id)).state == pb.RECORDING_STATE_ACTIVE
            await send_tone(moved, 660.0, 2.0, start_s=3.0)
            await asyncio.sleep(0.5)
            stopped = await client.stop_recording(rec.recording_id)
            assert stopped.recording_id == rec.recording_id
            done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=60)
            assert done.session_end_reason == "StoppedByRequest", done.session_end_reason
            indexes = [c.index for c in done.chunks]
            assert indexes == sorted(set(indexes)), indexes
            tones = {}
            for chunk in done.chunks:
                path = tmp_path / f"chunk-{chunk.index}.wav"
                path.write_bytes(await download(client, chunk.content_location))
                tones[chunk.index] = tone_of(path)
            old = [i for i, (d, hz) in tones.items() if d > 0.3 and abs(hz - 440) < 10]
            new = [i for i, (d, hz) in tones.items() if d > 0.3 and abs(hz - 660) < 10]
            assert old and new and max(old) < min(new), tones
            assert min(new) >= max(before) + 3, f"the taken-over chunks leave room for the dead node's: {indexes}"
            assert sum(d for i, (d, _) in tones.items() if i in new) > 1.5, tones
            # the dead node comes back: it finishes the chunk it had open and stores it in the gap left for it
            cluster.restart_node(owner)
            for _ in range(150):
                late = sorted(set(await indexed_chunks(cluster, rec.recording_id)) - set(indexes))
                if late:
                    break
                await asyncio.sleep(0.1)
            assert late and max(before) < late[0] < min(new), (before, late, indexes)
            # ... and announces it: one more RecordingFileStatusUpdated lists exactly the late chunks (each chunk
            # is announced once in all), and the recording lists them all
            announced: list[list[int]] = []
            stream = client.subscribe_events(recording_id=rec.recording_id, from_oldest=True).__aiter__()
            try:
                async with asyncio.timeout(30):
                    while len(announced) < 2:
                        event = await stream.__anext__()
                        if event.HasField("recording_file_status_updated"):
                            announced.append([c.index for c in event.recording_file_status_updated.chunks])
            finally:
                await stream.aclose()
            assert announced == [indexes, late], announced
            listed = await client.get_recording_state(rec.recording_id)
            assert [c.index for c in listed.chunks] == sorted(indexes + late), listed.chunks
            # once the proxy sees the returned node up, it hashes the call there again: a new stream of the call
            # that lands on it (opened on it directly here, to be sure) is relayed to the owner, which keeps it
            await moved.break_connection()
            again = GatewayConnection(cluster.servers[owner].target, call_id, gateway_id="gw-kill")
            await again.open()
            assert await owner_of(cluster, call_id) == new_owner
            relayed = "relaying a stream to the call's owner" in cluster.servers[owner].log_text()
            await again.end()
            await again.close()
            await moved.close()
            assert relayed, "the returned node relayed the re-opened stream to the owner"
    finally:
        cluster.stop()


async def test_a_killed_nodes_recording_that_no_gateway_reopens_ends_server_restarted(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    cluster = kill_cluster(moto_server, tmp_path, grace_s=2)
    try:
        call_id = unique("gone")
        gw = GatewayConnection(cluster.target, call_id, gateway_id="gw-gone")
        await gw.open()
        async with AsyncCallrecClient(cluster.target) as client:
            rec = await client.start_recording(call_id, content_type="audio", format="wav",
                                               chunk_max_duration=timedelta(seconds=1))
            await send_tone(gw, 440.0, 3.0)
            owner = await owner_of(cluster, call_id)
            await asyncio.sleep(1.5)
            stored = await indexed_chunks(cluster, rec.recording_id)
            assert stored
            cluster.servers[owner].kill()
            await gw.close()
            # nobody re-opens the call and the node stays dead: within lease + grace + a sweep, another node
            # ends the recording, listing what was stored
            done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
            assert done.session_end_reason == "ServerRestarted", done.session_end_reason
            assert [c.index for c in done.chunks][: len(stored)] == stored
    finally:
        cluster.stop()
