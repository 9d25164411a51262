"""`core.zeros`: zeroed arrays for the event loop's silent ticks, made without handing the GIL to another thread."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from callrec.core.zeros import KEEP_GIL_BYTES, zeros


@pytest.mark.parametrize(("shape", "dtype"), [(320, np.float32), ((320, 10), np.int16), (0, np.float32),
                                              ((0, 4), np.int16), (KEEP_GIL_BYTES // 4 + 1, np.float32)])
def test_it_is_what_np_zeros_makes(shape: int | tuple[int, ...], dtype: type) -> None:
    made = zeros(shape, dtype)
    expected = np.zeros(shape, dtype)
    assert made.shape == expected.shape and made.dtype == expected.dtype
    assert made.flags.c_contiguous and made.flags.writeable
    assert not made.any()
    made[...] = 1  # its own memory: writing it changes no other array
    assert zeros(shape, dtype).sum() == 0


def handoffs(make: Callable[[], object], seconds: float = 0.1) -> int:
    """How often another thread got the GIL while `make()` ran in a loop, with a switch interval so long that
    only a release by `make` itself lets it in."""
    count = 0
    stop = False

    def waiting() -> None:
        nonlocal count
        while not stop:
            count += 1
            time.sleep(0.00005)  # then it waits for the GIL again

    old = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    thread = threading.Thread(target=waiting)
    thread.start()
    try:
        time.sleep(0.01)
        before = count
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            make()
        return count - before
    finally:
        stop = True
        sys.setswitchinterval(old)
        thread.join()


def test_a_silent_tick_keeps_the_gil() -> None:
    """One participant's silent tick (320 float32) and an unmixed recording's paused block (320 x 10 int16):
    `np.zeros` hands the GIL over hundreds of times a tenth of a second (calloc with the GIL released), this
    never does."""
    assert handoffs(lambda: np.zeros(320, np.float32)) > 10  # the test can see a release
    assert handoffs(lambda: zeros(320, np.float32)) == 0
    assert handoffs(lambda: zeros((320, 10), np.int16)) == 0
