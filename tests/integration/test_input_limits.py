"""Every limit on client input, worst cases through a real server: the status code, a message that
names the limit and its setting, rejected frames counted in acks and media_stats, and a healthy
participant on the same stream untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from callrec.v1 import content_pb2 as cpb
from callrec.v1 import media_pb2 as mpb
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, unique

FRAME = b"\x00\x00" * 320  # 20 ms of 16 kHz PCM16LE
OPUS_20MS_TOC = 0xF8  # config 31 (CELT FB 20 ms), mono, code 0: one frame

LIMITS_TOML = """
[limits]
max_calls = 3
max_streams = 4
max_video_recordings = 1
max_buffered_ms_per_participant = 1000
max_frame_ahead_ms = 3000
max_video_pixels = 307200
open_timeout_s = 1.5
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServerProcess]:
    data = tmp_path_factory.mktemp("limits")
    config = data / "callrec.toml"
    config.write_text(LIMITS_TOML)
    proc = ServerProcess(data, "--config", str(config), "--reconnect-grace", "0").start()
    try:
        yield proc  # type: ignore[misc]  # a sync generator fixture
    finally:
        proc.stop()


async def stream_error(gw: GatewayConnection, timeout: float = 10) -> CallrecError:
    with pytest.raises(CallrecError) as info:
        while True:
            await gw.next_response(timeout=timeout)
    return info.value


async def ack_of(gw: GatewayConnection, pid: str, received: int, timeout: float = 10) -> mpb.ParticipantAck:
    """The first ack that counts `received` accepted frames of `pid` (AssertionError after `timeout` s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: mpb.ParticipantAck | None = None
    while True:
        assert asyncio.get_running_loop().time() < deadline, f"no ack with {received} frames of {pid}: {last}"
        ack = (await gw.next_response("ack", timeout=5)).ack
        for p in ack.participants:
            if p.participant_id == pid:
                last = p
                if p.received + sum(p.rejected_by_reason.values()) >= received:
                    return p


def expect_status(err: CallrecError, code: grpc.StatusCode, *fragments: str) -> None:
    assert err.code == code, err
    for fragment in fragments:
        assert fragment in err.details, err.details


@pytest.mark.parametrize(
    "message,fragments",
    [
        (mpb.StreamOpen(server_call_id="c" * 129, gateway_id="g"),
         ("open.server_call_id is 129 bytes", "128 bytes", "[limits] max_id_bytes")),
        (mpb.StreamOpen(server_call_id="c" * 1_000_000, gateway_id="g"), ("[limits] max_id_bytes",)),
        (mpb.StreamOpen(server_call_id="c", gateway_id="é" * 65), ("open.gateway_id is 130 bytes",)),
        (mpb.StreamOpen(server_call_id="c", call_id="x" * 200, gateway_id="g"), ("open.call_id",)),
    ],
)
async def test_ids_in_open_are_bounded(limited, message, fragments) -> None:
    gw = GatewayConnection(limited.target, "unused")
    await gw.open(send_open=False)
    await gw.send(mpb.StreamMediaRequest(open=message))
    err = await stream_error(gw)
    expect_status(err, grpc.StatusCode.INVALID_ARGUMENT, *fragments)
    assert len(err.details) < 400  # the message names the limit; it does not echo the id
    await gw.close()


async def test_join_fields_are_bounded(limited) -> None:
    cases = [
        (mpb.ParticipantJoin(participant_id="p" * 129), "join.participant_id is 129 bytes"),
        (mpb.ParticipantJoin(participant_id="p", display_name="n" * 257), "[limits] max_display_name_bytes"),
        (mpb.ParticipantJoin(participant_id="p", video_format=mpb.VideoFormat(
            encoding=mpb.VIDEO_ENCODING_H264, width=16384, height=16384)), "[limits] max_video_pixels"),
    ]
    for join, fragment in cases:
        async with GatewayConnection(limited.target, unique("call"), gateway_id="gw") as gw:
            await gw.send(mpb.StreamMediaRequest(join=join))
            expect_status(await stream_error(gw), grpc.StatusCode.INVALID_ARGUMENT, fragment)


async def test_a_stream_without_open_is_closed_after_the_open_timeout(limited) -> None:
    gw = GatewayConnection(limited.target, "unused")
    await gw.open(send_open=False)
    started = asyncio.get_running_loop().time()
    err = await stream_error(gw)
    expect_status(err, grpc.StatusCode.INVALID_ARGUMENT, "no `open` within 1.5 s", "[limits] open_timeout_s")
    assert 1.0 <= asyncio.get_running_loop().time() - started < 6
    await gw.close()


async def test_calls_and_streams_are_capped(limited) -> None:
    gws = []
    try:
        for _ in range(3):  # max_calls = 3
            gw = GatewayConnection(limited.target, unique("call"), gateway_id="gw")
            await gw.open()
            gws.append(gw)
        extra = GatewayConnection(limited.target, unique("call"), gateway_id="gw")
        await extra.open(send_open=False)
        await extra.send(mpb.StreamMediaRequest(open=mpb.StreamOpen(server_call_id=unique("c"), gateway_id="g")))
        expect_status(await stream_error(extra), grpc.StatusCode.RESOURCE_EXHAUSTED, "[limits] max_calls")
        await extra.close()
        # a second stream of an open call is not a new call: allowed up to max_streams = 4
        second = GatewayConnection(limited.target, gws[0].server_call_id, gateway_id="gw-2")
        await second.open()
        gws.append(second)
        fifth = GatewayConnection(limited.target, gws[1].server_call_id, gateway_id="gw-3")
        await fifth.open(send_open=False)
        expect_status(await stream_error(fifth), grpc.StatusCode.RESOURCE_EXHAUSTED, "[limits] max_streams")
        await fifth.close()
    finally:
        for gw in gws:
            await gw.end()
    # the slots are free again
    async with GatewayConnection(limited.target, unique("call"), gateway_id="gw") as again:
        assert again.opened is not None


async def test_video_recordings_are_capped(limited) -> None:
    async with AsyncCallrecClient(limited.target) as client, \
            GatewayConnection(limited.target, unique("a"), gateway_id="gw") as a, \
            GatewayConnection(limited.target, unique("b"), gateway_id="gw") as b:
        first = await client.start_recording(a.server_call_id, content_type="audio_video", format="mp4")
        with pytest.raises(CallrecError) as info:
            await client.start_recording(b.server_call_id, content_type="audio_video", format="mp4")
        expect_status(info.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "[limits] max_video_recordings")
        audio = await client.start_recording(b.server_call_id, content_type="audio", format="wav")
        await client.stop_recording(first.recording_id)
        await client.stop_recording(audio.recording_id)


async def test_control_strings_and_lists_are_bounded(limited) -> None:
    async with AsyncCallrecClient(limited.target) as client:
        stub = client.recordings
        cases = [
            (pb.StartRecordingRequest(server_call_id="c" * 129), "server_call_id is 129 bytes"),
            (pb.StartRecordingRequest(server_call_id="c", request_id="r" * 129), "request_id is 129 bytes"),
            (pb.StartRecordingRequest(server_call_id="c", operation_context="o" * 1025),
             "[limits] max_operation_context_bytes"),
            (pb.StartRecordingRequest(server_call_id="c", channel_type=pb.RECORDING_CHANNEL_TYPE_UNMIXED,
                                      audio_channel_participant_ordering=[f"p{i}" for i in range(65)]),
             "audio_channel_participant_ordering has 65 entries"),
            (pb.StartRecordingRequest(server_call_id="c", destination="d" * 5000), "[limits] max_location_bytes"),
        ]
        for request, fragment in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.StartRecording(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
            assert fragment in (info.value.details() or ""), info.value.details()
        for rpc in (stub.GetRecordingState, stub.PauseRecording, stub.StopRecording):
            request_type = {stub.GetRecordingState: pb.GetRecordingStateRequest,
                            stub.PauseRecording: pb.PauseRecordingRequest,
                            stub.StopRecording: pb.StopRecordingRequest}[rpc]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await rpc(request_type(recording_id="x" * 1_000_000))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "[limits] max_id_bytes" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListRecordings(pb.ListRecordingsRequest(page_token="t" * 5000))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for rpc, request in ((client.content.DeleteContent, cpb.DeleteContentRequest(location="l" * 5000)),):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await rpc(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "[limits] max_location_bytes" in (info.value.details() or "")
        with pytest.raises(CallrecError) as download:
            async for _ in client.download("l" * 5000):
                pass
        expect_status(download.value, grpc.StatusCode.INVALID_ARGUMENT, "[limits] max_location_bytes")


def opus_packet(size: int) -> bytes:
    return bytes([OPUS_20MS_TOC]) + b"\x55" * (size - 1)


async def test_bad_frames_are_counted_and_the_healthy_participant_is_untouched(limited) -> None:
    """Worst-case frames next to a healthy participant: each rejected with its reason, counted."""
    async with GatewayConnection(limited.target, unique("call"), gateway_id="gw") as gw:
        await gw.join("good")
        await gw.join("opus", audio="opus", sample_rate=48000)
        await gw.join("cam", audio=None, video="i420", width=64, height=48)
        await gw.join("h264", audio=None, video="h264", width=64, height=48)
        t0 = 1_000_000
        await gw.audio("good", 1, t0, FRAME)
        bad_audio = [
            ("opus", 1, t0, opus_packet(1276)),  # > 1275 bytes for 20 ms
            ("opus", 2, t0 + 20_000, opus_packet(70_000)),
            ("good", 2, t0 + 20_000, b"\x00\x00" * 80),  # 5 ms: shorter than 10 ms
            ("good", 3, t0 + 40_000, b"\x00\x00" * 1000),  # 62.5 ms: longer than 60 ms
            ("good", 4, t0 + 60_000, b"\x00" * 641),  # not whole samples
            ("good", 5, t0 + 10**12, FRAME),  # far in the future
        ]
        for pid, seq, ts, data in bad_audio:
            await gw.audio(pid, seq, ts, data)
        await gw.video("cam", 1, t0, b"\x00" * 100, width=64, height=48)  # I420 must be 4608 bytes
        await gw.video("cam", 2, t0, b"\x00" * (64 * 48 * 3 // 2), width=16384, height=16384)
        await gw.video("h264", 1, t0, b"\x00\x00\x01" + b"\x65" * 70_000, width=64, height=48)
        for seq in range(6, 46):  # then 0.8 s of good audio (the buffer holds 1 s: max_buffered_ms)
            await gw.audio("good", seq, t0 + (seq - 5) * 20_000, FRAME)
        good = await ack_of(gw, "good", 45)  # 1 + 4 bad + 40 good frames sent
        assert good.received == 41
        rejected = {r.participant_id: r for r in (await gw.next_response("ack", timeout=5)).ack.participants}
    assert dict(good.rejected_by_reason) == {"decode_error": 3, "early": 1}, good
    assert dict(rejected["opus"].rejected_by_reason) == {"decode_error": 2}
    assert dict(rejected["cam"].rejected_by_reason) == {"bad_length": 1, "bad_dimensions": 1}
    assert dict(rejected["h264"].rejected_by_reason) == {"frame_too_large": 1}


async def test_buffered_media_per_participant_is_bounded(limited) -> None:
    """A participant that sends seconds ahead fills only max_buffered_ms_per_participant (1 s)."""
    async with GatewayConnection(limited.target, unique("call"), gateway_id="gw") as gw:
        await gw.join("eager")
        t0 = 1_000_000
        for seq in range(1, 126):  # 2.5 s at once, all within max_frame_ahead_ms (3 s)
            await gw.audio("eager", seq, t0 + seq * 20_000, FRAME)
        ack = await ack_of(gw, "eager", 125)
    full = ack.rejected_by_reason["buffer_full"]
    assert 55 <= full <= 75, dict(ack.rejected_by_reason)  # ~1.5 s of the 2.5 s is over the 1 s bound
    assert ack.received + full == 125 and ack.received >= 50


def test_limit_settings_are_validated(tmp_path: Path) -> None:
    from callrec.config import ConfigError, load_config

    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_id_bytes = 0\n")
    with pytest.raises(ConfigError, match="max_id_bytes"):
        load_config(config_file=config)
    config.write_text("[limits]\nmax_ids = 3\n")
    with pytest.raises(ConfigError, match="unknown \\[limits\\] keys"):
        load_config(config_file=config)
