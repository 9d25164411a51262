"""The cyclic garbage collector on a server whose one event loop carries every call.

Why: a full collection walks every tracked object. After start-up that is ~100 000 objects
(modules, gRPC, PyAV, config), and walking them took 40-60 ms on the 2-core bench machine:
a stall of the loop that every call's mixer and every control RPC waits behind. Those objects
live as long as the process, so `freeze_startup_objects()` moves them out of the collector's
reach (`gc.freeze`, CPython's own remedy for this) once the server is serving; only objects made
later are collected. `record_pauses()` times each collection into a histogram, so an operator
sees what the collector costs (`callrec_gc_pause_seconds` on /metrics).

`space_young_collections()` then makes the collections of young objects rarer. A media server
keeps thousands of short-lived containers alive at any moment (every participant's frames wait a
playout delay in its jitter buffer), so each young collection walks them all, and CPython starts
one every 700 net allocations: at 240 participants that was 16 collections a second (about 1 ms
each) and a middle-generation one every 0.7 s (7 ms, up to 20), about 3 % of the event loop's
time, measured on /metrics. With `YOUNG_THRESHOLD` the same load collects once every 2 s.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_PAUSE = Histogram(
    "callrec_gc_pause_seconds", "Time the cyclic garbage collector stopped the process, by generation",
    ["generation"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)

_started: dict[int, float] = {}


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    generation = int(info.get("generation", 0))
    if phase == "start":
        _started[generation] = time.perf_counter()
    elif (began := _started.pop(generation, None)) is not None:
        GC_PAUSE.labels(str(generation)).observe(time.perf_counter() - began)


def record_pauses() -> None:
    """Time every collection from now on (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


#: Net allocations of tracked objects between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def space_young_collections(young: int = YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """Collect the young generation every `young` net allocations; the older ones keep their ratios.

    Returns the thresholds now in force. Garbage without cycles is freed at once as ever (reference
    counting); only cyclic garbage waits longer, and there is little of it on the media path.
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
    return gc.get_threshold()


def freeze_startup_objects() -> int:
    """Collect once, then exempt every object alive now from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
