"""libmp3lame's encoder, called directly (ctypes), writing the bitstream and LAME's own Info tag.

Why not PyAV here: PyAV's `encode` and `mux` take the GIL back for every 36 ms mp3 frame, so an
encoding writer thread asked for it ~28 times per second of audio and the event loop lost it each
time (measured: GetRecordingState p99 of 58-69 ms at 160 participants with mp3, 23 ms with wav).
Through ctypes one call encodes a whole write with the GIL released, and the encoder runs on the
other core while the loop runs Python.

LAME reserves the first frame of the stream for its Info tag (frame count, encoder delay,
padding: what makes decoders gapless). `Mp3Encoder.info_frame()` gives the tag for what was
encoded so far; the writer puts it over the reserved frame in the first write it makes (held back
until two audio frames follow, so a file cut by a crash is empty or starts with an Info frame and
decodes) and again at the end.

The library is the system's (Debian `libmp3lame0`, the one Debian's ffmpeg links: 3.5-4x faster
than the copy PyAV's wheel bundles, see `native_libs`), or else PyAV's copy; `available()` says
whether one loaded, and `writers.mp3` falls back to PyAV when none did.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np

from callrec.media.native_libs import load_codec_library

__all__ = ["LameError", "Mp3Encoder", "available"]

_MONO = 3  # lame.h: MPEG_mode MONO
_VBR_OFF = 0  # lame.h: vbr_mode vbr_off
#: The longest Info tag frame (MPEG-1 Layer III at 320 kbps, 48 kHz, with padding); ours are 216 bytes.
_MAX_TAG_BYTES = 2880


class LameError(Exception):
    """libmp3lame refused a setting or failed to encode (the message says which call)."""


@cache
def _library() -> ctypes.CDLL | None:
    lib = load_codec_library("mp3lame", "libmp3lame.so.0", prefer_system=True)  # 3.5-4x faster: see native_libs
    if lib is None:
        return None
    try:
        _declare(lib)
    except AttributeError:  # a LAME older than 3.98 lacks a function we call: use PyAV's encoder instead
        return None
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions `Mp3Encoder` calls (AttributeError if one is missing)."""
    gfp, i = ctypes.c_void_p, ctypes.c_int
    lib.lame_init.restype = gfp
    lib.lame_init.argtypes = []
    for setter in ("lame_set_in_samplerate", "lame_set_out_samplerate", "lame_set_num_channels", "lame_set_mode",
                   "lame_set_brate", "lame_set_VBR", "lame_set_quality", "lame_set_bWriteVbrTag"):
        fn = getattr(lib, setter)
        fn.restype, fn.argtypes = i, [gfp, i]
    lib.lame_set_write_id3tag_automatic.restype = None
    lib.lame_set_write_id3tag_automatic.argtypes = [gfp, i]
    lib.lame_init_params.restype = i
    lib.lame_init_params.argtypes = [gfp]
    lib.lame_encode_buffer.restype = i
    lib.lame_encode_buffer.argtypes = [gfp, ctypes.c_void_p, ctypes.c_void_p, i, ctypes.c_void_p, i]
    lib.lame_encode_flush.restype = i
    lib.lame_encode_flush.argtypes = [gfp, ctypes.c_void_p, i]
    lib.lame_get_lametag_frame.restype = ctypes.c_size_t
    lib.lame_get_lametag_frame.argtypes = [gfp, ctypes.c_void_p, ctypes.c_size_t]
    lib.lame_close.restype = i
    lib.lame_close.argtypes = [gfp]
    lib.get_lame_version.restype = ctypes.c_void_p
    lib.get_lame_version.argtypes = []


def available() -> bool:
    """Whether libmp3lame could be loaded."""
    return _library() is not None


def describe() -> str:
    """Which LAME encodes mp3, for the start-up log: version and file, or PyAV's encoder."""
    lib = _library()
    if lib is None:
        return "PyAV's mp3 encoder (no libmp3lame could be loaded)"
    version = ctypes.cast(lib.get_lame_version(), ctypes.c_char_p).value or b"?"
    return f"libmp3lame {version.decode()} ({lib._name})"


class Mp3Encoder:
    """One mono CBR mp3 stream: int16 samples in, bitstream bytes out (no ID3 tags).

    `quality` is LAME's `-q` (0 best and slowest, 9 fastest): FFmpeg's `compression_level`.
    """

    def __init__(self, sample_rate: int, bit_rate: int, quality: int) -> None:
        self._gfp: int | None = None
        lib = _library()
        if lib is None:
            raise RuntimeError("libmp3lame is not available: install Debian's libmp3lame0")
        self._lib = lib
        gfp = lib.lame_init()
        if not gfp:
            raise LameError("lame_init failed (out of memory?)")
        self._gfp = gfp
        settings = (("lame_set_in_samplerate", sample_rate), ("lame_set_out_samplerate", sample_rate),
                    ("lame_set_num_channels", 1), ("lame_set_mode", _MONO), ("lame_set_VBR", _VBR_OFF),
                    ("lame_set_brate", bit_rate // 1000), ("lame_set_quality", quality),
                    ("lame_set_bWriteVbrTag", 1))
        for setter, value in settings:
            if getattr(lib, setter)(gfp, value) < 0:
                raise LameError(f"{setter}({value}) was refused")
        lib.lame_set_write_id3tag_automatic(gfp, 0)
        code = lib.lame_init_params(gfp)
        if code < 0:
            raise LameError(
                f"lame_init_params failed ({code}): {sample_rate} Hz at {bit_rate} bit/s is not a valid mp3")
        self._out = np.zeros(0, dtype=np.uint8)

    def _buffer(self, samples: int) -> np.ndarray:
        """An output buffer of LAME's worst case for `samples` (lame.h: 1.25 * samples + 7200)."""
        need = samples + samples // 4 + 7200
        if len(self._out) < need:
            self._out = np.zeros(need, dtype=np.uint8)
        return self._out

    def encode(self, samples: np.ndarray) -> bytes:
        """Encode mono int16 samples; returns the bitstream that is complete so far (LAME holds back
        up to about two frames for its look-ahead and bit reservoir)."""
        gfp = self._require_open()
        pcm = np.ascontiguousarray(samples, dtype=np.int16).reshape(-1)
        if pcm.size == 0:
            return b""
        out = self._buffer(pcm.size)
        pointer = pcm.ctypes.data
        n = self._lib.lame_encode_buffer(gfp, pointer, pointer, pcm.size, out.ctypes.data, len(out))
        if n < 0:
            raise LameError(f"lame_encode_buffer failed ({n})")
        return out[:n].tobytes()

    def flush(self) -> bytes:
        """The rest of the bitstream (the last frame padded); call once, at the end."""
        gfp = self._require_open()
        out = self._buffer(0)
        n = self._lib.lame_encode_flush(gfp, out.ctypes.data, len(out))
        if n < 0:
            raise LameError(f"lame_encode_flush failed ({n})")
        return out[:n].tobytes()

    def info_frame(self) -> bytes:
        """LAME's Info tag for what was encoded so far, to put over the stream's first frame
        (b"" before the first frame is out)."""
        gfp = self._require_open()
        out = np.zeros(_MAX_TAG_BYTES, dtype=np.uint8)
        n = self._lib.lame_get_lametag_frame(gfp, out.ctypes.data, len(out))
        return out[:n].tobytes() if n <= len(out) else b""

    def _require_open(self) -> int:
        if self._gfp is None:
            raise RuntimeError("the mp3 encoder is closed")
        return self._gfp

    def close(self) -> None:
        """Free LAME's state (also done when the object is collected)."""
        if self._gfp is not None:
            self._lib.lame_close(self._gfp)
            self._gfp = None

    def __del__(self) -> None:
        self.close()
