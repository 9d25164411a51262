"""The bench header's machine-speed line: libopus timed on the load generator's own packets, and the arithmetic
that turns it into row 1's need."""

from __future__ import annotations

import pytest

from bench import machine_speed


def test_the_need_is_800_participants_times_50_packets_a_second() -> None:
    line = machine_speed.describe(25.0, 2)
    assert "25.0 µs" in line
    assert "need 1.00 of a core" in line  # 800 x 50 x 25 µs = 1 s per second
    assert line.endswith("of 2")


def test_the_load_packets_decode_to_16_khz_and_take_a_plausible_time() -> None:
    pytest.importorskip("callrec.media.opus")
    us = machine_speed.libopus_us_per_packet(repeats=2, seconds=0.5)
    # libopus takes 15-35 µs for these packets on the 2-core machine; the bounds only catch a unit slip
    # (seconds or nanoseconds) or a loop that decoded nothing (which raises first).
    assert 0.5 < us < 5_000
