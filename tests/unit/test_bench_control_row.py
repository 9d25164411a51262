"""Row 1d of `make bench` (bench/audio_capacity.py): callrec's control RPC latency under load, and beside it the
same probe of a server without callrec code at the same moments, so a reader sees what this machine allows."""

from __future__ import annotations

from bench.audio_capacity import control_row
from bench.server_load import StepResult


def step(probe_ms: list[float], floor_ms: list[float], floor_errors: list[str] | None = None) -> StepResult:
    result = StepResult(calls=80, participants=10)
    result.probe_ms = probe_ms
    result.floor_probe_ms = floor_ms
    result.floor_errors = floor_errors or []
    return result


def test_the_row_prints_callrec_s_percentiles_as_its_value_and_the_floor_s_in_its_detail() -> None:
    row = control_row(step([10.0] * 190 + [150.0] * 8 + [200.0] * 2, [2.0] * 190 + [6.5] * 10))
    assert row.key == "1d" and row.goal == "p99 <= 5 ms"
    assert row.value == "10.0 / 150.0 ms"
    assert "800 participants" in row.detail and "200 probes" in row.detail and "max 200 ms" in row.detail
    assert "without callrec code (bench.null_sink)" in row.detail
    assert "p50 / p99 2.0 / 6.5 ms" in row.detail


def test_without_floor_probes_the_row_says_nothing_of_a_floor() -> None:
    row = control_row(step([3.0, 3.0, 4.0], []))
    assert row.value == "3.0 / 4.0 ms"
    assert "null_sink" not in row.detail


def test_failed_floor_probes_are_counted_in_the_detail() -> None:
    row = control_row(step([3.0], [2.0], ["DEADLINE_EXCEEDED: no answer in 30 s", "UNAVAILABLE"]))
    assert "2 of its probes failed: DEADLINE_EXCEEDED" in row.detail
