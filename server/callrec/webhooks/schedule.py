"""When to try a webhook delivery again, and what an HTTP outcome means. Pure functions.

The schedule is Event Grid's (https://learn.microsoft.com/azure/event-grid/delivery-and-retry), so a
receiver written for ACS sees the same behaviour: after a failed attempt wait 10 s, 30 s, 1 min, 5 min,
10 min, 30 min, 1 h, then every hour, until 24 h have passed since the first attempt; then the event is
dead-lettered. Each delay gets ±20 % jitter so that endpoints failing together (one receiver behind a
shared outage) do not retry in lockstep. A `Retry-After` on 429 or 503 replaces the schedule's delay:
the receiver says when it can take more. Every delay is capped at what is left of the 24 h, so the last
attempt happens at the deadline rather than never.

Outcomes: 2xx delivered; 400/401/403/413 dead-lettered at once (the request itself is wrong, retrying
repeats it); 410 disables the endpoint (the receiver says it is gone for good); anything else, including
a redirect (never followed) and a network error or timeout (no status), is retried.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

SCHEDULE_S: tuple[float, ...] = (10, 30, 60, 300, 600, 1800, 3600)
"""Delay after the 1st, 2nd, ... failed attempt; after the last entry, every `HOURLY_S`."""
HOURLY_S = 3600.0
RETRY_WINDOW = timedelta(hours=24)
"""An event not delivered this long after its first attempt is dead-lettered."""
JITTER = 0.2
"""Each scheduled delay is multiplied by a factor drawn uniformly from [1 - JITTER, 1 + JITTER]."""
MIN_RETRY_AFTER_S = 1.0
"""A `Retry-After` of 0 (or a date in the past) still waits this long: no tight loop on a busy receiver."""

DEAD_LETTER_STATUSES = frozenset({400, 401, 403, 413})
DISABLE_STATUSES = frozenset({410})
RETRY_AFTER_STATUSES = frozenset({429, 503})


class DeliveryOutcome(enum.StrEnum):
    """What to do after one attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"
    DISABLE = "disable"


def classify(status: int | None) -> DeliveryOutcome:
    """The outcome of one attempt by its HTTP status (None: no response, a network error or timeout)."""
    if status is None:
        return DeliveryOutcome.RETRY
    if 200 <= status < 300:
        return DeliveryOutcome.DELIVERED
    if status in DEAD_LETTER_STATUSES:
        return DeliveryOutcome.DEAD_LETTER
    if status in DISABLE_STATUSES:
        return DeliveryOutcome.DISABLE
    return DeliveryOutcome.RETRY


def scheduled_delay(failed_attempts: int) -> float:
    """Seconds to wait after the `failed_attempts`-th failed attempt (1-based), before jitter."""
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts counts from 1, got {failed_attempts}")
    if failed_attempts <= len(SCHEDULE_S):
        return float(SCHEDULE_S[failed_attempts - 1])
    return HOURLY_S


def jittered(delay: float, rand: Callable[[], float] = random.random) -> float:
    """`delay` times a factor in [1 - JITTER, 1 + JITTER]; `rand()` returns [0, 1) (0.5: no jitter)."""
    return delay * (1.0 + JITTER * (2.0 * rand() - 1.0))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date), or None if absent/invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate_to_datetime leaves "-0000" naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryDecision:
    """What follows an attempt: the outcome, and for RETRY the delay until the next attempt."""

    outcome: DeliveryOutcome
    delay_s: float | None = None
    """Seconds until the next attempt (RETRY only)."""
    reason: str = ""
    """Why, for the dead-letter list, the endpoint's disabled reason and the logs."""


def describe(status: int | None, error: str) -> str:
    """One attempt's result in words: `HTTP 500` or the error."""
    if status is not None:
        return f"HTTP {status}" + (f" ({error})" if error else "")
    return error or "no response"


def decide(
    *,
    status: int | None,
    error: str = "",
    attempts: int,
    first_attempt_at: datetime,
    now: datetime,
    retry_after: str | None = None,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """What to do after the `attempts`-th attempt at an event, which ended with `status` (or `error`) at `now`."""
    outcome = classify(status)
    last = describe(status, error)
    if outcome is DeliveryOutcome.DELIVERED:
        return RetryDecision(outcome, reason=last)
    if outcome is DeliveryOutcome.DEAD_LETTER:
        return RetryDecision(outcome, reason=f"{last}: the receiver rejected the request; it is not retried")
    if outcome is DeliveryOutcome.DISABLE:
        return RetryDecision(outcome, reason=f"{last} (Gone): the receiver asked to stop deliveries")
    remaining = (first_attempt_at + RETRY_WINDOW - now).total_seconds()
    if remaining <= 0:
        hours = RETRY_WINDOW.total_seconds() / 3600
        return RetryDecision(
            DeliveryOutcome.DEAD_LETTER,
            reason=f"not delivered within {hours:g} h of the first attempt ({attempts} attempts; last: {last})",
        )
    asked = parse_retry_after(retry_after, now) if status in RETRY_AFTER_STATUSES else None
    delay = max(asked, MIN_RETRY_AFTER_S) if asked is not None else jittered(scheduled_delay(attempts), rand)
    return RetryDecision(DeliveryOutcome.RETRY, delay_s=min(delay, remaining), reason=last)
