"""`core.zeros`: zeroed arrays for the event loop's silent ticks, made without handing the GIL to another thread."""

from __future__ import annotations

import numpy as np
import pytest

from callrec.core.zeros import KEEP_GIL_BYTES, zeros
from tests.unit.test_gil_releases import releases_during


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


def test_a_silent_tick_keeps_the_gil() -> None:
    """One participant's silent tick (320 float32) and an unmixed recording's paused block (320 x 10 int16):
    `np.zeros` hands the GIL over (calloc with the GIL released), this never does (the watcher of
    `test_gil_releases`)."""
    assert releases_during(lambda: np.zeros(320, np.float32), 20_000) > 10  # the test can see a release
    assert releases_during(lambda: zeros(320, np.float32), 20_000) == 0
    assert releases_during(lambda: zeros((320, 10), np.int16), 20_000) == 0
