"""A server whose label font is missing still records mp4: a fallback font draws the names, and
the server says so once, at start-up (issue 8: `make run` on a fresh machine ended mp4
recordings FAILED with FontNotFoundError).

The server runs with `CALLREC_FONT_PATH=/nonexistent/font.ttc` and JSON logs; the recording
reuses test_video_recording's gateway, download and decode helpers on the media clock.
"""

from __future__ import annotations

import json

from callrec.media.video_layout import fit_size, tile_rects
from callrec.media.video_text import FONT_ENV, FONT_FALLBACK_EVENT
from callrec.v1 import recording_pb2 as pb
from tests.integration.test_video_recording import FPS, IN_H, IN_W, grid_centres, owner, people, record, tile_colours

MISSING = "/nonexistent/font.ttc"


def log_events(text: str) -> list[dict]:
    """The server's JSON log lines (anything else, e.g. a traceback, is skipped)."""
    out = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


async def test_a_missing_font_degrades_to_a_fallback_and_the_recording_completes(make_server, tmp_path):
    srv = make_server("--clock", "media", "--reconnect-grace", "2", "--log-format", "json",
                      env={FONT_ENV: MISSING})
    cast = people(2)
    rec = await record(srv.target, cast, 2.0, tmp_path, keep=lambda i: i == 24)
    assert rec.recording.state == pb.RECORDING_STATE_COMPLETED
    assert not rec.recording.error.message
    (video,) = rec.videos
    assert (video.width, video.height, video.codec) == (1920, 1080, "h264")
    assert len(video.frame_times) == 2 * FPS
    assert 0 <= video.audio_duration_s - 2.0 <= 0.07
    frame = video.kept[24]
    assert [owner(c, cast) for c in tile_colours(frame, 2)] == ["p0", "p1"]

    # "Person 0" / "Person 1" at the bottom left of each (letterboxed 4:3) picture, none above it
    y = frame[0]
    for index, cell in enumerate(tile_rects(2)):
        _, h = fit_size(IN_W, IN_H, cell.w - 4, cell.h - 4)
        bottom = grid_centres(2)[index][1] + h // 2
        label = y[bottom - 70 : bottom - 5, cell.x + 10 : cell.x + 300]
        assert (label > 200).sum() > 100, f"no name label drawn on tile {index}"
        assert (label < 60).sum() > 500, f"no dark label box on tile {index}"
        picture = y[bottom - h + 20 : bottom - 100, cell.x + 20 : cell.x + cell.w - 20]
        assert (picture > 200).sum() == 0, f"text over the picture of tile {index}"

    # one warning, at start-up, naming the problem; the video worker did not repeat it
    events = log_events(srv.log_text())
    warnings = [e for e in events if e.get("event") == FONT_FALLBACK_EVENT]
    assert len(warnings) == 1, warnings
    (warning,) = warnings
    assert warning["level"] == "warning"
    assert warning["problem"].startswith(f"CALLREC_FONT_PATH={MISSING} does not exist; using ")
    serving = next(i for i, e in enumerate(events) if e.get("event") == "serving")
    assert events.index(warning) < serving
    assert srv.log_text().count(FONT_FALLBACK_EVENT) == 1
