"""Find a codec library to call directly (ctypes): PyAV's bundled copy first, then the system's.

PyAV's wheel ships the libraries FFmpeg itself links (libopus, libmp3lame, ...) in `av.libs/`,
so the pinned PyAV also pins them, and no Debian package is needed. The system's copy is the
fallback for a PyAV built against system libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

__all__ = ["load_codec_library"]


def _candidates(stem: str, soname: str) -> list[str]:
    names: list[str] = []
    try:
        import av

        bundled = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs", f"lib{stem}-*.so*")
        names += sorted(glob.glob(bundled))
    except ImportError:  # pragma: no cover - PyAV is a dependency
        pass
    found = ctypes.util.find_library(stem)
    if found:
        names.append(found)
    names.append(soname)
    return names


def load_codec_library(stem: str, soname: str) -> ctypes.CDLL | None:
    """The first of PyAV's `lib<stem>-*.so`, the system's `lib<stem>` and `soname` that loads, else None.

    A `CDLL` releases the GIL for the length of every foreign call: the codec runs while the event
    loop runs Python.
    """
    for name in _candidates(stem, soname):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None
