"""Control nodes (`callrec serve --role control`, issue 11): a cluster node that takes no calls and answers the
state reads the proxy sends it, on an event loop that no call's media shares.

The cluster test is real and on loopback: PostgreSQL, Redis, one node that takes calls, one control node and
HAProxy rendered from the shipped deploy/haproxy.cfg, whose `x-callrec-node` answer header says which node
answered. GetRecordingState and ListRecordings through the proxy are answered by the control node from the
shared state, the same resource the recording node answers, and a state change made on the recording node
is what the very next read through the proxy sees; every other RPC goes to the call's node. A gateway that
opens its stream on the control node itself is relayed to the node with room, which records it. When the
control node dies, the proxy sends the reads to the nodes again.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bench.cluster import NODE_HEADER, Cluster
from callrec.runtime_priority import thread_ids
from callrec.testing import decode_file, dominant_frequencies, interleave
from callrec.v1 import recording_pb2 as pb
from callrec_client import ROUTING_HEADER, AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, free_port, unique
from tests.integration.audio_recording import Speaker, download, frames_of
from tests.integration.storage_servers import MotoServer
from tests.integration.test_cluster_proxy import owner_of
from tests.integration.test_recording_service import wait_state
from tests.integration.test_storage_e2e import moto_env, new_prefix, write_config

SERVICE = "/callrec.v1.RecordingService"


async def answered(target: str, method: str, request: object, response_type: type, server_call_id: str = ""
                   ) -> tuple[object, str]:
    """(response, the node that answered per the proxy's header) of one RecordingService RPC through `target`."""
    async with grpc.aio.insecure_channel(target) as channel:
        rpc = channel.unary_unary(f"{SERVICE}/{method}", request_serializer=type(request).SerializeToString,
                                  response_deserializer=response_type.FromString)
        call = rpc(request, metadata=((ROUTING_HEADER, server_call_id),) if server_call_id else None, timeout=30)
        response = await call
        return response, dict(await call.initial_metadata()).get(NODE_HEADER, "")


async def send_tone(gw: GatewayConnection, hz: float, seconds: float) -> None:
    speaker = Speaker("alice", hz, seconds=seconds)
    f = speaker.audio_format
    await gw.join("alice", "Alice", audio=f.encoding.value, sample_rate=f.sample_rate, channels=f.channels)
    for frame in interleave(frames_of([speaker])):
        await gw.audio(frame.participant_id, frame.sequence, frame.timestamp_us, frame.data)


@pytest.fixture
def split_cluster(moto_server: MotoServer, tmp_path: Path) -> Iterator[Cluster]:
    config = write_config(tmp_path / "callrec.toml", {"archive": moto_server.target(prefix=new_prefix("control"))},
                          default="archive")
    cluster = Cluster(nodes=1, control_nodes=1, root=tmp_path / "cluster", lease_s=3.0,
                      node_args=("--clock", "media", "--config", str(config)), node_env=moto_env(moto_server)).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
async def test_the_proxy_sends_state_reads_to_the_control_node_which_answers_what_the_recording_node_wrote(
    split_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = split_cluster
    node, control = cluster.servers
    proxy = cluster.target
    call_id = unique("ctl")
    async with (GatewayConnection(proxy, call_id, gateway_id="gw-proxy") as gw,
                AsyncCallrecClient(proxy) as client, AsyncCallrecClient(node.target) as on_node):
        await gw.join("alice", "Alice", audio="pcm16le", sample_rate=16_000, channels=1)
        started, by = await answered(proxy, "StartRecording", pb.StartRecordingRequest(
            server_call_id=call_id, content_type=pb.RECORDING_CONTENT_TYPE_AUDIO, format=pb.RECORDING_FORMAT_WAV,
            channel_type=pb.RECORDING_CHANNEL_TYPE_MIXED), pb.StartRecordingResponse, call_id)
        recording_id = started.recording.recording_id
        assert by == "node1" and await owner_of(cluster, call_id) == 0
        # the read goes to the control node, which answers the resource the recording node answers
        seen, by = await answered(proxy, "GetRecordingState", pb.GetRecordingStateRequest(recording_id=recording_id),
                                  pb.GetRecordingStateResponse, call_id)
        assert by == "control1" and seen.recording.state == pb.RECORDING_STATE_ACTIVE
        direct = await on_node.get_recording_state(recording_id)
        assert seen.recording.SerializeToString(deterministic=True) == direct.SerializeToString(deterministic=True)
        # a state change goes to the call's node; the very next read, on the control node, sees it
        for method, state, intervals in (("PauseRecording", pb.RECORDING_STATE_INACTIVE, 1),
                                         ("ResumeRecording", pb.RECORDING_STATE_ACTIVE, 1)):
            request_type = getattr(pb, f"{method}Request")
            changed, by = await answered(proxy, method, request_type(recording_id=recording_id),
                                         getattr(pb, f"{method}Response"), call_id)
            assert by == "node1" and changed.recording.state == state
            seen, by = await answered(proxy, "GetRecordingState",
                                      pb.GetRecordingStateRequest(recording_id=recording_id),
                                      pb.GetRecordingStateResponse, call_id)
            assert by == "control1" and seen.recording.state == state
            assert len(seen.recording.pause_intervals) == intervals
            assert seen.recording.SerializeToString(deterministic=True) == \
                changed.recording.SerializeToString(deterministic=True)
        assert seen.recording.pause_intervals[0].HasField("duration"), "the resume closed the pause"
        listed, by = await answered(proxy, "ListRecordings", pb.ListRecordingsRequest(server_call_id=call_id),
                                    pb.ListRecordingsResponse, call_id)
        assert by == "control1" and [r.recording_id for r in listed.recordings] == [recording_id]

        # a gateway that opens its call on the control node itself: relayed to the node with room, which owns it
        other_call = unique("ctl")
        async with GatewayConnection(control.target, other_call, gateway_id="gw-control") as stray:
            second = await client.start_recording(other_call, content_type="audio", format="wav")
            assert await owner_of(cluster, other_call) == 0
            await send_tone(gw, 440.0, 2.0)
            await send_tone(stray, 660.0, 2.0)
            # the calls end after their media (in the stream's order): each recording has all of it
            await gw.end()
            await stray.end()
            for rid, hz in ((recording_id, 440.0), (second.recording_id, 660.0)):
                done = await wait_state(client, rid, pb.RECORDING_STATE_COMPLETED, timeout=60)
                (chunk,) = done.chunks
                path = tmp_path / f"{rid[:12]}.wav"
                path.write_bytes(await download(client, chunk.content_location))
                audio = decode_file(path)
                assert abs(audio.duration_s - 2.0) < 0.15, audio.duration_s
                assert abs(dominant_frequencies(audio.channel(0), audio.sample_rate, 1)[0] - hz) < 5
    # the control node recorded nothing: no spool of either recording, nothing it started
    spool = control.data_dir / "spool"
    assert not spool.exists() or not any(spool.iterdir())
    assert node.log_text().count("recording started") == 2 and "recording started" not in control.log_text()

    # the control node dies (kill -9): once the proxy's health check sees it down, the nodes answer the reads
    control.kill()
    read = pb.GetRecordingStateRequest(recording_id=recording_id)
    deadline = asyncio.get_running_loop().time() + 15
    by = "control1"
    while by != "node1" and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.25)
        try:
            seen, by = await answered(proxy, "GetRecordingState", read, pb.GetRecordingStateResponse, call_id)
        except grpc.aio.AioRpcError as exc:  # the moments before the check notices: the dead node's backend
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
    assert by == "node1" and seen.recording.state == pb.RECORDING_STATE_COMPLETED


async def test_a_control_node_alone_refuses_calls_and_says_why(make_server, postgres_url: str) -> None:
    """No node that takes calls: a gateway's `open` on the control node is RESOURCE_EXHAUSTED naming the role;
    the state reads still answer."""
    control = make_server("--database-url", postgres_url, "--node-id", unique("control"), "--role", "control")
    gw = GatewayConnection(control.target, unique("ctl"), gateway_id="gw")
    with pytest.raises(CallrecError) as refused:
        await gw.open()
    await gw.close()
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "is a control node (role = control): it takes no calls" in refused.value.details
    async with AsyncCallrecClient(control.target) as client:
        with pytest.raises(CallrecError) as missing:
            await client.get_recording_state("rec-unknown")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert "cluster node" in control.log_text() and "role=control" in control.log_text()


@pytest.mark.slow
async def test_with_two_control_nodes_a_killed_ones_reads_go_to_the_other_without_an_error(tmp_path: Path) -> None:
    """The proxy balances the reads over the control nodes; one killed (kill -9), each read that meets it is
    re-sent to the other (`retries`, `option redispatch`), so no client sees an error, not even before the
    proxy's health check marks it down."""
    cluster = Cluster(nodes=1, control_nodes=2, root=tmp_path / "cluster", lease_s=3.0).start()
    try:
        read = pb.GetRecordingStateRequest(recording_id="rec-unknown")
        answers = []
        for _ in range(6):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await answered(cluster.target, "GetRecordingState", read, pb.GetRecordingStateResponse)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            answers.append(dict(missing.value.trailing_metadata() or ()).get(NODE_HEADER))
        assert set(answers) == {"control1", "control2"}, answers
        cluster.servers[1].kill()
        for _ in range(30):  # 3 s: past the proxy's check (inter 1s, fall 2)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await answered(cluster.target, "GetRecordingState", read, pb.GetRecordingStateResponse)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND, missing.value
            assert dict(missing.value.trailing_metadata() or ()).get(NODE_HEADER) == "control2"
            await asyncio.sleep(0.1)
    finally:
        cluster.stop()


def scheduling(pid: int) -> list[tuple[int, int]]:
    """(policy, priority) of every thread of `pid`."""
    out = []
    for tid in thread_ids(pid):
        try:
            out.append((os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority))
        except ProcessLookupError:
            continue
    return sorted(out)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def wait_logged(server: ServerProcess, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{server.log_text()[-3000:]}"
        await asyncio.sleep(0.1)


@pytest.mark.skipif(os.geteuid() != 0, reason="real-time scheduling needs root or CAP_SYS_NICE (CI runs as root)")
async def test_a_real_time_control_node_answers_and_a_flood_over_its_cpu_budget_puts_it_back_to_normal(
    make_server, postgres_url: str
) -> None:
    """`--realtime-priority 10`: once serving, every thread of the control node runs under SCHED_RR 10 (its guard
    at 11) and answers; a flood of reads past `--realtime-cpu-budget` puts every thread back to normal priority,
    logged and counted, so a client cannot take the media's cores by asking."""
    port = free_port()
    control = make_server("--database-url", postgres_url, "--node-id", unique("control"), "--role", "control",
                          "--realtime-priority", "10", "--realtime-cpu-budget", "0.15",
                          "--metrics-listen", f"127.0.0.1:{port}")
    await wait_logged(control, "real-time priority")
    await asyncio.sleep(1.5)  # three of the guard's periods: an idle node stays under budget, start-up not counted
    assert "over realtime_cpu_budget" not in control.log_text()
    assert control.proc is not None
    threads = scheduling(control.proc.pid)
    assert threads.count((os.SCHED_RR, 11)) == 1, threads  # the guard
    assert len(threads) > 3 and set(threads) == {(os.SCHED_RR, 10), (os.SCHED_RR, 11)}, threads
    assert metric(port, "callrec_realtime_priority") == 10
    async with AsyncCallrecClient(control.target) as client:
        with pytest.raises(CallrecError) as missing:
            await client.get_recording_state("rec-unknown")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND

        async def flood() -> None:
            while "over realtime_cpu_budget" not in control.log_text():
                with pytest.raises(CallrecError):
                    await client.get_recording_state("rec-unknown")

        await asyncio.wait_for(asyncio.gather(*(flood() for _ in range(8))), 30)
    threads = scheduling(control.proc.pid)
    assert threads.count((os.SCHED_RR, 11)) == 1, threads  # the guard stays, to restore it later
    assert set(threads) - {(os.SCHED_RR, 11)} == {(os.SCHED_OTHER, 0)}, threads
    assert metric(port, "callrec_realtime_demotions_total") == 1
    assert metric(port, "callrec_realtime_priority") == 0
    assert control.terminate() == 0
