"""Text for the video grid: display-name labels, name cards and the "paused" slate.

Text is drawn with Pillow once per (name, size) and cached as yuv planes + alpha, because
drawing it per frame in RGB would cost more than the whole composite. Names can be in any
script a gateway sends; the Noto Sans CJK font from the Debian package `fonts-noto-cjk`
covers Latin, Greek, Cyrillic, Chinese, Japanese and Korean. It is found by path, without
fontconfig (`make run` installs the package).

A missing font never fails a recording: `resolve_font` falls back to DejaVu Sans
(`fonts-dejavu-core`; no CJK) and then to the scalable font bundled inside Pillow (Latin
only), and the server says so once, at start-up (`check_font_at_startup`). The video worker
resolves the font again for itself, silently.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from callrec.media.yuv import YuvaImage

#: Names a font file: overrides the search below (a path that is no font is reported and skipped).
FONT_ENV = "CALLREC_FONT_PATH"
#: Where Debian's fonts-noto-cjk puts the font.
FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Medium.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
)
_FONT_GLOB = "/usr/share/fonts/**/NotoSansCJK*.tt[cf]"
#: The middle step of the fallback: Debian's fonts-dejavu-core (Latin, Greek, Cyrillic; no CJK).
DEJAVU_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
)
#: The event of the one start-up warning logged when the labels use a fallback font.
FONT_FALLBACK_EVENT = "video label font missing, using a fallback"
_FIX = "install fonts-noto-cjk (make run does) or set CALLREC_FONT_PATH to a .ttc/.otf/.ttf font"


class FontNotFoundError(RuntimeError):
    """The CJK font is missing: the message says which package to install."""


@dataclass(frozen=True)
class FontChoice:
    """The font the video labels use: a file, or None for Pillow's bundled default font.

    `problem` is None when the configured or preferred font is in use; otherwise it says
    what was wrong, what the labels will look like and what to do about it.
    """

    path: Path | None
    name: str
    problem: str | None = None

    @property
    def is_fallback(self) -> bool:
        return self.problem is not None


def _loadable(path: str) -> str | None:
    """None if `path` is a font file FreeType can open, else what is wrong with it."""
    if not os.path.isfile(path):
        return "does not exist" if not os.path.exists(path) else "is not a file"
    try:
        ImageFont.truetype(path, 12)
    except OSError as exc:
        return f"is not a usable font ({exc})"
    return None


def _first_loadable(candidates: list[str]) -> str | None:
    return next((c for c in candidates if _loadable(c) is None), None)


def _noto_cjk() -> str | None:
    return _first_loadable([*FONT_CANDIDATES, *sorted(glob.glob(_FONT_GLOB, recursive=True))])


def resolve_font() -> FontChoice:
    """The label font, never raising: CALLREC_FONT_PATH, Noto Sans CJK, DejaVu Sans, Pillow's own.

    Anything but the first usable of CALLREC_FONT_PATH (when set) or Noto Sans CJK (when not)
    comes back with a `problem` for the start-up warning.
    """
    override = os.environ.get(FONT_ENV, "").strip()
    trouble = None
    if override:
        if (wrong := _loadable(override)) is None:
            return FontChoice(Path(override), Path(override).name)
        trouble = f"{FONT_ENV}={override} {wrong}"
    noto = _noto_cjk()
    if noto is not None:
        if trouble is None:
            return FontChoice(Path(noto), "Noto Sans CJK")
        return FontChoice(Path(noto), "Noto Sans CJK",
                          f"{trouble}; using Noto Sans CJK ({noto}) instead; fix or unset {FONT_ENV}")
    trouble = trouble or f"Noto Sans CJK not found (looked for {FONT_CANDIDATES[0]})"
    dejavu = _first_loadable(list(DEJAVU_CANDIDATES))
    if dejavu is not None:
        return FontChoice(Path(dejavu), "DejaVu Sans",
                          f"{trouble}; using DejaVu Sans ({dejavu}): names in Chinese, Japanese or Korean "
                          f"will show as boxes; {_FIX}")
    return FontChoice(None, "Pillow's built-in font",
                      f"{trouble}; using Pillow's built-in font: names outside the Latin script will show "
                      f"as boxes; {_FIX}")


def check_font_at_startup(log: Any) -> FontChoice:
    """Resolve the label font once at start-up; one warning (structlog) if it is a fallback."""
    choice = resolve_font()
    if choice.problem is not None:
        log.warning(FONT_FALLBACK_EVENT, font=choice.name, path=str(choice.path or ""), problem=choice.problem)
    else:
        log.debug("video label font", font=choice.name, path=str(choice.path))
    return choice


def find_cjk_font() -> Path:
    """Path of the Noto Sans CJK collection, or `FontNotFoundError` naming the package.

    Strict, for callers that want CJK or nothing (the gateway simulator); the server's
    labels use `resolve_font`, which never raises.
    """
    override = os.environ.get(FONT_ENV)
    if override:
        if Path(override).is_file():
            return Path(override)
        raise FontNotFoundError(f"{FONT_ENV}={override} does not exist")
    found = _noto_cjk()
    if found is not None:
        return Path(found)
    raise FontNotFoundError(
        "Noto Sans CJK font not found (looked for /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc): "
        "install the Debian package fonts-noto-cjk (apt-get install -y fonts-noto-cjk) "
        "or set CALLREC_FONT_PATH to a .ttc/.otf file"
    )


def _face_for(text: str) -> str:
    """Regional face: Han characters look right in the face of the script around them."""
    for ch in text:
        name = unicodedata.name(ch, "")
        if name.startswith("HANGUL"):
            return "KR"
        if name.startswith(("HIRAGANA", "KATAKANA")):
            return "JP"
    return "SC"


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class TextRenderer:
    """Renders names with the CJK font; every result is cached, so repeats cost nothing.

    Without `font_path` the font is `resolve_font()`'s choice (a fallback when the CJK font
    is missing); a font file that turns out unusable later falls back to Pillow's own font
    rather than failing the recording.
    """

    def __init__(self, font_path: Path | None = None) -> None:
        self.font_path: Path | None = font_path if font_path is not None else resolve_font().path
        self._faces = self._index_faces()

    def _index_faces(self) -> dict[str, int]:
        """Face index per region (SC/TC/JP/KR...) in a .ttc collection; {} for a single-face font."""
        faces: dict[str, int] = {}
        if self.font_path is None:
            return faces
        for index in range(16):
            try:
                family = ImageFont.truetype(str(self.font_path), 12, index=index).getname()[0] or ""
            except OSError:
                break
            if "Mono" not in family:
                faces.setdefault(family.rsplit(" ", 1)[-1], index)
        return faces

    @lru_cache(maxsize=64)  # noqa: B019 - one renderer per compositor; fonts are few
    def font(self, size: int, face: str = "SC") -> Font:
        """A cached font object of `size` pixels in the regional `face` (JP/KR/SC/...)."""
        if self.font_path is not None:
            try:
                return ImageFont.truetype(str(self.font_path), size, index=self._faces.get(face, 0))
            except OSError:
                pass  # removed or damaged since start-up: Pillow's own font still draws the name
        return ImageFont.load_default(size=size)

    def _fit(self, text: str, font: Font, max_width: int) -> str:
        """Shorten with an ellipsis until it fits: a long name must not run off its tile."""
        text = " ".join(text.split()) or "?"
        if font.getlength(text) <= max_width:
            return text
        while len(text) > 1 and font.getlength(text + "…") > max_width:
            text = text[:-1]
        return text.rstrip() + "…"

    @lru_cache(maxsize=512)  # noqa: B019
    def label(self, name: str, height: int, max_width: int) -> YuvaImage:
        """A name label: white text on a translucent dark rounded box, `height` px tall."""
        font = self.font(max(8, int(height * 0.62)), _face_for(name))
        pad = max(4, height // 3)
        text = self._fit(name, font, max_width - 2 * pad)
        width = min(max_width, int(font.getlength(text)) + 2 * pad)
        img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(img)
        draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=height // 4, fill=(0, 0, 0, 165))
        draw.text((pad, height / 2), text, font=font, fill=(255, 255, 255, 255), anchor="lm")
        return YuvaImage.from_rgba(np.asarray(img))

    @lru_cache(maxsize=128)  # noqa: B019
    def name_card(self, name: str, width: int, height: int, rgb: tuple[int, int, int]) -> YuvaImage:
        """An opaque card: the name centred on a coloured background, for tiles without video."""
        img = Image.new("RGB", (width, height), rgb)
        draw = ImageDraw.Draw(img)
        font = self.font(max(10, min(height // 7, width // 9)), _face_for(name))
        text = self._fit(name, font, int(width * 0.86))
        draw.text((width / 2, height / 2), text, font=font, fill=(255, 255, 255), anchor="mm")
        return YuvaImage.from_rgba(np.asarray(img))

    @lru_cache(maxsize=4)  # noqa: B019
    def slate(self, text: str, width: int, height: int) -> YuvaImage:
        """A full-frame slate (e.g. "Recording paused") with a pause symbol above the text."""
        img = Image.new("RGB", (width, height), (24, 26, 32))
        draw = ImageDraw.Draw(img)
        bar_w, bar_h, cx, cy = height // 40, height // 8, width // 2, int(height * 0.42)
        for dx in (-bar_w * 2, bar_w):
            draw.rectangle((cx + dx, cy - bar_h // 2, cx + dx + bar_w, cy + bar_h // 2), fill=(220, 220, 220))
        font = self.font(height // 16, _face_for(text))
        draw.text((cx, int(height * 0.6)), text, font=font, fill=(235, 235, 235), anchor="mm")
        return YuvaImage.from_rgba(np.asarray(img))
