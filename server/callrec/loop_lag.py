"""How late the event loop runs: the wait every call's mixer, stream and control RPC shares.

Why a metric of its own: one event loop carries every call, so anything that holds it (a slow
statement, an fsync, a garbage collection, a burst of ticks near saturation) delays all of them at
once. Late frames and slow RPCs are the symptoms; this is the cause, measured where it happens. A
timer set for `interval` from now that fires `lag` seconds late means the loop was busy (or the
process descheduled) that long: `watch()` observes that lag into `callrec_event_loop_lag_seconds`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Histogram

__all__ = ["LOOP_LAG", "watch"]

LOOP_LAG = Histogram(
    "callrec_event_loop_lag_seconds",
    "How late the event loop ran a timer set every 100 ms: how long every call and RPC waited for it",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)


async def watch(interval: float = 0.1, observe: Callable[[float], None] = LOOP_LAG.observe) -> None:
    """Observe the loop's lag every `interval` seconds until cancelled (ten timers a second: nothing)."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - start - interval))
