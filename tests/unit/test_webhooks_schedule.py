"""The retry schedule (Event Grid's), Retry-After, and what each HTTP outcome leads to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from callrec.webhooks.schedule import (
    JITTER,
    RETRY_WINDOW,
    DeliveryOutcome,
    classify,
    decide,
    jittered,
    parse_retry_after,
    scheduled_delay,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NO_JITTER = lambda: 0.5  # noqa: E731


def test_delays_follow_event_grids_schedule_then_hourly() -> None:
    assert [scheduled_delay(n) for n in range(1, 11)] == [10, 30, 60, 300, 600, 1800, 3600, 3600, 3600, 3600]
    with pytest.raises(ValueError):
        scheduled_delay(0)


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.75, 0.999999])
def test_jitter_stays_within_twenty_percent(r: float) -> None:
    value = jittered(100.0, lambda: r)
    assert 100 * (1 - JITTER) <= value <= 100 * (1 + JITTER)
    assert jittered(100.0, NO_JITTER) == 100.0


def test_default_jitter_spreads_retries() -> None:
    values = {round(jittered(60.0), 3) for _ in range(50)}
    assert len(values) > 10 and min(values) >= 48 and max(values) <= 72


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, DeliveryOutcome.DELIVERED),
        (204, DeliveryOutcome.DELIVERED),
        (299, DeliveryOutcome.DELIVERED),
        (400, DeliveryOutcome.DEAD_LETTER),
        (401, DeliveryOutcome.DEAD_LETTER),
        (403, DeliveryOutcome.DEAD_LETTER),
        (413, DeliveryOutcome.DEAD_LETTER),
        (410, DeliveryOutcome.DISABLE),
        (301, DeliveryOutcome.RETRY),
        (302, DeliveryOutcome.RETRY),
        (307, DeliveryOutcome.RETRY),
        (404, DeliveryOutcome.RETRY),
        (408, DeliveryOutcome.RETRY),
        (429, DeliveryOutcome.RETRY),
        (500, DeliveryOutcome.RETRY),
        (503, DeliveryOutcome.RETRY),
        (None, DeliveryOutcome.RETRY),
    ],
)
def test_classification_of_outcomes(status: int | None, outcome: DeliveryOutcome) -> None:
    assert classify(status) is outcome


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert parse_retry_after("120", T0) == 120
    assert parse_retry_after(" 0 ", T0) == 0
    assert parse_retry_after(format_datetime(T0 + timedelta(minutes=3), usegmt=True), T0) == 180
    assert parse_retry_after("Sat, 01 Mar 2025 12:02:00 GMT", T0) == 120
    assert parse_retry_after(format_datetime(T0 - timedelta(minutes=3), usegmt=True), T0) == 0  # past: now
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad, T0) is None


def test_a_failed_attempt_is_retried_after_the_scheduled_delay() -> None:
    d = decide(status=500, attempts=3, first_attempt_at=T0, now=T0 + timedelta(seconds=40), rand=NO_JITTER)
    assert d.outcome is DeliveryOutcome.RETRY and d.delay_s == 60
    d = decide(status=None, error="timed out after 30 s", attempts=1, first_attempt_at=T0, now=T0, rand=NO_JITTER)
    assert d.delay_s == 10 and "timed out" in d.reason


def test_retry_after_replaces_the_schedule_on_429_and_503_only() -> None:
    for status in (429, 503):
        d = decide(status=status, attempts=1, first_attempt_at=T0, now=T0, retry_after="90", rand=NO_JITTER)
        assert d.delay_s == 90
    d = decide(status=500, attempts=1, first_attempt_at=T0, now=T0, retry_after="90", rand=NO_JITTER)
    assert d.delay_s == 10
    d = decide(status=429, attempts=1, first_attempt_at=T0, now=T0, retry_after="garbage", rand=NO_JITTER)
    assert d.delay_s == 10
    d = decide(status=429, attempts=1, first_attempt_at=T0, now=T0, retry_after="0", rand=NO_JITTER)
    assert d.delay_s == 1  # never a tight loop


def test_every_delay_is_capped_at_the_end_of_the_24_hour_window() -> None:
    late = T0 + RETRY_WINDOW - timedelta(seconds=100)
    d = decide(status=503, attempts=30, first_attempt_at=T0, now=late, retry_after="100000", rand=NO_JITTER)
    assert d.outcome is DeliveryOutcome.RETRY and d.delay_s == 100
    d = decide(status=500, attempts=30, first_attempt_at=T0, now=late, rand=NO_JITTER)
    assert d.delay_s == 100


def test_after_24_hours_an_event_is_dead_lettered() -> None:
    d = decide(status=500, attempts=31, first_attempt_at=T0, now=T0 + RETRY_WINDOW, rand=NO_JITTER)
    assert d.outcome is DeliveryOutcome.DEAD_LETTER
    assert "24 h" in d.reason and "31 attempts" in d.reason and "HTTP 500" in d.reason


def test_rejections_and_gone_are_final() -> None:
    d = decide(status=413, attempts=1, first_attempt_at=T0, now=T0)
    assert d.outcome is DeliveryOutcome.DEAD_LETTER and "413" in d.reason and d.delay_s is None
    d = decide(status=410, attempts=1, first_attempt_at=T0, now=T0)
    assert d.outcome is DeliveryOutcome.DISABLE and "410" in d.reason


def test_a_full_day_of_failures_makes_the_expected_number_of_attempts() -> None:
    """10 s, 30 s, 1 m, 5 m, 10 m, 30 m, 1 h, then hourly: the last attempt exactly at the 24 h mark."""
    now, attempts = T0, 0
    while True:
        attempts += 1
        d = decide(status=500, attempts=attempts, first_attempt_at=T0, now=now, rand=NO_JITTER)
        if d.outcome is DeliveryOutcome.DEAD_LETTER:
            break
        assert d.delay_s is not None
        now += timedelta(seconds=d.delay_s)
    assert now == T0 + RETRY_WINDOW
    assert attempts == 31  # the first, 7 on the schedule, 22 hourly (to 23 h 46 m 40 s), the capped one at 24 h
