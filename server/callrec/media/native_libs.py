"""Find a codec library to call directly (ctypes): PyAV's bundled copy or the system's.

PyAV's wheel ships the libraries FFmpeg itself links (libopus, libmp3lame, ...) in `av.libs/`,
so the pinned PyAV also pins them, and no Debian package is needed. By default that copy comes
first and the system's is the fallback (a PyAV built against system libraries).

`prefer_system` turns the order round, for a library whose bundled build is much slower: PyAV's
libmp3lame 3.100 encoded 60 s of 16 kHz mono at 48 kbps, LAME quality 7, in 0.21-0.24 CPU s on the
bench machine, and Debian's `libmp3lame0` (the same 3.100, the one Debian's ffmpeg links) in
0.06 s, 3.5-4x less. The system's build has LAME's SIMD routines; the wheel's evidently does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os

__all__ = ["load_codec_library"]


def _candidates(stem: str, soname: str, prefer_system: bool) -> list[str]:
    bundled: list[str] = []
    # Found, not imported: the audio writer process loads libmp3lame and nothing of PyAV (~30 MB less).
    spec = importlib.util.find_spec("av")
    if spec is not None and spec.origin:
        pattern = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "av.libs", f"lib{stem}-*.so*")
        bundled = sorted(glob.glob(pattern))
    system: list[str] = []
    found = ctypes.util.find_library(stem)
    if found:
        system.append(found)
    system.append(soname)
    return system + bundled if prefer_system else bundled + system


def load_codec_library(stem: str, soname: str, *, prefer_system: bool = False,
                       keep_gil: bool = False) -> ctypes.CDLL | None:
    """The first of PyAV's `lib<stem>-*.so`, the system's `lib<stem>` and `soname` that loads, else None
    (the system's first with `prefer_system`).

    A `CDLL` releases the GIL for the length of every foreign call: a long call (LAME encoding 100 ms in
    a writer thread) runs while the event loop runs Python. `keep_gil` gives a `PyDLL` instead, for short
    calls made on the event loop itself: releasing the GIL there wakes a thread waiting for it, and the
    loop then waits to take it back (measured for libopus: 52 -> 26 µs a packet on the loop while a
    recording's writer thread was busy).
    """
    kind = ctypes.PyDLL if keep_gil else ctypes.CDLL
    for name in _candidates(stem, soname, prefer_system):
        try:
            return kind(name)
        except OSError:
            continue
    return None
