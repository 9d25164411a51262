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

__all__ = [
    "WAV_HEADER_BYTES", "AudioWriter", "AudioWriterFactory", "fsync_close", "mp3_frame_length", "remove_quietly",
    "wav_bytes",
]

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


_MP3_BIT_RATES = {  # kbps by bit-rate index: MPEG-1 Layer III, MPEG-2/2.5 Layer III
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_SAMPLE_RATES = {3: (44_100, 48_000, 32_000), 2: (22_050, 24_000, 16_000), 0: (11_025, 12_000, 8_000)}


def mp3_frame_length(header: bytes) -> int | None:
    """Length of the MPEG audio frame starting with `header` (4 bytes), None if it is not one."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 0x3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    layer = (header[1] >> 1) & 0x3
    bit_rate_index = header[2] >> 4
    rate_index = (header[2] >> 2) & 0x3
    padding = (header[2] >> 1) & 0x1
    if version == 1 or layer != 1 or bit_rate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, or not Layer III
    kbps = _MP3_BIT_RATES[1 if version == 3 else 2][bit_rate_index]
    sample_rate = _MP3_SAMPLE_RATES[version][rate_index]
    coefficient = 144 if version == 3 else 72
    return coefficient * kbps * 1000 // sample_rate + padding
