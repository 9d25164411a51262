"""`media_batch` through a real server: a tick of every participant in one message (issue 11).

Each frame of a batch must be handled exactly as if it were sent alone, in order: the recording
is the same (decoded and checked per channel), the counters count every frame, a bad frame is
rejected alone, and the batch's own limit (`[limits] max_batch_frames`) has an error naming it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import numpy as np
import pytest

from callrec.v1 import media_pb2 as mpb
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, unique
from tests.integration.audio_recording import Speaker, assert_no_gap, download, frames_of
from tests.integration.test_audio_recording import RATE, peaks
from tests.integration.test_recording_service import wait_state

TONES = {"alice": 300.0, "bob": 500.0, "carol": 700.0}
SECONDS = 3.0


def ticks() -> list[list[mpb.AudioFrame]]:
    """Every participant's frames grouped by timestamp: one batch per 20 ms tick."""
    frames = sorted((f for s in frames_of([Speaker(p, hz, seconds=SECONDS) for p, hz in TONES.items()])
                     for f in s.gateway_frames()), key=lambda f: f.timestamp_us)
    return [[GatewayConnection.audio_frame(f.participant_id, f.sequence, f.timestamp_us, f.data) for f in group]
            for _, group in itertools.groupby(frames, key=lambda f: f.timestamp_us)]


async def final_ack(gw: GatewayConnection, expected: dict[str, int]) -> dict[str, mpb.ParticipantAck]:
    """The first ack whose counters account for `expected` frames per participant (10 s at most)."""
    last: dict[str, mpb.ParticipantAck] = {}
    for _ in range(10):
        ack = (await gw.next_response("ack", timeout=2)).ack
        last = {p.participant_id: p for p in ack.participants}
        if all(p in last and last[p].received + sum(last[p].rejected_by_reason.values()) >= n
               for p, n in expected.items()):
            break
    return last


async def record_unmixed(client: AsyncCallrecClient, gw: GatewayConnection, call_id: str) -> pb.Recording:
    """Every participant of `TONES` joined, and an unmixed wav recording of them started, in that order."""
    for pid in TONES:
        await gw.join(pid)
    return await client.start_recording(call_id, content_type="audio", format="wav", channel_type="unmixed",
                                        audio_channel_participant_ordering=list(TONES))


async def stored_wav(client: AsyncCallrecClient, gw: GatewayConnection, rec: pb.Recording, path: Path) -> pb.Recording:
    """End the call, wait for the recording to complete, download its one chunk to `path`; the final state."""
    await gw.end()
    done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=60)
    (chunk,) = done.chunks
    path.write_bytes(await download(client, chunk.content_location))
    return done


def decoded_tones(path: Path) -> list[np.ndarray]:
    """The wav's channels, checked for shape and length: one per participant of `TONES`, in order."""
    from callrec.testing import decode_file

    audio = decode_file(path)
    assert (audio.sample_rate, audio.channels) == (RATE, 3)
    assert abs(audio.duration_s - SECONDS) <= 0.02
    return [audio.channel(channel) for channel in range(3)]


async def test_batched_ticks_record_every_participant_on_its_channel(server: ServerProcess, tmp_path: Path) -> None:
    call_id = unique("batch")
    batches = ticks()
    assert len(batches) == 150 and all(len(b) == 3 for b in batches)
    async with AsyncCallrecClient(server.target) as client, GatewayConnection(server.target, call_id) as gw:
        rec = await record_unmixed(client, gw, call_id)
        bad = mpb.AudioFrame(participant_id="bob", sequence=1000, timestamp_us=batches[-1][0].timestamp_us + 20_000,
                             data=b"\x00" * 3)  # not a whole PCM16 sample: rejected alone
        for i, batch in enumerate(batches):
            await gw.batch(audio=[*batch, bad] if i == len(batches) - 1 else batch)
        acks = await final_ack(gw, {"alice": 150, "bob": 151, "carol": 150})
        assert {p: a.received for p, a in acks.items()} == {"alice": 150, "bob": 150, "carol": 150}
        assert dict(acks["bob"].rejected_by_reason) == {"decode_error": 1}
        assert not acks["alice"].rejected_by_reason and not acks["carol"].rejected_by_reason
        assert (acks["alice"].last_audio_sequence, acks["bob"].last_audio_sequence) == (150, 1000)
        done = await stored_wav(client, gw, rec, tmp_path / "batched.wav")
    channels = decoded_tones(tmp_path / "batched.wav")
    for channel, (pid, hz) in enumerate(TONES.items()):
        block = channels[channel][RATE // 2: int(2.5 * RATE)]
        assert peaks(block, 1) == {int(hz)}, f"{pid} on channel {channel}"
        assert np.abs(block).max() > 3000, f"{pid}'s tone is there at full level"
    stats = done.media_stats
    assert stats.frames_received == 450 and dict(stats.frames_rejected_by_reason) == {"decode_error": 1}


async def test_several_ticks_per_batch_in_real_time_lose_nothing(server: ServerProcess, tmp_path: Path) -> None:
    """A gateway that batches 3 ticks (60 ms) per message, sent in real time as it captures them (what row 2c's
    per-message price of the transport suggests for many small calls): the realtime clock takes every
    frame of a batch, the oldest 40 ms older than the newest, with none late, no gap filled, and each
    participant's tone whole on its channel."""
    import asyncio
    import time

    call_id = unique("batch3")
    by_tick = ticks()
    batches = [[f for tick in by_tick[n: n + 3] for f in tick] for n in range(0, len(by_tick), 3)]
    assert len(batches) == 50 and all(len(b) == 9 for b in batches)
    async with AsyncCallrecClient(server.target) as client, GatewayConnection(server.target, call_id) as gw:
        rec = await record_unmixed(client, gw, call_id)
        started = time.monotonic()
        for n, batch in enumerate(batches):  # batch n holds ticks 3n..3n+2: sent once the last was captured
            await asyncio.sleep(max(0.0, started + (3 * n + 3) * 0.02 - time.monotonic()))
            await gw.batch(audio=batch)
        acks = await final_ack(gw, dict.fromkeys(TONES, 150))
        assert {p: (a.received, dict(a.rejected_by_reason)) for p, a in acks.items()} == {
            p: (150, {}) for p in TONES}
        done = await stored_wav(client, gw, rec, tmp_path / "batched3.wav")
    stats = done.media_stats
    assert (stats.frames_received, stats.frames_late, stats.gap_fill_ms) == (450, 0, 0)
    assert not stats.frames_rejected_by_reason
    channels = decoded_tones(tmp_path / "batched3.wav")
    for channel, (pid, hz) in enumerate(TONES.items()):
        block = channels[channel][: int(SECONDS * RATE)]
        assert peaks(block[RATE // 2: int(2.5 * RATE)], 1) == {int(hz)}, f"{pid} on channel {channel}"
        assert_no_gap(block, RATE, pid)


async def test_a_batch_over_the_limit_is_refused_with_the_setting_named(make_server, tmp_path: Path) -> None:
    config = tmp_path / "callrec.toml"
    config.write_text("[limits]\nmax_batch_frames = 4\n")
    server: ServerProcess = make_server("--config", str(config))
    gw = GatewayConnection(server.target, unique("batch-limit"))
    await gw.open()
    try:
        await gw.join("alice")
        frames = [gw.audio_frame("alice", n + 1, n * 20_000, b"\x00\x00" * 320) for n in range(5)]
        await gw.batch(audio=frames[:4])  # at the limit: fine
        await gw.batch(audio=frames[:2], video=[gw.video_frame("alice", n, 0, b"", 16, 16) for n in range(1, 4)])
        with pytest.raises(CallrecError) as info:
            await gw.next_response("never", timeout=10)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "media_batch has 5 frames (2 audio, 3 video); the limit is 4 ([limits] max_batch_frames)" in (
            info.value.details), info.value.details
    finally:
        await gw.close()


async def test_a_batch_naming_a_participant_that_never_joined_ends_the_stream(server: ServerProcess) -> None:
    gw = GatewayConnection(server.target, unique("batch-unknown"))
    await gw.open()
    try:
        await gw.join("alice")
        await gw.batch(audio=[gw.audio_frame("alice", 1, 0, b"\x00\x00" * 320),
                              gw.audio_frame("mallory", 1, 0, b"\x00\x00" * 320)])
        with pytest.raises(CallrecError) as info:
            await gw.next_response("never", timeout=10)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "'mallory', which has not joined on this stream: send `join` for it first" in info.value.details
    finally:
        await gw.close()
