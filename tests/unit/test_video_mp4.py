"""Mp4Writer and VideoSession: stream parameters, A/V sync, fragments, pause, chunk rotation."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from callrec.media.video_decode import i420_size
from callrec.media.video_session import VideoSession
from callrec.media.writers.mp4 import Mp4Settings, Mp4Writer

FAST = Mp4Settings(preset="ultrafast")
SRC_W, SRC_H = 320, 180


def i420(luma: int) -> bytes:
    """A flat grey I420 source frame."""
    data = np.full(i420_size(SRC_W, SRC_H), 128, np.uint8)
    data[: SRC_W * SRC_H] = luma
    return data.tobytes()


def run_call(
    path: Path,
    seconds: float,
    flashes: tuple[float, ...] = (),
    settings: Mp4Settings = FAST,
    commands: dict[int, tuple[object, ...]] | None = None,
) -> tuple[VideoSession, list[tuple[object, ...]]]:
    """Drive a session like the server does: 30 fps camera + 20 ms mix ticks on one call clock.

    Each flash is 100 ms of white video and a 1 kHz beep, both starting with the first camera
    frame at or after the flash time (a camera samples every 1/30 s).
    """
    flashes = tuple(np.ceil(np.array(flashes) * 30 - 1e-9) / 30)
    events: list[tuple[object, ...]] = []
    session = VideoSession(path, settings, events.append)
    session.handle(("join", "cam", "Flash", "i420", SRC_W, SRC_H))
    session.handle(("join", "voice", "김민수", None, 0, 0))
    dark, white = i420(30), i420(235)
    next_frame = 0
    for tick in range(round(seconds / 0.02)):
        if commands and tick in commands:
            session.handle(commands[tick])
        t = tick * 0.02
        while next_frame / 30 < t + 0.02:  # camera frames due before this tick ends
            ft = next_frame / 30
            lit = any(f <= ft < f + 0.1 for f in flashes)
            session.handle(("video", "cam", white if lit else dark, ft, 0, 0))
            next_frame += 1
        ts = t + np.arange(320) / 16000
        beep = np.zeros(320)
        for f in flashes:
            on = (ts >= f) & (ts < f + 0.1)
            beep[on] = 12000 * np.sin(2 * np.pi * 1000 * (ts[on] - f))
        session.handle(("audio", beep.astype(np.int16).tobytes(), t, {"voice": True}))
    session.finish()
    return session, events


def video_onsets(path: Path) -> list[float]:
    """Times of frames where the camera's tile (left half of the 2-up grid) turns white."""
    onsets, was_lit = [], False
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            y = np.frombuffer(frame.planes[0], np.uint8).reshape(frame.height, -1)
            lit = bool(y[540, 480] > 128)
            if lit and not was_lit:
                onsets.append(float(frame.time))
            was_lit = lit
    return onsets


def audio_onsets(path: Path) -> list[float]:
    """Times where the 1 kHz beep starts (first loud sample after a quiet stretch)."""
    times, samples = [], []
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            pcm = frame.to_ndarray()[0]
            times.append(float(frame.time) + np.arange(pcm.size) / frame.sample_rate)
            samples.append(pcm)
    t, x = np.concatenate(times), np.abs(np.concatenate(samples))
    loud = x > 0.05
    onsets, last = [], -1.0
    for i in np.flatnonzero(loud):
        if t[i] - last > 0.3:
            onsets.append(float(t[i]))
        last = t[i]
    return onsets


def test_stream_parameters(tmp_path: Path) -> None:
    path = tmp_path / "call.mp4"
    _, events = run_call(path, 3.0, settings=Mp4Settings())
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, v.width, v.height, v.codec_context.pix_fmt) == ("h264", 1920, 1080, "yuv420p")
        assert v.average_rate == 16
        assert (a.codec_context.name, a.sample_rate, a.channels) == ("aac", 16000, 1)
        assert abs(c.duration / av.time_base - 3.0) <= 0.0625 + 0.13  # + AAC priming / B-frame delay
        keys = [float(p.pts * p.time_base) for p in c.demux(v) if p.pts is not None and p.is_keyframe]
    with av.open(str(path)) as c:
        times = [float(f.time) for f in c.decode(video=0)]
    assert len(times) == 48
    assert np.allclose(np.diff(times)[1:], 1 / 16)  # constant 16 fps
    assert len(keys) >= 2 and max(np.diff(keys)) <= 2.0
    chunk = [e for e in events if e[0] == "chunk"]
    assert chunk == [("chunk", str(path), path.stat().st_size, 3.0, 48)]
    assert [e[3] for e in events if e[0] == "progress"] == [1.0, 2.0, 3.0]
    # Bit rate: ~1 Mbps at most (a static grid is far below the cap).
    assert path.stat().st_size * 8 / 3.0 < 1.3e6


def test_flash_and_beep_stay_within_one_frame_at_start_and_end(tmp_path: Path) -> None:
    path = tmp_path / "sync.mp4"
    run_call(path, 6.0, flashes=(0.53, 5.47))
    video, audio = video_onsets(path), audio_onsets(path)
    assert len(video) == len(audio) == 2, (video, audio)
    for v, a in zip(video, audio, strict=True):
        assert abs(v - a) <= 0.0625, (video, audio)


@pytest.mark.slow
def test_sync_holds_over_a_minute(tmp_path: Path) -> None:
    path = tmp_path / "sync60.mp4"
    flashes = (0.53, 20.21, 40.37, 59.71)
    run_call(path, 60.0, flashes=flashes)
    video, audio = video_onsets(path), audio_onsets(path)
    assert len(video) == len(audio) == 4
    assert max(abs(v - a) for v, a in zip(video, audio, strict=True)) <= 0.0625


def test_truncated_file_decodes_up_to_its_last_complete_fragment(tmp_path: Path) -> None:
    path = tmp_path / "full.mp4"
    run_call(path, 4.0)
    data = path.read_bytes()
    boxes, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append((data[pos + 4 : pos + 8], pos, size))
        pos += size
    moofs = [(p, s) for kind, p, s in boxes if kind == b"moof"]
    assert len(moofs) >= 8  # a fragment every half second at least (crash loss)
    # Cut in the middle of the fifth fragment's media data (about 2 s in).
    fifth = moofs[4][0]
    mdat = next((p, s) for kind, p, s in boxes if kind == b"mdat" and p > fifth)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: mdat[0] + mdat[1] // 2])
    with av.open(str(path)) as c:
        expected = sum(1 for p in c.demux(video=0) if p.size and p.pos is not None and p.pos < fifth)
    decoded = 0
    with av.open(str(cut)) as c:
        try:
            for _ in c.decode(video=0):
                decoded += 1
        except av.FFmpegError:
            pass  # the torn fragment at the end
    assert expected >= 30 and decoded >= expected


def test_pause_skip_cuts_the_span_and_silence_keeps_it_with_a_slate(tmp_path: Path) -> None:
    pause_resume = {50: ("pause", False), 100: ("resume",)}
    skip, _ = run_call(tmp_path / "skip.mp4", 3.0, commands=pause_resume)
    assert skip.writer.duration == pytest.approx(2.0) and skip.writer.frames_written == 32
    silence_cmds = {50: ("pause", True), 100: ("resume",)}
    silent, _ = run_call(tmp_path / "silence.mp4", 3.0, flashes=(1.3,), commands=silence_cmds)
    assert silent.writer.duration == pytest.approx(3.0)
    assert audio_onsets(tmp_path / "silence.mp4") == []  # the beep fell in the pause: silenced
    with av.open(str(tmp_path / "silence.mp4")) as c:
            lumas = [float(np.frombuffer(f.planes[0], np.uint8).reshape(1080, -1)[540, 480]) for f in c.decode(video=0)]
    assert all(lu < 60 for lu in lumas[20:30])  # the slate, not the camera flash at 1.3 s


def test_rotate_starts_a_new_playable_chunk(tmp_path: Path) -> None:
    a, b = tmp_path / "0.mp4", tmp_path / "1.mp4"
    _, events = run_call(a, 2.0, commands={50: ("rotate", str(b))})
    chunks = [e for e in events if e[0] == "chunk"]
    assert [(Path(str(e[1])).name, e[3], e[4]) for e in chunks] == [("0.mp4", 1.0, 16), ("1.mp4", 1.0, 16)]
    for p in (a, b):
        with av.open(str(p)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 16


def test_writer_schedules_a_video_frame_every_1000_samples(tmp_path: Path) -> None:
    w = Mp4Writer(tmp_path / "w.mp4", FAST)
    y, u = np.full((1080, 1920), 16, np.uint8), np.full((540, 960), 128, np.uint8)
    v = u.copy()
    due = []
    for _ in range(25):  # 0.5 s of 20 ms blocks
        w.write_audio(np.zeros(320, np.int16))
        n = 0
        while w.video_due:
            w.write_video(y, u, v)
            n += 1
        due.append(n)
    w.close()
    assert w.frames_written == 8 and sum(due) == 8
    assert due[:4] == [1, 0, 0, 1]  # 3.125 ticks per frame
