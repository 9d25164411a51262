"""Audio recording end to end through a real server (media clock): what is written is decoded
with PyAV and checked: tones per participant and channel, rates, durations, chunks, metadata,
events and ContentService ranges."""

from __future__ import annotations

import json
from datetime import timedelta

import grpc
import numpy as np
import pytest

from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing import decode_file, dominant_frequencies, interleave
from callrec.v1 import recording_pb2 as rpb
from callrec_client import AsyncCallrecClient, CallrecError
from tests.integration.audio_recording import Speaker, assert_no_gap, download, frames_of, record_call

RATE = 16_000
TONES = {"alice": 300.0, "bob": 500.0, "carol": 700.0}


def speakers(fmt: AudioFormat | None = None, seconds: float = 3.0) -> list[Speaker]:
    kw = {"audio_format": fmt} if fmt else {}
    return [Speaker(pid, f, seconds=seconds, **kw) for pid, f in TONES.items()]


def peaks(block: np.ndarray, count: int) -> set[int]:
    return {round(f / 10) * 10 for f in dominant_frequencies(block, RATE, count=count)}


def check_event_and_metadata(rec, validate_json, fmt: str, channel: str) -> None:
    doc = json.loads(rec.event.json)
    validate_json("recording-file-status-updated", doc)
    data = doc["data"]
    assert data["recordingFormatType"] == fmt.title() and data["recordingChannelType"] == channel.title()
    assert data["recordingContentType"] == "Audio" and data["sessionEndReason"] == "CallEnded"
    chunks = data["recordingStorageInfo"]["recordingChunks"]
    assert [c["index"] for c in chunks] == list(range(len(rec.media)))
    assert [c["contentLocation"] for c in chunks] == [c.content_location for c in rec.recording.chunks]
    for chunk, meta in zip(chunks, rec.metadata, strict=True):
        validate_json("recording-chunk-metadata", meta)
        assert meta["chunkDocumentId"] == chunk["documentId"] and meta["chunkIndex"] == chunk["index"]
        assert meta["recordingInfo"]["format"] == fmt and meta["recordingInfo"]["channelType"] == channel
        assert meta["callId"] == rec.recording.call_id
    assert chunks[-1]["endReason"] == "SessionEnded"


async def test_mixed_wav_three_tones(server, tmp_path, validate_json):
    rec = await record_call(server.target, speakers(), tmp_path)
    audio = rec.decoded()
    assert (audio.sample_rate, audio.channels, audio.codec) == (RATE, 1, "pcm_s16le")
    assert abs(audio.duration_s - 3.0) <= 0.02
    assert peaks(audio.channel(0)[RATE:2 * RATE], 3) == {300, 500, 700}
    assert np.abs(audio.samples).max() < 32767  # headroom: no clipping at the rail
    meta = rec.metadata[0]
    assert meta["recordingInfo"]["audioConfiguration"] == {"sampleRate": 16000, "bitRate": 256000, "channels": 1}
    assert abs(meta["chunkDuration"] - 3000) <= 20
    assert {p["participantId"] for p in meta["participants"]} == set(TONES)
    assert abs(rec.recording.duration.ToMilliseconds() - 3000) <= 20
    status = rec.recording.upload_status
    assert (status.stored_files, status.pending_files, status.failed_files) == (2, 0, 0)
    check_event_and_metadata(rec, validate_json, "wav", "mixed")


async def test_mixed_mp3(server, tmp_path, validate_json):
    rec = await record_call(server.target, speakers(seconds=4.0), tmp_path, format="mp3")
    audio = rec.decoded()
    assert (audio.sample_rate, audio.channels, audio.codec) in ((RATE, 1, "mp3float"), (RATE, 1, "mp3"))
    assert audio.bit_rate == 48_000
    assert audio.container_duration_s is not None and abs(audio.container_duration_s - 4.0) <= 0.06
    assert abs(audio.duration_s - 4.0) <= 0.06  # mp3 frames pad the end
    assert peaks(audio.channel(0)[RATE:3 * RATE], 3) == {300, 500, 700}
    assert rec.metadata[0]["recordingInfo"]["audioConfiguration"]["bitRate"] == 48_000
    check_event_and_metadata(rec, validate_json, "mp3", "mixed")


async def test_unmixed_channels_follow_first_speech(server, tmp_path, validate_json):
    people = [Speaker("alice", 300, start_s=1.0, seconds=2.0), Speaker("bob", 500, start_s=0.0, seconds=3.0),
              Speaker("carol", 700, start_s=0.5, seconds=2.5)]
    rec = await record_call(server.target, people, tmp_path, channel_type="unmixed")
    audio = rec.decoded()
    assert (audio.sample_rate, audio.channels) == (RATE, 3)
    channel_of = {p["participantId"]: p["channel"] for p in rec.metadata[0]["participants"]}
    assert channel_of == {"bob": 0, "carol": 1, "alice": 2}  # the order they first spoke in
    for pid, ch in channel_of.items():
        assert peaks(audio.channel(ch)[int(2.0 * RATE):int(2.8 * RATE)], 1) == {int(TONES[pid])}
    assert np.abs(audio.channel(2)[: int(0.9 * RATE)]).max() < 50  # alice silent before she speaks
    assert rec.metadata[0]["recordingInfo"]["audioConfiguration"] == {
        "sampleRate": 16000, "bitRate": 16000 * 16 * 3, "channels": 3}
    check_event_and_metadata(rec, validate_json, "wav", "unmixed")


async def test_unmixed_ordering_affinity_and_overflow(server, tmp_path, validate_json):
    people = [Speaker(f"p{i}", 300 + 150 * i, seconds=2.0) for i in range(7)]
    rec = await record_call(
        server.target, people, tmp_path, channel_type="unmixed", unmixed_max_channels=4,
        audio_channel_participant_ordering=["p6", "p5"], channel_affinity={"p0": 3},
    )
    audio = rec.decoded()
    assert audio.channels == 4
    channel_of = {p["participantId"]: p["channel"] for p in rec.metadata[0]["participants"]}
    assert len(channel_of) == 7  # nobody dropped
    assert channel_of["p6"] == 0 and channel_of["p5"] == 1 and channel_of["p0"] == 3
    on_last = sorted(pid for pid, ch in channel_of.items() if ch == 3)
    assert len(on_last) == 4 and "p0" in on_last  # overflow mixed into the last channel, listed with it
    block = audio.channel(3)[RATE // 2:RATE + RATE // 2]
    assert peaks(block, 4) == {300 + 150 * int(pid[1:]) for pid in on_last}
    assert peaks(audio.channel(0)[RATE // 2:RATE], 1) == {1200}
    check_event_and_metadata(rec, validate_json, "wav", "unmixed")


@pytest.mark.parametrize("fmt", [
    AudioFormat(AudioEncoding.OPUS, 48000, 1),
    AudioFormat(AudioEncoding.PCMU, 8000, 1),
    AudioFormat(AudioEncoding.PCMA, 8000, 1),
    AudioFormat(AudioEncoding.PCM16LE, 48000, 2),
    AudioFormat(AudioEncoding.PCM16LE, 8000, 1),
], ids=["opus", "pcmu", "pcma", "pcm48k-stereo", "pcm8k"])
async def test_input_codecs(server, tmp_path, fmt):
    rec = await record_call(server.target, speakers(fmt, seconds=2.0), tmp_path)
    audio = rec.decoded()
    assert audio.sample_rate == RATE and abs(audio.duration_s - 2.0) <= 0.02
    assert peaks(audio.channel(0)[RATE // 2:RATE + RATE // 2], 3) == {300, 500, 700}


async def test_impaired_input_still_records_correctly(server, tmp_path):
    people = speakers(seconds=4.0)
    frames = interleave(frames_of(people), seed=7, loss=0.03, duplicate=0.05, reorder_window=6)
    rec = await record_call(server.target, people, tmp_path, frames=frames)
    audio = rec.decoded()
    assert abs(audio.duration_s - 4.0) <= 0.04  # lost frames became silence, not a shorter file
    assert peaks(audio.channel(0)[RATE:3 * RATE], 3) == {300, 500, 700}
    stats = rec.recording.media_stats
    assert stats.frames_rejected_by_reason["duplicate"] > 0
    assert stats.gap_fill_ms > 0


async def test_chunks_are_continuous(server, tmp_path, validate_json):
    people = speakers(seconds=3.5)
    frames = interleave(frames_of(people))
    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    whole = await record_call(server.target, people, tmp_path / "whole", frames=frames)
    parts = await record_call(server.target, people, tmp_path / "parts", frames=frames,
                              chunk_max_duration=timedelta(seconds=1))
    assert len(parts.media) == 4
    reasons = [c.end_reason for c in parts.recording.chunks]
    assert reasons == ["ChunkMaximumSizeExceeded"] * 3 + ["SessionEnded"]
    joined = np.concatenate([decode_file(p).samples for p in parts.media])
    reference = whole.decoded().samples
    assert joined.shape == reference.shape  # no sample lost or duplicated at a boundary
    assert np.array_equal(joined, reference)
    durations = [m["chunkDuration"] for m in parts.metadata]
    assert durations[:3] == [1000, 1000, 1000] and abs(durations[3] - 500) <= 20
    check_event_and_metadata(parts, validate_json, "wav", "mixed")


async def test_chunk_max_bytes(server, tmp_path):
    rec = await record_call(server.target, speakers(seconds=3.0), tmp_path, chunk_max_bytes=40_000)
    sizes = [p.stat().st_size for p in rec.media]
    assert len(sizes) >= 3 and all(size <= 40_000 for size in sizes)
    assert abs(sum(decode_file(p).duration_s for p in rec.media) - 3.0) <= 0.02


async def test_download_ranges_and_delete(server, tmp_path):
    rec = await record_call(server.target, speakers(seconds=2.0), tmp_path)
    chunk = rec.recording.chunks[0]
    whole = rec.media[0].read_bytes()
    async with AsyncCallrecClient(server.target) as client:
        for offset, length in ((0, 44), (1000, 5000), (len(whole) - 10, 0), (0, len(whole)), (len(whole), 0)):
            got = await download(client, chunk.content_location, offset, length)
            assert got == whole[offset:offset + length if length else None]
        pieces = [p async for p in client.download(chunk.content_location)]
        assert all(len(p.data) <= 1 << 20 for p in pieces) and pieces[0].total_size == len(whole)
        assert pieces[0].content_type == "audio/wav"
        with pytest.raises(CallrecError) as info:
            await download(client, chunk.content_location, len(whole) + 1)
        assert info.value.code == grpc.StatusCode.OUT_OF_RANGE
        with pytest.raises(CallrecError) as info:
            await download(client, chunk.content_location, 10, len(whole))
        assert info.value.code == grpc.StatusCode.OUT_OF_RANGE
        with pytest.raises(CallrecError) as info:
            await download(client, chunk.delete_location)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(CallrecError) as info:
            await client.delete(chunk.content_location)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "deleteLocation" in info.value.details
        deleted = await client.delete(chunk.delete_location)
        assert set(deleted.deleted_locations) == {chunk.content_location, chunk.metadata_location}
        for location in (chunk.content_location, chunk.metadata_location):
            with pytest.raises(CallrecError) as info:
                await download(client, location)
            assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(CallrecError) as info:
            await client.delete(chunk.delete_location)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(CallrecError) as info:
            await download(client, "file://localhost/etc/passwd")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        for call in (download(client, ""), client.delete("")):
            with pytest.raises(CallrecError) as info:
                await call
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "location is required" in info.value.details


async def test_local_retention_deletes_old_recordings(make_server, tmp_path):
    srv = make_server("--clock", "media", "--local-retention-h", "0.0005", "--housekeeping-interval", "0.5")
    rec = await record_call(srv.target, speakers(seconds=1.0), tmp_path)
    chunk = rec.recording.chunks[0]
    stored = srv.data_dir / "recordings"
    assert any(stored.rglob("0-audio.wav"))
    import asyncio

    async with AsyncCallrecClient(srv.target) as client:
        for _ in range(60):  # retention 1.8 s, sweep every 0.5 s
            try:
                await download(client, chunk.content_location)
            except CallrecError as exc:
                assert exc.code == grpc.StatusCode.NOT_FOUND
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the recording outlived its retention")
    assert not any(stored.rglob("*.wav")) and not any(stored.rglob("*-metadata.json"))


def test_cli_download_resumes_and_gateway_sim(server, tmp_path):
    """`callrec gateway-sim` streams a call; `callrec download` fetches its chunk, resuming a partial file."""
    import subprocess
    import sys
    import threading
    import time

    from callrec_client import CallrecClient

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callrec_client.cli", *args, "--server", server.target],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)

    result: dict[str, subprocess.CompletedProcess[str]] = {}
    sim = threading.Thread(target=lambda: result.setdefault("sim", cli(
        "gateway-sim", "cli-sim", "-n", "2", "--duration", "3", "--codec", "pcmu", "--duplicate", "0.05",
        "--json")))
    sim.start()
    with CallrecClient(server.target) as client:
        for _ in range(100):
            try:
                rec = client.start_recording("cli-sim", content_type="audio", format="wav")
                break
            except CallrecError:
                time.sleep(0.1)
        sim.join(60)
        report = json.loads(result["sim"].stdout)
        assert report["sent"] == {"participant-1": 150, "participant-2": 150}
        assert sum(report["rejected"]["participant-1"].values()) == report["duplicated"]["participant-1"]
        for _ in range(100):
            state = client.get_recording_state(rec.recording_id)
            if state.chunks:
                break
            time.sleep(0.1)
    location = state.chunks[0].content_location
    whole = b"".join(p.data for p in CallrecClient(server.target).download(location))
    (tmp_path / "call.wav.part").write_bytes(whole[:1000])  # an interrupted earlier download
    done = cli("download", location, "-o", "call.wav")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "call.wav").read_bytes() == whole and not (tmp_path / "call.wav.part").exists()
    audio = decode_file(tmp_path / "call.wav")
    assert peaks(audio.channel(0)[RATE // 2:RATE + RATE // 2], 2) == {300, 500}


def test_gateway_sim_batches_several_ticks_per_message_and_loses_nothing(server, tmp_path):
    """`gateway-sim --batch-ms 60`: three ticks of both participants per message, each sent when its newest
    frame is due (issue 11: the transport's price is per message). A third of the messages, every frame
    accepted, nothing late or filled, both tones for the whole call."""
    import subprocess
    import sys
    import threading
    import time

    from callrec_client import CallrecClient

    result: dict[str, subprocess.CompletedProcess[str]] = {}
    sim = threading.Thread(target=lambda: result.setdefault("sim", subprocess.run(
        [sys.executable, "-m", "callrec_client.cli", "gateway-sim", "sim-60", "-n", "2", "--duration", "3",
         "--codec", "opus", "--batch-ms", "60", "--json", "--server", server.target],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)))
    sim.start()
    with CallrecClient(server.target) as client:
        for _ in range(100):
            try:
                rec = client.start_recording("sim-60", content_type="audio", format="wav", channel_type="unmixed")
                break
            except CallrecError:
                time.sleep(0.05)
        sim.join(60)
        assert result["sim"].returncode == 0, result["sim"].stderr
        report = json.loads(result["sim"].stdout)
        assert report["messages"] == 50  # 150 ticks of 2 participants, 3 ticks a message
        assert report["received"] == report["sent"] == {"participant-1": 150, "participant-2": 150}
        assert report["rejected"] == {"participant-1": {}, "participant-2": {}}
        for _ in range(200):
            state = client.get_recording_state(rec.recording_id)
            if state.state == rpb.RECORDING_STATE_COMPLETED:
                break
            time.sleep(0.05)
        assert state.media_stats.frames_late == 0 and state.media_stats.gap_fill_ms == 0
        whole = b"".join(p.data for p in client.download(state.chunks[0].content_location))
    (tmp_path / "sim.wav").write_bytes(whole)
    audio = decode_file(tmp_path / "sim.wav")
    assert audio.channels == 2
    assert {peak for channel in range(2) for peak in peaks(audio.channel(channel)[RATE // 2: RATE * 5 // 2], 1)} == {
        300, 500}  # each participant's tone alone on a channel of its own
    for channel in range(2):
        assert_no_gap(audio.channel(channel), RATE, f"channel {channel}")


async def test_corrupt_frames_are_counted_and_harm_nobody(server, tmp_path):
    """Garbage Opus packets from bob: rejected and counted; alice and bob's good frames recorded."""
    opus = AudioFormat(AudioEncoding.OPUS, 48000, 1)
    people = [Speaker("alice", 300, seconds=2.0), Speaker("bob", 700, audio_format=opus, seconds=2.0)]
    frames = interleave(frames_of(people))
    bad = 0
    for i, frame in enumerate(frames):
        if frame.participant_id == "bob" and i % 20 == 1:
            frames[i] = type(frame)(frame.participant_id, frame.sequence, frame.timestamp_us, b"\xff" * 7)
            bad += 1
    rec = await record_call(server.target, people, tmp_path, frames=frames)
    audio = rec.decoded()
    assert abs(audio.duration_s - 2.0) <= 0.02
    assert peaks(audio.channel(0)[RATE // 2:RATE + RATE // 2], 2) == {300, 700}
    assert rec.recording.media_stats.frames_rejected_by_reason["decode_error"] == bad
