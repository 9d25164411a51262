"""Core limits without a server: extreme timestamps, the per-participant buffer, video frame sizes,
and the checks' messages (the integration side is tests/integration/test_input_limits.py)."""

from __future__ import annotations

import asyncio

import pytest

from callrec.core.call_media import CallMedia
from callrec.core.clock import MediaClock
from callrec.core.errors import InvalidArgument, ResourceExhausted
from callrec.core.jitter import JitterBuffer
from callrec.core.limits import check_count, check_items, check_text, video_frame_problem
from callrec.core.model import AudioEncoding, AudioFormat, RejectReason, VideoEncoding, VideoFormat
from callrec.media.decode import PyAVAudioCodecs

PCM16 = AudioFormat(AudioEncoding.PCM16LE, 16_000, 1)
FRAME = b"\x00\x10" * 320


@pytest.mark.parametrize("timestamp", [2**63 - 1, -(2**63), 10**12, -(10**12), 0])
async def test_extreme_timestamps_are_rejected_and_the_mixer_keeps_running(timestamp: int) -> None:
    """Found by the fuzzer: a 2^63 µs jump became a 1.5 EiB buffer and killed the call's mixer."""
    call = CallMedia("c", MediaClock(), PyAVAudioCodecs(), max_ahead_ms=5_000)
    call.add_participant("good", "G", PCM16, "gw")
    call.add_participant("bad", "B", PCM16, "gw")
    assert call.push_audio("bad", 1, 2**62, FRAME) is None  # its first frame anchors it on its own clock
    reason = call.push_audio("bad", 2, timestamp, FRAME)
    assert reason in (RejectReason.EARLY, RejectReason.LATE)
    task = asyncio.create_task(call.run())
    for seq in range(1, 51):
        assert call.push_audio("good", seq, seq * 20_000, FRAME) is None
        await asyncio.sleep(0)
    await call.close()
    await task  # raises if the mixer died
    assert call.stats("good").frames_rejected_by_reason == {}
    assert call.next_tick >= 50


def test_the_jitter_buffer_holds_at_most_max_buffered_ms() -> None:
    jitter = JitterBuffer(16_000, max_buffered_ms=100)
    results = [jitter.push(i, i * 320, 320, b"x") for i in range(8)]
    assert results[:5] == [None] * 5 and set(results[5:]) == {RejectReason.BUFFER_FULL}
    assert jitter.stats.frames_rejected_by_reason == {RejectReason.BUFFER_FULL: 3}
    jitter.pop_due(3 * 320)  # three frames mixed: room for three more
    assert [jitter.push(i, i * 320, 320, b"x") for i in range(5, 9)] == [None, None, None, RejectReason.BUFFER_FULL]


@pytest.mark.parametrize("fmt,size,width,height,problem", [
    (VideoFormat(VideoEncoding.I420, 64, 48), 4608, 0, 0, None),
    (VideoFormat(VideoEncoding.I420, 64, 48), 4607, 0, 0, "bad_length"),
    (VideoFormat(VideoEncoding.I420, 64, 48), 4608, 16384, 16384, "bad_dimensions"),
    (VideoFormat(VideoEncoding.I420, 0, 0), 0, 0, 0, "bad_dimensions"),
    (VideoFormat(VideoEncoding.H264, 64, 48), 64 * 1024, 0, 0, None),  # small pictures: a 64 KiB floor
    (VideoFormat(VideoEncoding.H264, 64, 48), 64 * 1024 + 1, 0, 0, "frame_too_large"),
    (VideoFormat(VideoEncoding.VP8, 1920, 1080), 1920 * 1080 * 3 // 2, 0, 0, None),
    (VideoFormat(VideoEncoding.VP8, 1920, 1080), 1920 * 1080 * 3 // 2 + 1, 0, 0, "frame_too_large"),
    (VideoFormat(VideoEncoding.H264, 0, 0), 3_000_000, 0, 0, None),  # size left to the bitstream
    (VideoFormat(VideoEncoding.H264, 0, 0), 4_000_000, 0, 0, "frame_too_large"),
])
def test_video_frame_sizes(fmt: VideoFormat, size: int, width: int, height: int, problem: str | None) -> None:
    assert video_frame_problem(fmt, size, width, height, max_pixels=1920 * 1088) == problem


def test_messages_name_the_limit_and_its_setting() -> None:
    with pytest.raises(InvalidArgument, match=r"participant_id is 130 bytes; the limit is 128 bytes "
                                              r"\(\[limits\] max_id_bytes\)"):
        check_text("é" * 65, "participant_id", 128, "max_id_bytes")
    check_text("é" * 64, "participant_id", 128, "max_id_bytes")
    with pytest.raises(InvalidArgument, match=r"event_types has 65 entries; the limit is 64 "
                                              r"\(\[limits\] max_list_items\)"):
        check_items(range(65), "event_types", 64)
    with pytest.raises(ResourceExhausted, match=r"\[limits\] max_calls = 3"):
        check_count(3, 3, "too many open calls", "max_calls")
