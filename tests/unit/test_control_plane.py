"""The control plane in-process, on fake time: the call and recording registries, the media
recorder and the call media hub, wired through core's ports to in-memory fakes. No sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from callrec.core.call_hub import CallMediaHub
from callrec.core.call_registry import CALL_ENDED, SERVER_RESTARTED, Call, CallRegistry
from callrec.core.clock import MediaClock
from callrec.core.errors import FailedPrecondition, InvalidArgument, NotFound
from callrec.core.limits import Limits
from callrec.core.media_recorder import MediaRecorder
from callrec.core.model import (
    AudioEncoding,
    AudioFormat,
    ChannelType,
    ContentType,
    Format,
    PauseMode,
    RecordingOptions,
    RecordingState,
    VideoEncoding,
    VideoFormat,
)
from callrec.core.ports import StoredChunk
from callrec.core.recording_registry import NoMedia, RecordingRegistry, RegistrySettings
from callrec.core.recording_state import Recording
from callrec.media.decode import PyAVAudioCodecs
from callrec.media.writers import writer_factory_for
from callrec.testing import EPOCH, FakeTime, decode_file, dominant_frequencies, encode_frames, tone

PCM16 = AudioFormat(AudioEncoding.PCM16LE, 16_000, 1)
WAV = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV)


# ---------------------------------------------------------------------------- fakes of core's ports


class MemoryRepository:
    """RecordingRepositoryPort in memory."""

    def __init__(self) -> None:
        self.saved: dict[str, Recording] = {}
        self.requests: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield None

    async def save(self, rec: Recording) -> None:
        self.saved[rec.recording_id] = rec

    async def get(self, recording_id: str) -> Recording | None:
        return self.saved.get(recording_id)

    async def in_progress(self) -> list[Recording]:
        return [r for r in self.saved.values() if r.state.in_progress or r.state is RecordingState.STOPPING]

    async def list(self, server_call_id, state, page_size, page_token):
        return list(self.saved.values()), ""

    async def remember_request(self, request_id: str, recording_id: str) -> None:
        self.requests[request_id] = recording_id

    async def recall_request(self, request_id: str, window: timedelta) -> str | None:
        return self.requests.get(request_id)


@dataclass
class EventsSeen:
    """RecordingEventsPort that keeps what it was told."""

    seen: list[tuple[str, str, object]] = field(default_factory=list)

    async def state_changed(self, rec: Recording, active: bool) -> None:
        self.seen.append(("state", rec.recording_id, active))

    async def file_status_updated(self, rec: Recording) -> None:
        self.seen.append(("files", rec.recording_id, [c.index for c in rec.chunks]))

    async def failed(self, rec: Recording, code: int, message: str) -> None:
        self.seen.append(("failed", rec.recording_id, message))


@dataclass
class MemoryUploads:
    """UploadQueuePort that stores at once (or fails the group with `failure`)."""

    queued: list[tuple[str, str, str, Path]] = field(default_factory=list)
    failure: str | None = None

    async def enqueue(self, group_id: str, target: str, key: str, path: Path, content_type: str) -> int:
        assert path.exists(), path  # only finished files are queued
        self.queued.append((group_id, target, key, path))
        return len(self.queued)

    async def wait_stored(self, group_id: str) -> str | None:
        return self.failure

    async def queued_keys(self, group_id: str) -> set[str]:
        return {key for group, _, key, _ in self.queued if group == group_id}


@dataclass
class MemoryIndex:
    """ChunkIndexPort in memory."""

    chunks: list[StoredChunk] = field(default_factory=list)

    async def add(self, chunk: StoredChunk) -> None:
        self.chunks.append(chunk)

    async def for_recording(self, recording_id: str) -> list[StoredChunk]:
        return sorted((c for c in self.chunks if c.recording_id == recording_id), key=lambda c: c.chunk_index)


class Targets:
    """StorageTargetsPort with one target, `local`."""

    def external_target(self, kind: str, container_url: str) -> str:
        return f"external|{kind}|{container_url}"

    def check(self, target: str) -> None:
        if target != "local":
            raise ValueError(f"storage target {target!r} is not configured (have: local)")

    def location(self, target: str, key: str) -> str:
        return f"mem://{target}/{key}"

    def describe(self, target: str) -> str:
        return target


def registry_with(media: object, calls: CallRegistry, fake: FakeTime) -> tuple[RecordingRegistry, EventsSeen]:
    events = EventsSeen()
    settings = RegistrySettings("res-1", timedelta(hours=24), limits=Limits(max_recordings=2),
                                default_destination="local", destinations={"local"})
    return RecordingRegistry(MemoryRepository(), events, calls, media, settings, now=fake.now), events  # type: ignore[arg-type]  # fakes


# ---------------------------------------------------------------------------- call registry


async def test_a_broken_stream_ends_the_call_after_the_grace_period_on_fake_time() -> None:
    fake = FakeTime()
    calls = CallRegistry(reconnect_grace_s=10, limits=Limits(max_participants_per_call=5), time=fake)
    ended: list[tuple[str, str]] = []

    async def on_end(call: Call, reason: str) -> None:
        ended.append((call.server_call_id, reason))

    calls.on_call_ended(on_end)
    call, stream = calls.open("c1", "", "gw")
    await calls.close_stream(call, stream, graceful=False)
    await fake.advance(9.9)
    assert ended == [] and calls.get("c1") is call  # still within the grace period
    call2, stream2 = calls.open("c1", "", "gw")  # the gateway reconnects: the timer is cancelled
    assert call2 is call
    await fake.advance(20)
    assert ended == []
    await calls.close_stream(call2, stream2, graceful=False)
    await fake.advance(10.1)
    assert ended == [("c1", CALL_ENDED)] and calls.get("c1") is None


async def test_an_adopted_call_ends_server_restarted_unless_a_gateway_returns() -> None:
    fake = FakeTime()
    calls = CallRegistry(reconnect_grace_s=5, limits=Limits(max_participants_per_call=5), time=fake)
    ended: list[str] = []

    async def on_end(call: Call, reason: str) -> None:
        ended.append(reason)

    calls.on_call_ended(on_end)
    calls.adopt("c1", "call", "conn", SERVER_RESTARTED)
    await fake.advance(5.1)
    assert ended == [SERVER_RESTARTED]


async def test_participant_limits_and_joins_are_checked() -> None:
    calls = CallRegistry(reconnect_grace_s=5, limits=Limits(max_participants_per_call=1), time=FakeTime())
    call, stream = calls.open("c1", "", "gw")
    calls.join(call, stream, "a", "A", PCM16, None)
    with pytest.raises(Exception, match="max_participants_per_call"):
        calls.join(call, stream, "b", "B", PCM16, None)
    with pytest.raises(FailedPrecondition, match="send `join` for it first"):
        calls.participant(call, stream, "b", "audio frame")
    with pytest.raises(InvalidArgument, match="gateway_id is required"):
        calls.open("c2", "", "")


# ---------------------------------------------------------------------------- recording registry


async def test_registry_life_cycle_events_and_duration_on_fake_time() -> None:
    fake = FakeTime()
    calls = CallRegistry(5, Limits(max_participants_per_call=5), time=fake)
    registry, events = registry_with(NoMedia(), calls, fake)
    with pytest.raises(NotFound, match="must send `open`"):
        await registry.start("c1", WAV)
    calls.open("c1", "", "gw")
    rec = await registry.start("c1", RecordingOptions(content_type=ContentType.AUDIO,
                                                      channel_type=ChannelType.MIXED, format=Format.WAV,
                                                      request_id="req-1"))
    again = await registry.start("c1", RecordingOptions(content_type=ContentType.AUDIO,
                                                        channel_type=ChannelType.MIXED, format=Format.WAV,
                                                        request_id="req-1"))
    assert again.recording_id == rec.recording_id  # idempotent by request_id
    with pytest.raises(FailedPrecondition, match=f"recording already in progress: {rec.recording_id}"):
        await registry.start("c1", WAV)
    await fake.advance(2)
    await registry.pause(rec.recording_id)
    await registry.pause(rec.recording_id)  # no-op
    await fake.advance(3)
    await registry.resume(rec.recording_id)
    await fake.advance(1)
    await registry.stop(rec.recording_id)
    done = await registry.finalized(rec.recording_id)
    assert done.state is RecordingState.COMPLETED
    assert done.duration == timedelta(seconds=3)  # 6 s of wall time, 3 s paused (skip)
    assert done.pause_intervals[0].duration == timedelta(seconds=3)
    assert [e[0] for e in events.seen] == ["state", "state", "state", "state"]
    assert [e[2] for e in events.seen] == [True, False, True, False]


async def test_a_recording_whose_media_fails_to_start_fails_with_an_event() -> None:
    fake = FakeTime()
    calls = CallRegistry(5, Limits(max_participants_per_call=5), time=fake)
    hub = CallMediaHub(lambda: MediaClock(start_time=EPOCH), PyAVAudioCodecs())
    recorder = MediaRecorder(hub, MemoryUploads(), MemoryIndex(), Targets(), Path("/nonexistent-spool"), "res-1",
                             writer_factory_for)
    registry, events = registry_with(recorder, calls, fake)
    calls.open("c1", "", "gw")
    opts = RecordingOptions(content_type=ContentType.AUDIO_VIDEO, channel_type=ChannelType.MIXED, format=Format.MP4)
    with pytest.raises(Exception, match=r"mp4 .* not available in this build"):
        await registry.start("c1", opts)
    (failed,) = [e for e in events.seen if e[0] == "failed"]
    assert "not available" in str(failed[2])
    await hub.close()


# ---------------------------------------------------------------------------- media recorder + hub


async def test_recorder_indexes_and_queues_every_chunk_through_the_hub(tmp_path: Path) -> None:
    fake = FakeTime()
    calls = CallRegistry(5, Limits(max_participants_per_call=5), time=fake)
    hub = CallMediaHub(lambda: MediaClock(start_time=EPOCH), PyAVAudioCodecs())
    uploads, index = MemoryUploads(), MemoryIndex()
    recorder = MediaRecorder(hub, uploads, index, Targets(), tmp_path, "res-1", writer_factory_for)
    registry, events = registry_with(recorder, calls, fake)
    call, stream = calls.open("c1", "call-1", "gw")
    member = calls.join(call, stream, "a", "Alice", PCM16, None)
    hub.joined(call, member)
    opts = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV,
                            chunk_max_duration=timedelta(seconds=1), pause_mode=PauseMode.SKIP)
    rec = await registry.start("c1", opts)
    frames = encode_frames(tone(440.0, 2.5, start_sample=0), PCM16)
    for i, frame in enumerate(frames):
        assert hub.audio(call, member, i + 1, 1_000_000 + i * 20_000, frame) is None
        if i % 10 == 0:
            await asyncio.sleep(0)
    assert hub.video(call, member, 1, 1_000_000, b"x", True, 2, 2) == "no_video_format"
    await calls.close_stream(call, stream, graceful=True)  # the call ends: the recording stops, CallEnded
    done = await registry.finalized(rec.recording_id)
    assert done.state is RecordingState.COMPLETED and done.session_end_reason == CALL_ENDED
    assert [c.index for c in done.chunks] == [0, 1, 2]
    assert done.duration == timedelta(seconds=2.5)
    assert [c.chunk_index for c in index.chunks] == [0, 1, 2]
    assert all(c.content_location.startswith("mem://local/") for c in index.chunks)
    assert [key.rsplit("/", 1)[1] for _, _, key, _ in uploads.queued] == [
        "0-audio.wav", "0-metadata.json", "1-audio.wav", "1-metadata.json", "2-audio.wav", "2-metadata.json"]
    audio = np.concatenate([decode_file(path).channel(0) for _, _, key, path in uploads.queued if key.endswith("wav")])
    assert len(audio) == 40_000 and dominant_frequencies(audio, count=1) == [440.0]
    assert ("files", rec.recording_id, [0, 1, 2]) in events.seen
    assert [p.participant_id for p in done.participants] == ["a"]


async def test_a_store_that_refuses_fails_the_recording_naming_the_target(tmp_path: Path) -> None:
    fake = FakeTime()
    calls = CallRegistry(5, Limits(max_participants_per_call=5), time=fake)
    hub = CallMediaHub(lambda: MediaClock(start_time=EPOCH), PyAVAudioCodecs())
    recorder = MediaRecorder(hub, MemoryUploads(failure="upload to 'local' failed: 403"), MemoryIndex(), Targets(),
                             tmp_path, "res-1", writer_factory_for)
    registry, _ = registry_with(recorder, calls, fake)
    calls.open("c1", "", "gw")
    rec = await registry.start("c1", WAV)
    await registry.stop(rec.recording_id)
    failed = await registry.finalized(rec.recording_id)
    assert failed.state is RecordingState.FAILED
    assert failed.error is not None and "403" in failed.error.message and "(local)" in failed.error.message
    await hub.close()


async def test_hub_routes_video_only_to_video_sinks_and_maps_commands_to_media_time() -> None:
    hub = CallMediaHub(lambda: MediaClock(start_time=EPOCH), PyAVAudioCodecs())
    calls = CallRegistry(5, Limits(max_participants_per_call=5), time=FakeTime())
    call, stream = calls.open("c1", "", "gw")
    cam = calls.join(call, stream, "v", "Vic", PCM16, VideoFormat(VideoEncoding.I420, 4, 4))
    hub.joined(call, cam)
    assert hub.video(call, cam, 1, 1_000_000, b"\0" * 24, True, 4, 4) is None  # no mp4 recording: counted only
    assert hub.video(call, cam, 2, 1_000_000, b"", True, 4, 4) == "empty_frame"
    assert hub.media_time("c1", EPOCH + timedelta(hours=1)) == EPOCH  # media clock: "now" is the next tick

    @dataclass
    class Seen:
        frames: list[tuple[str, int]] = field(default_factory=list)
        joined: list[str] = field(default_factory=list)

        def on_tick(self, tick: object) -> None:
            return None

        def join(self, participant_id: str, display_name: str, video: VideoFormat | None) -> None:
            self.joined.append(participant_id)

        def leave(self, participant_id: str) -> None:
            self.joined.remove(participant_id)

        def video(self, participant_id: str, data: bytes, call_us: int, width: int, height: int,
                  keyframe: bool) -> str | None:
            self.frames.append((participant_id, call_us))
            return None

    sink = Seen()
    hub.attach_video(call, "c1", sink)
    assert sink.joined == ["v"]  # those present when the recording starts
    hub.audio(call, cam, 1, 5_000_000, encode_frames(tone(300.0, 0.02), PCM16)[0])  # anchors the gateway
    hub.video(call, cam, 3, 5_040_000, b"\0" * 24, True, 4, 4)
    assert sink.frames == [("v", 40_000)]  # placed like its audio: 40 ms after its first frame
    hub.left(call, cam)
    assert sink.joined == []
    await hub.close()


async def test_recovery_never_crash_loops_a_worker_that_cannot_start_fails_its_recording(tmp_path: Path) -> None:
    fake = FakeTime()
    calls = CallRegistry(5, Limits(max_participants_per_call=5), time=fake)
    hub = CallMediaHub(lambda: MediaClock(start_time=EPOCH), PyAVAudioCodecs())

    def no_worker(*args: object, **kwargs: object) -> object:
        raise OSError(24, "Too many open files")

    recorder = MediaRecorder(hub, MemoryUploads(), MemoryIndex(), Targets(), tmp_path, "res-1", writer_factory_for,
                             video_recording_factory=no_worker)  # type: ignore[arg-type]  # a factory that fails
    registry, events = registry_with(recorder, calls, fake)
    mp4 = RecordingOptions(content_type=ContentType.AUDIO_VIDEO, channel_type=ChannelType.MIXED, format=Format.MP4,
                           destination="local")
    wav = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV,
                           destination="local")
    broken = Recording("r-video", "c1", "c1", "conn", mp4, RecordingState.ACTIVE, EPOCH)
    fine = Recording("r-audio", "c2", "c2", "conn", wav, RecordingState.INACTIVE, EPOCH)
    await registry.repo.save(broken)
    await registry.repo.save(fine)
    await registry.recover()  # must not raise
    assert (await registry.get("r-video")).state is RecordingState.FAILED
    assert "could not start the video worker" in (await registry.get("r-video")).error.message
    assert (await registry.get("r-audio")).state is RecordingState.INACTIVE  # the other one goes on, still paused
    assert ("failed", "r-video", (await registry.get("r-video")).error.message) in events.seen
    await calls.close()
    await hub.close()
