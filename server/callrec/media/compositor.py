"""The mp4 video grid: participants' frames composited into one 1920x1080 yuv420p picture.

Everything happens in yuv420p planes: sources are scaled with swscale (`VideoFrame.reformat`)
straight into their tile, labels and name cards are rendered once and alpha-blended, so a
3x3 frame costs a few milliseconds instead of the tens an RGB path would (DESIGN "Processes
and cores"). Time `t` is the call's media clock in seconds, the same clock as the audio
ticks, so that a frame is shown when its audio is heard.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import av
import numpy as np

from callrec.media.video_decode import frame_to_planes
from callrec.media.video_layout import GridSlots, Rect, SpeakerTracker, fit_size, tile_rects
from callrec.media.video_text import TextRenderer
from callrec.media.yuv import draw_border, fill_rect, overlay, yuv_color

WIDTH, HEIGHT = 1920, 1080
#: A source that stops sending keeps its last frame this long, then shows its name card.
STALE_AFTER_S = 1.0
#: Frames waiting for their presentation time, per participant (bounds memory).
MAX_PENDING = 32

_BACKGROUND = yuv_color((12, 12, 14))
_TILE_BG = yuv_color((32, 34, 38))
_LETTERBOX = yuv_color((0, 0, 0))
_HIGHLIGHT = yuv_color((46, 204, 113))
#: Name-card backgrounds: muted colours that keep white text readable.
CARD_COLOURS: tuple[tuple[int, int, int], ...] = (
    (92, 107, 192), (0, 137, 123), (194, 24, 91), (245, 124, 0), (121, 85, 72),
    (57, 73, 171), (46, 125, 50), (142, 36, 170), (216, 67, 21), (69, 90, 100),
)
_GAP = 4  # pixels between tiles (even), so the highlight border reads as a frame


def card_colour(participant_id: str) -> tuple[int, int, int]:
    """A stable colour per participant (the same across chunks and restarts)."""
    digest = hashlib.blake2s(participant_id.encode(), digest_size=2).digest()
    return CARD_COLOURS[int.from_bytes(digest, "big") % len(CARD_COLOURS)]


@dataclass
class _Source:
    """What the compositor knows of one participant."""

    display_name: str
    has_video: bool
    pending: deque[tuple[float, av.VideoFrame]] = field(default_factory=deque)
    frame: av.VideoFrame | None = None
    frame_t: float = -math.inf
    frame_seq: int = 0
    scaled_key: tuple[int, int, int] | None = None
    scaled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class Compositor:
    """Builds the grid frame for a call; one instance per mp4 recording (in its worker).

    Typical use per 62.5 ms video tick: `note_activity` for every 20 ms audio tick,
    `update_video` whenever a decoded frame arrives, then `compose(t)`.
    """

    def __init__(
        self,
        width: int = WIDTH,
        height: int = HEIGHT,
        text: TextRenderer | None = None,
        tracker: SpeakerTracker | None = None,
        stale_after: float = STALE_AFTER_S,
    ) -> None:
        self.width, self.height = width, height
        self.text = text or TextRenderer()
        self.tracker = tracker or SpeakerTracker()
        self.slots = GridSlots()
        self.stale_after = stale_after
        self._sources: dict[str, _Source] = {}
        self._order: list[str] = []
        self._canvas = np.empty((height * 3 // 2, width), np.uint8)
        ysz = width * height
        flat = self._canvas.reshape(-1)
        self._planes = (
            flat[:ysz].reshape(height, width),
            flat[ysz : ysz + ysz // 4].reshape(height // 2, width // 2),
            flat[ysz + ysz // 4 :].reshape(height // 2, width // 2),
        )
        self._generation = 0  # bumped on any participant change: compose redraws everything
        self._layout_key: tuple[object, ...] | None = None
        self._tile_keys: list[tuple[str | None, int, bool] | None] = []

    # -- inputs ---------------------------------------------------------------------------

    def set_participants(self, participants: Iterable[tuple[str, str, bool]]) -> None:
        """Replace the participant list: (participant_id, display_name, has_video), join order."""
        wanted = list(participants)
        ids = [pid for pid, _, _ in wanted]
        for pid in set(self._sources) - set(ids):
            self.remove(pid)
        for pid, name, has_video in wanted:
            self.add(pid, name, has_video)
        self._order = ids

    def add(self, participant_id: str, display_name: str, has_video: bool) -> None:
        """A participant joined (or changed name / video): appended to the join order."""
        src = self._sources.get(participant_id)
        if src is None:
            self._sources[participant_id] = _Source(display_name, has_video)
            self._order.append(participant_id)
        else:
            src.display_name, src.has_video = display_name, has_video
        self._generation += 1

    def remove(self, participant_id: str) -> None:
        """A participant left: their tile is freed at the next compose."""
        self._sources.pop(participant_id, None)
        if participant_id in self._order:
            self._order.remove(participant_id)
        self.tracker.forget(participant_id)
        self._generation += 1

    def update_video(self, participant_id: str, frame: av.VideoFrame, t: float | None = None) -> None:
        """A decoded frame to show from call time `t` on (None: from the next compose)."""
        src = self._sources.get(participant_id)
        if src is None:
            return
        if t is None:
            src.pending.clear()
            src.frame, src.frame_t = frame, math.nan  # stamped at the next compose
            src.frame_seq += 1
            return
        src.pending.append((t, frame))
        while len(src.pending) > MAX_PENDING:
            src.pending.popleft()

    def note_activity(self, speaking: Mapping[str, bool], t: float) -> None:
        """One audio tick's speaking flags (from the mixer) at call time `t`."""
        self.tracker.note(speaking, t)

    # -- output ---------------------------------------------------------------------------

    def layout(self, t: float) -> list[str | None]:
        """The participant in each grid cell at time `t` (None: empty cell)."""
        speaking = [p for p in self._order if self.tracker.is_speaking(p)]
        return self.slots.update(self._order, self.tracker.last_spoke, speaking, t)

    def compose(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The grid at call time `t` as (Y, U, V) views, valid until the next compose/slate.

        Only tiles whose content changed (new frame, card, highlight) are redrawn: a static
        grid costs almost nothing, and a full 3x3 of live video a few milliseconds.
        """
        slots = self.layout(t)
        highlight = self.tracker.highlighted()
        rects = tile_rects(len(self.slots.members()), self.width, self.height)
        layout_key = (len(slots), self._generation)
        if layout_key != self._layout_key:
            fill_rect(self._planes, 0, 0, self.width, self.height, _BACKGROUND)
            self._layout_key = layout_key
            self._tile_keys = [None] * len(slots)
        for i, (pid, cell) in enumerate(zip(slots, rects, strict=False)):
            shown = self._advance(pid, t) if pid is not None else 0
            key = (pid, shown, pid is not None and pid == highlight)
            if key == self._tile_keys[i]:
                continue
            self._tile_keys[i] = key
            tile = cell.inset(_GAP // 2) if len(rects) > 1 else cell
            if pid is None:
                fill_rect(self._planes, tile.x, tile.y, tile.w, tile.h, _TILE_BG)
                continue
            content = self._draw_tile(pid, tile, video=shown > 0)
            if key[2] and len(rects) > 1:
                width = min(12, max(6, tile.h // 45))
                draw_border(self._planes, content.x, content.y, content.w, content.h, width, _HIGHLIGHT)
        return self._planes

    def slate(self, text: str = "Recording paused") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A full-frame slate (pause in silence mode keeps the timeline with this picture)."""
        if self._layout_key != ("slate", text):
            self._layout_key = ("slate", text)
            overlay(self._planes, self.text.slate(text, self.width, self.height), 0, 0)
        return self._planes

    # -- drawing --------------------------------------------------------------------------

    def _advance(self, pid: str, t: float) -> int:
        """Take the newest frame due at `t`; returns the frame's number, or 0 for the name card."""
        src = self._sources[pid]
        while src.pending and src.pending[0][0] <= t:
            src.frame_t, src.frame = src.pending.popleft()
            src.frame_seq += 1
        if src.frame is not None and math.isnan(src.frame_t):
            src.frame_t = t
        if not src.has_video or src.frame is None or t - src.frame_t > self.stale_after:
            return 0
        return src.frame_seq

    def _draw_tile(self, pid: str, tile: Rect, video: bool) -> Rect:
        """Draw a participant's tile; returns the picture's rectangle (for the highlight)."""
        src = self._sources[pid]
        planes = self._planes
        if video:
            sy, su, sv = self._scaled(src, tile.w, tile.h)
            h, w = sy.shape
            x, y = (tile.x + (tile.w - w) // 2) & ~1, (tile.y + (tile.h - h) // 2) & ~1
            # Letterbox bars only (the picture covers the rest): top, bottom, left, right.
            for bx, by, bw, bh in (
                (tile.x, tile.y, tile.w, y - tile.y),
                (tile.x, y + h, tile.w, tile.y + tile.h - y - h),
                (tile.x, y, x - tile.x, h),
                (x + w, y, tile.x + tile.w - x - w, h),
            ):
                if bw > 0 and bh > 0:
                    fill_rect(planes, bx, by, bw, bh, _LETTERBOX)
            planes[0][y : y + h, x : x + w] = sy
            planes[1][y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = su
            planes[2][y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = sv
            picture = Rect(x, y, w, h)
            self._draw_label(src.display_name, tile, picture)
            return picture
        # The card already shows the name, centred and large: no label on top of it.
        card = self.text.name_card(src.display_name, tile.w, tile.h, card_colour(pid))
        overlay(planes, card, tile.x, tile.y)
        return tile

    def _draw_label(self, name: str, tile: Rect, picture: Rect) -> None:
        """The name at the bottom left of the picture (not of the letterbox bars around it)."""
        height = max(24, min(48, tile.h // 10)) & ~1
        margin = max(8, tile.h // 40) & ~1
        x = picture.x + margin
        y = min(picture.y + picture.h, tile.y + tile.h) - margin - height
        label = self.text.label(name, height, tile.x + tile.w - margin - x)
        overlay(self._planes, label, x, max(tile.y, y))

    def _scaled(self, src: _Source, box_w: int, box_h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The source frame fitted into the box; reused while neither frame nor box change."""
        assert src.frame is not None
        key = (src.frame_seq, box_w, box_h)
        if src.scaled_key != key or src.scaled is None:
            w, h = fit_size(src.frame.width, src.frame.height, box_w, box_h)
            scaled = src.frame.reformat(width=w, height=h, format="yuv420p", interpolation="BILINEAR", threads=1)
            y, u, v = frame_to_planes(scaled)
            src.scaled = (y, u[: h // 2, : w // 2], v[: h // 2, : w // 2])
            src.scaled_key = key
        return src.scaled
