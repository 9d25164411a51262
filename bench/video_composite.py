"""What one 1080p16 mp4 composite costs: CPU seconds per minute, and recordings per machine.

Nine participants send 640x360 camera-like video (moving pattern + sensor noise, 30 fps,
raw I420 so decoding is a copy); the call is composited into the 3x3 grid and encoded
with libx264 at each preset, with the writer's rate control (crf + 1 Mbps VBV ceiling).
Rows: compositing alone, each preset's full path (compose + encode + AAC + mux, through
`VideoSession`, the code the worker runs), bit rate and luma PSNR against the composite.

    .venv/bin/python bench/video_composite.py [--seconds 20] [--presets ultrafast,superfast,veryfast]
    .venv/bin/python bench/video_composite.py --png /tmp/callrec-frames   # also render layouts

Not run by the tests: it takes about a minute on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

from callrec.media.compositor import Compositor
from callrec.media.video_decode import i420_size, planes_to_frame
from callrec.media.video_session import VideoSession
from callrec.media.writers.mp4 import Mp4Settings
from callrec.media.yuv import planes_to_rgb, rgb_to_yuv

SRC_W, SRC_H, SRC_FPS = 640, 360, 30
NAMES = ["Alice Smith", "김민수", "王小明", "さくら", "Ольга Петрова", "Jean-François", "Bob", "李四", "Zoë"]
PALETTE = [(200, 60, 60), (60, 160, 80), (60, 80, 200), (200, 180, 60), (170, 70, 170),
           (60, 170, 170), (220, 130, 40), (120, 90, 160), (140, 140, 140)]


def camera_frames(index: int, count: int = 30) -> list[bytes]:
    """A looping I420 clip: a lit background, a moving 'head' and per-frame sensor noise."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:SRC_H, 0:SRC_W]
    base = rgb_to_yuv(np.array(PALETTE[index], np.uint8))
    frames = []
    for k in range(count):
        cx = SRC_W / 2 + 60 * np.sin(2 * np.pi * k / count)
        cy = SRC_H / 2 + 20 * np.cos(2 * np.pi * k / count)
        head = ((xx - cx) ** 2 / 90**2 + (yy - cy) ** 2 / 120**2) < 1
        y = base[0] * (0.75 + 0.25 * xx / SRC_W) + np.where(head, 50, 0) + rng.normal(0, 2, (SRC_H, SRC_W))
        u = np.full((SRC_H // 2, SRC_W // 2), base[1])
        v = np.full((SRC_H // 2, SRC_W // 2), base[2])
        data = np.concatenate([np.clip(a, 0, 255).astype(np.uint8).ravel() for a in (y, u, v)])
        assert data.size == i420_size(SRC_W, SRC_H)
        frames.append(data.tobytes())
    return frames


def speech() -> np.ndarray:
    """One second of a voice-like signal (a 220 Hz buzz with a syllable envelope)."""
    t = np.arange(16000) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (6000 * env * np.sign(np.sin(2 * np.pi * 220 * t))).astype(np.int16)


def feed(session: VideoSession, clips: list[list[bytes]], seconds: float) -> None:
    """Drive a session with 9 cameras at 30 fps and 20 ms mix ticks, speakers taking turns."""
    for i, _ in enumerate(clips):
        session.handle(("join", f"p{i}", NAMES[i], "i420", SRC_W, SRC_H))
    voice = speech()
    next_frame = 0
    for tick in range(int(seconds / 0.02)):
        t = tick * 0.02
        while next_frame / SRC_FPS < t + 0.02:
            ft = next_frame / SRC_FPS
            for i, clip in enumerate(clips):
                session.handle(("video", f"p{i}", clip[next_frame % len(clip)], ft, 0, 0))
            next_frame += 1
        speaker = f"p{int(t / 4) % len(clips)}"
        block = voice[(tick % 50) * 320 : (tick % 50 + 1) * 320]
        session.handle(("audio", block.tobytes(), t, {f"p{i}": f"p{i}" == speaker for i in range(len(clips))}))
    session.finish()


def cpu() -> float:
    """CPU seconds of this process, all threads (x264's included)."""
    return time.process_time()


def bench_compose(clips: list[list[bytes]], seconds: float) -> float:
    """CPU seconds per minute for compositing alone (new frame in every tile, every frame)."""
    comp = Compositor()
    comp.set_participants([(f"p{i}", NAMES[i], True) for i in range(len(clips))])
    frames = [[_frame(data) for data in clip] for clip in clips]
    n = int(seconds * 16)
    start = cpu()
    for k in range(n):
        t = k / 16
        for i, clip in enumerate(frames):
            comp.update_video(f"p{i}", clip[k % len(clip)], t)
        comp.note_activity({f"p{int(t / 4) % 9}": True}, t)
        comp.compose(t)
    return (cpu() - start) * 60 / seconds


def _frame(data: bytes) -> av.VideoFrame:
    buf = np.frombuffer(data, np.uint8)
    ysz, csz = SRC_W * SRC_H, SRC_W * SRC_H // 4
    return planes_to_frame(
        buf[:ysz].reshape(SRC_H, SRC_W),
        buf[ysz : ysz + csz].reshape(SRC_H // 2, SRC_W // 2),
        buf[ysz + csz :].reshape(SRC_H // 2, SRC_W // 2),
    )


class _Recorder(Compositor):
    """A compositor that keeps a luma copy of every 16th frame, for PSNR."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: dict[int, np.ndarray] = {}
        self._count = 0

    def compose(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        planes = super().compose(t)
        if self._count % 16 == 0:
            self.kept[self._count] = planes[0].copy()
        self._count += 1
        return planes


def psnr(path: Path, kept: dict[int, np.ndarray]) -> float:
    """Mean luma PSNR (dB) of the kept frames against their decoded versions."""
    values = []
    with av.open(str(path)) as c:
        for k, frame in enumerate(c.decode(video=0)):
            if k in kept:
                y = np.frombuffer(frame.planes[0], np.uint8).reshape(frame.height, -1)[:, : frame.width]
                mse = np.mean((y.astype(np.float64) - kept[k]) ** 2)
                values.append(10 * np.log10(255**2 / max(mse, 1e-9)))
    return float(np.mean(values))


def bench_preset(clips: list[list[bytes]], seconds: float, settings: Mp4Settings, tmp: Path) -> dict[str, float]:
    """Full path for one preset: CPU s/min, real-time factor, bit rate, PSNR."""
    path = tmp / f"{settings.preset}.mp4"
    rec = _Recorder()
    session = VideoSession(path, settings, compositor=rec)
    wall, start = time.perf_counter(), cpu()
    feed(session, clips, seconds)
    used, wall = cpu() - start, time.perf_counter() - wall
    return {
        "cpu_per_min": used * 60 / seconds,
        "speed": seconds / wall,
        "kbps": path.stat().st_size * 8 / seconds / 1000,
        "psnr": psnr(path, rec.kept),
    }


def render_layouts(out: Path, clips: list[list[bytes]]) -> None:
    """One PNG per layout (1, 2, 4, 9 participants; one without video; Korean and CJK names)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for n in (1, 2, 4, 9):
        comp = Compositor()
        comp.set_participants([(f"p{i}", NAMES[i], i != 2) for i in range(n)])
        for i in range(n):
            comp.update_video(f"p{i}", _frame(clips[i][0]), 0.0)
        for k in range(50):
            comp.note_activity({f"p{min(1, n - 1)}": True}, k * 0.02)
        Image.fromarray(planes_to_rgb(*comp.compose(1.0))).save(out / f"layout-{n}.png")
    Image.fromarray(planes_to_rgb(*Compositor().slate())).save(out / "paused.png")
    print(f"layouts written to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="media seconds per row")
    parser.add_argument("--presets", default="ultrafast,superfast,veryfast")
    parser.add_argument("--png", type=Path, help="also render one frame per layout into this directory")
    args = parser.parse_args()
    clips = [camera_frames(i) for i in range(9)]
    if args.png:
        render_layouts(args.png, clips)
    cores = os.cpu_count() or 1
    default = Mp4Settings()
    print(f"9 participants, {SRC_W}x{SRC_H}@{SRC_FPS} raw sources -> 1920x1080@16 mp4, {args.seconds:.0f} s each, "
          f"{cores} cores, x264 threads={default.threads}, crf={default.crf}, maxrate={default.maxrate}")
    compose = bench_compose(clips, args.seconds)
    print(f"{'row':<28}{'CPU s/min':>10}{'x realtime':>12}{'kbit/s':>9}{'PSNR dB':>9}{'recordings/machine':>20}")
    blank = ""
    print(f"{'composite only (3x3)':<28}{compose:>10.1f}{60 / compose:>12.1f}{blank:>18}{cores * 60 / compose:>20.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            settings = replace(default, preset=preset)
            row = bench_preset(clips, args.seconds, settings, Path(tmp))
            label = f"full path {preset}" + (" (default)" if preset == default.preset else "")
            print(f"{label:<28}{row['cpu_per_min']:>10.1f}{row['speed']:>12.1f}{row['kbps']:>9.0f}"
                  f"{row['psnr']:>9.1f}{cores * 60 / row['cpu_per_min']:>20.1f}")
    print("recordings/machine = cores x 60 / CPU s per min: the ceiling with the whole machine for video;"
          " leave a core for gRPC + audio in practice.")


if __name__ == "__main__":
    main()
