"""`callrec.testing.run_call` end to end in-process, and what it makes easy to prove:
one piece of code places a participant's audio and video on the call timeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from callrec.core.model import ChannelType, ContentType, Format, PauseMode, RecordingOptions
from callrec.testing import EPOCH, Command, SimParticipant, dominant_frequencies, run_call
from callrec.testing.call import DecodedVideo, rgb_to_yuv, solid_i420

WAV = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV)
MP4 = RecordingOptions(content_type=ContentType.AUDIO_VIDEO, channel_type=ChannelType.MIXED, format=Format.MP4)
RATE = 16_000


async def test_the_docstring_example_pauses_and_joins_where_it_says() -> None:
    result = await run_call(
        [SimParticipant("alice", tone_hz=300), SimParticipant("bob", tone_hz=500, join_at=1.0)],
        seconds=4,
        recordings={"mixed": WAV},
        commands=[Command(2.0, "pause", "mixed"), Command(3.0, "resume", "mixed")],
    )
    mixed = result["mixed"]
    assert mixed.error is None
    assert len(mixed.audio) == 3 * RATE  # 4 s of call, the second from 2 s to 3 s cut (SKIP)
    assert dominant_frequencies(mixed.audio[: RATE, 0], count=1) == [300.0]
    assert sorted(dominant_frequencies(mixed.audio[2 * RATE + 1600 :, 0], count=2)) == [300.0, 500.0]
    (document,) = mixed.metadata
    assert document["pauseResumeIntervals"] == [{"startTime": "2024-05-14T09:00:02.000000Z", "duration": 1000}]
    assert [p["participantId"] for p in document["participants"]] == ["alice", "bob"]
    assert mixed.chunks[0].start_time == EPOCH


async def test_silence_pause_keeps_the_span_and_a_stop_ends_the_recording() -> None:
    silence = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV,
                               pause_mode=PauseMode.SILENCE)
    result = await run_call([SimParticipant("a", tone_hz=700)], seconds=3, recordings={"s": silence},
                            commands=[Command(1.0, "pause"), Command(1.5, "resume"), Command(2.5, "stop")])
    audio = result["s"].audio[:, 0]
    assert len(audio) == round(2.5 * RATE)
    assert np.abs(audio[RATE + 160 : RATE * 3 // 2 - 160]).max() == 0  # silence where paused
    assert dominant_frequencies(audio[RATE * 3 // 2 + 160 :], count=1) == [700.0]


# ------------------------------------------------------------------ A/V placement (issue 8, point 4)

W, H = 320, 180
PERIOD_S = 2.0
FLASH_S = 0.25
BASE_RGB = (40, 40, 40)


def beeps_and_flashes(first_s: float, beep_hz: float) -> tuple[Callable[[float, int], np.ndarray],
                                                               Callable[[float], bytes]]:
    """A participant that beeps at `beep_hz` and flashes white, together, at first_s + k * 2 s."""

    def on(t: float) -> bool:
        return t >= first_s and (t - first_s) % PERIOD_S < FLASH_S

    def audio(t: float, n: int) -> np.ndarray:
        times = t + np.arange(n) / RATE
        active = (times >= first_s) & (((times - first_s) % PERIOD_S) < FLASH_S)
        return np.where(active, np.rint(0.5 * 32767 * np.sin(2 * np.pi * beep_hz * times)), 0).astype(np.int16)

    white, base = solid_i420(160, 90, (235, 128, 128)), solid_i420(160, 90, rgb_to_yuv(BASE_RGB))

    def frames(t: float) -> bytes:
        return white if on(t) else base

    return audio, frames


def burst_starts(times: Sequence[float], gap: float = 0.5) -> list[float]:
    """The first time of each burst (bursts at least `gap` apart)."""
    starts: list[float] = []
    last: float | None = None
    for t in times:
        if last is None or t - last > gap:
            starts.append(t)
        last = t
    return starts


def beep_onsets(video: DecodedVideo, hz: float) -> list[float]:
    """When a tone of `hz` starts, on the file's clock (10 ms windows, magnitude at that frequency)."""
    hop = video.audio_rate // 100
    n = len(video.audio) // hop
    windows = video.audio[: n * hop].reshape(n, hop)
    t = np.arange(hop) / video.audio_rate
    probe = np.exp(-2j * np.pi * hz * t)
    level = np.abs(windows @ probe) / hop
    loud = np.flatnonzero(level > 0.1)
    # refine each onset to the sample: the first sample of the window above a small amplitude
    starts = []
    for first in burst_starts(list(loud * hop / video.audio_rate)):
        index = round(first * video.audio_rate)
        block = np.abs(video.audio[max(0, index - hop) : index + hop])
        starts.append((max(0, index - hop) + int(np.argmax(block > 0.05))) / video.audio_rate)
    return starts


def flash_onsets(video: DecodedVideo, centre: tuple[int, int]) -> list[float]:
    x, y = centre
    bright = [t for i, t in enumerate(video.frame_times) if video.luma(i)[y - 3 : y + 4, x - 3 : x + 4].mean() > 180]
    return burst_starts(bright)


async def test_each_participants_flash_stays_with_its_beep_whatever_its_capture_clock() -> None:
    """Three participants on one gateway stream: A on the gateway's clock, B's capture clock 5 s behind
    (it gets an anchor of its own), C's clock running 0.1 % fast. Each flashes with a beep every 2 s at
    its own pitch; in the mp4 every flash must be within one frame (62.5 ms) of its beep."""
    cast = []
    for pid, first, hz, offset, drift in (("a", 0.5, 1000.0, 0.0, 0.0), ("b", 1.5, 2000.0, -5.0, 0.0),
                                          ("c", 1.0, 3000.0, 0.0, 0.001)):
        audio, frames = beeps_and_flashes(first, hz)
        cast.append(SimParticipant(pid, f"Person {pid}", audio=audio, frames=frames, fps=16.0,
                                   clock_offset_s=offset, clock_drift=drift))
    result = await run_call(cast, seconds=14, recordings={"v": MP4}, keep_frames=lambda i: True)
    rec = result["v"]
    assert rec.error is None
    (video,) = rec.videos
    centres = [(W // 4, H // 4), (3 * W // 4, H // 4), (W // 4, 3 * H // 4)]  # 2x2 grid, join order
    for (pid, hz), centre in zip((("a", 1000.0), ("b", 2000.0), ("c", 3000.0)), centres, strict=True):
        flashes, beeps = flash_onsets(video, centre), beep_onsets(video, hz)
        assert len(flashes) >= 6 and len(flashes) == len(beeps), (pid, flashes, beeps)
        offsets = [f - b for f, b in zip(flashes, beeps, strict=True)]
        assert max(abs(o) for o in offsets) <= 0.0625, (pid, offsets)


@pytest.mark.parametrize("offset", [-3.0, 4.0])
async def test_a_participant_off_its_gateways_clock_is_recorded_in_sync_both_ways(offset: float) -> None:
    """Behind or ahead of its gateway by seconds, it gets a clock anchor of its own for picture and voice."""
    audio, frames = beeps_and_flashes(0.5, 1500.0)
    cast = [SimParticipant("gw-clock", colour=(0, 0, 200), tone_hz=None, audio=lambda t, n: np.zeros(n, np.int16)),
            SimParticipant("skewed", audio=audio, frames=frames, fps=16.0, clock_offset_s=offset)]
    result = await run_call(cast, seconds=7, recordings={"v": MP4}, keep_frames=lambda i: True)
    (video,) = result["v"].videos
    flashes, beeps = flash_onsets(video, (3 * W // 4, H // 2)), beep_onsets(video, 1500.0)
    assert len(flashes) >= 3 and len(flashes) == len(beeps), (flashes, beeps)
    assert max(abs(f - b) for f, b in zip(flashes, beeps, strict=True)) <= 0.0625


async def test_the_files_of_a_spool_run_call_made_go_with_the_result(tmp_path: Path) -> None:
    """A test suite calling `run_call` thousands of times must not fill the temp folder: the directory it made
    lives as long as the result (the chunk paths stay readable while it is held), a given one is the caller's."""
    import gc

    result = await run_call([SimParticipant("alice", tone_hz=300)], seconds=1, recordings={"mixed": WAV})
    made = result.spool_dir
    assert made is not None and made.name.startswith("callrec-run-call-")
    chunk_paths = [chunk.media_path for chunk in result["mixed"].chunks]
    assert chunk_paths and all(path.is_file() and path.is_relative_to(made) for path in chunk_paths)
    del result
    gc.collect()
    assert not made.exists()

    again = await run_call([SimParticipant("alice", tone_hz=300)], seconds=1, recordings={"mixed": WAV})
    assert again.spool_dir is not None and again.spool_dir.exists()
    again.cleanup()
    assert not again.spool_dir.exists()

    kept = await run_call([SimParticipant("alice", tone_hz=300)], seconds=1, recordings={"mixed": WAV},
                          spool_dir=tmp_path / "spool")
    kept.cleanup()
    del kept
    gc.collect()
    assert [p.suffix for p in (tmp_path / "spool").rglob("*.wav")] == [".wav"]


def test_measure_audio_pipeline_leaves_no_files_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from callrec.testing import measure_audio_pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    figures = measure_audio_pipeline(2, 1.0, recordings=("wav",))
    assert figures["cpu_s"] > 0
    assert list(tmp_path.iterdir()) == []
