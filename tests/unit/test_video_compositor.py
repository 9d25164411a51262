"""Compositor: grid layouts, stable slots, active speaker, name labels and cards, stale sources."""

from __future__ import annotations

import av
import numpy as np
import pytest

from callrec.media.compositor import Compositor, card_colour
from callrec.media.video_decode import planes_to_frame
from callrec.media.video_layout import GridSlots, Rect, SpeakerTracker, fit_size, grid_shape, tile_rects
from callrec.media.yuv import planes_to_rgb, rgb_to_yuv

COLOURS = [
    (220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 30), (230, 30, 230), (30, 220, 220),
    (250, 140, 20), (120, 40, 160), (150, 150, 150), (90, 60, 20), (20, 90, 60), (240, 180, 200),
]


def solid(rgb: tuple[int, int, int], w: int = 640, h: int = 360) -> av.VideoFrame:
    """A yuv420p frame of one colour (converted with the compositor's BT.709 matrix)."""
    y, u, v = (int(np.rint(c)) for c in rgb_to_yuv(np.array(rgb, np.uint8)))
    return planes_to_frame(
        np.full((h, w), y, np.uint8), np.full((h // 2, w // 2), u, np.uint8), np.full((h // 2, w // 2), v, np.uint8)
    )


def rgb_at(planes: tuple[np.ndarray, np.ndarray, np.ndarray], x: int, y: int) -> tuple[int, int, int]:
    py, pu, pv = planes
    rgb = planes_to_rgb(py[y : y + 2, x : x + 2], pu[y // 2 : y // 2 + 1, x // 2 : x // 2 + 1],
                        pv[y // 2 : y // 2 + 1, x // 2 : x // 2 + 1])
    return tuple(int(c) for c in rgb[0, 0])  # type: ignore[return-value]


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 10) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def centre(r: Rect) -> tuple[int, int]:
    return r.x + r.w // 2, r.y + r.h // 2


def make(n: int, *, video: bool = True, t: float = 0.0) -> Compositor:
    """n participants p0.. in join order, each with a solid colour, laid out at time t."""
    comp = Compositor()
    comp.set_participants([(f"p{i}", f"Person {i}", video) for i in range(n)])
    if video:
        for i in range(n):
            comp.update_video(f"p{i}", solid(COLOURS[i]), t)
    comp.layout(t)
    return comp


def test_grid_shapes_follow_the_spec() -> None:
    assert [grid_shape(n) for n in (1, 2, 3, 4, 5, 9)] == [(1, 1), (2, 1), (2, 2), (2, 2), (3, 3), (3, 3)]
    cells = tile_rects(9)
    assert len(cells) == 9 and all(r.x % 2 == 0 and r.y % 2 == 0 and r.w % 2 == 0 for r in cells)
    assert sum(r.w * r.h for r in cells) == 1920 * 1080


@pytest.mark.parametrize("n", [1, 2, 4, 9, 12])
def test_each_tile_shows_its_participant_colour(n: int) -> None:
    comp = make(n)
    planes = comp.compose(0.1)
    assert planes[0].shape == (1080, 1920) and planes[1].shape == (540, 960)
    shown = min(n, 9)
    slots = comp.layout(0.1)
    assert [p for p in slots if p] == [f"p{i}" for i in range(shown)]  # nobody spoke: join order
    for i, cell in enumerate(tile_rects(shown)):
        assert close(rgb_at(planes, *centre(cell)), COLOURS[i]), (n, i, rgb_at(planes, *centre(cell)))


def test_sources_keep_their_aspect_ratio_letterboxed() -> None:
    comp = Compositor()
    comp.set_participants([("tall", "Portrait", True)])
    comp.update_video("tall", solid(COLOURS[0], 360, 640), 0.0)
    planes = comp.compose(0.0)
    # 9:16 in a 1920x1080 frame: ~608 px wide in the middle, black bars on both sides.
    assert close(rgb_at(planes, 960, 540), COLOURS[0])
    assert close(rgb_at(planes, 960 - 290, 540), COLOURS[0])
    assert rgb_at(planes, 960 - 320, 540) == rgb_at(planes, 100, 540) == (0, 0, 0)


def speak(comp: Compositor, who: str | None, t0: float, seconds: float, n: int) -> float:
    t = t0
    for _ in range(int(seconds / 0.02)):
        comp.note_activity({f"p{i}": f"p{i}" == who for i in range(n)}, t)
        t += 0.02
    return t


def test_tenth_speaker_takes_the_slot_of_the_least_recently_active() -> None:
    comp = make(10)
    t = 0.0
    # p0..p8 speak in turn, except p4 who stays silent: p4 is the least recently active.
    for i in (0, 1, 2, 3, 5, 6, 7, 8):
        t = speak(comp, f"p{i}", t, 0.6, 10)
    before = comp.layout(t)
    assert before == [f"p{i}" for i in range(9)]
    t = speak(comp, "p9", t, 0.6, 10)
    after = comp.layout(t)
    assert after[4] == "p9"
    assert [p for i, p in enumerate(after) if i != 4] == [p for i, p in enumerate(before) if i != 4]
    for i in range(10):  # fresh frames: older ones would count as stale (> 1 s)
        comp.update_video(f"p{i}", solid(COLOURS[i]), t)
    planes = comp.compose(t)
    cells = tile_rects(9)
    assert close(rgb_at(planes, *centre(cells[4])), COLOURS[9])
    assert close(rgb_at(planes, *centre(cells[0])), COLOURS[0])


def test_slots_are_stable_when_someone_leaves_and_a_newcomer_fills_the_gap() -> None:
    slots = GridSlots()
    people = ["a", "b", "c", "d"]
    assert slots.update(people, {}, [], 0.0) == ["a", "b", "c", "d"]
    assert slots.update(["a", "c", "d"], {}, [], 1.0) == ["a", None, "c", "d"]
    assert slots.update(["a", "c", "d", "e"], {}, [], 2.0) == ["a", "e", "c", "d"]
    # Growing to a 3x3 keeps every index; shrinking to 2x1 packs in order.
    assert slots.update(["a", "c", "d", "e", "f"], {}, [], 3.0)[:5] == ["a", "e", "c", "d", "f"]
    assert slots.update(["c", "f"], {}, [], 4.0) == ["c", "f"]


def test_active_speaker_has_hysteresis() -> None:
    tracker = SpeakerTracker()
    t = 0.0
    for _ in range(100):  # A talks for 2 s
        tracker.note({"a": True, "b": False}, t)
        t += 0.02
    assert tracker.active == "a"
    changes = 0
    for i in range(150):  # then B coughs every 200 ms for a tick while A pauses between words
        prev = tracker.active
        tracker.note({"a": i % 10 < 7, "b": i % 10 == 0}, t)
        changes += tracker.active != prev
        t += 0.02
    assert tracker.active == "a" and changes == 0
    for _ in range(100):  # B really takes over
        tracker.note({"a": False, "b": True}, t)
        t += 0.02
    assert tracker.active == "b"
    for _ in range(250):  # silence: the highlight fades out, the choice stays
        tracker.note({"a": False, "b": False}, t)
        t += 0.02
    assert tracker.active == "b" and tracker.highlighted() is None


def test_active_speaker_tile_gets_a_coloured_border() -> None:
    comp = make(4)
    t = speak(comp, "p2", 0.0, 1.0, 4)
    comp.update_video("p2", solid(COLOURS[2]), t)
    comp.update_video("p1", solid(COLOURS[1]), t)
    planes = comp.compose(t)
    cells = tile_rects(4)
    edge_x, edge_y = cells[2].x + 6, centre(cells[2])[1]
    assert close(rgb_at(planes, edge_x, edge_y), (46, 204, 113), 16)
    other = cells[1].x + 6, centre(cells[1])[1]
    assert not close(rgb_at(planes, *other), (46, 204, 113), 40)


@pytest.mark.parametrize("name", ["김민수", "王小明", "Ана Петрова"])
def test_name_label_pixels_are_in_the_label_area(name: str) -> None:
    comp = Compositor()
    comp.set_participants([("x", name, True), ("y", "Other", True)])
    dark = solid((20, 20, 20), 960, 540)
    comp.update_video("x", dark, 0.0)
    comp.update_video("y", dark, 0.0)
    py, _, _ = comp.compose(0.0)
    cell = tile_rects(2)[0]
    # A 16:9 picture letterboxed in the tall 2-up tile; the label sits at its bottom left.
    _, h = fit_size(960, 540, cell.w - 4, cell.h - 4)
    bottom = cell.y + 2 + (cell.h - 4 - h) // 2 + h
    label = py[bottom - 90 : bottom - 5, cell.x + 10 : cell.x + 260]
    assert (label > 200).sum() > 150, "white text expected in the label box"
    assert (label < 30).sum() > 500, "dark label box / video expected around the text"
    middle = py[bottom - h + 50 : bottom - 120, cell.x + 100 : cell.x + 800]
    assert (middle > 200).sum() == 0, "no text over the middle of the picture"
    assert (py[bottom + 10 :, cell.x : cell.x + cell.w] > 200).sum() == 0, "nothing on the letterbox bar"


def test_label_render_is_cached() -> None:
    comp = make(2)
    comp.compose(0.0)
    hits = comp.text.label.cache_info().hits
    comp.update_video("p0", solid(COLOURS[5]), 0.05)
    comp.compose(0.1)
    assert comp.text.label.cache_info().hits > hits


def test_participant_without_video_shows_a_name_card() -> None:
    comp = Compositor()
    comp.set_participants([("v", "Has Video", True), ("n", "김민수", False)])
    comp.update_video("v", solid(COLOURS[0]), 0.0)
    planes = comp.compose(0.0)
    py = planes[0]
    cell = tile_rects(2)[1]
    assert close(rgb_at(planes, cell.x + cell.w // 2, cell.y + cell.h // 5), card_colour("n"))
    text_band = py[cell.y + cell.h // 2 - 60 : cell.y + cell.h // 2 + 60, cell.x : cell.x + cell.w]
    assert (text_band > 220).sum() > 500, "the name is written in the middle of the card"


def test_a_source_that_stops_keeps_its_last_frame_for_a_second_then_shows_its_card() -> None:
    comp = make(2)
    cell = tile_rects(2)[0]
    assert close(rgb_at(comp.compose(0.9), *centre(cell)), COLOURS[0])
    planes = comp.compose(1.2)
    assert close(rgb_at(planes, cell.x + cell.w // 2, cell.y + cell.h // 5), card_colour("p0"))
    comp.update_video("p0", solid(COLOURS[3]), 1.3)
    assert close(rgb_at(comp.compose(1.3), *centre(cell)), COLOURS[3])


def test_frames_are_shown_at_their_time_not_before() -> None:
    comp = make(1)
    comp.update_video("p0", solid(COLOURS[4]), 0.5)
    assert close(rgb_at(comp.compose(0.45), 960, 540), COLOURS[0])
    assert close(rgb_at(comp.compose(0.5), 960, 540), COLOURS[4])


def test_paused_slate() -> None:
    comp = make(1)
    py, _, _ = comp.slate()
    assert py.mean() < 60 and (py > 200).sum() > 2000  # dark slate with light text and symbol
    assert close(rgb_at(comp.compose(0.1), 960, 540), COLOURS[0])  # the grid comes back
