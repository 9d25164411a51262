"""Small yuv420p image helpers: BT.709 colour conversion, overlays with alpha, fills.

The compositor works in yuv420p planes end to end because an RGB round trip per frame
costs about ten times more than the compositing itself. Everything drawn (labels, name
cards, borders) is converted once, here, and then only copied or alpha-blended.
Colours use BT.709 limited range, the matrix HD players assume, and the one the mp4
encoder tags its stream with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# BT.709 luma coefficients.
_KR, _KB = 0.2126, 0.0722
_KG = 1.0 - _KR - _KB


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """RGB (…, 3) uint8 → YUV (…, 3) float, BT.709 limited range (Y 16-235, C 16-240)."""
    f = rgb.astype(np.float32) / 255.0
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = _KR * r + _KG * g + _KB * b
    cb = (b - y) / (2 * (1 - _KB))
    cr = (r - y) / (2 * (1 - _KR))
    return np.stack([16 + 219 * y, 128 + 224 * cb, 128 + 224 * cr], axis=-1)


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_yuv` for equally sized Y/U/V arrays → (…, 3) uint8 RGB."""
    yn = (y.astype(np.float32) - 16) / 219
    cb = (u.astype(np.float32) - 128) / 224
    cr = (v.astype(np.float32) - 128) / 224
    r = yn + 2 * (1 - _KR) * cr
    b = yn + 2 * (1 - _KB) * cb
    g = (yn - _KR * r - _KB * b) / _KG
    return np.clip(np.stack([r, g, b], axis=-1) * 255 + 0.5, 0, 255).astype(np.uint8)


def planes_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A whole yuv420p image → RGB (h, w, 3), chroma upsampled by repetition (for checks/PNGs)."""
    h, w = y.shape
    uu = np.repeat(np.repeat(u, 2, axis=0), 2, axis=1)[:h, :w]
    vv = np.repeat(np.repeat(v, 2, axis=0), 2, axis=1)[:h, :w]
    return yuv_to_rgb(y, uu, vv)


def yuv_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """One RGB colour as integer (Y, U, V)."""
    yuv = rgb_to_yuv(np.array(rgb, np.uint8))
    return int(np.rint(yuv[0])), int(np.rint(yuv[1])), int(np.rint(yuv[2]))


@dataclass(frozen=True)
class YuvaImage:
    """An even-sized yuv420p image with optional alpha (full size for Y, halved for U/V)."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    alpha: np.ndarray | None = None
    alpha_c: np.ndarray | None = None

    @property
    def width(self) -> int:
        """Width in luma pixels."""
        return int(self.y.shape[1])

    @property
    def height(self) -> int:
        """Height in luma pixels."""
        return int(self.y.shape[0])

    @classmethod
    def from_rgba(cls, rgba: np.ndarray) -> YuvaImage:
        """Convert an RGB(A) uint8 image once; odd sizes are padded to even with transparency."""
        h, w = rgba.shape[:2]
        if rgba.shape[2] == 3:
            rgba = np.concatenate([rgba, np.full((h, w, 1), 255, np.uint8)], axis=2)
        eh, ew = h + (h & 1), w + (w & 1)
        if (eh, ew) != (h, w):
            padded = np.zeros((eh, ew, 4), np.uint8)
            padded[:h, :w] = rgba
            rgba = padded
        yuv = rgb_to_yuv(rgba[..., :3])
        a = rgba[..., 3].astype(np.float32)
        # Chroma of a 2x2 block, weighted by alpha so transparent pixels do not tint edges.
        wsum = a.reshape(eh // 2, 2, ew // 2, 2).sum(axis=(1, 3))
        def _sub(c: np.ndarray) -> np.ndarray:
            num = (c * a).reshape(eh // 2, 2, ew // 2, 2).sum(axis=(1, 3))
            return np.where(wsum > 0, num / np.maximum(wsum, 1e-6), 128.0)
        alpha = rgba[..., 3]
        opaque = bool((alpha == 255).all())
        return cls(
            y=np.clip(yuv[..., 0] + 0.5, 0, 255).astype(np.uint8),
            u=np.clip(_sub(yuv[..., 1]) + 0.5, 0, 255).astype(np.uint8),
            v=np.clip(_sub(yuv[..., 2]) + 0.5, 0, 255).astype(np.uint8),
            alpha=None if opaque else alpha.copy(),
            alpha_c=None if opaque else np.clip(wsum / 4 + 0.5, 0, 255).astype(np.uint8),
        )


def _blend(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray | None) -> None:
    if alpha is None:
        dst[:] = src
        return
    a = alpha.astype(np.uint16)
    dst[:] = ((dst.astype(np.uint16) * (255 - a) + src.astype(np.uint16) * a + 127) // 255).astype(np.uint8)


def overlay(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray], img: YuvaImage, x: int, y: int
) -> None:
    """Draw `img` onto yuv420p planes at even (x, y), clipped to the canvas."""
    py, pu, pv = planes
    x, y = x & ~1, y & ~1
    h, w = py.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + img.width, w), min(y + img.height, h)
    if x1 <= x0 or y1 <= y0:
        return
    sx, sy = x0 - x, y0 - y
    sw, sh = x1 - x0, y1 - y0
    a = None if img.alpha is None else img.alpha[sy : sy + sh, sx : sx + sw]
    _blend(py[y0:y1, x0:x1], img.y[sy : sy + sh, sx : sx + sw], a)
    cx0, cy0, cw, ch = x0 // 2, y0 // 2, (sw + 1) // 2, (sh + 1) // 2
    ac = None if img.alpha_c is None else img.alpha_c[sy // 2 : sy // 2 + ch, sx // 2 : sx // 2 + cw]
    _blend(pu[cy0 : cy0 + ch, cx0 : cx0 + cw], img.u[sy // 2 : sy // 2 + ch, sx // 2 : sx // 2 + cw], ac)
    _blend(pv[cy0 : cy0 + ch, cx0 : cx0 + cw], img.v[sy // 2 : sy // 2 + ch, sx // 2 : sx // 2 + cw], ac)


def fill_rect(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    x: int,
    y: int,
    w: int,
    h: int,
    color: tuple[int, int, int],
) -> None:
    """Fill an even-aligned rectangle with a (Y, U, V) colour."""
    py, pu, pv = planes
    x, y, w, h = x & ~1, y & ~1, w & ~1, h & ~1
    py[y : y + h, x : x + w] = color[0]
    pu[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = color[1]
    pv[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = color[2]


def draw_border(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    x: int,
    y: int,
    w: int,
    h: int,
    thickness: int,
    color: tuple[int, int, int],
) -> None:
    """A rectangular frame of `thickness` (even) pixels just inside (x, y, w, h)."""
    t = max(2, thickness & ~1)
    fill_rect(planes, x, y, w, t, color)
    fill_rect(planes, x, y + h - t, w, t, color)
    fill_rect(planes, x, y, t, h, color)
    fill_rect(planes, x + w - t, y, t, h, color)
