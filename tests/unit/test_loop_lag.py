"""The event-loop lag monitor: a loop held by blocking work shows up as that much lag."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from callrec import loop_lag


async def test_a_blocked_loop_is_observed_as_lag_and_a_free_one_is_not() -> None:
    seen: list[float] = []
    watcher = asyncio.create_task(loop_lag.watch(0.02, seen.append))
    try:
        await asyncio.sleep(0.2)  # a free loop: timers on time
        free = list(seen)
        time.sleep(0.15)  # what a slow statement or fsync on the loop does to every call
        await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    assert len(free) >= 5 and max(free) < 0.05
    blocked = seen[len(free):]
    assert any(0.1 <= lag <= 1.0 for lag in blocked), blocked


async def test_the_default_observer_feeds_the_histogram_on_metrics() -> None:
    before = REGISTRY.get_sample_value("callrec_event_loop_lag_seconds_count") or 0.0
    watcher = asyncio.create_task(loop_lag.watch(0.01))
    await asyncio.sleep(0.1)
    watcher.cancel()
    assert (REGISTRY.get_sample_value("callrec_event_loop_lag_seconds_count") or 0.0) >= before + 3
