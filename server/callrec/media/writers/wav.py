"""Mono 16 kHz PCM s16le wav, appended as the recording goes (mixed wav recordings).

The stdlib `wave` module rewrites the RIFF and data sizes after every `writeframes`, so
the file on disk is a valid wav up to the last batch written: a crash loses at most the
batch in flight (about a second), and recovery needs no repair step.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from callrec.core.model import OUTPUT_SAMPLE_RATE
from callrec.media.writers.base import fsync_close, wav_bytes

__all__ = ["WavWriter", "WavWriterFactory"]


class WavWriter:
    """Writes int16 samples, shape (n,) or (n, channels), to a PCM wav."""

    def __init__(self, path: Path, channels: int = 1, sample_rate: int = OUTPUT_SAMPLE_RATE) -> None:
        self.path = path
        self.channels = channels
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close(); wave needs the handle
        self._wave = wave.open(self._file, "wb")  # noqa: SIM115 - closed in close()
        self._wave.setnchannels(channels)
        self._wave.setsampwidth(2)
        self._wave.setframerate(sample_rate)
        self._samples = 0

    @property
    def bytes_written(self) -> int:
        """Current file size."""
        return wav_bytes(self._samples, self.channels)

    @property
    def samples_written(self) -> int:
        """Frames written so far."""
        return self._samples

    def write(self, samples: np.ndarray) -> None:
        """Append int16 samples and flush them to the OS."""
        data = np.ascontiguousarray(samples, dtype="<i2")
        if data.ndim == 2 and data.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {data.shape[1]}")
        self._wave.writeframes(data.tobytes())
        self._file.flush()
        self._samples += len(data)

    def close(self) -> Path:
        """Finalise the header, fsync, close; returns the file's path."""
        if not self._file.closed:
            self._wave.close()  # writes the header even when nothing was written
            fsync_close(self._file)
        return self.path


class WavWriterFactory:
    """Mixed wav: 16 kHz mono, bit rate 256 kbps."""

    content_type = "audio/wav"
    extension = "wav"

    def open(self, path: Path) -> WavWriter:
        """A new mono writer."""
        return WavWriter(path)

    def bit_rate(self, channels: int) -> int:
        """sampleRate x 16 x channels (SPEC: 256000 for mono)."""
        return OUTPUT_SAMPLE_RATE * 16 * max(1, channels)

    def projected_bytes(self, samples: int, channels: int) -> int:
        """Exact file size for `samples` frames."""
        return wav_bytes(samples, 1)
