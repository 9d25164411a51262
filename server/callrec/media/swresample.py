"""libswresample called directly (ctypes): packed float32 channels in, the same channels at another rate out.

Why not PyAV's `AudioResampler`: in PyAV 18 it runs an `aresample` filter graph, so one call is a frame
made from the array, a push, a pull, a frame made for the result and two freed, and PyAV releases the
GIL around each of those (six releases per call, each waking any thread that waits for the GIL, for
nothing). The call cost ~40 µs for 8 channels of a 20 ms tick; a 10-person call of 8 kHz participants
spent 85 µs a tick in it alone, 200 µs on the server's loop (measured: `ResamplerBank.process`).
`swr_convert` itself takes 15-20 µs for 8 channels (the filter), so it is called here as one foreign call
that keeps the GIL (`PyDLL`): on the event loop a short call that holds the GIL is cheaper than a release.

The library is the one PyAV's wheel bundles (the swresample its FFmpeg uses), else the system's
(`native_libs`).
The algorithm and its settings are swresample's defaults, as `aresample`'s.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np

from callrec.media.native_libs import load_codec_library

__all__ = ["SwrResampler", "available"]

_AV_SAMPLE_FMT_FLT = 3  # libavutil/samplefmt.h: float, packed
_AV_CHANNEL_ORDER_UNSPEC = 0  # libavutil/channel_layout.h: only the count is known (PyAV's "N channels")


class _ChannelLayout(ctypes.Structure):
    """libavutil's `AVChannelLayout` (FFmpeg 5.1 and later)."""

    _fields_ = [("order", ctypes.c_int), ("nb_channels", ctypes.c_int), ("mask", ctypes.c_uint64),
                ("opaque", ctypes.c_void_p)]


@cache
def _library() -> ctypes.CDLL | None:
    """libswresample with the GIL kept across calls (PyDLL); None when none loads or it lacks a function."""
    lib = load_codec_library("swresample", "libswresample.so.6", keep_gil=True)
    if lib is None:
        return None
    vp, i = ctypes.c_void_p, ctypes.c_int
    try:
        lib.swr_alloc_set_opts2.restype = i
        lib.swr_alloc_set_opts2.argtypes = [ctypes.POINTER(vp), ctypes.POINTER(_ChannelLayout), i, i,
                                            ctypes.POINTER(_ChannelLayout), i, i, i, vp]
        lib.swr_init.restype = i
        lib.swr_init.argtypes = [vp]
        lib.swr_convert.restype = i
        lib.swr_convert.argtypes = [vp, ctypes.POINTER(vp), i, ctypes.POINTER(vp), i]
        lib.swr_free.restype = None
        lib.swr_free.argtypes = [ctypes.POINTER(vp)]
    except AttributeError:  # an FFmpeg before 5.1 (no swr_alloc_set_opts2)
        return None
    return lib


def available() -> bool:
    """Whether libswresample (5.1 or later) could be loaded."""
    return _library() is not None


class SwrResampler:
    """Resamples `channels` packed float32 channels from `in_rate` to `out_rate`, keeping filter state.

    Like swresample itself, the first calls hold back the filter's delay (they return fewer samples);
    `ResamplerBank` pads that once.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        lib = _library()
        if lib is None:
            raise RuntimeError("libswresample (FFmpeg 5.1 or later) could not be loaded; PyAV's wheel bundles it")
        if channels < 1:
            raise ValueError("channels must be at least 1")
        self._lib = lib
        self.in_rate, self.out_rate, self.channels = in_rate, out_rate, channels
        layout = _ChannelLayout(_AV_CHANNEL_ORDER_UNSPEC, channels, 0, None)
        ctx = ctypes.c_void_p()
        code = lib.swr_alloc_set_opts2(ctypes.byref(ctx), ctypes.byref(layout), _AV_SAMPLE_FMT_FLT, out_rate,
                                       ctypes.byref(layout), _AV_SAMPLE_FMT_FLT, in_rate, 0, None)
        if code < 0 or not ctx.value:
            raise RuntimeError(f"swr_alloc_set_opts2 failed ({code}) for {channels} channels {in_rate} -> {out_rate}")
        self._ctx: ctypes.c_void_p | None = ctx
        code = lib.swr_init(ctx)
        if code < 0:
            self.close()
            raise RuntimeError(f"swr_init failed ({code}) for {channels} channels {in_rate} -> {out_rate}")
        self._out = np.empty((0, channels), dtype=np.float32)
        self._in_ptr = (ctypes.c_void_p * 1)()
        self._out_ptr = (ctypes.c_void_p * 1)()

    def convert(self, samples: np.ndarray) -> np.ndarray:
        """Resample float32 samples of shape (n, channels); returns a view of the samples made (m, channels),
        valid until the next call."""
        if self._ctx is None:
            raise RuntimeError("the resampler is closed")
        pcm = np.ascontiguousarray(samples, dtype=np.float32)
        if pcm.ndim != 2 or pcm.shape[1] != self.channels:
            raise ValueError(f"samples must have shape (n, {self.channels}), got {pcm.shape}")
        n = pcm.shape[0]
        room = n * self.out_rate // self.in_rate + 256  # the rate ratio plus what the filter held back
        if self._out.shape[0] < room:
            self._out = np.empty((room, self.channels), dtype=np.float32)
        self._in_ptr[0] = pcm.__array_interface__["data"][0]
        self._out_ptr[0] = self._out.__array_interface__["data"][0]
        made = self._lib.swr_convert(self._ctx, self._out_ptr, self._out.shape[0], self._in_ptr, n)
        if made < 0:
            raise RuntimeError(f"swr_convert failed ({made})")
        return self._out[:made]

    def close(self) -> None:
        """Free swresample's state (also done when the object is collected)."""
        if self._ctx is not None:
            self._lib.swr_free(ctypes.byref(self._ctx))
            self._ctx = None

    def __del__(self) -> None:
        self.close()
