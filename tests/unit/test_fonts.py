"""The video labels' font: resolution order, fallbacks that never fail, one start-up warning.

Every font file here is a copy of the scalable font bundled inside Pillow, written to a temporary
directory, and the Debian locations are pointed at temporary paths: the tests need no font package
and see the same thing on any machine.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import structlog
from PIL import ImageFont
from structlog.testing import capture_logs

from callrec.media import video_text
from callrec.media.compositor import Compositor
from callrec.media.video_layout import fit_size, tile_rects
from callrec.media.video_text import (
    FONT_ENV,
    FONT_FALLBACK_EVENT,
    TextRenderer,
    check_font_at_startup,
    resolve_font,
)
from tests.unit.test_video_compositor import solid

MISSING = "/nonexistent/font.ttc"


def pillow_font_bytes() -> bytes:
    """The TrueType file inside Pillow (>= 10.1): a real single-face font, always at hand."""
    buffer = ImageFont.load_default(size=12).path
    assert isinstance(buffer, BytesIO), "Pillow's default font should be a scalable FreeType font"
    return buffer.getvalue()


@pytest.fixture
def fonts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Font files under tmp_path; the search sees nothing of the machine's fonts."""
    files = {}
    for name in ("custom.ttf", "NotoSansCJK-Regular.ttc", "DejaVuSans.ttf"):
        files[name] = tmp_path / name
        files[name].write_bytes(pillow_font_bytes())
    monkeypatch.delenv(FONT_ENV, raising=False)
    monkeypatch.setattr(video_text, "FONT_CANDIDATES", (str(tmp_path / "missing-noto.ttc"),))
    monkeypatch.setattr(video_text, "_FONT_GLOB", str(tmp_path / "nowhere" / "**" / "NotoSansCJK*.tt[cf]"))
    monkeypatch.setattr(video_text, "DEJAVU_CANDIDATES", (str(tmp_path / "missing-dejavu.ttf"),))
    return files


def install(monkeypatch: pytest.MonkeyPatch, fonts: dict[str, Path], *, noto: bool, dejavu: bool) -> None:
    if noto:
        monkeypatch.setattr(video_text, "FONT_CANDIDATES", (str(fonts["NotoSansCJK-Regular.ttc"]),))
    if dejavu:
        monkeypatch.setattr(video_text, "DEJAVU_CANDIDATES", (str(fonts["DejaVuSans.ttf"]),))


# ---------------------------------------------------------------------------------------------- order


def test_an_existing_override_wins_without_a_problem(fonts, monkeypatch):
    install(monkeypatch, fonts, noto=True, dejavu=True)
    monkeypatch.setenv(FONT_ENV, str(fonts["custom.ttf"]))
    choice = resolve_font()
    assert choice.path == fonts["custom.ttf"] and choice.problem is None and not choice.is_fallback


def test_without_override_noto_cjk_is_used_without_a_problem(fonts, monkeypatch):
    install(monkeypatch, fonts, noto=True, dejavu=True)
    choice = resolve_font()
    assert (choice.path, choice.name, choice.problem) == (fonts["NotoSansCJK-Regular.ttc"], "Noto Sans CJK", None)


def test_noto_cjk_is_also_found_by_glob(fonts, monkeypatch, tmp_path):
    deep = tmp_path / "share" / "opentype" / "noto" / "NotoSansCJK-Regular.ttc"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(pillow_font_bytes())
    monkeypatch.setattr(video_text, "_FONT_GLOB", str(tmp_path / "share" / "**" / "NotoSansCJK*.tt[cf]"))
    assert resolve_font() == video_text.FontChoice(deep, "Noto Sans CJK")


def test_a_missing_override_falls_back_to_noto_and_says_so(fonts, monkeypatch):
    install(monkeypatch, fonts, noto=True, dejavu=True)
    monkeypatch.setenv(FONT_ENV, MISSING)
    choice = resolve_font()
    assert choice.path == fonts["NotoSansCJK-Regular.ttc"]
    assert choice.problem is not None
    assert choice.problem.startswith(f"CALLREC_FONT_PATH={MISSING} does not exist; using Noto Sans CJK")
    assert "fix or unset CALLREC_FONT_PATH" in choice.problem


def test_a_missing_override_without_noto_falls_back_to_dejavu(fonts, monkeypatch):
    install(monkeypatch, fonts, noto=False, dejavu=True)
    monkeypatch.setenv(FONT_ENV, MISSING)
    choice = resolve_font()
    assert (choice.path, choice.name) == (fonts["DejaVuSans.ttf"], "DejaVu Sans")
    assert choice.problem == (
        f"CALLREC_FONT_PATH={MISSING} does not exist; using DejaVu Sans ({fonts['DejaVuSans.ttf']}): names in "
        "Chinese, Japanese or Korean will show as boxes; install fonts-noto-cjk (make run does) or set "
        "CALLREC_FONT_PATH to a .ttc/.otf/.ttf font")


def test_no_font_at_all_falls_back_to_pillows_own(fonts, monkeypatch):
    choice = resolve_font()
    assert (choice.path, choice.name) == (None, "Pillow's built-in font")
    assert choice.problem is not None
    assert choice.problem.startswith("Noto Sans CJK not found (looked for ")
    assert "install fonts-noto-cjk" in choice.problem


def test_an_override_that_is_no_font_is_reported_and_skipped(fonts, monkeypatch, tmp_path):
    install(monkeypatch, fonts, noto=False, dejavu=True)
    junk = tmp_path / "notes.ttf"
    junk.write_text("not a font")
    monkeypatch.setenv(FONT_ENV, str(junk))
    choice = resolve_font()
    assert choice.name == "DejaVu Sans"
    assert choice.problem is not None and f"CALLREC_FONT_PATH={junk} is not a usable font" in choice.problem
    monkeypatch.setenv(FONT_ENV, str(tmp_path))  # a directory
    assert f"CALLREC_FONT_PATH={tmp_path} is not a file" in (resolve_font().problem or "")


def test_find_cjk_font_stays_strict(fonts, monkeypatch):
    """The gateway simulator's helper still wants CJK or an error (it has its own fallback)."""
    monkeypatch.setenv(FONT_ENV, MISSING)
    with pytest.raises(video_text.FontNotFoundError, match="does not exist"):
        video_text.find_cjk_font()
    monkeypatch.delenv(FONT_ENV)
    with pytest.raises(video_text.FontNotFoundError, match="fonts-noto-cjk"):
        video_text.find_cjk_font()


# ---------------------------------------------------------------------------------------------- drawing


def bright(img) -> int:
    """White text pixels of a rendered YuvaImage (opaque where drawn)."""
    mask = img.alpha > 0 if img.alpha is not None else np.ones(img.y.shape, bool)
    return int(((img.y > 200) & mask).sum())


@pytest.mark.parametrize("which", ["pillow", "single-face file"])
@pytest.mark.parametrize("name", ["Person Zero", "김민수", "Ελένη Дмитрий"])
def test_a_fallback_renderer_draws_labels_cards_and_slates(fonts, which, name):
    renderer = TextRenderer() if which == "pillow" else TextRenderer(fonts["custom.ttf"])
    assert renderer.font_path is None if which == "pillow" else renderer.font_path == fonts["custom.ttf"]
    assert set(renderer._faces.values()) <= {0}  # one face: index 0 whatever the region
    label = renderer.label(name, 40, 400)
    assert label.height == 40 and 40 < label.width <= 400
    assert bright(label) > 60, "white glyphs (or boxes for a script the font lacks) on the label"
    card = renderer.name_card(name, 640, 360, (92, 107, 192))
    assert bright(card) > 200
    assert bright(renderer.slate("Recording paused", 640, 360)) > 200


def test_a_long_name_is_shortened_with_the_fallback_font(fonts):
    label = TextRenderer().label("A very long display name that cannot possibly fit " * 3, 40, 300)
    assert label.width <= 300


def test_a_font_file_removed_after_start_up_still_draws(fonts):
    renderer = TextRenderer(fonts["custom.ttf"])
    fonts["custom.ttf"].unlink()
    assert bright(renderer.label("Still Here", 40, 400)) > 60


def test_the_compositor_labels_a_picture_with_the_fallback_font(fonts):
    comp = Compositor()
    assert comp.text.font_path is None
    comp.set_participants([("x", "Person Zero", True), ("y", "Other", True)])
    dark = solid((20, 20, 20), 960, 540)
    comp.update_video("x", dark, 0.0)
    comp.update_video("y", dark, 0.0)
    py, _, _ = comp.compose(0.0)
    cell = tile_rects(2)[0]
    _, h = fit_size(960, 540, cell.w - 4, cell.h - 4)
    bottom = cell.y + 2 + (cell.h - 4 - h) // 2 + h
    assert (py[bottom - 90 : bottom - 5, cell.x + 10 : cell.x + 260] > 200).sum() > 150
    assert (py[bottom - h + 50 : bottom - 120, cell.x + 100 : cell.x + 800] > 200).sum() == 0


# ---------------------------------------------------------------------------------------------- start-up


def test_the_startup_check_warns_once_with_the_problem(fonts, monkeypatch):
    install(monkeypatch, fonts, noto=False, dejavu=True)
    monkeypatch.setenv(FONT_ENV, MISSING)
    with capture_logs() as logs:
        choice = check_font_at_startup(structlog.get_logger(component="server"))
        TextRenderer().label("Person Zero", 40, 400)  # what the worker does: no second warning
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    (warning,) = warnings
    assert warning["event"] == FONT_FALLBACK_EVENT == "video label font missing, using a fallback"
    assert (warning["font"], warning["path"], warning["problem"]) == (
        "DejaVu Sans", str(fonts["DejaVuSans.ttf"]), choice.problem)


def test_the_startup_check_is_silent_when_the_font_is_there(fonts, monkeypatch):
    install(monkeypatch, fonts, noto=True, dejavu=True)
    with capture_logs() as logs:
        choice = check_font_at_startup(structlog.get_logger(component="server"))
    assert choice.problem is None
    assert [e for e in logs if e["log_level"] != "debug"] == []
