"""The per-tick media path keeps the GIL (issue 11).

Why it matters: a recording's writer thread spends its time in LAME (ctypes, GIL released) and then
waits for the GIL. Every time the event loop's thread releases the GIL, CPython signals that waiting
thread, which wakes, finds the GIL taken again and sleeps: a futex wake and two context switches for
nothing. NumPy releases the GIL around any loop of more than 500 elements and around `zeros` of more
than 1 KiB, so a mixer that reduced the whole (participants x 320) matrix did it four times a tick.
Measured on row 7's pipeline (10 participants, mixed mp3): 7000 context switches per minute of call
became 3000, and the pipeline's CPU fell by about 14 %.

How the tests see a release: a second thread loops on `time.sleep(0)`, so it is always waiting for the
GIL; with a switch interval of 5 s it can only run when the main thread releases the GIL. Its pass
count before and after the code under test tells whether the GIL was released in between. The garbage
collector is off while it counts (a finalizer of an earlier test's object, closing a file, releases the
GIL wherever a collection happens to run), and a count that is not zero is measured again from scratch, up
to three times (`until_none`): in one CI run of the whole suite a silent tick's 59 ticks saw 786 passes
once, alone; the code paths these tests guard released the GIL on every tick, every time.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from callrec.core.call_media import CallMedia
from callrec.core.clock import MediaClock
from callrec.core.mixer import Mixer
from callrec.core.model import AudioEncoding, AudioFormat
from callrec.media.decode import PyAVAudioCodecs
from callrec.runtime_blas import single_threaded_blas
from callrec.testing import EPOCH, CollectingSink, encode_frames, participant_frequency, tone

PCM16_16K = AudioFormat(AudioEncoding.PCM16LE, 16_000, 1)


@contextmanager
def gil_waiter() -> Iterator[Callable[[], int]]:
    """A thread that always waits for the GIL; yields a function returning how often it got it."""
    passes = [0]
    stop = threading.Event()

    def wait_for_the_gil() -> None:
        while not stop.is_set():
            time.sleep(0)  # releases the GIL and takes it back: in take_gil whenever the main thread holds it
            passes[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)  # no forced switch during the measurement: only a release lets it run
    thread = threading.Thread(target=wait_for_the_gil, daemon=True)
    thread.start()
    try:
        while passes[0] < 10:
            time.sleep(0.001)
        yield lambda: passes[0]
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()


def releases_during(work: Callable[[], object], repeat: int) -> int:
    """How often the waiting thread ran while `work` was called `repeat` times (the garbage collector off)."""
    gc.collect()
    gc.disable()
    try:
        with gil_waiter() as passes:
            before = passes()
            for _ in range(repeat):
                work()
            return passes() - before
    finally:
        gc.enable()


def until_none(measure: Callable[[], int], tries: int = 3) -> list[int]:
    """`measure()` again while it counts releases, at most `tries` times: the counts (the last is the verdict)."""
    counts = [measure()]
    while counts[-1] and len(counts) < tries:
        counts.append(measure())
    return counts


def test_the_watcher_sees_numpy_release_the_gil() -> None:
    """The control: a reduction over 3200 elements releases the GIL, and the watcher sees it."""
    matrix = np.ones((10, 320), dtype=np.float32)
    # The watcher sees a release only if it gets a core the moment numpy lets go of the GIL; with the suite's
    # other process (`make test` runs two) busy on the second core it can miss 2000 of them, so it gets tries.
    attempts = [releases_during(lambda: np.add.reduce(matrix, axis=0), 2000)]
    while attempts[-1] == 0 and len(attempts) < 20:
        attempts.append(releases_during(lambda: np.add.reduce(matrix, axis=0), 2000))
    assert attempts[-1] > 0, f"no release seen in {len(attempts)} x 2000 reductions"


@pytest.mark.parametrize("participants", [2, 10, 40])
def test_mixing_a_tick_keeps_the_gil(participants: int) -> None:
    single_threaded_blas()  # as the server runs: 40 rows would otherwise go to OpenBLAS's threads
    mixer = Mixer()
    ids = [f"p{i}" for i in range(participants)]
    t = np.arange(320, dtype=np.float32) / np.float32(16_000)
    quiet = np.float32(0.5 / participants)  # the sum stays below the limiter's knee: the mix is the plain sum
    blocks = np.stack([quiet * np.sin(np.float32(2 * np.pi * (200 + 37 * i)) * t)
                       for i in range(participants)]).astype(np.float32)
    result = mixer.mix(ids, blocks)
    np.testing.assert_allclose(result.mixed, np.rint(blocks.sum(axis=0) * 32768), atol=1)
    np.testing.assert_allclose(result.mean_square, (blocks * blocks).mean(axis=1), rtol=1e-5)
    counts = until_none(lambda: releases_during(lambda: mixer.mix(ids, blocks), 300))
    assert counts[-1] == 0, counts


def ten_person_call(fmt: AudioFormat, ticks: int, produced: list) -> tuple[CallMedia, Callable[[], None]]:
    """A fresh call of 10 participants in `fmt` (`produced` emptied) and a function that produces its next tick
    into `produced`, `ticks` of them at most."""
    call = CallMedia("c", MediaClock(start_time=EPOCH), PyAVAudioCodecs())
    for i in range(10):
        call.add_participant(f"p{i}", f"P{i}", fmt, "gw")
    call.attach(CollectingSink())
    numbers = iter(range(ticks))
    produced.clear()

    def tick() -> None:
        produced.append(call.produce_tick(next(numbers)))

    return call, tick


@pytest.mark.parametrize("fmt", [
    pytest.param(PCM16_16K, id="pcm16-16k"),
    pytest.param(AudioFormat(AudioEncoding.PCMU, 8_000, 1), id="pcmu-8k"),  # G.711 lookup, resampler bank
    pytest.param(AudioFormat(AudioEncoding.OPUS, 48_000, 1), id="opus"),  # libopus on the loop (no decode worker)
])
def test_producing_a_ten_person_tick_keeps_the_gil(fmt: AudioFormat) -> None:
    """The tick loop's own work, decode, resampling and mix included (row 7's pipeline; row 1b's G.711)."""
    frames = {i: encode_frames(tone(participant_frequency(i), 1.0, rate=fmt.sample_rate), fmt) for i in range(10)}
    produced: list = []

    def measure() -> int:
        call, tick = ten_person_call(fmt, 50, produced)
        for n in range(50):
            for i in range(10):
                assert call.push_audio(f"p{i}", n, n * 20_000, frames[i][n]) is None
        for _ in range(3):  # the first ticks set up (the resampler bank's groups, the filters' delay)
            tick()
        return releases_during(tick, 37)

    counts = until_none(measure)
    assert counts[-1] == 0, counts
    heard = [t for t in produced if np.any(t.mixed)]
    assert len(heard) >= 30, f"only {len(heard)} of 40 ticks carried the participants' tones"
    assert all(len(t.participants) == 10 for t in heard)


def test_short_codec_calls_keep_the_gil_and_long_ones_release_it() -> None:
    """libopus (15-30 µs a packet, on the loop) and libswresample keep the GIL; LAME, encoding 100 ms at a
    time in a writer thread, releases it so the loop runs meanwhile."""
    import ctypes

    from callrec.media import lame, opus, swresample

    assert isinstance(opus._library(), ctypes.PyDLL)
    assert isinstance(swresample._library(), ctypes.PyDLL)
    lame_library = lame._library()
    assert isinstance(lame_library, ctypes.CDLL) and not isinstance(lame_library, ctypes.PyDLL)


@pytest.mark.parametrize("fmt", [
    pytest.param(PCM16_16K, id="pcm16-16k"),
    pytest.param(AudioFormat(AudioEncoding.OPUS, 48_000, 1), id="opus"),
])
def test_a_tick_of_silence_keeps_the_gil(fmt: AudioFormat) -> None:
    """Participants whose frames stopped (a quiet gateway, or an overloaded server where every frame comes
    late): each tick reads silence from their timelines. `np.zeros` of a tick (1280 bytes) released the GIL
    for every participant on every tick, and under overload that handed the GIL to gRPC's threads exactly
    when the loop had no time to spare (`core.zeros`)."""
    frames = encode_frames(tone(participant_frequency(0), 0.2, rate=fmt.sample_rate), fmt)
    produced: list = []

    def measure() -> int:
        call, tick = ten_person_call(fmt, 60, produced)
        for n in range(10):  # one participant speaks for 200 ms, with every other frame missing; then nobody
            if n % 2 == 0:
                assert call.push_audio("p0", n, n * 20_000, frames[n]) is None
        tick()
        return releases_during(tick, 59)

    counts = until_none(measure)
    assert counts[-1] == 0, counts
    assert any(np.any(t.mixed) for t in produced[:10])  # p0's frames were heard, between the gaps
    assert not any(np.any(t.mixed) for t in produced[12:])  # then silence, every participant still there
    assert all(len(t.participants) == 10 for t in produced)
