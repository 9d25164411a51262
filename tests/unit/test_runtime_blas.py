"""BLAS on one thread (`callrec.runtime_blas`): the mixer's `vecmat` must not start OpenBLAS's thread pool."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from callrec.runtime_blas import single_threaded_blas


def test_every_loaded_blas_is_limited_to_one_thread_and_reported() -> None:
    reported = single_threaded_blas()
    assert reported, "NumPy's OpenBLAS is loaded (runtime_blas imports NumPy) and reported for the log"
    assert all(info["num_threads"] == 1 for info in reported), reported
    assert all(info["num_threads"] == 1 for info in threadpool_info() if info["user_api"] == "blas")
    assert single_threaded_blas() == reported, "idempotent"
    rows = np.ones((64, 320), dtype=np.float32)  # an sgemv OpenBLAS would split over its threads
    np.testing.assert_array_equal(np.vecmat(np.ones(64, dtype=np.float32), rows), np.full(320, 64.0))
