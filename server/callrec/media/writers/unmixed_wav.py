"""Unmixed wav: one participant per channel, channels added as participants get them.

While recording, each channel goes to its own raw s16le spool file (`<chunk>.ch<N>.raw`),
starting at the sample where the channel was first used; a small sidecar
(`<chunk>.channels.json`) records those offsets. At `close()` the wav is assembled in
one-second blocks, so memory stays bounded however long the chunk, and the file has
exactly as many channels as the chunk used. After a crash, `UnmixedWavWriter.recover()`
assembles the wav from what reached the disk.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from callrec.core.model import OUTPUT_SAMPLE_RATE
from callrec.media.writers.base import fsync_close, remove_quietly, wav_bytes

__all__ = ["UnmixedWavWriter", "UnmixedWavWriterFactory", "sidecar_path"]

_ASSEMBLY_BLOCK = OUTPUT_SAMPLE_RATE  # samples per channel per assembly step


def _raw_path(path: Path, channel: int) -> Path:
    return path.with_name(f"{path.name}.ch{channel}.raw")


def sidecar_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.channels.json")


class UnmixedWavWriter:
    """Takes int16 blocks of shape (n, channels); the channel count may grow between writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw: list[BinaryIO] = []
        self._starts: list[int] = []
        self._samples = 0
        self._closed = False

    @property
    def channels(self) -> int:
        """Channels used so far (at least 1 in the final file)."""
        return len(self._raw)

    @property
    def samples_written(self) -> int:
        """Frames written so far."""
        return self._samples

    @property
    def bytes_written(self) -> int:
        """Size the assembled wav would have now."""
        return wav_bytes(self._samples, len(self._raw))

    def write(self, samples: np.ndarray) -> None:
        """Append a block; new columns open new channels starting at this point."""
        block = np.asarray(samples, dtype=np.int16)
        if block.ndim == 1:
            block = block[:, None]
        n, width = block.shape
        if width < len(self._raw):
            raise ValueError(f"channels never shrink within a chunk ({len(self._raw)} -> {width})")
        if width > len(self._raw):
            for channel in range(len(self._raw), width):
                self._raw.append(open(_raw_path(self.path, channel), "wb"))  # noqa: SIM115 - closed in close()
                self._starts.append(self._samples)
            sidecar_path(self.path).write_text(json.dumps({"starts": self._starts}))
        for channel, handle in enumerate(self._raw):
            handle.write(np.ascontiguousarray(block[:, channel], dtype="<i2").tobytes())
            handle.flush()
        self._samples += n

    def close(self) -> Path:
        """Assemble the wav (bounded memory), fsync it, delete the spool parts; returns the path."""
        if self._closed:
            return self.path
        self._closed = True
        for handle in self._raw:
            handle.close()
        _assemble(self.path, self._starts, self._samples)
        return self.path

    @staticmethod
    def recover(path: Path) -> Path | None:
        """Assemble a chunk whose writer died (crash): whatever each channel has on disk."""
        sidecar = sidecar_path(path)
        if not sidecar.exists():
            return None
        starts = [int(s) for s in json.loads(sidecar.read_text())["starts"]]
        total = 0
        for channel, start in enumerate(starts):
            raw = _raw_path(path, channel)
            size = raw.stat().st_size // 2 if raw.exists() else 0
            total = max(total, start + size)
        _assemble(path, starts, total)
        return path


def _assemble(path: Path, starts: list[int], total: int) -> None:
    channels = max(1, len(starts))
    handle = open(path, "wb")  # noqa: SIM115 - fsync_close below
    sources = [open(_raw_path(path, c), "rb") for c in range(len(starts))]  # noqa: SIM115
    try:
        out = wave.open(handle, "wb")  # noqa: SIM115 - closed below, before fsync
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(OUTPUT_SAMPLE_RATE)
        for first in range(0, total, _ASSEMBLY_BLOCK):
            last = min(total, first + _ASSEMBLY_BLOCK)
            block = np.zeros((last - first, channels), dtype="<i2")
            for channel, source in enumerate(sources):
                lo = max(first, starts[channel])
                if lo >= last:
                    continue
                source.seek((lo - starts[channel]) * 2)
                data = np.frombuffer(source.read((last - lo) * 2), dtype="<i2")
                block[lo - first : lo - first + len(data), channel] = data
            out.writeframes(block.tobytes())
        out.close()
        fsync_close(handle)
    finally:
        for source in sources:
            source.close()
        if not handle.closed:
            handle.close()
    for channel in range(len(starts)):
        remove_quietly(_raw_path(path, channel))
    remove_quietly(sidecar_path(path))


class UnmixedWavWriterFactory:
    """Unmixed wav: 16 kHz, one channel per participant."""

    content_type = "audio/wav"
    extension = "wav"

    def open(self, path: Path) -> UnmixedWavWriter:
        """A new writer (no channel yet)."""
        return UnmixedWavWriter(path)

    def bit_rate(self, channels: int) -> int:
        """sampleRate x 16 x channels."""
        return OUTPUT_SAMPLE_RATE * 16 * max(1, channels)

    def projected_bytes(self, samples: int, channels: int) -> int:
        """Exact size of the assembled wav."""
        return wav_bytes(samples, channels)
