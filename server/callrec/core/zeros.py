"""`zeros`: a zeroed NumPy array made without letting go of the GIL, for the event loop's per-tick silence.

Why not `np.zeros`: for more than 1 KiB NumPy callocs with the GIL released. On the event loop another
thread is nearly always waiting for the GIL (gRPC's poller, the pipes' readers), so each release hands it
over and the loop then waits to get it back: measured on the 2-core machine with one other thread wanting
the GIL, `np.zeros(320, float32)` (one participant's silent tick) took 1-31 µs and `np.zeros((320, 10),
int16)` 28-38 µs, against 0.3-0.8 µs made from a `bytearray` (zeroed by CPython with the GIL held).
A call whose media stopped reads silence for every participant on every tick, so under overload (frames
late) this cost grew exactly when the loop had no time for it.

Large arrays (more than `KEEP_GIL_BYTES`) still come from `np.zeros`: zeroing them takes long enough that
other threads should run meanwhile.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["KEEP_GIL_BYTES", "zeros"]

#: Up to this size the array is zeroed with the GIL held (a few µs of memset at most).
KEEP_GIL_BYTES = 64 << 10


def zeros(shape: int | tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
    """Like `np.zeros(shape, dtype)` (C order, writable), without releasing the GIL for small arrays."""
    kind = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else shape
    nbytes = math.prod(dims) * kind.itemsize
    if nbytes > KEEP_GIL_BYTES:
        return np.zeros(dims, dtype=kind)
    return np.frombuffer(bytearray(nbytes), dtype=kind).reshape(dims)
