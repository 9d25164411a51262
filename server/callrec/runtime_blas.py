"""BLAS on one thread: the server's parallelism is processes, not a math library's thread pool.

Why: the mixer sums a call's rows with `np.vecmat` (an sgemv in NumPy's bundled OpenBLAS), because
a NumPy reduction over the whole matrix releases the GIL and wakes a waiting writer thread for
nothing on every tick (see `core/mixer.py`). OpenBLAS splits an sgemv of 29 or more rows (a call of
29 participants) over a thread per core, and its threads spin while they wait for the next call:
measured on the 2-core bench machine, mixing a 30- or 60-participant call then cost 15-23 % more CPU
than its wall time, on the core the recording writers and decode workers need. Nothing else in the
server calls BLAS, so one thread loses nothing.
"""

from __future__ import annotations

from typing import Any

import numpy  # noqa: F401  (loads NumPy's BLAS, so the limit below reaches it)
from threadpoolctl import threadpool_info, threadpool_limits

__all__ = ["single_threaded_blas"]

_limits: threadpool_limits | None = None


def single_threaded_blas() -> list[dict[str, Any]]:
    """Limit every BLAS library loaded in this process to one thread, for the process's life.

    Returns what threadpoolctl reports afterwards (library, version, `num_threads`), for the log.
    """
    global _limits
    if _limits is None:
        _limits = threadpool_limits(limits=1, user_api="blas")
    return [info for info in threadpool_info() if info.get("user_api") == "blas"]
