"""AudioRecording on hand-made ticks: edge cases, failures, and core's independence from PyAV/gRPC."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from callrec.core.audio_recording import AudioRecording, ChannelAssigner
from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.chunker import FinishedChunk, RecordingMediaError
from callrec.core.model import (
    ChannelPin,
    ChannelType,
    ChunkEndReason,
    ContentType,
    Format,
    PauseMode,
    RecordingOptions,
)
from callrec.media.writers import Mp3WriterFactory, UnmixedWavWriter, writer_factory_for
from callrec.media.writers.wav import WavWriterFactory
from callrec.testing import EPOCH, decode_file

WAV = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV)


def tick(index: int, value: int = 1000, participants: dict[str, int] | None = None, speaking=()) -> MixTick:
    people = {pid: np.full(TICK_SAMPLES, v, np.int16) for pid, v in (participants or {}).items()}
    return MixTick(
        index=index,
        start_us=index * 20_000,
        time=EPOCH + timedelta(milliseconds=20 * index),
        mixed=np.full(TICK_SAMPLES, value, np.int16),
        participants=people,
        speaking={pid: pid in speaking for pid in people},
        names={pid: pid.upper() for pid in people},
    )


def test_core_imports_neither_pyav_nor_grpc() -> None:
    code = (
        "import sys\n"
        "import callrec.core.call_media, callrec.core.audio_recording, callrec.core.video_recording\n"
        "import callrec.core.media_recorder, callrec.core.recording_registry, callrec.core.clock\n"
        "import callrec.core.jitter, callrec.core.mixer, callrec.core.metadata\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('av', 'grpc') or m.startswith('callrec.media')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_recording_without_media_still_yields_a_decodable_chunk(tmp_path: Path) -> None:
    for factory, opts in ((WavWriterFactory(), WAV), (Mp3WriterFactory(), WAV)):
        rec = AudioRecording("r", "c", opts, tmp_path / factory.extension, "res", factory, lambda c: None)
        (chunk,) = await rec.finish()
        assert chunk.end_reason == ChunkEndReason.SESSION_ENDED
        assert chunk.samples == TICK_SAMPLES  # one tick of silence, not an unreadable empty file
        assert len(decode_file(chunk.media_path).samples) == TICK_SAMPLES


async def test_start_at_and_stop_cut_inside_ticks(tmp_path: Path) -> None:
    rec = AudioRecording(
        "r", "c", WAV, tmp_path, "res", WavWriterFactory(), lambda c: None, start_at=EPOCH + timedelta(milliseconds=25)
    )
    rec.stop(EPOCH + timedelta(milliseconds=95))
    for k in range(10):
        rec.on_tick(tick(k, value=k + 1))
    (chunk,) = await rec.finish()
    got = decode_file(chunk.media_path).channel(0)
    assert len(got) == 70 * 16  # 25 ms .. 95 ms
    assert got[0] == 2 and got[-1] == 5  # starts inside tick 1, ends inside tick 4
    assert chunk.start_time == EPOCH + timedelta(milliseconds=25)


async def test_tiny_chunks_never_lose_or_repeat_samples(tmp_path: Path) -> None:
    opts = RecordingOptions(
        content_type=ContentType.AUDIO,
        channel_type=ChannelType.MIXED,
        format=Format.WAV,
        chunk_max_bytes=44 + 2 * 500,  # 500 samples: boundaries fall inside ticks
        pause_mode=PauseMode.SKIP,
    )
    seen: list[FinishedChunk] = []

    async def on_chunk(chunk: FinishedChunk) -> None:
        seen.append(chunk)

    rec = AudioRecording("r", "c", opts, tmp_path, "res", WavWriterFactory(), on_chunk, batch_ms=20)
    stream = np.arange(20 * TICK_SAMPLES, dtype=np.int16)
    for k in range(20):
        t = tick(k)
        t.mixed[:] = stream[k * TICK_SAMPLES : (k + 1) * TICK_SAMPLES]
        rec.on_tick(t)
    chunks = await rec.finish()
    assert chunks == seen
    assert [c.samples for c in chunks[:-1]] == [500] * (len(chunks) - 1)
    assert all(c.end_reason == ChunkEndReason.CHUNK_MAXIMUM_SIZE_EXCEEDED for c in chunks[:-1])
    assert chunks[-1].end_reason == ChunkEndReason.SESSION_ENDED
    joined = np.concatenate([decode_file(c.media_path).channel(0) for c in chunks])
    np.testing.assert_array_equal(joined, stream)


async def test_writer_failure_surfaces_from_finish(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    class Broken(WavWriterFactory):
        def open(self, path: Path):
            raise OSError(28, "No space left on device")

    rec = AudioRecording("r", "c", WAV, tmp_path, "res", Broken(), lambda c: None, on_error=errors.append)
    for k in range(3):
        rec.on_tick(tick(k))
    with pytest.raises(RecordingMediaError, match="No space left"):
        await rec.finish()
    assert isinstance(rec.error, OSError) and errors == [rec.error]


async def test_finish_is_idempotent_and_later_ticks_are_ignored(tmp_path: Path) -> None:
    rec = AudioRecording("r", "c", WAV, tmp_path, "res", WavWriterFactory(), lambda c: None)
    rec.on_tick(tick(0))
    first = await rec.finish()
    rec.on_tick(tick(1))
    assert await rec.finish() == first
    assert first[0].samples == TICK_SAMPLES


def test_channel_assigner_pins_ordering_first_speech_and_overflow() -> None:
    assigner = ChannelAssigner(3, ordering=("o1",), pins=(ChannelPin(2, "pinned"), ChannelPin(9, "far")))
    assigner.observe(["a", "b", "pinned"], {"b": True})
    assert dict(assigner.assignments) == {"b": 1, "pinned": 2}  # 0 is kept for o1, 2 is pinned
    assigner.observe(["o1", "a", "c"], {"a": True, "c": True})
    assert assigner.channel_of("o1") == 0
    assert assigner.channel_of("a") == 2 and assigner.channel_of("c") == 2  # overflow: last channel
    assigner.observe(["far"], {})
    assert assigner.channel_of("far") == 2  # a pin beyond the limit lands on the last channel


async def test_unmixed_writer_recovers_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "crash.wav"
    writer = UnmixedWavWriter(path)
    writer.write(np.ones((1000, 1), np.int16))
    writer.write(np.full((500, 2), 2, np.int16))
    del writer  # the process died: raw parts and the sidecar stay in the spool
    assert UnmixedWavWriter.recover(path) == path
    audio = decode_file(path)
    assert audio.samples.shape == (1500, 2)
    assert audio.samples[0, 1] == 0 and audio.samples[1499, 1] == 2


def test_writer_factory_for_each_combination() -> None:
    for channel, fmt, content_type in (
        (ChannelType.MIXED, Format.WAV, "audio/wav"),
        (ChannelType.MIXED, Format.MP3, "audio/mpeg"),
        (ChannelType.UNMIXED, Format.WAV, "audio/wav"),
    ):
        opts = RecordingOptions(content_type=ContentType.AUDIO, channel_type=channel, format=fmt)
        assert writer_factory_for(opts).content_type == content_type
    with pytest.raises(ValueError):
        writer_factory_for(RecordingOptions())  # mixed audio-video mp4: the compositor's job


async def test_finish_at_does_not_wait_long_when_no_ticks_come(tmp_path: Path) -> None:
    """A media clock without media produces no tick: StopRecording must not hang for the timeout."""
    rec = AudioRecording("r", "c", WAV, tmp_path, "res", WavWriterFactory(), lambda c: None, idle_timeout=0.2)
    rec.on_tick(tick(0))
    started = time.monotonic()
    (chunk,) = await rec.finish(at=EPOCH + timedelta(seconds=5), timeout=10)
    assert time.monotonic() - started < 1.0
    assert chunk.samples == TICK_SAMPLES


def test_a_ticks_float_blocks_are_the_mixers_rows_or_the_int16_blocks_scaled() -> None:
    """Unmixed recordings take `pcm_of` (float32, converted to int16 in the writer thread, once a batch)."""
    from callrec.core.call_media import ParticipantBlocks
    from callrec.core.mixer import Mixer

    made_by_hand = tick(0, participants={"a": 16384, "b": -32768})
    np.testing.assert_array_equal(made_by_hand.pcm_of("a"), np.full(TICK_SAMPLES, 0.5, np.float32))
    np.testing.assert_array_equal(made_by_hand.pcm_of("b"), np.full(TICK_SAMPLES, -1.0, np.float32))
    rows = np.stack([np.full(TICK_SAMPLES, 0.25, np.float32), np.linspace(-0.5, 0.5, TICK_SAMPLES, dtype=np.float32)])
    blocks = ParticipantBlocks(["x", "y"], Mixer().mix(["x", "y"], rows))
    mixed = MixTick(0, 0, EPOCH, np.zeros(TICK_SAMPLES, np.int16), blocks, {}, {})
    assert np.shares_memory(mixed.pcm_of("y"), rows), "the mixer's own row: no copy, no conversion"
    np.testing.assert_array_equal(mixed.pcm_of("y"), rows[1])
    np.testing.assert_array_equal(blocks["y"], np.rint(rows[1] * 32768).astype(np.int16))
