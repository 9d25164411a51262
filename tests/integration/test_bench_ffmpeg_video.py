"""Bench row 7b (issue 11, goal 3): callrec's 9-person 1080p16 composite against ffmpeg's, from the same inputs.

The ratio means something only if both sides make the same picture from the same bytes: 1920x1080 at
16 fps for the call's length, each participant's video in its tile. Run here for 2 s of media.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from bench.common import child_cpu
from bench.ffmpeg_video import PARTICIPANTS, TILE_H, TILE_W, _callrec_cpu, _ffmpeg_command, _inputs

SECONDS = 2.0


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p")[: f.height] for f in container.decode(video=0)]  # luma


def test_both_sides_make_a_1080p16_grid_of_the_same_inputs(tmp_path: Path) -> None:
    videos, audios = _inputs(tmp_path, SECONDS)
    assert len(videos) == len(audios) == PARTICIPANTS
    assert _callrec_cpu(SECONDS, tmp_path) > 0
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.fail("ffmpeg is missing: `make test-deps` installs it (Debian package ffmpeg)")
    assert child_cpu(_ffmpeg_command(exe, videos, audios, tmp_path / "ffmpeg.mp4")) > 0
    source = frames_of(videos[0])[5]  # participant 0's own picture, 320x180
    for name in ("callrec.mp4", "ffmpeg.mp4"):
        shown = frames_of(tmp_path / name)
        assert shown[0].shape == (1080, 1920), name
        assert abs(len(shown) - SECONDS * 16) <= 2, (name, len(shown))
        with av.open(str(tmp_path / name)) as container:
            assert container.streams.video[0].average_rate == 16
            assert container.streams.audio, f"{name} has the mixed audio too"
    # ffmpeg's top-left tile is participant 0's picture scaled to 640x360 (no borders or names on that side)
    tile = frames_of(tmp_path / "ffmpeg.mp4")[5][:TILE_H, :TILE_W].astype(float)
    expected = np.kron(source.astype(float), np.ones((2, 2)))
    assert np.abs(tile - expected).mean() < 12
