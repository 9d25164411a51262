"""MediaService handshake through a real server: open/join/leave/end, acks, warnings,
recording_state pushes, call end and the reconnect grace period."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest

from callrec.v1 import media_pb2 as mpb
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, unique
from tests.integration.test_recording_service import wait_state

FRAME = b"\x00\x00" * 320  # 20 ms of 16 kHz PCM16LE silence


@pytest.fixture
async def client(server: ServerProcess):
    async with AsyncCallrecClient(server.target) as c:
        yield c


async def stream_error(gw: GatewayConnection) -> CallrecError:
    with pytest.raises(CallrecError) as info:
        while True:
            await gw.next_response(timeout=10)
    return info.value


async def test_opened_carries_connection_id_and_recordings(server, client):
    call_id = unique("call")
    async with GatewayConnection(server.target, call_id, gateway_id="gw-a", call_id="corr-1") as gw:
        assert gw.opened is not None
        assert gw.opened.server_call_id == call_id and gw.opened.call_connection_id
        assert list(gw.opened.recordings) == []
        rec = await client.start_recording(call_id, content_type="audio", format="wav")
        assert rec.call_id == "corr-1"
        update = await gw.next_response("recording_state")
        assert update.recording_state.recording_id == rec.recording_id
        assert update.recording_state.state == pb.RECORDING_STATE_ACTIVE
        await client.pause_recording(rec.recording_id)
        update = await gw.next_response("recording_state")
        assert update.recording_state.state == pb.RECORDING_STATE_INACTIVE
        async with GatewayConnection(server.target, call_id, gateway_id="gw-b") as second:
            assert second.opened is not None
            assert [r.recording_id for r in second.opened.recordings] == [rec.recording_id]
            assert second.opened.call_connection_id != gw.opened.call_connection_id
            await second.end()
        await client.stop_recording(rec.recording_id)
        await gw.end()


async def test_acks_count_frames_and_bad_frames_only_warn(server):
    async with GatewayConnection(server.target, unique("call"), gateway_id="gw") as gw:
        await gw.join("alice", "Alice")
        await gw.join("bob", "Bob")
        for seq in range(1, 51):
            await gw.audio("alice", seq, seq * 20_000, FRAME)
        await gw.audio("bob", 1, 20_000, b"")  # empty: rejected, the stream goes on
        warning = await gw.next_response("warning")
        assert warning.warning.participant_id == "bob" and warning.warning.code == "empty_frame"
        await gw.audio("bob", 2, 40_000, FRAME)
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            ack = (await gw.next_response("ack", timeout=3)).ack
            by_id = {p.participant_id: p for p in ack.participants}
            if by_id.get("alice") and by_id["alice"].received == 50 and by_id["bob"].received == 1:
                break
            assert asyncio.get_running_loop().time() < deadline, ack
        assert by_id["alice"].last_audio_sequence == 50
        assert dict(by_id["bob"].rejected_by_reason) == {"empty_frame": 1}
        await gw.end()


async def test_ack_comes_at_least_once_a_second(server):
    async with GatewayConnection(server.target, unique("call"), gateway_id="gw") as gw:
        await gw.join("alice")
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(3):
            await gw.next_response("ack", timeout=2.5)
            times.append(loop.time())
        assert all(b - a <= 1.5 for a, b in itertools.pairwise(times))
        await gw.end()


@pytest.mark.parametrize(
    "first,code,fragment",
    [
        (mpb.StreamMediaRequest(join=mpb.ParticipantJoin(participant_id="p")), grpc.StatusCode.INVALID_ARGUMENT,
         "expected `open` as the first message of the stream, got `join`"),
        (mpb.StreamMediaRequest(audio=mpb.AudioFrame(participant_id="p", data=b"x")),
         grpc.StatusCode.INVALID_ARGUMENT, "got `audio`"),
        (mpb.StreamMediaRequest(open=mpb.StreamOpen(gateway_id="g")), grpc.StatusCode.INVALID_ARGUMENT,
         "open.server_call_id is required"),
        (mpb.StreamMediaRequest(open=mpb.StreamOpen(server_call_id="c")), grpc.StatusCode.INVALID_ARGUMENT,
         "open.gateway_id is required"),
        (mpb.StreamMediaRequest(), grpc.StatusCode.INVALID_ARGUMENT, "empty StreamMediaRequest"),
    ],
)
async def test_first_message_must_be_a_valid_open(server, first, code, fragment):
    gw = GatewayConnection(server.target, "unused")
    await gw.open(send_open=False)
    await gw.send(first)
    err = await stream_error(gw)
    assert err.code == code and fragment in err.details, err
    await gw.close()


@pytest.mark.parametrize(
    "message,code,fragment",
    [
        (mpb.StreamMediaRequest(open=mpb.StreamOpen(server_call_id="x", gateway_id="g")),
         grpc.StatusCode.INVALID_ARGUMENT, "`open` was already sent"),
        (mpb.StreamMediaRequest(audio=mpb.AudioFrame(participant_id="ghost", sequence=1, data=FRAME)),
         grpc.StatusCode.FAILED_PRECONDITION, "participant 'ghost', which has not joined"),
        (mpb.StreamMediaRequest(leave=mpb.ParticipantLeave(participant_id="ghost")),
         grpc.StatusCode.FAILED_PRECONDITION, "send `join` for it first"),
        (mpb.StreamMediaRequest(join=mpb.ParticipantJoin(participant_id="")), grpc.StatusCode.INVALID_ARGUMENT,
         "join.participant_id is required"),
        (mpb.StreamMediaRequest(join=mpb.ParticipantJoin(
            participant_id="p", audio_format=mpb.AudioFormat(encoding=77))), grpc.StatusCode.INVALID_ARGUMENT,
         "join.audio_format.encoding: unknown value 77"),
        (mpb.StreamMediaRequest(join=mpb.ParticipantJoin(
            participant_id="p", audio_format=mpb.AudioFormat(encoding=mpb.AUDIO_ENCODING_PCM16LE,
                                                             sample_rate=96000))),
         grpc.StatusCode.INVALID_ARGUMENT, "8000-48000 Hz"),
        (mpb.StreamMediaRequest(join=mpb.ParticipantJoin(
            participant_id="p", video_format=mpb.VideoFormat(encoding=0))), grpc.StatusCode.INVALID_ARGUMENT,
         "join.video_format.encoding"),
    ],
)
async def test_protocol_violations_end_the_stream_with_a_clear_status(server, message, code, fragment):
    gw = GatewayConnection(server.target, unique("call"), gateway_id="gw")
    await gw.open()
    await gw.send(message)
    err = await stream_error(gw)
    assert err.code == code and fragment in err.details, err
    await gw.close()


async def test_one_bad_stream_does_not_harm_another_call(server):
    async with GatewayConnection(server.target, unique("good"), gateway_id="gw") as good:
        await good.join("alice")
        bad = GatewayConnection(server.target, unique("bad"), gateway_id="gw")
        await bad.open()
        await bad.audio("ghost", 1, 0, FRAME)
        assert (await stream_error(bad)).code == grpc.StatusCode.FAILED_PRECONDITION
        await bad.close()
        for seq in range(1, 11):
            await good.audio("alice", seq, seq * 20_000, FRAME)
        while True:
            ack = (await good.next_response("ack", timeout=3)).ack
            if ack.participants and ack.participants[0].received == 10:
                break
        await good.end()


async def test_call_ends_when_every_gateway_ended(server, client):
    call_id = unique("call")
    a = GatewayConnection(server.target, call_id, gateway_id="gw-a")
    b = GatewayConnection(server.target, call_id, gateway_id="gw-b")
    await a.open()
    await b.open()
    rec = await client.start_recording(call_id, content_type="audio", format="wav")
    await a.end()
    await asyncio.sleep(0.3)
    assert (await client.get_recording_state(rec.recording_id)).state == pb.RECORDING_STATE_ACTIVE
    await b.end()
    done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED)
    assert done.session_end_reason == "CallEnded"
    with pytest.raises(CallrecError) as info:
        await client.start_recording(call_id)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


async def test_broken_stream_gets_the_grace_period_then_call_ends(server, client):
    call_id = unique("call")
    gw = GatewayConnection(server.target, call_id, gateway_id="gw")
    await gw.open()
    rec = await client.start_recording(call_id, content_type="audio", format="wav")
    await gw.break_connection()
    await gw.close()
    await asyncio.sleep(0.8)  # the session server's grace is 2 s
    assert (await client.get_recording_state(rec.recording_id)).state == pb.RECORDING_STATE_ACTIVE
    done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=10)
    assert done.session_end_reason == "CallEnded"


async def test_reconnect_within_grace_keeps_the_recording(server, client):
    call_id = unique("call")
    gw = GatewayConnection(server.target, call_id, gateway_id="gw")
    await gw.open()
    rec = await client.start_recording(call_id, content_type="audio", format="wav")
    await gw.break_connection()
    await gw.close()
    await asyncio.sleep(0.5)
    async with GatewayConnection(server.target, call_id, gateway_id="gw") as again:
        assert [r.recording_id for r in again.opened.recordings] == [rec.recording_id]
        await asyncio.sleep(2.5)  # past the grace period
        assert (await client.get_recording_state(rec.recording_id)).state == pb.RECORDING_STATE_ACTIVE
        await again.end()
    done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED)
    assert done.session_end_reason == "CallEnded"


async def test_participant_limit_is_resource_exhausted(make_server, tmp_path):
    config = tmp_path / "callrec.toml"
    config.write_text("[limits]\nmax_participants_per_call = 2\n")
    srv = make_server("--clock", "media", "--config", str(config))
    gw = GatewayConnection(srv.target, "c", gateway_id="gw")
    await gw.open()
    await gw.join("p1")
    await gw.join("p2")
    await gw.join("p3")
    err = await stream_error(gw)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_participants_per_call" in err.details
    await gw.close()

