"""End to end on a MediaClock: gateway frames -> CallMedia -> AudioRecording -> files, decoded back.

One synthetic call (three participants, three encodings, distinct tones, each starting
to speak at a different time) is recorded by many recordings at once; every output is
then decoded with PyAV and compared with the others sample by sample: pauses, chunking,
late start and stop must cut exactly where asked, nothing lost or repeated.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from callrec.core.audio_recording import AudioRecording
from callrec.core.call_media import CallMedia
from callrec.core.chunker import FinishedChunk
from callrec.core.clock import RealtimeClock
from callrec.core.metadata import SCHEMAS_DIR
from callrec.core.model import (
    AudioEncoding,
    AudioFormat,
    ChannelPin,
    ChannelType,
    ChunkEndReason,
    ContentType,
    Format,
    PauseMode,
    RecordingOptions,
)
from callrec.media.decode import PyAVAudioCodecs
from callrec.media.writers import writer_factory_for
from callrec.testing import (
    EPOCH,
    Command,
    FakeTime,
    Impairments,
    SimParticipant,
    decode_file,
    dominant_frequencies,
    encode_frames,
    run_call,
    tone,
)
from callrec.testing.call import Action

RATE = 16_000
SECONDS = 6.0
TOTAL = int(SECONDS * RATE)
SHARED_SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "schemas"
SCHEMA_NAME = "recording-chunk-metadata.schema.json"


@dataclass(frozen=True)
class Speaker:
    participant_id: str
    name: str
    audio_format: AudioFormat
    frequency: float
    starts_s: float  # silent before


SPEAKERS = [
    Speaker("8:acs:alice", "Alice", AudioFormat(AudioEncoding.OPUS, 48_000, 1), 300.0, 1.0),
    Speaker("8:acs:bob", "Bob", AudioFormat(AudioEncoding.PCMU, 8_000, 1), 500.0, 0.5),
    Speaker("4:+14255550123", "陈 Chen", AudioFormat(AudioEncoding.PCM16LE, 48_000, 2), 700.0, 1.5),
]
ALICE, BOB, CHEN = (s.participant_id for s in SPEAKERS)




def at(seconds: float):
    return EPOCH + timedelta(seconds=seconds)


def options(**kw) -> RecordingOptions:
    kw.setdefault("content_type", ContentType.AUDIO)
    return RecordingOptions(**kw)


MIXED_WAV = {"channel_type": ChannelType.MIXED, "format": Format.WAV}
MIXED_MP3 = {"channel_type": ChannelType.MIXED, "format": Format.MP3}
UNMIXED = {"channel_type": ChannelType.UNMIXED, "format": Format.WAV}

def commands(*pairs: tuple[float, Action]) -> tuple[Command, ...]:
    return tuple(Command(t, action) for t, action in pairs)


#: name -> (options, control commands at media times)
RECORDINGS: dict[str, tuple[RecordingOptions, tuple[Command, ...]]] = {
    "wav": (options(**MIXED_WAV), ()),
    "mp3": (options(**MIXED_MP3), ()),
    "unmixed": (options(**UNMIXED), ()),
    "skip": (options(**MIXED_WAV), commands((2.0, "pause"), (3.0, "resume"))),
    "silence": (options(**MIXED_WAV, pause_mode=PauseMode.SILENCE), commands((2.0, "pause"), (3.0, "resume"))),
    "chunked": (options(**MIXED_WAV, chunk_max_duration=timedelta(seconds=1)), ()),
    "chunked_bytes_silence": (
        options(**MIXED_WAV, chunk_max_bytes=44 + 2 * 20_800, pause_mode=PauseMode.SILENCE),
        commands((2.0, "pause"), (3.0, "resume")),
    ),
    "mp3_chunked": (options(**MIXED_MP3, chunk_max_bytes=20_000), ()),
    "unmixed_chunked": (options(**UNMIXED, chunk_max_duration=timedelta(seconds=1.2)), ()),
    "pinned": (options(**UNMIXED, unmixed_max_channels=2, channel_affinity=(ChannelPin(0, CHEN),)), ()),
    "pause_on_start": (options(**MIXED_WAV, pause_on_start=True), commands((1.0, "resume"), (5.0, "stop"))),
    # pausing a paused recording and resuming an active one are no-ops
    "double_pause": (options(**MIXED_WAV), commands((1.0, "pause"), (1.5, "pause"), (2.0, "resume"), (2.5, "resume"))),
}


@dataclass
class Run:
    """What one call produced."""

    chunks: dict[str, list[FinishedChunk]] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    sent: int = 0


def record(tmp: Path, impairments: Impairments | None = None, names: list[str] | None = None) -> Run:
    """Stream the call (optionally impaired) into the chosen recordings with `run_call`."""
    chosen = names or list(RECORDINGS)
    cast = [SimParticipant(s.participant_id, s.name, tone_hz=s.frequency, audio_format=s.audio_format,
                           speaks=lambda t, s=s: t >= s.starts_s) for s in SPEAKERS]
    result = asyncio.run(run_call(
        cast, SECONDS, {f"rec-{name}": RECORDINGS[name][0] for name in chosen},
        commands=[Command(c.at, c.action, f"rec-{name}") for name in chosen for c in RECORDINGS[name][1]],
        spool_dir=tmp, impairments=impairments, call_id="call-1", resource_id="res-1",
    ))
    for name in chosen:
        assert result[f"rec-{name}"].error is None
    return Run({name: result[f"rec-{name}"].chunks for name in chosen}, result.stats, result.audio_frames_sent)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return record(tmp_path_factory.mktemp("clean"))


def samples(chunks: list[FinishedChunk]) -> np.ndarray:
    """Decode and concatenate chunks (unmixed: padded to the widest chunk)."""
    decoded = [decode_file(c.media_path).samples for c in chunks]
    width = max(d.shape[1] for d in decoded)
    return np.concatenate([np.pad(d, ((0, 0), (0, width - d.shape[1]))) for d in decoded])


def peaks(block: np.ndarray, count: int = 1) -> list[float]:
    return sorted(round(f) for f in dominant_frequencies(block, RATE, count))


def secs(a: float, b: float) -> slice:
    return slice(int(a * RATE), int(b * RATE))


# ---------------------------------------------------------------------------- formats


def test_mixed_wav_has_every_tone_and_the_streamed_duration(clean: Run) -> None:
    (chunk,) = clean.chunks["wav"]
    audio = decode_file(chunk.media_path)
    assert (audio.sample_rate, audio.channels, audio.codec) == (16_000, 1, "pcm_s16le")
    assert abs(audio.duration_s - SECONDS) <= 0.020
    assert chunk.samples == len(audio.samples) and chunk.end_reason == ChunkEndReason.SESSION_ENDED
    mono = audio.channel(0)
    assert peaks(mono[secs(0.6, 0.95)]) == [500]
    assert peaks(mono[secs(1.1, 1.45)], 2) == [300, 500]
    assert peaks(mono[secs(2.0, 5.5)], 3) == [300, 500, 700]
    assert not mono[secs(0.0, 0.45)].any()  # nobody spoke yet


def test_mp3_is_16k_mono_48kbps_with_a_correct_duration_header(clean: Run) -> None:
    (chunk,) = clean.chunks["mp3"]
    audio = decode_file(chunk.media_path)
    assert (audio.sample_rate, audio.channels, audio.codec) == (16_000, 1, "mp3float")
    assert audio.bit_rate == 48_000
    assert abs(audio.duration_s - SECONDS) <= 0.020  # gapless: encoder delay trimmed
    assert audio.container_duration_s is not None and abs(audio.container_duration_s - SECONDS) <= 0.020
    assert abs(chunk.media_path.stat().st_size * 8 / SECONDS - 48_000) < 2_000
    assert chunk.content_type == "audio/mpeg"
    assert peaks(audio.channel(0)[secs(2.0, 5.5)], 3) == [300, 500, 700]


def test_unmixed_channels_follow_first_speech(clean: Run) -> None:
    (chunk,) = clean.chunks["unmixed"]
    audio = decode_file(chunk.media_path)
    assert (audio.sample_rate, audio.channels) == (16_000, 3)
    assert abs(audio.duration_s - SECONDS) <= 0.020
    assert [(p.participant_id, p.channel) for p in chunk.participants] == [(BOB, 0), (ALICE, 1), (CHEN, 2)]
    for channel, freq in enumerate((500, 300, 700)):
        assert peaks(audio.channel(channel)[secs(2.0, 5.5)]) == [freq]
    assert not audio.channel(1)[secs(0.0, 0.95)].any()  # Alice's channel before she spoke
    metadata = json.loads(chunk.metadata_path.read_text())
    assert metadata["recordingInfo"]["audioConfiguration"] == {"sampleRate": 16000, "bitRate": 768000, "channels": 3}


def test_pins_and_overflow_share_the_last_channel(clean: Run) -> None:
    (chunk,) = clean.chunks["pinned"]
    audio = decode_file(chunk.media_path)
    assert audio.channels == 2
    assert {p.participant_id: p.channel for p in chunk.participants} == {CHEN: 0, BOB: 1, ALICE: 1}
    assert peaks(audio.channel(0)[secs(2.0, 5.5)]) == [700]
    assert peaks(audio.channel(1)[secs(2.0, 5.5)], 2) == [300, 500]  # overflow mixed in, nobody dropped


# ---------------------------------------------------------------------------- pause / start / stop


def test_skip_pause_cuts_exactly_the_paused_span(clean: Run) -> None:
    reference = samples(clean.chunks["wav"])[:, 0]
    (chunk,) = clean.chunks["skip"]
    got = decode_file(chunk.media_path).channel(0)
    np.testing.assert_array_equal(got, np.concatenate([reference[secs(0, 2.0)], reference[int(3.0 * RATE) :]]))
    metadata = json.loads(chunk.metadata_path.read_text())
    assert metadata["pauseResumeIntervals"] == [{"startTime": "2024-05-14T09:00:02.000000Z", "duration": 1000}]
    assert metadata["chunkDuration"] == 5000


def test_silence_pause_keeps_the_timeline(clean: Run) -> None:
    reference = samples(clean.chunks["wav"])[:, 0]
    (chunk,) = clean.chunks["silence"]
    got = decode_file(chunk.media_path).channel(0)
    expected = reference.copy()
    expected[secs(2.0, 3.0)] = 0
    np.testing.assert_array_equal(got, expected)
    assert json.loads(chunk.metadata_path.read_text())["chunkDuration"] == 6000


def test_pause_on_start_resume_and_stop(clean: Run) -> None:
    reference = samples(clean.chunks["wav"])[:, 0]
    (chunk,) = clean.chunks["pause_on_start"]
    np.testing.assert_array_equal(decode_file(chunk.media_path).channel(0), reference[secs(1.0, 5.0)])
    metadata = json.loads(chunk.metadata_path.read_text())
    assert metadata["chunkStartTime"] == "2024-05-14T09:00:00.000000Z"
    assert metadata["pauseResumeIntervals"] == [{"startTime": "2024-05-14T09:00:00.000000Z", "duration": 1000}]


def test_redundant_pause_and_resume_are_no_ops(clean: Run) -> None:
    reference = samples(clean.chunks["wav"])[:, 0]
    (chunk,) = clean.chunks["double_pause"]
    got = decode_file(chunk.media_path).channel(0)
    np.testing.assert_array_equal(got, np.concatenate([reference[secs(0, 1.0)], reference[int(2.0 * RATE) :]]))
    assert chunk.pause_intervals[0].duration == timedelta(seconds=1)


# ---------------------------------------------------------------------------- chunks


def test_duration_chunks_are_continuous(clean: Run) -> None:
    chunks = clean.chunks["chunked"]
    assert [c.index for c in chunks] == list(range(6))
    assert [c.end_reason for c in chunks] == [ChunkEndReason.CHUNK_MAXIMUM_SIZE_EXCEEDED] * 5 + [
        ChunkEndReason.SESSION_ENDED
    ]
    assert all(c.samples == RATE for c in chunks)
    np.testing.assert_array_equal(samples(chunks), samples(clean.chunks["wav"]))
    starts = [json.loads(c.metadata_path.read_text())["chunkStartTime"] for c in chunks]
    assert starts == [f"2024-05-14T09:00:0{i}.000000Z" for i in range(6)]
    assert len({c.document_id for c in chunks}) == 6
    assert [c.index for c in clean.chunks["chunked"]] == list(range(6))  # announced in order


def test_byte_chunks_split_a_silence_pause_between_them(clean: Run) -> None:
    chunks = clean.chunks["chunked_bytes_silence"]
    assert [c.samples for c in chunks] == [20_800, 20_800, 20_800, 20_800, 12_800]
    assert all(c.size_bytes <= 44 + 2 * 20_800 for c in chunks)
    reference = samples(clean.chunks["silence"])
    np.testing.assert_array_equal(samples(chunks), reference)
    pauses = [json.loads(c.metadata_path.read_text())["pauseResumeIntervals"] for c in chunks]
    assert pauses[1] == [{"startTime": "2024-05-14T09:00:02.000000Z", "duration": 600}]
    assert pauses[2] == [{"startTime": "2024-05-14T09:00:02.600000Z", "duration": 400}]
    assert pauses[0] == pauses[3] == pauses[4] == []


def test_mp3_chunks_respect_the_byte_limit_and_lose_no_sample(clean: Run) -> None:
    chunks = clean.chunks["mp3_chunked"]
    assert len(chunks) == 2
    assert all(c.size_bytes <= 20_000 for c in chunks)
    for chunk in chunks:
        assert len(decode_file(chunk.media_path).samples) == chunk.samples
    assert sum(c.samples for c in chunks) == len(samples(clean.chunks["wav"]))


def test_unmixed_chunks_grow_channels_and_concatenate_to_the_whole(clean: Run) -> None:
    chunks = clean.chunks["unmixed_chunked"]
    widths = [decode_file(c.media_path).channels for c in chunks]
    assert widths == [2, 3, 3, 3, 3]
    assert [[p.participant_id for p in c.participants] for c in chunks][:2] == [[BOB, ALICE], [BOB, ALICE, CHEN]]
    np.testing.assert_array_equal(samples(chunks), samples(clean.chunks["unmixed"]))


# ---------------------------------------------------------------------------- metadata


def validators() -> list[Draft202012Validator]:
    paths = [SCHEMAS_DIR / SCHEMA_NAME]
    if SHARED_SCHEMAS.exists():
        paths.append(SHARED_SCHEMAS / SCHEMA_NAME)
    out = []
    for path in paths:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        out.append(Draft202012Validator(schema, format_checker=FormatChecker()))
    return out


def test_shipped_schemas_are_the_shared_ones() -> None:
    if not SHARED_SCHEMAS.exists():
        pytest.skip("shared/schemas is not beside the checkout")
    for path in SHARED_SCHEMAS.glob("*.schema.json"):
        assert (SCHEMAS_DIR / path.name).read_text() == path.read_text()


def test_every_chunk_metadata_validates_and_tells_the_truth(clean: Run) -> None:
    checks = validators()
    assert len(checks) == 2 or not SHARED_SCHEMAS.exists()
    for name, chunks in clean.chunks.items():
        for chunk in chunks:
            document = json.loads(chunk.metadata_path.read_text())
            for validator in checks:
                errors = [e.message for e in validator.iter_errors(document)]
                assert not errors, (name, chunk.index, errors)
            audio = decode_file(chunk.media_path)
            config = document["recordingInfo"]["audioConfiguration"]
            assert config["sampleRate"] == audio.sample_rate == 16_000
            assert config["channels"] == audio.channels
            expected_rate = 48_000 if chunk.content_type == "audio/mpeg" else 16_000 * 16 * audio.channels
            assert config["bitRate"] == expected_rate
            assert abs(document["chunkDuration"] - audio.duration_s * 1000) <= 20
            assert document["chunkIndex"] == chunk.index
            assert document["chunkDocumentId"] == chunk.document_id
            assert (document["resourceId"], document["callId"]) == ("res-1", "call-1")
            assert document["recordingInfo"]["contentType"] == "audio"


# ---------------------------------------------------------------------------- impaired input


def test_reordered_and_duplicated_input_gives_the_identical_recording(clean: Run, tmp_path: Path) -> None:
    impaired = record(tmp_path, Impairments(duplicate=0.05, reorder_window=6, seed=7),
                      names=["wav", "unmixed", "chunked"])
    for name in ("wav", "unmixed", "chunked"):
        np.testing.assert_array_equal(samples(impaired.chunks[name]), samples(clean.chunks[name]))
    duplicates = impaired.sent - clean.sent
    assert duplicates > 20
    counted = sum(s.frames_rejected_by_reason.get("duplicate", 0) for s in impaired.stats.values())
    assert counted == duplicates
    assert all(s.frames_late == 0 and s.gap_fill_ms == 0 for s in impaired.stats.values())


def test_lossy_input_keeps_time_and_fills_gaps_with_silence(clean: Run, tmp_path: Path) -> None:
    impaired = record(tmp_path, Impairments(loss=0.03, reorder_window=3, seed=11), names=["wav", "unmixed"])
    lost = clean.sent - impaired.sent
    assert lost > 10
    (chunk,) = impaired.chunks["wav"]
    audio = decode_file(chunk.media_path)
    assert abs(audio.duration_s - SECONDS) <= 0.020
    filled = sum(s.gap_fill_ms for s in impaired.stats.values())
    assert 20 * (lost - 3) <= filled <= 20 * lost  # a lost last frame is no gap
    unmixed = decode_file(impaired.chunks["unmixed"][0].media_path)
    for channel, freq in enumerate((500, 300, 700)):
        assert peaks(unmixed.channel(channel)[secs(2.0, 5.5)]) == [freq]
    reference = samples(clean.chunks["wav"])[:, 0]
    # Where no frame was lost the audio is the same; lost 20 ms slots are silent, never shifted.
    same = np.mean(np.abs(audio.channel(0).astype(np.int32) - reference) < 300)
    assert same > 0.85


# ---------------------------------------------------------------------------- real-time clock


async def test_realtime_pause_resume_and_stop_apply_to_what_was_heard_then(tmp_path: Path) -> None:
    """With a RealtimeClock the commands use wall-clock 'now'; media arrives a playout delay later."""
    fake = FakeTime()
    fmt = AudioFormat(AudioEncoding.PCM16LE, 16_000, 1)
    frames = encode_frames(tone(440.0, 4.0, start_sample=3), fmt)
    call = CallMedia("call", RealtimeClock(fake), PyAVAudioCodecs())
    call.add_participant("p", "P", fmt, "gw")
    opts = options(**MIXED_WAV)
    done: list[FinishedChunk] = []
    rec = AudioRecording("r", "call-1", opts, tmp_path, "res-1", writer_factory_for(opts), done.append)
    call.attach(rec)
    task = asyncio.create_task(call.run())
    finishing = None
    for i, frame in enumerate(frames):
        call.push_audio("p", i, 1_000_000 + i * 20_000, frame)
        if i == 50:
            rec.pause(fake.now())
        if i == 100:
            rec.resume(fake.now())
        if i == 150:
            finishing = asyncio.create_task(rec.finish(at=fake.now()))
        await fake.advance(0.020)
    assert finishing is not None
    (chunk,) = await finishing
    await call.close()
    await task
    assert chunk.samples == 100 * 320  # 0-1 s and 2-3 s of call time
    assert [c.index for c in done] == [0]
    assert chunk.pause_intervals[0].duration == timedelta(seconds=1)
    got = decode_file(chunk.media_path).channel(0)
    assert peaks(got[4000:-4000]) == [440]
