"""libopus's decoder, called directly (ctypes), decoding straight to the mix rate.

Why not PyAV here: FFmpeg's libopus wrapper always decodes at 48 kHz, so every 20 ms packet
costs an `av.Packet`, a decode call, an `AudioFrame` and then a share of a 48 -> 16 kHz resampler
(about 25 µs per packet with the resampler on the 2-core bench machine). libopus itself decodes at
8, 12, 16, 24 or 48 kHz (RFC 6716 §4: the decoder renders any packet at any of these rates), so
decoding at 16 kHz removes the resampler and the frame objects: one foreign call per packet into a
buffer that is reused.

The library is the copy PyAV's wheel bundles (FFmpeg's own libopus), or else the system's (Debian
`libopus0`); `available()` says whether one loaded, and `decode.AudioDecoder` falls back to PyAV's
decoder when none did. It is called with the GIL kept (`PyDLL`): a packet takes 15-30 µs, on the
event loop (or in a decode worker, which has no other thread), and releasing the GIL for it cost the
loop a wake-up of a waiting writer thread and a wait to take the GIL back (`native_libs`).
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np

from callrec.media.native_libs import load_codec_library

#: The rates libopus can decode to (RFC 6716 §4; opus_decoder_create).
DECODE_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
#: Longest Opus packet: 120 ms.
MAX_PACKET_MS = 120
_OPUS_OK = 0
_OPUS_RESET_STATE = 4028  # opus_defines.h: OPUS_RESET_STATE


class OpusError(Exception):
    """libopus refused a packet (the message is libopus's own)."""


@cache
def _library() -> ctypes.CDLL | None:
    lib = load_codec_library("opus", "libopus.so.0", keep_gil=True)  # 15-30 µs calls, mostly on the event loop
    if lib is None:
        return None
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode_float.restype = ctypes.c_int
    lib.opus_decode_float.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
    ]
    lib.opus_decoder_ctl.restype = ctypes.c_int
    lib.opus_decoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    """Whether libopus could be loaded."""
    return _library() is not None


class OpusDecoder:
    """One participant's libopus decoder state, mono float32 at `sample_rate`.

    Stereo packets are downmixed by libopus (a decoder created with one channel does that).
    After a refused packet the state is reset, so the next packet decodes as after a loss.
    """

    def __init__(self, sample_rate: int) -> None:
        self._state: int | None = None
        if sample_rate not in DECODE_RATES:
            raise ValueError(f"libopus decodes at {DECODE_RATES} Hz, not {sample_rate}")
        lib = _library()
        if lib is None:
            raise RuntimeError("libopus is not available: install Debian's libopus0")
        self._lib = lib
        self.sample_rate = sample_rate
        err = ctypes.c_int(0)
        state = lib.opus_decoder_create(sample_rate, 1, ctypes.byref(err))
        if err.value != _OPUS_OK or not state:
            raise RuntimeError(f"opus_decoder_create failed: {lib.opus_strerror(err.value).decode()}")
        self._state = state
        self._max_samples = sample_rate * MAX_PACKET_MS // 1000
        self._out = np.zeros(self._max_samples, dtype=np.float32)
        self._out_ptr = self._out.ctypes.data
        self._decode = lib.opus_decode_float

    def decode(self, packet: bytes) -> np.ndarray:
        """Decode one packet; returns a new float32 array of its samples at `sample_rate`."""
        return self._out[:self._decode_packet(packet)].copy()

    def decode_into(self, packet: bytes, out: bytearray) -> int:
        """Decode one packet and append its float32 samples to `out`; returns how many samples.

        For the decode worker, which sends many packets' samples in one buffer: no array per packet.
        """
        n = self._decode_packet(packet)
        out += self._out.data[:n]
        return n

    def _decode_packet(self, packet: bytes) -> int:
        """Decode into the decoder's own buffer; returns the samples made (raises OpusError, then resets)."""
        if self._state is None:
            raise RuntimeError("the Opus decoder is closed")
        n = int(self._decode(self._state, packet, len(packet), self._out_ptr, self._max_samples, 0))
        if n < 0:
            self._lib.opus_decoder_ctl(self._state, _OPUS_RESET_STATE)
            raise OpusError(self._lib.opus_strerror(n).decode())
        return n

    def close(self) -> None:
        """Free libopus's state (also done when the object is collected)."""
        if self._state is not None:
            self._lib.opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
