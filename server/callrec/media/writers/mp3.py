"""16 kHz mono 48 kbps CBR mp3 with libmp3lame (mixed mp3 recordings).

`Mp3Writer` calls libmp3lame itself (`media.lame`): one foreign call per write, with the GIL
released, so the writer thread no longer takes the GIL from the event loop ~28 times per second of
audio as PyAV's per-frame `encode`/`mux` did. The stream starts with LAME's Info tag frame (frame
count, encoder delay and padding): players and `ffprobe` get the right duration and decoders trim
exactly the samples that were written (checked in the tests). The stream's start is held back
until it holds LAME's reserved frame and two audio frames; then the Info tag goes over the reserved
frame in the same write, and is rewritten at close. So whenever a kill -9 comes, the file is empty
or a decodable mp3 starting with an Info frame (`writers.repair` relies on it; FFmpeg cannot open an
mp3 of a single audio frame). Every later write goes straight to the OS (an unbuffered file): a
kill -9 loses only what LAME holds back, 1-2 frames (36-72 ms of audio), or at a chunk's very start
its first ~110 ms.
No ID3 tag, so the size is a pure function of the sample count (chunk rotation by bytes needs that).

`PyAVMp3Writer` is the fallback where libmp3lame cannot be loaded by itself: the same stream
through PyAV, whose mp3 muxer writes the Info header.

LAME's quality 7 (its `-q 7`, FFmpeg's `compression_level` 7) encodes ~240x real time here
against ~130x for FFmpeg's default; for 48 kbps speech the difference is not audible.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from callrec.core.model import MP3_BIT_RATE, OUTPUT_SAMPLE_RATE
from callrec.media import lame
from callrec.media.writers.base import fsync_close, mp3_frame_length

__all__ = ["Mp3Writer", "Mp3WriterFactory", "PyAVMp3Writer"]

#: MPEG-2 Layer III at 16 kHz: 576 samples per frame; at 48 kbps exactly 216 bytes per frame.
_FRAME_SAMPLES = 576
_FRAME_BYTES = 72 * MP3_BIT_RATE // OUTPUT_SAMPLE_RATE
#: LAME's encoder delay (576 + 529 samples) that the Info header tells decoders to trim.
_ENCODER_DELAY = 1105


class _Mp3File:
    """What both writers share: the spool file and the count of samples handed to the encoder."""

    path: Path
    _file: BinaryIO
    _samples: int

    @property
    def bytes_written(self) -> int:
        """Bytes that reached the file so far (the encoder holds back a frame or two)."""
        return self._file.tell() if not self._file.closed else self.path.stat().st_size

    @property
    def samples_written(self) -> int:
        """Samples handed to the encoder."""
        return self._samples


class Mp3Writer(_Mp3File):
    """Encodes mono int16 samples to an mp3 file as they come, with libmp3lame called directly."""

    def __init__(self, path: Path, bit_rate: int = MP3_BIT_RATE, compression_level: int = 7) -> None:
        self.path = path
        self._encoder = lame.Mp3Encoder(OUTPUT_SAMPLE_RATE, bit_rate, compression_level)
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed in close(); every write reaches the OS
        self._samples = 0
        self._head = b""  # the stream's start, held back until it is the Info frame and two audio frames
        self._tagged = False

    def write(self, samples: np.ndarray) -> None:
        """Encode int16 mono samples."""
        data = np.ascontiguousarray(samples, dtype=np.int16).reshape(-1)
        if data.size == 0:
            return
        self._samples += data.size
        self._append(self._encoder.encode(data))

    def _append(self, bitstream: bytes, *, final: bool = False) -> None:
        """Write encoded frames. The first write waits until the stream holds LAME's reserved frame and two
        audio frames, and puts the Info tag over the reserved one in the same write: whenever a kill -9
        comes, the file is empty or a decodable mp3 (FFmpeg cannot open one of a single audio frame)."""
        if not self._tagged:
            self._head += bitstream
            if not final and _complete_frames(self._head) < 3:
                return
            tag = self._encoder.info_frame()
            bitstream, self._head = tag + self._head[len(tag):], b""
            self._tagged = bool(tag)
        if bitstream:
            self._file.write(bitstream)

    def _put_info_frame(self) -> None:
        """The final Info tag (frame count, padding) over the first frame."""
        tag = self._encoder.info_frame()
        if tag:
            self._file.seek(0)
            self._file.write(tag)
            self._file.seek(0, 2)

    def close(self) -> Path:
        """Flush the encoder, write the final Info tag, fsync, close; returns the path."""
        if not self._file.closed:
            self._append(self._encoder.flush(), final=True)
            self._put_info_frame()
            self._encoder.close()
            fsync_close(self._file)
        return self.path


def _complete_frames(bitstream: bytes) -> int:
    """How many whole MPEG audio frames `bitstream` starts with."""
    count = offset = 0
    while (length := mp3_frame_length(bitstream[offset : offset + 4])) is not None and offset + length <= len(
            bitstream):
        count += 1
        offset += length
    return count


class PyAVMp3Writer(_Mp3File):
    """The same stream through PyAV (the fallback where libmp3lame cannot be loaded by itself)."""

    def __init__(self, path: Path, bit_rate: int = MP3_BIT_RATE, compression_level: int = 7) -> None:
        import av  # here: the audio writer process (`media.writer_worker`) loads PyAV only where it needs it

        self.path = path
        self._file = open(path, "w+b")  # noqa: SIM115 - closed in close(); PyAV writes through it
        self._container = av.open(self._file, "w", format="mp3", buffer_size=256, options={"id3v2_version": "0"})
        stream = self._container.add_stream(
            "libmp3lame", rate=OUTPUT_SAMPLE_RATE, options={"compression_level": str(compression_level)}
        )
        stream.layout = "mono"
        stream.bit_rate = bit_rate
        stream.format = "s16p"
        self._stream = stream
        self._samples = 0
        self._time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
        self._frame_type = av.AudioFrame

    def write(self, samples: np.ndarray) -> None:
        """Encode int16 mono samples."""
        data = np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1)
        if data.shape[1] == 0:
            return
        frame = self._frame_type.from_ndarray(data, format="s16p", layout="mono")
        frame.sample_rate = OUTPUT_SAMPLE_RATE
        frame.pts = self._samples
        frame.time_base = self._time_base
        self._samples += data.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._file.flush()  # what left the AVIO buffer reaches the OS: a kill -9 does not lose it

    def close(self) -> Path:
        """Flush the encoder, write the Info header, fsync, close; returns the path."""
        if not self._file.closed:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            fsync_close(self._file)
        return self.path


class Mp3WriterFactory:
    """Mixed mp3: 16 kHz mono 48 kbps."""

    content_type = "audio/mpeg"
    extension = "mp3"

    def __init__(self, compression_level: int = 7) -> None:
        self.compression_level = compression_level

    def open(self, path: Path) -> Mp3Writer | PyAVMp3Writer:
        """A new encoder writing to `path` (libmp3lame directly, else through PyAV)."""
        if lame.available():
            return Mp3Writer(path, compression_level=self.compression_level)
        return PyAVMp3Writer(path, compression_level=self.compression_level)

    def bit_rate(self, channels: int) -> int:
        """The encoder's nominal rate (SPEC: 48000)."""
        return MP3_BIT_RATE

    def projected_bytes(self, samples: int, channels: int) -> int:
        """Upper bound of the file size: Info frame + audio frames + one frame of LAME flush slack."""
        return _FRAME_BYTES * (2 + math.ceil((samples + _ENCODER_DELAY) / _FRAME_SAMPLES))
