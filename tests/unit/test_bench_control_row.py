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


def test_row_8g_prints_the_real_time_probe_and_beside_it_the_normal_one_and_the_step_s_verdict() -> None:
    from bench.cluster_capacity import realtime_row

    result = step([4.0] * 60 + [9.0] * 3, [])
    result.remote_probe_ms = [2.5] * 170 + [3.3] * 4
    result.passed = True
    row = realtime_row(result)
    assert (row.key, row.value, row.goal) == ("8g", "2.5 / 3.3 ms", "p99 <= 5 ms")
    assert "174 probes" in row.detail and "SCHED_RR 10" in row.detail and "every frame on time" in row.detail
    assert "normal priority, the same moments: 4.0 / 9.0 ms" in row.detail
    result.passed, result.reasons = False, ["120 frames late"]
    assert "the step failed: 120 frames late" in realtime_row(result).detail


def test_row_8g_says_why_when_real_time_priority_is_not_allowed() -> None:
    from bench.cluster_capacity import realtime_row

    row = realtime_row(None, "realtime_priority 10 needs permission to use real-time scheduling")
    assert row.value == "n/a" and "needs permission" in row.detail
    refused = step([3.0], [])
    refused.remote_probe_errors = ["control probe did not start: chrt: failed to set pid 0's policy"]
    assert "chrt: failed" in realtime_row(refused).detail
