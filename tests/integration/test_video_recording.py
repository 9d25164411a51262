"""MP4 (audio_video) recording end to end through a real server: a gateway streams synthetic
participants (a tone and a solid colour or a test pattern each), the recording is stored, its
chunks are downloaded through ContentService and decoded with PyAV, and what a viewer would see
is checked: stream parameters, the colour at each tile's centre for every layout, the 3x3 of most
active speakers, name cards and labels, compressed inputs, audio-video sync, chunk rotation,
pause, metadata and events against the ACS schemas, and a crashed video worker failing only its
recording.

Most tests use the session server on the media clock (a call is processed as fast as it is
sent); the pause test needs the real-time clock. Inputs are small (64x48 I420 at 8 fps) so the
file runs in about 35 s on two cores (the output is always 1920x1080); the 60 s sync check is
marked slow (~25 s).

The crash test sets `CALLREC_TEST_VIDEO_WORKER_CRASH_AFTER_S` in its server's environment: each
mp4 recording then SIGKILLs its own video worker after that much media (`callrec.media.video_output`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from callrec.media.video_output import CRASH_AFTER_ENV
from callrec.testing import dominant_frequencies, participant_frequency, tone
from callrec.v1 import events_pb2 as epb
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient
from callrec_client.gateway import GatewayConnection
from callrec_client.sim_video import COLOURS, VideoEncoder, VideoPattern, add_beeps, i420_from_rgb, solid_i420
from tests.harness import unique
from tests.integration.audio_recording import FILE_STATUS, download
from tests.integration.test_events import collect
from tests.integration.test_recording_service import wait_state

RATE = 16_000
FPS = 16
W, H = 1920, 1080
FAILED_EVENT = "Microsoft.Communication.StartRecordingFailed"
#: Input video: small, so the test spends its time on what the server does.
IN_W, IN_H, IN_FPS = 64, 48, 8


def yuv_of(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The exact (Y, U, V) that a solid I420 frame of `rgb` carries."""
    data = i420_from_rgb(np.full((2, 2, 3), rgb, np.uint8))
    return data[0], data[4], data[5]


#: One distinct colour per participant (YUV), as the gateway sends it.
PALETTE = [yuv_of(rgb) for rgb in COLOURS]


def grid_centres(count: int) -> list[tuple[int, int]]:
    """Tile centres of SPEC §2's layouts, row by row: 1 full, 2 side by side, 2x2, 3x3."""
    cols, rows = (1, 1) if count == 1 else (2, 1) if count == 2 else (2, 2) if count <= 4 else (3, 3)
    return [(W * (2 * c + 1) // (2 * cols), H * (2 * r + 1) // (2 * rows)) for r in range(rows) for c in range(cols)]


# ---------------------------------------------------------------------------------------------- a call


@dataclass
class Person:
    """A synthetic participant: a tone while `speaks(t)`, a solid colour (YUV) or no video."""

    pid: str
    name: str
    colour: tuple[int, int, int] | None
    index: int = 0
    codec: str = "i420"
    speaks: Callable[[float], bool] = lambda t: True
    video_until: float | None = None
    size: tuple[int, int] = (IN_W, IN_H)
    fps: float = IN_FPS
    frames: Callable[[float], bytes] | None = None  # custom I420 frames (default: solid colour)
    audio: Callable[[float, int], np.ndarray] | None = None  # custom 16 kHz PCM for [t, t + n)


def people(count: int, silent: Iterable[int] = ()) -> list[Person]:
    quiet = set(silent)
    return [Person(f"p{i}", f"Person {i}", PALETTE[i], i, speaks=(lambda t: False) if i in quiet else (lambda t: True))
            for i in range(count)]


@dataclass
class Message:
    ts_us: int
    kind: int  # 0 video, 1 audio: at equal times the frame goes first (see `messages`)
    pid: str
    seq: int
    data: bytes
    width: int = 0
    height: int = 0
    keyframe: bool = False


def messages(cast: Sequence[Person], seconds: float, start_us: int = 1_000_000) -> list[Message]:
    """Every gateway message of the call, in capture order, a video frame before the audio of its instant.

    The media clock mixes a tick as soon as its audio is in, so a frame sent after the audio
    of its own instant would be composited one output frame late; a real-time gateway's
    frames have the playout delay (200 ms) to arrive.
    """
    out: list[Message] = []
    block = RATE // 50
    for p in cast:
        freq = participant_frequency(p.index)
        for i in range(round(seconds * 50)):
            t = i / 50
            if p.audio is not None:
                pcm = p.audio(t, block)
            elif p.speaks(t):
                pcm = tone(freq, 0.02, RATE, start_sample=i * block)
            else:
                pcm = np.zeros(block, np.int16)
            out.append(Message(start_us + i * 20_000, 1, p.pid, i + 1, pcm.astype("<i2").tobytes()))
        if p.colour is None and p.frames is None:
            continue
        w, h = p.size
        encoder = VideoEncoder(p.codec, w, h, p.fps) if p.codec != "i420" else None
        for i in range(int(seconds * p.fps)):
            t = i / p.fps
            if p.video_until is not None and t >= p.video_until:
                break
            data = p.frames(t) if p.frames is not None else solid_i420(w, h, p.colour)  # type: ignore[arg-type]
            key = True
            if encoder is not None:
                data, key = encoder.encode(data)
                if not data:
                    continue
            out.append(Message(start_us + round(t * 1e6), 0, p.pid, i + 1, data, w, h, key))
    out.sort(key=lambda m: (m.ts_us, m.kind))
    return out


@dataclass
class Video:
    """A decoded mp4 chunk: stream parameters, per-frame times and mean luma, kept frames, audio.

    `audio` is placed by presentation time (index / 16000 = seconds on the file's clock, the
    same clock as `frame_times`), not merely concatenated: the muxer may start a stream late
    (B-frame and AAC priming delays), and sync is about timestamps, which is what players obey.
    """

    path: Path
    width: int
    height: int
    codec: str
    pix_fmt: str
    rate: Fraction
    frame_times: list[float]
    mean_y: list[float]
    kept: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    audio: np.ndarray  # float32 in [-1, 1], mono, placed by pts
    audio_rate: int
    audio_channels: int
    audio_codec: str
    container_duration_s: float

    @property
    def start_s(self) -> float:
        """When the recorded media starts on the file's clock (the first video frame)."""
        return self.frame_times[0]

    def audio_between(self, a: float, b: float) -> np.ndarray:
        """Audio from `a` to `b` seconds of recorded media."""
        return self.audio[round((self.start_s + a) * self.audio_rate) : round((self.start_s + b) * self.audio_rate)]

    @property
    def audio_duration_s(self) -> float:
        """Decoded audio from the start of the recorded media (AAC pads the end by < 1024 samples)."""
        return len(self.audio) / self.audio_rate - self.start_s


def decode_video(path: Path, keep: Callable[[int], bool] = lambda i: True) -> Video:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        times, means, kept = [], [], {}
        for i, frame in enumerate(container.decode(stream)):
            times.append(float(frame.time or 0.0))
            y = frame.to_ndarray(format="yuv420p")
            luma = y[:H]
            means.append(float(luma.mean()))
            if keep(i):
                u = y[H : H + H // 4].reshape(H // 2, W // 2)
                v = y[H + H // 4 :].reshape(H // 2, W // 2)
                kept[i] = (luma.copy(), u.copy(), v.copy())
        width, height, codec, pix_fmt = ctx.width, ctx.height, ctx.name, ctx.pix_fmt or ""
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        duration = container.duration / 1e6 if container.duration else 0.0
    with av.open(str(path)) as container:
        astream = container.streams.audio[0]
        actx = astream.codec_context
        pieces = [(round(float(f.time or 0.0) * actx.sample_rate), f.to_ndarray().reshape(-1))
                  for f in container.decode(astream)]
    audio = np.zeros(max(at + len(x) for at, x in pieces), np.float32)
    for at, x in pieces:
        audio[at : at + len(x)] = x
    return Video(path, width, height, codec, pix_fmt, rate, times, means, kept, audio, actx.sample_rate,
                 actx.channels, actx.name, duration)


def onsets(times: Sequence[float]) -> list[float]:
    """The first of each burst of times (bursts at least 0.5 s apart)."""
    return [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.5]


def sync_offsets(video: Video) -> list[float]:
    """Flash (first bright frame) minus beep (first loud sample), per second, on the file's clock."""
    flashes = onsets([t for t, m in zip(video.frame_times, video.mean_y, strict=True) if m > 180])
    beeps = onsets(list(np.flatnonzero(np.abs(video.audio) > 0.12) / video.audio_rate))
    assert len(flashes) == len(beeps), (flashes, beeps)
    return [f - b for f, b in zip(flashes, beeps, strict=True)]


def colour_at(frame: tuple[np.ndarray, np.ndarray, np.ndarray], x: int, y: int, r: int = 4) -> tuple[float, ...]:
    """Mean (Y, U, V) of a small square around (x, y)."""
    yy, u, v = frame
    return (float(yy[y - r : y + r, x - r : x + r].mean()),
            float(u[y // 2 - r // 2 : y // 2 + r // 2, x // 2 - r // 2 : x // 2 + r // 2].mean()),
            float(v[y // 2 - r // 2 : y // 2 + r // 2, x // 2 - r // 2 : x // 2 + r // 2].mean()))


def near(found: Sequence[float], expected: Sequence[int], tol: float = 6.0) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(found, expected, strict=True))


def tile_colours(frame: tuple[np.ndarray, np.ndarray, np.ndarray], count: int) -> list[tuple[float, ...]]:
    return [colour_at(frame, x, y) for x, y in grid_centres(count)]


def owner(found: Sequence[float], cast: Sequence[Person]) -> str | None:
    """Whose colour is shown (None: no participant's)."""
    for p in cast:
        if p.colour is not None and near(found, p.colour):
            return p.pid
    return None


@dataclass
class Recorded:
    recording: pb.Recording
    events: list[epb.Event]
    chunks: list[Path]
    metadata: list[dict]
    videos: list[Video] = field(default_factory=list)

    @property
    def file_status(self) -> epb.Event:
        (event,) = [e for e in self.events if e.event_type == FILE_STATUS]
        return event


async def record(
    target: str,
    cast: Sequence[Person],
    seconds: float,
    tmp: Path,
    *,
    keep: Callable[[int], bool] = lambda i: True,
    expect: int = pb.RECORDING_STATE_COMPLETED,
    **options,
) -> Recorded:
    """Open a call with `cast`, record it as mp4, send `seconds` of media, end, fetch and decode."""
    call_id = unique("video")
    async with AsyncCallrecClient(target) as client, GatewayConnection(target, call_id, gateway_id="gw") as gw:
        for p in cast:
            video = None if p.colour is None and p.frames is None else p.codec
            await gw.join(p.pid, p.name, video=video, width=p.size[0] if video else 0,
                          height=p.size[1] if video else 0)
        rec = await client.start_recording(call_id, content_type="audio_video", format="mp4", **options)
        for m in messages(cast, seconds):
            if m.kind == 1:
                await gw.audio(m.pid, m.seq, m.ts_us, m.data)
            else:
                await gw.video(m.pid, m.seq, m.ts_us, m.data, m.width, m.height, m.keyframe)
        await gw.end()
        done = await wait_state(client, rec.recording_id, expect, timeout=90)
        # active, inactive, then the file status (or the failure)
        events = await collect(client, 3, timeout=30, recording_id=rec.recording_id, from_oldest=True)
        out = Recorded(done, events, [], [])
        for chunk in done.chunks:
            path = tmp / f"{rec.recording_id[-8:]}-{chunk.index}.mp4"
            path.write_bytes(await download(client, chunk.content_location))
            out.chunks.append(path)
            out.metadata.append(json.loads(await download(client, chunk.metadata_location)))
    out.videos = [decode_video(path, keep) for path in out.chunks]
    return out


def check_documents(rec: Recorded, validate_json: Callable[[str, object], None]) -> None:
    """Event and metadata JSON valid against the ACS schemas, with the mp4 values."""
    doc = json.loads(rec.file_status.json)
    validate_json("recording-file-status-updated", doc)
    data = doc["data"]
    assert (data["recordingContentType"], data["recordingChannelType"], data["recordingFormatType"]) == (
        "AudioVideo", "Mixed", "Mp4")
    chunks = data["recordingStorageInfo"]["recordingChunks"]
    assert [c["index"] for c in chunks] == list(range(len(rec.chunks)))
    assert chunks[-1]["endReason"] == "SessionEnded"
    assert all(c["endReason"] == "ChunkMaximumSizeExceeded" for c in chunks[:-1])
    for chunk, meta, video in zip(chunks, rec.metadata, rec.videos, strict=True):
        validate_json("recording-chunk-metadata", meta)
        assert meta["chunkDocumentId"] == chunk["documentId"] and meta["chunkIndex"] == chunk["index"]
        info = meta["recordingInfo"]
        assert (info["contentType"], info["channelType"], info["format"]) == ("audioVideo", "mixed", "mp4")
        assert info["videoConfiguration"] == {
            "longerSideLength": 1920, "shorterSideLength": 1080, "frameRate": 16, "bitRate": 1_000_000}
        assert info["audioConfiguration"] == {"sampleRate": 16000, "bitRate": 48000, "channels": 1}
        # the metadata tells the truth about the file it describes
        assert 0 <= video.audio_duration_s - meta["chunkDuration"] / 1000 <= 0.07
        # whole video frames: the last one lasts until the audio ends (a cut mid-frame keeps it)
        assert 0 <= len(video.frame_times) / FPS - meta["chunkDuration"] / 1000 < 1 / FPS
    assert chunks[-1]["contentLocation"] == rec.recording.chunks[-1].content_location


# ---------------------------------------------------------------------------------------------- tests


async def test_stream_parameters_metadata_and_events(server, tmp_path, validate_json):
    cast = people(1)
    rec = await record(server.target, cast, 3.0, tmp_path)
    (video,) = rec.videos
    assert (video.width, video.height, video.codec, video.pix_fmt) == (1920, 1080, "h264", "yuv420p")
    assert video.rate == 16
    assert len(video.frame_times) == 48
    assert np.allclose(np.diff(video.frame_times), 1 / FPS)  # a constant 16 fps, no gap, no repeat
    assert (video.audio_rate, video.audio_channels, video.audio_codec) == (16000, 1, "aac")
    assert 0 <= video.audio_duration_s - 3.0 <= 0.07
    # the container's duration counts the muxer's start offset (B-frame delay, 2 frames) too
    assert 3.0 <= video.container_duration_s <= 3.0 + video.start_s + 0.07 and video.start_s <= 0.125
    (peak,) = dominant_frequencies(video.audio_between(1.0, 2.0), RATE)
    assert abs(peak - participant_frequency(0)) < 10
    for index in (8, 47):  # one participant: full frame, its colour at the centre
        assert near(colour_at(video.kept[index], W // 2, H // 2), PALETTE[0]), colour_at(video.kept[index], 960, 540)
    assert abs(rec.recording.duration.ToMilliseconds() - 3000) <= 20
    assert [p.participant_id for p in rec.recording.participants] == ["p0"]
    assert [p["participantId"] for p in rec.metadata[0]["participants"]] == ["p0"]
    check_documents(rec, validate_json)
    kinds = [e.event_type for e in rec.events]
    assert kinds[-1] == FILE_STATUS


@pytest.mark.parametrize("count", [2, 4, 9])
async def test_tile_centres_show_each_participant_in_join_order(server, tmp_path, count):
    cast = people(count)
    rec = await record(server.target, cast, 2.0, tmp_path, keep=lambda i: i in (4, 31))
    (video,) = rec.videos
    for index in (4, 31):
        found = tile_colours(video.kept[index], count)
        assert [owner(c, cast) for c in found] == [p.pid for p in cast], (index, found)


async def test_twelve_participants_show_the_nine_active_speakers(server, tmp_path):
    silent = {2, 6, 10}
    cast = people(12, silent=silent)
    rec = await record(server.target, cast, 3.0, tmp_path, keep=lambda i: i == 46)
    shown = [owner(c, cast) for c in tile_colours(rec.videos[0].kept[46], 9)]
    assert None not in shown, shown
    assert sorted(shown) == sorted(p.pid for p in cast if p.index not in silent)


async def test_a_tenth_speaker_takes_the_least_recently_active_slot(server, tmp_path):
    cast = people(10)
    for p in cast:  # 0-7 speak throughout; 8 speaks until 1.5 s; 9 from 1.5 s on
        if p.index == 8:
            p.speaks = lambda t: t < 1.5
        elif p.index == 9:
            p.speaks = lambda t: t >= 1.5
    rec = await record(server.target, cast, 4.5, tmp_path, keep=lambda i: i in (16, 70))
    video = rec.videos[0]
    before = [owner(c, cast) for c in tile_colours(video.kept[16], 9)]
    after = [owner(c, cast) for c in tile_colours(video.kept[70], 9)]
    assert before == [f"p{i}" for i in range(9)]
    assert after == [f"p{i}" for i in range(8)] + ["p9"]  # same slots for the others: no reshuffle


async def test_name_card_label_and_stale_video(server, tmp_path):
    cast = [
        Person("cam", "김민수", PALETTE[0], 0),  # Korean display name on a live tile
        Person("voice", "Voice Only", None, 1),  # joined without video: a name card
        Person("gone", "Camera Off", PALETTE[2], 2, video_until=0.75),  # stops sending: card after a while
    ]
    rec = await record(server.target, cast, 3.0, tmp_path, keep=lambda i: i in (8, 44))
    video = rec.videos[0]
    early, late = video.kept[8], video.kept[44]
    centres = grid_centres(3)
    assert owner(colour_at(early, *centres[0]), cast) == "cam"
    assert owner(colour_at(early, *centres[2]), cast) == "gone"  # its last frame is kept for a moment
    assert owner(colour_at(late, *centres[2]), cast) is None  # ... then the name card replaces it
    y = late[0]

    def tile(index: int) -> np.ndarray:
        x, cy = centres[index]
        return y[cy - 268 : cy + 268, x - 478 : x + 478]

    for index in (1, 2):  # name cards: a coloured card with white text in its middle band
        card = tile(index)
        assert (card[200:336] > 200).sum() > 500, f"no name text on card {index}"
        assert 40 < float(np.median(card)) < 200
    live = tile(0)
    picture_rows = live[:400]  # the solid picture above the label: no bright pixels at all
    assert (picture_rows > 200).sum() == 0
    label_rows = live[420:]  # the label at the bottom left: white glyphs of 김민수
    assert (label_rows > 200).sum() > 100
    assert (live[420:, 500:] > 200).sum() == 0  # a short name: the label stays at the left


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_compressed_inputs(server, tmp_path, codec):
    cast = [Person("a", "A", PALETTE[3], 0, codec=codec, size=(160, 120), fps=16),
            Person("b", "B", PALETTE[4], 1, codec=codec, size=(176, 144), fps=12)]
    rec = await record(server.target, cast, 2.0, tmp_path, keep=lambda i: i in (10, 31))
    for index in (10, 31):
        found = tile_colours(rec.videos[0].kept[index], 2)
        assert [owner(c, cast) for c in found] == ["a", "b"], found


async def test_flash_and_beep_stay_in_sync(server, tmp_path):
    """sim_video's flash (video) and beep (audio) share a timestamp: the file keeps them within a frame."""
    pattern = VideoPattern(0, "Sync", 160, 90, 15)
    cast = [Person("sync", "Sync", PALETTE[0], 0, frames=pattern.frame, size=(160, 90), fps=15,
                   audio=lambda t, n: add_beeps(np.zeros(n, np.int16), RATE, t))]
    rec = await record(server.target, cast, 6.0, tmp_path, keep=lambda i: False)
    offsets = sync_offsets(rec.videos[0])
    assert len(offsets) == 6  # flashes at 0, 1, ..., 5 s
    assert max(abs(o) for o in offsets) <= 0.0625, offsets


async def test_chunk_rotation_by_duration(server, tmp_path, validate_json):
    cast = people(2)
    rec = await record(server.target, cast, 5.0, tmp_path, keep=lambda i: i == 8,
                       chunk_max_duration=timedelta(seconds=2))
    assert [len(v.frame_times) for v in rec.videos] == [32, 32, 16]
    assert [m["chunkDuration"] for m in rec.metadata] == [2000, 2000, 1000]
    starts = [datetime.fromisoformat(m["chunkStartTime"]) for m in rec.metadata]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(starts)] == [2.0, 2.0]
    for video in rec.videos:  # each chunk stands alone: decodable from its start, with both colours
        assert [owner(c, cast) for c in tile_colours(video.kept[8], 2)] == ["p0", "p1"]
    assert abs(rec.recording.duration.ToMilliseconds() - 5000) <= 20
    check_documents(rec, validate_json)


async def test_chunk_rotation_by_size(server, tmp_path, validate_json):
    """chunk_max_bytes is a ceiling: the size the worker reported plus the rest at the encoder's cap."""
    limit = 300_000
    rec = await record(server.target, people(2), 5.0, tmp_path, keep=lambda i: False, chunk_max_bytes=limit)
    sizes = [path.stat().st_size for path in rec.chunks]
    assert len(sizes) >= 2 and max(sizes) <= limit, sizes
    durations = [m["chunkDuration"] for m in rec.metadata]
    assert sum(durations) == 5000 and min(durations[:-1]) >= 1000, durations  # no sample lost or repeated
    check_documents(rec, validate_json)


async def test_pause_silence_and_skip_in_real_time(make_server, tmp_path):
    """Real-time clock: pause from ~1.2 s to ~2.2 s; SILENCE keeps a slate, SKIP cuts the span."""
    srv = make_server("--clock", "realtime")
    colour = PALETTE[1]
    seconds = 3.5

    async def run(mode: str) -> tuple[Recorded, list[float]]:
        call_id = unique(mode)
        async with AsyncCallrecClient(srv.target) as client, GatewayConnection(srv.target, call_id) as gw:
            await gw.join("p", "Paused", video="i420", width=IN_W, height=IN_H)
            rec = await client.start_recording(call_id, content_type="audio_video", format="mp4", pause_mode=mode)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            marks: list[float] = []
            cast = [Person("p", "Paused", colour, 0)]
            for m in messages(cast, seconds, start_us=5_000_000):
                due = t0 + (m.ts_us - 5_000_000) / 1e6
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not marks and loop.time() - t0 >= 1.2:
                    await client.pause_recording(rec.recording_id)
                    marks.append(loop.time() - t0)
                elif len(marks) == 1 and loop.time() - t0 >= 2.2:
                    await client.resume_recording(rec.recording_id)
                    marks.append(loop.time() - t0)
                if m.kind == 1:
                    await gw.audio(m.pid, m.seq, m.ts_us, m.data)
                else:
                    await gw.video(m.pid, m.seq, m.ts_us, m.data, m.width, m.height)
            await client.stop_recording(rec.recording_id)
            done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=60)
            chunk = done.chunks[0]
            path = tmp_path / f"{mode}.mp4"
            path.write_bytes(await download(client, chunk.content_location))
            meta = json.loads(await download(client, chunk.metadata_location))
            await gw.end()
        return Recorded(done, [], [path], [meta], [decode_video(path, keep=lambda i: False)]), marks

    (silence, s_marks), (skip, k_marks) = await asyncio.gather(run("silence"), run("skip"))
    for rec, marks in ((silence, s_marks), (skip, k_marks)):
        (interval,) = rec.metadata[0]["pauseResumeIntervals"]
        assert abs(interval["duration"] / 1000 - (marks[1] - marks[0])) <= 0.15, (interval, marks)
    slate_luma = [m for m in silence.videos[0].mean_y if abs(m - 40) < 15]  # dark slate vs the colour
    assert 10 <= len(slate_luma) <= 20  # about one second of "Recording paused" frames (16 fps)
    paused = silence.videos[0].audio_between(s_marks[0] + 0.15, s_marks[1] - 0.15)
    assert np.abs(paused).max() < 0.01  # silence while paused (AAC rounding aside)
    assert not any(abs(m - 40) < 15 for m in skip.videos[0].mean_y)  # skip: no slate, the span is cut
    full, cut = (len(rec.videos[0].frame_times) / FPS for rec in (silence, skip))
    assert abs((full - cut) - (k_marks[1] - k_marks[0])) <= 0.2, (full, cut, k_marks)


async def test_crashed_worker_fails_only_its_recording(make_server, tmp_path, validate_json):
    """With CALLREC_TEST_VIDEO_WORKER_CRASH_AFTER_S the server SIGKILLs each mp4 worker after 1 s of media."""
    srv = make_server("--clock", "media", "--reconnect-grace", "2", env={CRASH_AFTER_ENV: "1"})
    rec = await record(srv.target, people(2), 3.0, tmp_path, expect=pb.RECORDING_STATE_FAILED)
    assert "video worker exited unexpectedly (killed by signal 9)" in rec.recording.error.message
    assert rec.recording.session_end_reason == "MediaFailed"  # failed at once, not when the call ended
    failure = [e for e in rec.events if e.event_type == FAILED_EVENT]
    assert failure and "video worker" in json.loads(failure[0].json)["data"]["resultInformation"]["message"]
    # the server is unharmed: another recording on it completes
    async with AsyncCallrecClient(srv.target) as client, GatewayConnection(srv.target, "after-crash") as gw:
        await gw.join("a", "A")
        ok = await client.start_recording("after-crash", content_type="audio", format="wav")
        for i in range(50):
            await gw.audio("a", i + 1, 1_000_000 + i * 20_000, tone(440, 0.02, RATE, start_sample=i * 320).tobytes())
        await gw.end()
        await wait_state(client, ok.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)


@pytest.mark.slow
async def test_sync_over_a_minute(server, tmp_path):
    """The issue's long sync check: flash vs beep at the start and the end of a 60 s recording."""
    pattern = VideoPattern(0, "Sync", 160, 90, 15)
    cast = [Person("sync", "Sync", PALETTE[0], 0, frames=pattern.frame, size=(160, 90), fps=15,
                   audio=lambda t, n: add_beeps(np.zeros(n, np.int16), RATE, t))]
    rec = await record(server.target, cast, 60.0, tmp_path, keep=lambda i: False)
    offsets = sync_offsets(rec.videos[0])
    assert len(offsets) == 60
    assert max(abs(o) for o in offsets) <= 0.0625, offsets  # at the start, the end and in between
