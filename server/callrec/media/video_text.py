"""Text for the video grid: display-name labels, name cards and the "paused" slate.

Text is drawn with Pillow once per (name, size) and cached as yuv planes + alpha, because
drawing it per frame in RGB would cost more than the whole composite. Names can be in any
script a gateway sends; the Noto Sans CJK font from the Debian package `fonts-noto-cjk`
covers Latin, Greek, Cyrillic, Chinese, Japanese and Korean. It is found by path, without
fontconfig, so the server has no runtime dependency beyond the font file itself.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from callrec.media.yuv import YuvaImage

#: Where Debian's fonts-noto-cjk puts the font; CALLREC_FONT_PATH overrides it.
FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Medium.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
)
_FONT_GLOB = "/usr/share/fonts/**/NotoSansCJK*.tt[cf]"


class FontNotFoundError(RuntimeError):
    """The CJK font is missing: the message says which package to install."""


def find_cjk_font() -> Path:
    """Path of the Noto Sans CJK collection, or `FontNotFoundError` naming the package."""
    override = os.environ.get("CALLREC_FONT_PATH")
    if override:
        if Path(override).is_file():
            return Path(override)
        raise FontNotFoundError(f"CALLREC_FONT_PATH={override} does not exist")
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    found = sorted(glob.glob(_FONT_GLOB, recursive=True))
    if found:
        return Path(found[0])
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


class TextRenderer:
    """Renders names with the CJK font; every result is cached, so repeats cost nothing."""

    def __init__(self, font_path: Path | None = None) -> None:
        self.font_path = font_path or find_cjk_font()
        self._faces = self._index_faces()

    def _index_faces(self) -> dict[str, int]:
        faces: dict[str, int] = {}
        for index in range(16):
            try:
                family = ImageFont.truetype(str(self.font_path), 12, index=index).getname()[0] or ""
            except OSError:
                break
            if "Mono" not in family:
                faces.setdefault(family.rsplit(" ", 1)[-1], index)
        return faces

    @lru_cache(maxsize=64)  # noqa: B019 - one renderer per compositor; fonts are few
    def font(self, size: int, face: str = "SC") -> ImageFont.FreeTypeFont:
        """A cached font object of `size` pixels in the regional `face` (JP/KR/SC/...)."""
        return ImageFont.truetype(str(self.font_path), size, index=self._faces.get(face, 0))

    def _fit(self, text: str, font: ImageFont.FreeTypeFont, max_width: int) -> str:
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
