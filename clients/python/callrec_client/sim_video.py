"""Synthetic participant video for `callrec gateway-sim` and the tests: patterns that can be measured.

Each participant gets a moving test pattern in a colour of its own, with its display name
drawn on it: a recording shows at a glance whose tile is where, that the picture moves,
and that names in any script come through. Once a second (at every whole second of the
participant's timeline) one frame is a white flash, and `beep_mask` / `add_beeps` put a
short beep into the audio at exactly the same instant: decoding a recording and comparing
the first bright frame with the beep's onset measures audio-video sync (SPEC §2: within
one video frame, 62.5 ms).

Frames are packed I420 (the gateway protocol's raw format), BT.709 limited range like the
server's compositor. `VideoEncoder` turns them into H.264 (Annex B) or VP8 with PyAV for
gateways that send compressed video. Rendering uses Pillow once per distinct frame: the
pattern repeats every `PERIOD_S`, so a long simulation holds only a few dozen frames per
participant in memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "BEEP_HZ",
    "BEEP_S",
    "COLOURS",
    "FLASH_INTERVAL_S",
    "VideoEncoder",
    "VideoPattern",
    "VideoPlan",
    "add_beeps",
    "beep_mask",
    "i420_from_rgb",
    "solid_i420",
]

#: A flash (video) and a beep (audio) start at every multiple of this, on the participant's clock.
FLASH_INTERVAL_S = 1.0
#: Beep length: long enough to find in a mix, short enough to leave the tone around it measurable.
BEEP_S = 0.1
#: Beep pitch: above the simulator's tones for the first 13 participants (300 + 200 n Hz), below
#: the 4 kHz that 8 kHz codecs can carry.
BEEP_HZ = 3_000.0
#: The moving part of the pattern repeats with this period (bounds the frame cache).
PERIOD_S = 2.0
#: Distinct, saturated colours; participant n gets COLOURS[n % len(COLOURS)].
COLOURS: tuple[tuple[int, int, int], ...] = (
    (220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130), (181, 137, 0),
    (42, 161, 152), (108, 113, 196), (203, 75, 22), (88, 110, 117), (0, 160, 80),
    (150, 70, 200), (230, 160, 30),
)
_KR, _KB = 0.2126, 0.0722  # BT.709


def i420_from_rgb(rgb: np.ndarray) -> bytes:
    """An (h, w, 3) uint8 RGB image (even size) as packed I420, BT.709 limited range."""
    f = rgb.astype(np.float32) / 255.0
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = _KR * r + (1 - _KR - _KB) * g + _KB * b
    u = 128 + 224 * (b - y) / (2 * (1 - _KB))
    v = 128 + 224 * (r - y) / (2 * (1 - _KR))
    y = 16 + 219 * y
    h, w = y.shape

    def half(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y, half(u), half(v)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def solid_i420(width: int, height: int, yuv: tuple[int, int, int]) -> bytes:
    """A packed I420 frame of one colour given directly as (Y, U, V): exact values for tests."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    return bytes([yuv[0]]) * (width * height) + bytes([yuv[1]]) * (cw * ch) + bytes([yuv[2]]) * (cw * ch)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The server's CJK font when installed (names in any script), else Pillow's own."""
    try:
        from callrec.media.video_text import find_cjk_font

        return ImageFont.truetype(str(find_cjk_font()), size)
    except Exception:  # no font package or no server package: Latin names still render
        return ImageFont.load_default(size)


class VideoPattern:
    """One participant's camera: a moving bar on its colour, its name, a flash every second."""

    def __init__(self, participant_index: int, name: str, width: int = 320, height: int = 180,
                 fps: float = 15.0) -> None:
        if width % 2 or height % 2 or width < 16 or height < 16:
            raise ValueError(f"pattern size must be even and at least 16x16, got {width}x{height}")
        self.participant_index = participant_index
        self.name = name
        self.width, self.height, self.fps = width, height, fps
        self.colour = COLOURS[participant_index % len(COLOURS)]
        self._frames_per_period = max(1, round(PERIOD_S * fps))
        self._base = self._render_base()
        self._cache: dict[int, bytes] = {}
        self._flash = i420_from_rgb(np.full((height, width, 3), 255, np.uint8))

    def _band(self) -> tuple[int, int]:
        """Font size and height of the name band at the top (the server labels the bottom left)."""
        size = max(10, self.height // 8)
        return size, size + 2 * max(3, size // 4)

    def _render_base(self) -> np.ndarray:
        """Background and name, drawn once (RGB); the bar is added per frame."""
        img = Image.new("RGB", (self.width, self.height), self.colour)
        draw = ImageDraw.Draw(img)
        size, band = self._band()
        draw.rectangle((0, 0, self.width, band), fill=(0, 0, 0))
        draw.text((self.width // 2, band // 2), self.name, font=_font(size), fill=(255, 255, 255), anchor="mm")
        return np.asarray(img, dtype=np.uint8)

    def is_flash(self, t: float) -> bool:
        """Whether the frame captured at `t` (s) is a flash: the first frame at or after a whole second."""
        k = math.floor(t / FLASH_INTERVAL_S + 1e-9) * FLASH_INTERVAL_S
        return t - k < 1.0 / self.fps - 1e-9

    def frame(self, t: float) -> bytes:
        """The I420 frame captured at `t` seconds into the participant's stream."""
        if self.is_flash(t):
            return self._flash
        phase = round(t * self.fps) % self._frames_per_period
        cached = self._cache.get(phase)
        if cached is None:
            cached = self._cache[phase] = self._render(phase)
        return cached

    def _render(self, phase: int) -> bytes:
        rgb = self._base.copy()
        bar_w = max(2, self.width // 10) & ~1
        _, band = self._band()
        # Each participant's bar runs at its own phase: tiles visibly differ in motion too.
        phase = (phase + 3 * self.participant_index) % self._frames_per_period
        x = round((self.width - bar_w) * phase / self._frames_per_period) & ~1
        lighter = tuple(min(255, c + 90) for c in self.colour)
        rgb[band:, x : x + bar_w] = lighter
        return i420_from_rgb(rgb)


def beep_mask(t: float, samples: int, rate: int = 16_000) -> np.ndarray:
    """Which of `samples` samples starting at `t` (s) fall in a beep (bool array)."""
    times = t + np.arange(samples) / rate
    return np.mod(times + 1e-9, FLASH_INTERVAL_S) < BEEP_S


def add_beeps(pcm: np.ndarray, rate: int, t: float = 0.0, amplitude: float = 0.5) -> np.ndarray:
    """`pcm` (int16, (n,) or (n, channels)) starting at `t` s, with the beeps replacing its samples.

    The beep replaces rather than adds to the signal, so its onset stands out in the mix
    whatever the participant was saying.
    """
    out = np.array(pcm, dtype=np.int16, copy=True)
    mask = beep_mask(t, len(out), rate)
    times = t + np.arange(len(out)) / rate
    beep = np.rint(amplitude * 32767 * np.sin(2 * np.pi * BEEP_HZ * times)).astype(np.int16)
    if out.ndim == 1:
        out[mask] = beep[mask]
    else:
        out[mask] = beep[mask, None]
    return out


class VideoEncoder:
    """I420 frames → H.264 (Annex B) or VP8 packets with PyAV, one packet out per frame in.

    Low-latency settings (x264 `zerolatency`, libvpx `realtime`): a gateway forwards each
    frame as it is captured, so the encoder must not hold frames back.
    """

    def __init__(self, codec: str, width: int, height: int, fps: float = 15.0, gop: int | None = None,
                 bit_rate: int = 300_000) -> None:
        import av
        from av.video.codeccontext import VideoCodecContext

        self.width, self.height = width, height
        name = {"h264": "libx264", "vp8": "libvpx"}[codec]
        ctx = cast(VideoCodecContext, av.CodecContext.create(name, "w"))
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        rate = Fraction(fps).limit_denominator(1000)
        ctx.time_base, ctx.framerate = 1 / rate, rate
        ctx.gop_size = gop or max(1, round(fps))
        ctx.bit_rate = bit_rate
        if codec == "h264":
            ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
        else:
            ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        self._ctx = ctx
        self._pts = 0
        self._av = av

    def encode(self, i420: bytes) -> tuple[bytes, bool]:
        """Encode one frame; returns (packet data, is key frame). Empty data: nothing out yet."""
        packed = np.frombuffer(i420, np.uint8).reshape(self.height * 3 // 2, self.width)
        frame = self._av.VideoFrame.from_ndarray(packed, format="yuv420p")
        frame.pts = self._pts
        self._pts += 1
        packets = self._ctx.encode(frame)
        return b"".join(bytes(p) for p in packets), any(p.is_keyframe for p in packets)


class VideoPlan:
    """Every participant's video frames for a simulated call, as `gateway-sim` sends them.

    `schedule()` gives (send offset s, participant id, sequence, timestamp_us, data, width,
    height, keyframe) tuples, the audio frames' shape plus size and key-frame flag.
    Timestamps share the audio's `start_us`, so a flash and its beep carry the same time.
    """

    def __init__(self, participant_ids: Sequence[str], names: Sequence[str], seconds: float, start_us: int,
                 width: int = 320, height: int = 180, fps: float = 15.0, codec: str = "i420") -> None:
        self.participant_ids = list(participant_ids)
        self.names = list(names)
        self.seconds = seconds
        self.start_us = start_us
        self.width, self.height, self.fps = width, height, fps
        self.codec = codec
        self.patterns = [VideoPattern(i, name, width, height, fps) for i, name in enumerate(self.names)]

    def schedule(self) -> list[tuple[float, str, int, int, bytes, int, int, bool]]:
        """All video frames of the call, ordered by send time."""
        out: list[tuple[float, str, int, int, bytes, int, int, bool]] = []
        count = int(self.seconds * self.fps + 1e-9)
        for pid, pattern in zip(self.participant_ids, self.patterns, strict=True):
            encoder = None if self.codec == "i420" else VideoEncoder(self.codec, self.width, self.height, self.fps)
            for i in range(count):
                t = i / self.fps
                data, key = pattern.frame(t), True
                if encoder is not None:
                    data, key = encoder.encode(data)
                    if not data:
                        continue
                out.append((t, pid, i + 1, self.start_us + round(t * 1e6), data, self.width, self.height, key))
        out.sort(key=lambda e: e[0])
        return out
