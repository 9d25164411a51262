"""What every audio writer shares: the writer protocols (defined in core) and file helpers.

The protocols live in `callrec.core.audio_recording` so that core, which drives writers,
imports nothing from media (and so nothing from PyAV); they are re-exported here for
writer implementations.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

from callrec.core.ports import AudioWriter, AudioWriterFactory

__all__ = ["WAV_HEADER_BYTES", "AudioWriter", "AudioWriterFactory", "fsync_close", "remove_quietly", "wav_bytes"]

#: Size of the canonical PCM WAV header written by the `wave` module.
WAV_HEADER_BYTES = 44


def wav_bytes(samples: int, channels: int) -> int:
    """Size of a 16-bit PCM wav file holding `samples` frames of `channels` channels."""
    return WAV_HEADER_BYTES + samples * 2 * max(1, channels)


def fsync_close(handle: BinaryIO) -> None:
    """Flush, fsync and close: a finished chunk must survive a power cut before it is announced."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def remove_quietly(path: Path) -> None:
    """Delete a spool file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
