"""The serving process's garbage collector: start-up objects frozen, every pause timed."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from callrec import runtime_gc


def _count(generation: str) -> tuple[float, float]:
    """(seconds, collections) of one generation, as /metrics shows them."""
    labels = {"generation": generation}
    total = REGISTRY.get_sample_value("callrec_gc_pause_seconds_sum", labels) or 0.0
    count = REGISTRY.get_sample_value("callrec_gc_pause_seconds_count", labels) or 0.0
    return total, count


def test_each_collection_is_timed_by_generation() -> None:
    runtime_gc.record_pauses()
    runtime_gc.record_pauses()  # idempotent: one callback, one observation per collection
    assert gc.callbacks.count(runtime_gc._on_gc) == 1
    before_sum, before_n = _count("2")
    gc.collect(2)
    after_sum, after_n = _count("2")
    assert after_n == before_n + 1
    assert after_sum > before_sum


def test_freezing_moves_the_live_objects_out_of_the_collectors_reach() -> None:
    try:
        frozen = runtime_gc.freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 10_000  # the modules of a test process at least
        tracked_after = len(gc.get_objects())
        assert tracked_after < frozen / 10  # a full collection now walks only what came later
    finally:
        gc.unfreeze()


def test_young_collections_are_spaced_for_the_frames_a_server_keeps_waiting() -> None:
    """A jitter-buffer-like load (thousands of small objects alive for a while) collects 10x less often."""
    class Frame:
        __slots__ = ("data", "sequence")

        def __init__(self, sequence: int) -> None:
            self.sequence, self.data = sequence, b""

    def young_collections_during_playout() -> int:
        waiting: list[Frame] = []
        runtime_gc.record_pauses()
        before = _count("0")[1]
        for sequence in range(60_000):  # 5 s of 240 participants' frames, ~250 ms in the buffer each
            waiting.append(Frame(sequence))
            if len(waiting) > 3000:
                del waiting[:1000]
        return int(_count("0")[1] - before)

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, saved[1], saved[2])
        default = young_collections_during_playout()
        assert runtime_gc.space_young_collections() == (runtime_gc.YOUNG_THRESHOLD, saved[1], saved[2])
        spaced = young_collections_during_playout()
    finally:
        gc.set_threshold(*saved)
    assert default >= 40  # one per 700 net allocations: ~60,000 / 700 (some are middle-generation ones)
    assert spaced <= default / 8
