"""The cyclic garbage collector on a server whose one event loop carries every call.

Why: a full collection walks every tracked object. After start-up that is ~100 000 objects
(modules, gRPC, PyAV, config), and walking them took 40-60 ms on the 2-core bench machine:
a stall of the loop that every call's mixer and every control RPC waits behind. Those objects
live as long as the process, so `freeze_startup_objects()` moves them out of the collector's
reach (`gc.freeze`, CPython's own remedy for this) once the server is serving; only objects made
later are collected. `record_pauses()` times each collection into a histogram, so an operator
sees what the collector costs (`callrec_gc_pause_seconds` on /metrics).
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


def freeze_startup_objects() -> int:
    """Collect once, then exempt every object alive now from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
