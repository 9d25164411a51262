"""The soak's analysis of a decoded call (bench/soak.py): loss and resume gap per kill.

The soak is a benchmark, not a test, but its verdict is only as good as this arithmetic; labels
are the gateway second heard in each 100 ms window (-1: silence).
"""

from __future__ import annotations

import pytest

from bench.soak import analyse


def seconds(first: int, last: int) -> list[int]:
    """Windows hearing gateway seconds first..last, 10 windows each."""
    return [s for s in range(first, last + 1) for _ in range(10)]


def test_a_kill_with_media_missing_reports_the_loss_and_the_resume_gap() -> None:
    # heard 0-9 s, then nothing until 12 s: a kill at 10.4 s lost 0.4 s; re-opened at 11.5 s, heard from 12 s
    labels = seconds(0, 9) + [-1] * 5 + seconds(12, 20)
    result = analyse(labels, kills=[10.4], reopens=[11.5])
    assert result.lost == [pytest.approx(0.4)]
    assert result.resume == [pytest.approx(0.5)]
    assert result.other_gaps == []


def test_media_continuous_across_a_kill_loses_nothing_and_resumes_at_once() -> None:
    # the gateway re-sent what was not acknowledged: 0-30 s all heard, then a real gap later on
    labels = seconds(0, 30) + [-1] * 30 + seconds(40, 45)
    result = analyse(labels, kills=[10.4], reopens=[11.8])
    assert result.lost == [0.0]
    assert result.resume == [0.0]  # not the 28 s to the next span after the unexplained gap
    assert result.other_gaps == [(pytest.approx(31.0), pytest.approx(9.0))]


def test_the_extra_participants_noise_leaves_the_tone_readable() -> None:
    """`--participants 10`: the tone plus nine participants' noise, mixed, still labels every window as the tone."""
    import numpy as np

    from bench.soak import FRAME_SAMPLES, NOISE_PCM, frame_pcm, label_windows

    frames = range(250, 400)  # seconds 5-7 of the gateway clock
    tone = np.concatenate([np.frombuffer(frame_pcm(f), "<i2") for f in frames]).astype(np.float32) / 32768
    noise = np.frombuffer(NOISE_PCM, "<i2").astype(np.float32) / 32768
    assert len(noise) == FRAME_SAMPLES and 0.0007 < float(np.sqrt(np.mean(noise**2))) < 0.0013
    mixed = tone + 9 * np.tile(noise, len(frames))  # the worst case: nine copies in phase
    assert label_windows(mixed) == label_windows(tone)
    assert set(label_windows(tone)) == {5, 6, 7}
    assert label_windows(9 * np.tile(noise, len(frames))) == [-1] * 30  # the noise alone is "silence"


@pytest.mark.parametrize("value", ["0", "21"])
def test_participants_out_of_range_are_refused(value: str) -> None:
    from bench.soak import parse

    with pytest.raises(SystemExit):
        parse(["--participants", value])
    assert parse(["--quick", "--participants", "10"]).participants == 10
