"""RecordingService through a real server: success paths, the ACS matrix, every error code."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import grpc
import pytest

from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, unique

VALID = {("mixed", "audio_video", "mp4"), ("mixed", "audio", "mp3"), ("mixed", "audio", "wav"),
         ("unmixed", "audio", "wav")}
ALL = set(itertools.product(("mixed", "unmixed"), ("audio", "audio_video"), ("wav", "mp3", "mp4")))


async def wait_state(client: AsyncCallrecClient, recording_id: str, state: int, timeout: float = 10) -> pb.Recording:
    """Poll until the recording reaches `state`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rec = await client.get_recording_state(recording_id)
        if rec.state == state:
            return rec
        assert asyncio.get_running_loop().time() < deadline, f"still {pb.RecordingState.Name(rec.state)}"
        await asyncio.sleep(0.05)


async def expect_error(code: grpc.StatusCode, coro: object, *fragments: str) -> CallrecError:
    with pytest.raises(CallrecError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code == code, info.value
    for fragment in fragments:
        assert fragment in info.value.details, info.value.details
    return info.value


@pytest.fixture
async def call(server: ServerProcess):
    """An open call (a gateway stream that stays open for the test)."""
    async with GatewayConnection(server.target, unique("call"), gateway_id=unique("gw")) as gw:
        yield gw


@pytest.fixture
async def client(server: ServerProcess):
    async with AsyncCallrecClient(server.target) as c:
        yield c


@pytest.mark.parametrize("channel,content,fmt", sorted(VALID))
async def test_start_valid_combinations(client, call, channel, content, fmt):
    rec = await client.start_recording(call.server_call_id, channel_type=channel, content_type=content, format=fmt)
    assert rec.state == pb.RECORDING_STATE_ACTIVE
    assert rec.server_call_id == call.server_call_id
    assert rec.call_id == call.server_call_id  # the gateway gave no call_id
    assert rec.recording_id and "/" not in rec.recording_id
    assert pb.RecordingChannelType.Name(rec.channel_type).endswith(channel.upper())
    assert pb.RecordingFormat.Name(rec.format).endswith(fmt.upper())
    assert rec.destination == "local"
    assert rec.chunk_max_duration.ToTimedelta() == timedelta(hours=4)
    await client.stop_recording(rec.recording_id)


async def test_start_defaults_are_mixed_audio_video_mp4(client, call):
    rec = await client.start_recording(call.server_call_id)
    assert (rec.channel_type, rec.content_type, rec.format) == (
        pb.RECORDING_CHANNEL_TYPE_MIXED, pb.RECORDING_CONTENT_TYPE_AUDIO_VIDEO, pb.RECORDING_FORMAT_MP4)
    assert rec.pause_mode == pb.PAUSE_MODE_SKIP
    assert rec.unmixed_max_channels == 5
    await client.stop_recording(rec.recording_id)


@pytest.mark.parametrize("channel,content,fmt", sorted(ALL - VALID))
async def test_start_invalid_combination_names_the_valid_ones(client, call, channel, content, fmt):
    err = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.start_recording(call.server_call_id, channel_type=channel, content_type=content, format=fmt),
        "not a valid combination",
    )
    for combo in ("mixed+audio_video+mp4", "mixed+audio+mp3", "mixed+audio+wav", "unmixed+audio+wav"):
        assert combo in err.details


async def test_start_rejects_unknown_enum_value(client, call):
    req = pb.StartRecordingRequest(server_call_id=call.server_call_id, format=42)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.recordings.StartRecording(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format: unknown value 42" in info.value.details()
    assert "RECORDING_FORMAT_WAV" in info.value.details()


@pytest.mark.parametrize(
    "options,fragment",
    [
        ({"chunk_max_duration": timedelta(milliseconds=500)}, "chunk_max_duration must be between 1s and 4h"),
        ({"chunk_max_duration": timedelta(hours=5)}, "chunk_max_duration must be between 1s and 4h"),
        ({"channel_type": "unmixed", "content_type": "audio", "format": "wav", "unmixed_max_channels": 33},
         "unmixed_max_channels must be between 1 and 32"),
        ({"channel_type": "unmixed", "content_type": "audio", "format": "wav", "channel_affinity": {"p1": 5}},
         "out of range"),
        ({"content_type": "audio", "format": "wav", "audio_channel_participant_ordering": ["p1"]},
         "unmixed recordings only"),
        ({"destination": "nowhere"}, "not a configured storage target"),
    ],
)
async def test_start_rejects_bad_options(client, call, options, fragment):
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, client.start_recording(call.server_call_id, **options),
                       fragment)


async def test_start_requires_server_call_id(client):
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, client.start_recording(""), "server_call_id is required")


async def test_start_for_unopened_call_is_not_found(client):
    await expect_error(grpc.StatusCode.NOT_FOUND, client.start_recording("no-such-call"),
                       "no gateway has opened call 'no-such-call'")


async def test_one_recording_in_progress_per_call(client, call):
    first = await client.start_recording(call.server_call_id, content_type="audio", format="wav")
    await expect_error(grpc.StatusCode.FAILED_PRECONDITION,
                       client.start_recording(call.server_call_id, content_type="audio", format="mp3"),
                       f"recording already in progress: {first.recording_id}")
    await client.pause_recording(first.recording_id)  # a paused recording still holds the slot
    await expect_error(grpc.StatusCode.FAILED_PRECONDITION, client.start_recording(call.server_call_id),
                       first.recording_id)
    await client.stop_recording(first.recording_id)
    second = await client.start_recording(call.server_call_id, content_type="audio", format="wav")
    assert second.recording_id != first.recording_id
    await client.stop_recording(second.recording_id)


async def test_request_id_makes_start_idempotent(client, call):
    key = unique("req")
    a = await client.start_recording(call.server_call_id, content_type="audio", format="wav", request_id=key)
    b = await client.start_recording(call.server_call_id, content_type="audio", format="wav", request_id=key)
    assert a.recording_id == b.recording_id
    await client.stop_recording(a.recording_id)
    # still the same recording after it stopped (a late retry must not start a second one)
    c = await client.start_recording(call.server_call_id, content_type="audio", format="wav", request_id=key)
    assert c.recording_id == a.recording_id


async def test_pause_resume_are_idempotent_and_recorded(client, call):
    rec = await client.start_recording(call.server_call_id, content_type="audio", format="wav")
    p1 = await client.pause_recording(rec.recording_id)
    p2 = await client.pause_recording(rec.recording_id)
    assert p1.state == p2.state == pb.RECORDING_STATE_INACTIVE
    assert len(p2.pause_intervals) == 1 and not p2.pause_intervals[0].HasField("duration")
    await asyncio.sleep(0.2)
    r1 = await client.resume_recording(rec.recording_id)
    r2 = await client.resume_recording(rec.recording_id)
    assert r1.state == r2.state == pb.RECORDING_STATE_ACTIVE
    assert len(r2.pause_intervals) == 1
    interval = r2.pause_intervals[0]
    assert interval.start_time.ToDatetime() >= rec.start_time.ToDatetime()
    assert 0.15 <= interval.duration.ToTimedelta().total_seconds() < 5
    stopped = await client.stop_recording(rec.recording_id)
    assert stopped.state in (pb.RECORDING_STATE_STOPPING, pb.RECORDING_STATE_COMPLETED)
    assert stopped.session_end_reason == "StoppedByRequest"
    done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED)
    assert done.HasField("stop_time")
    again = await client.stop_recording(rec.recording_id)  # idempotent
    assert again.state == pb.RECORDING_STATE_COMPLETED
    await expect_error(grpc.StatusCode.FAILED_PRECONDITION, client.pause_recording(rec.recording_id),
                       "completed and cannot be paused")
    await expect_error(grpc.StatusCode.FAILED_PRECONDITION, client.resume_recording(rec.recording_id),
                       "cannot be resumed")


async def test_pause_on_start(client, call):
    rec = await client.start_recording(call.server_call_id, content_type="audio", format="wav", pause_on_start=True)
    assert rec.state == pb.RECORDING_STATE_INACTIVE
    assert len(rec.pause_intervals) == 1
    await client.stop_recording(rec.recording_id)


@pytest.mark.parametrize("verb", ["get_recording_state", "pause_recording", "resume_recording", "stop_recording"])
async def test_unknown_and_empty_recording_ids(client, verb):
    await expect_error(grpc.StatusCode.NOT_FOUND, getattr(client, verb)("nope"), "no recording with id 'nope'")
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, getattr(client, verb)(""), "recording_id is required")


async def test_list_pagination_and_filters(client, server):
    async with GatewayConnection(server.target, unique("list"), gateway_id="gw") as gw:
        ids = []
        for _ in range(5):
            rec = await client.start_recording(gw.server_call_id, content_type="audio", format="wav")
            await client.stop_recording(rec.recording_id)
            ids.append(rec.recording_id)
        live = await client.start_recording(gw.server_call_id, content_type="audio", format="mp3")
        ids.append(live.recording_id)
        seen, token, pages = [], "", 0
        while True:
            page = await client.list_recordings(gw.server_call_id, page_size=2, page_token=token)
            assert len(page.recordings) <= 2
            seen += [r.recording_id for r in page.recordings]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert seen == list(reversed(ids)) and pages == 3
        active = await client.list_recordings(gw.server_call_id, state="active")
        assert [r.recording_id for r in active.recordings] == [live.recording_id]
        await client.stop_recording(live.recording_id)
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, client.list_recordings(page_token="garbage!"),
                       "page_token is not valid")
    await expect_error(grpc.StatusCode.INVALID_ARGUMENT, client.list_recordings(page_size=5000), "page_size")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.recordings.ListRecordings(pb.ListRecordingsRequest(state=99))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
