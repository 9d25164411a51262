"""JitterBuffer: ordering, duplicates, late and early frames, gaps, overlaps, delivery frontier."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from callrec.core.jitter import MAX_SEQUENCE, JitterBuffer
from callrec.core.model import MediaStats, RejectReason

RATE = 16_000
FRAME = 320  # 20 ms


def pcm_of(sequence: int, n: int = FRAME) -> np.ndarray:
    """A frame's PCM that says which frame it was (constant value)."""
    return np.full(n, (sequence + 1) / 1000, dtype=np.float32)


def play(jitter: JitterBuffer, ticks: range) -> np.ndarray:
    """Pop, 'decode' (the payload is the sequence), place and read tick by tick."""
    out = []
    for k in ticks:
        first, last = k * FRAME, (k + 1) * FRAME
        for frame in jitter.pop_due(last):
            jitter.place(frame, pcm_of(frame.sequence, frame.samples))
        out.append(jitter.read(first, last))
    return np.concatenate(out)


def push(jitter: JitterBuffer, sequence: int, position: int | None = None, samples: int = FRAME) -> str | None:
    return jitter.push(sequence, sequence * FRAME if position is None else position, samples, b"x")


def test_out_of_order_frames_play_in_order() -> None:
    jitter = JitterBuffer(RATE)
    for sequence in (0, 2, 1, 4, 3, 5):
        assert push(jitter, sequence) is None
    out = play(jitter, range(6))
    expected = np.concatenate([pcm_of(s) for s in range(6)])
    np.testing.assert_array_equal(out, expected)
    assert jitter.stats.frames_rejected_by_reason == {}


def test_duplicates_are_dropped_and_counted_before_and_after_playout() -> None:
    stats = MediaStats()
    jitter = JitterBuffer(RATE, stats)
    assert push(jitter, 0) is None
    assert push(jitter, 0) == RejectReason.DUPLICATE  # still buffered
    play(jitter, range(1))
    assert push(jitter, 0) == RejectReason.DUPLICATE  # already played
    assert stats.frames_rejected_by_reason == {"duplicate": 2}
    assert stats.frames_late == 0


def test_the_history_tells_duplicates_of_the_last_played_frames_from_late_ones() -> None:
    """A replay of any of the last `history` frames played is a duplicate; older ones and lost ones are late."""
    stats = MediaStats()
    jitter = JitterBuffer(RATE, stats, history=64)
    for sequence in range(200):
        if sequence != 150:  # lost: its slot plays as silence
            assert push(jitter, sequence) is None
    play(jitter, range(200))
    assert push(jitter, 199) == RejectReason.DUPLICATE
    assert push(jitter, 136) == RejectReason.DUPLICATE  # the oldest of the last 64
    assert push(jitter, 150) == RejectReason.LATE  # never played: not a duplicate
    assert push(jitter, 135) == RejectReason.LATE  # played, but 65 frames ago: out of the history
    assert push(jitter, 7) == RejectReason.LATE
    assert stats.frames_rejected_by_reason == {"duplicate": 2, "late": 3}
    assert stats.frames_late == 3


def test_frames_older_than_the_playout_point_are_late() -> None:
    stats = MediaStats()
    jitter = JitterBuffer(RATE, stats)
    push(jitter, 0)
    push(jitter, 2)
    play(jitter, range(3))  # frame 1 never came: its slot was played as silence
    assert push(jitter, 1) == RejectReason.LATE
    assert stats.frames_late == 1
    assert stats.frames_rejected_by_reason == {"late": 1}


def test_a_frame_partly_in_the_past_keeps_its_future_part() -> None:
    jitter = JitterBuffer(RATE)
    push(jitter, 0)
    play(jitter, range(1))
    # 40 ms frame starting 10 ms before the playout point: 30 ms remain, at their place.
    assert jitter.push(7, FRAME - 160, 2 * FRAME, b"x") is None
    out = play(jitter, range(1, 3))
    assert np.all(out[: 2 * FRAME - 160] == np.float32(0.008))
    assert np.all(out[2 * FRAME - 160 :] == 0)


def test_gaps_become_silence_and_are_counted() -> None:
    stats = MediaStats()
    jitter = JitterBuffer(RATE, stats)
    for sequence in (0, 1, 4, 5):  # frames 2 and 3 lost
        push(jitter, sequence)
    out = play(jitter, range(6))
    assert np.all(out[2 * FRAME : 4 * FRAME] == 0)
    np.testing.assert_array_equal(out[4 * FRAME : 5 * FRAME], pcm_of(4))
    assert stats.gap_fill_ms == 40
    assert stats.frames_rejected_by_reason == {}


def test_small_timestamp_jitter_is_absorbed_without_gaps() -> None:
    """Placement within the tolerance continues the previous frame exactly (no clicks, no drift)."""
    stats = MediaStats()
    jitter = JitterBuffer(RATE, stats, gap_tolerance_ms=5)
    rng = np.random.default_rng(3)
    for sequence in range(1, 21):
        push(jitter, sequence, sequence * FRAME + int(rng.integers(-40, 40)))
    out = play(jitter, range(23))
    expected = np.concatenate([pcm_of(s) for s in range(1, 21)])
    start = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[start : start + len(expected)], expected)
    assert stats.gap_fill_ms == 0


def test_overlapping_timestamps_are_trimmed_not_duplicated() -> None:
    stats = MediaStats()
    jitter = JitterBuffer(RATE, stats, gap_tolerance_ms=2)
    push(jitter, 0)
    push(jitter, 1, FRAME - 160)  # claims to start 10 ms inside frame 0
    push(jitter, 2, 0, 160)  # entirely inside what was already placed
    out = play(jitter, range(3))
    np.testing.assert_array_equal(out[:FRAME], pcm_of(0))
    np.testing.assert_array_equal(out[FRAME : 2 * FRAME - 160], pcm_of(1)[160:])
    assert stats.frames_rejected_by_reason == {"overlap": 1}


def test_buffer_capacity_and_far_future_frames_are_rejected() -> None:
    stats = MediaStats()
    jitter = JitterBuffer(RATE, stats, capacity=3, max_early_ms=1000)
    for sequence in range(3):
        assert push(jitter, sequence) is None
    assert push(jitter, 3) == RejectReason.BUFFER_FULL
    play(jitter, range(3))
    assert push(jitter, 100, 100 * FRAME) == RejectReason.EARLY  # 2 s ahead of the playout point
    assert stats.frames_rejected_by_reason == {"buffer_full": 1, "early": 1}


def test_frontier_follows_contiguous_delivery_and_bounds_the_wait_for_a_hole() -> None:
    jitter = JitterBuffer(RATE)
    assert jitter.frontier(reorder_window=3200) is None  # nothing yet: the media clock must wait
    for sequence in (0, 1, 2):
        push(jitter, sequence)
    assert jitter.frontier(3200) == 3 * FRAME
    for sequence in range(4, 20):  # frame 3 missing
        push(jitter, sequence)
    assert jitter.frontier(0) == 20 * FRAME  # no patience: newest end
    assert jitter.frontier(3200) == 20 * FRAME - 3200  # waits 200 ms of media for the hole
    assert jitter.frontier(10 * 3200) == 3 * FRAME  # would wait longer, but not past the hole
    push(jitter, 3)
    assert jitter.frontier(10 * 3200) == 20 * FRAME


def test_pending_until_and_backlog() -> None:
    jitter = JitterBuffer(RATE, backlog_frames=5)
    assert jitter.pending_until() is None
    for sequence in range(5):
        push(jitter, sequence)
    assert jitter.pending_until() == 5 * FRAME
    assert jitter.backlogged()
    play(jitter, range(5))
    assert jitter.pending_until() is None
    assert not jitter.backlogged()


def _scenario(seed: int) -> list[list[tuple[int, int, int]]]:
    """Per tick, the frames (sequence, position, samples) that arrive before it is played: mostly one
    aligned 20 ms frame, with the odd reordering, duplicate, loss, late frame, timestamp wobble within
    and beyond the tolerance, and 10 / 40 ms frames."""
    rng = np.random.default_rng(seed)
    arrivals: list[list[tuple[int, int, int]]] = [[] for _ in range(400)]
    position, sequence, held = 0, 10, []  # sequences are uint64: a late copy (sequence - 2) stays >= 0
    for tick in range(380):
        kind = rng.choice(["aligned"] * 12 + ["wobble", "jump", "lost", "reorder", "dup", "late", "short", "long"])
        samples = {"short": FRAME // 2, "long": 2 * FRAME}.get(str(kind), FRAME)
        offset = {"wobble": int(rng.integers(-40, 41)), "jump": int(rng.integers(100, 900))}.get(str(kind), 0)
        frame = (sequence, max(0, position + offset), samples)
        sequence += 1
        position += samples
        if kind == "lost":
            continue
        if kind == "reorder":
            held.append(frame)
            continue
        arrivals[tick].append(frame)
        if kind == "dup":
            arrivals[tick].append(frame)
        if kind == "late":
            arrivals[tick + 3].append((sequence - 2, frame[1] - FRAME, FRAME))  # already played when it comes
        if held and rng.random() < 0.5:
            arrivals[tick].extend(held)
            held = []
    return arrivals


def test_play_whole_moves_the_buffer_exactly_as_place_then_read_would() -> None:
    """`play_whole` is the fast path of the common tick: whatever the stream does, the blocks played,
    the counters and the buffer's state must equal the general path's, tick after tick."""
    fast_taken = 0
    for seed in range(12):
        general, fast = JitterBuffer(RATE), JitterBuffer(RATE)
        for tick, frames in enumerate(_scenario(seed)):
            for sequence, position, samples in frames:
                assert general.push(sequence, position, samples, b"x") == fast.push(sequence, position, samples,
                                                                                    b"x")
            first, last = tick * FRAME, (tick + 1) * FRAME
            for frame in general.pop_due(last):
                general.place(frame, pcm_of(frame.sequence, frame.samples))
            expected = general.read(first, last)
            due = fast.pop_due(last)
            pcm = [pcm_of(frame.sequence, frame.samples) for frame in due]
            if len(due) == 1 and fast.play_whole(due[0], first, last, len(pcm[0])):
                fast_taken += 1
                block = pcm[0]
            else:
                for frame, samples_pcm in zip(due, pcm, strict=True):
                    fast.place(frame, samples_pcm)
                block = fast.read(first, last)
            np.testing.assert_array_equal(block, expected, err_msg=f"seed {seed} tick {tick}")
            assert fast.played_until == general.played_until
            assert fast.frontier(FRAME) == general.frontier(FRAME)
            assert fast.frontier(100 * FRAME) == general.frontier(100 * FRAME)  # the contiguous reach itself
            assert fast.pending_until() == general.pending_until()
            assert fast.stats == general.stats, f"seed {seed} tick {tick}"
    assert 1000 < fast_taken < 12 * 400  # both paths were exercised, the fast one most of the time


def test_play_whole_refuses_what_is_not_exactly_the_tick() -> None:
    jitter = JitterBuffer(RATE)
    push(jitter, 0)
    (frame,) = jitter.pop_due(FRAME)
    assert not jitter.play_whole(frame, 0, FRAME, FRAME - 1)  # the decoder gave a sample less
    assert not jitter.play_whole(frame, FRAME, 2 * FRAME, FRAME)  # not this tick's frame
    assert jitter.played_until is None  # refused: nothing moved
    assert jitter.play_whole(frame, 0, FRAME, FRAME)
    assert jitter.played_until == FRAME
    push(jitter, 1, position=FRAME + 30)  # 30 samples off in its timestamp: within the tolerance, on the cursor
    (frame,) = jitter.pop_due(2 * FRAME + 30)
    assert jitter.play_whole(frame, FRAME, 2 * FRAME, FRAME)
    push(jitter, 2, position=2 * FRAME + 200)  # 12.5 ms off: beyond the 5 ms tolerance, a gap before it
    (frame,) = jitter.pop_due(3 * FRAME + 200)
    assert not jitter.play_whole(frame, 2 * FRAME, 3 * FRAME, FRAME)
    assert jitter.played_until == 2 * FRAME



def test_advance_moves_the_buffer_exactly_as_read_would_without_making_samples() -> None:
    """Unrecorded calls skip their ticks with `advance`: after it, the buffer plays on exactly as after `read`."""
    for seed in range(6):
        reads, skips = JitterBuffer(RATE), JitterBuffer(RATE)
        for tick, frames in enumerate(_scenario(seed)):
            for sequence, position, samples in frames:
                assert reads.push(sequence, position, samples, b"x") == skips.push(sequence, position, samples, b"x")
            first, last = tick * FRAME, (tick + 1) * FRAME
            for jitter in (reads, skips):
                for frame in jitter.pop_due(last):
                    jitter.place(frame, pcm_of(frame.sequence, frame.samples))
            expected = reads.read(first, last)
            if tick % 3 == 0:
                skips.advance(last)
            else:
                np.testing.assert_array_equal(skips.read(first, last), expected, err_msg=f"seed {seed} tick {tick}")
            assert skips.played_until == reads.played_until
            assert skips.frontier(FRAME) == reads.frontier(FRAME)
            assert skips.pending_until() == reads.pending_until()
            assert skips.stats == reads.stats


def test_advance_drops_the_samples_before_its_end_and_keeps_the_rest() -> None:
    jitter = JitterBuffer(RATE)
    assert push(jitter, 0, 0, 2 * FRAME) is None  # one 40 ms frame: two ticks
    (frame,) = jitter.pop_due(FRAME)
    source = np.arange(2 * FRAME, dtype=np.float32) / (4 * FRAME)
    jitter.place(frame, source)
    jitter.advance(FRAME)  # the first tick, skipped
    assert jitter.played_until == FRAME
    assert (jitter._start, jitter._len) == (FRAME, FRAME)  # only the second tick's samples stay buffered
    np.testing.assert_array_equal(jitter.read(FRAME, 2 * FRAME), source[FRAME:])
    assert jitter._len == 0
    assert push(jitter, 1, 0, FRAME) == RejectReason.LATE  # the skipped tick is in the past


def test_waiting_frames_are_nothing_the_garbage_collector_tracks() -> None:
    """Every young collection walks the tracked objects made since the last one. With an object per
    waiting frame, a server with a raised playout delay (300 participants, 2 s) had 30 000 of them,
    and each young collection took 40-130 ms: a stall that raised the delay further."""
    jitter = JitterBuffer(RATE, capacity=10_000, max_buffered_ms=600_000, history=64)
    payloads = [bytes([i % 256]) * 40 for i in range(5000)]
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for i, data in enumerate(payloads):
            assert jitter.push(i, i * FRAME, FRAME, data) is None
        grown = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert len(jitter) == 5000
    assert grown < 50, f"{grown} tracked objects for 5000 waiting frames"
    frames = jitter.pop_due(3 * FRAME)  # handed out as frame objects when they fall due
    assert [(f.sequence, f.position, f.samples, f.data) for f in frames] == [
        (i, i * FRAME, FRAME, payloads[i]) for i in range(3)]


def test_sequences_are_uint64_and_order_within_a_position() -> None:
    jitter = JitterBuffer(RATE)
    for bad in (-1, MAX_SEQUENCE + 1):
        with pytest.raises(ValueError, match="uint64"):
            jitter.push(bad, 0, FRAME, b"x")
    assert jitter.push(MAX_SEQUENCE, FRAME, FRAME, b"last") is None
    assert jitter.push(0, FRAME, FRAME, b"first") is None  # same position: sequence order
    assert jitter.push(5, 0, FRAME, b"earlier") is None
    assert jitter.next_due() == 0
    assert jitter.pending_until() == 2 * FRAME
    assert [f.data for f in jitter.pop_due(FRAME)] == [b"earlier"]
    assert [(f.sequence, f.data) for f in jitter.pop_due(2 * FRAME)] == [(0, b"first"), (MAX_SEQUENCE, b"last")]
    assert jitter.push(MAX_SEQUENCE, 2 * FRAME, FRAME, b"again") == RejectReason.DUPLICATE


def test_the_timeline_keeps_every_sample_written_until_it_is_read_whatever_the_order() -> None:
    """The decoded half against a model (position -> sample): writes ahead of, behind and over the data,
    reads and skips of any length. The buffer keeps its data at an offset that reads move on and writes
    move back to the front or grow, so every path of that bookkeeping is driven here."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    step = st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3 * FRAME), st.integers(1, 5 * FRAME)),
        st.tuples(st.just("read"), st.integers(0, 3 * FRAME), st.just(0)),
        st.tuples(st.just("skip"), st.integers(0, 3 * FRAME), st.just(0)),
    )

    @settings(max_examples=300, deadline=None)
    @given(st.lists(step, min_size=1, max_size=40))
    def check(steps: list[tuple[str, int, int]]) -> None:
        jitter = JitterBuffer(RATE)  # a buffer of RATE // 4 = 4000 samples: long writes make it grow
        model: dict[int, float] = {}
        played = 0
        written = 0
        for kind, amount, length in steps:
            if kind == "write":  # anywhere from the playout point to a bit past the data
                start = played + amount
                written += 1
                values = written + np.arange(length, dtype=np.float32) / 8192
                jitter._write(start, values)
                model.update(zip(range(start, start + length), values.tolist(), strict=True))
            else:
                end = played + amount
                if kind == "read":
                    expected = [model.get(p, 0.0) for p in range(played, end)]
                    np.testing.assert_array_equal(jitter.read(played, end), np.array(expected, dtype=np.float32))
                else:
                    jitter.advance(end)
                model = {p: v for p, v in model.items() if p >= end}
                played = end
        end = max(model, default=played) + 1
        expected = [model.get(p, 0.0) for p in range(played, end)]
        np.testing.assert_array_equal(jitter.read(played, end), np.array(expected, dtype=np.float32))

    check()
