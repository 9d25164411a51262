"""Audio decoding (PCM16LE, G.711, Opus) and batched resampling to 16 kHz, with PyAV.

Two stages, on purpose:

1. `AudioDecoder` (one per participant) turns one frame into mono float32 PCM at the
   participant's *own* rate. Placement on the call timeline (jitter, gaps, late frames)
   happens at that rate in `core/jitter.py`, so every participant becomes one continuous
   stream, one 20 ms block per tick.
2. `ResamplerBank` (one per input rate per call) resamples the blocks of *all* participants
   of that rate in one swresample call per tick, each participant a channel of one packed
   block. Measured (PyAV 18, 2-core dev machine, 48 kHz -> 16 kHz, 20 ms blocks): one
   `AudioResampler` call per participant per tick costs 30-50 µs with the ndarray
   round trip. The bank calls libswresample directly (`media.swresample`, the same library
   and output as PyAV's resampler, without its filter graph and frame objects): 8 kHz -> 16 kHz
   for a 10-person call 85 -> 36 µs a tick.

G.711 is a 256-entry lookup table built once from FFmpeg's own decoders; PCM16 is a
`numpy.frombuffer`. Opus is decoded by libopus itself straight to 16 kHz (`media.opus`: no
resampler, no frame objects); only where libopus cannot be loaded does a PyAV decoder at 48 kHz
stand in (FFmpeg's wrapper cannot decode at another rate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import av
import av.error
import numpy as np

from callrec.core.limits import OPUS_MAX_PACKET_BYTES_PER_20MS
from callrec.core.mixer import float_to_int16
from callrec.core.model import OUTPUT_SAMPLE_RATE, AudioEncoding, AudioFormat, DecodeError
from callrec.media import opus as libopus
from callrec.media.decode_pool import DecodePool
from callrec.media.swresample import SwrResampler

#: Longest frame accepted: the Opus maximum (RFC 6716 §3.2.5).
MAX_FRAME_MS = 120
#: PCM and G.711 frames carry 10-60 ms, as RTP packetisation does (RFC 3551 §4.2 and practice).
MIN_RAW_FRAME_MS, MAX_RAW_FRAME_MS = 10, 60
#: Opus's RTP clock is 48 kHz whatever the source (RFC 7587): TOC durations are counted at this rate.
OPUS_RATE = 48_000
G711_RATE = 8_000

__all__ = [
    "AudioDecoder",
    "DecodeError",
    "PyAVAudioCodecs",
    "ResamplerBank",
    "decode_to_16k",
    "opus_packet_samples",
]


def _g711_table(codec_name: Literal["pcm_mulaw", "pcm_alaw"]) -> np.ndarray:
    """Decode all 256 code words with FFmpeg once: exact FFmpeg semantics, no hand-written G.711."""
    ctx = av.CodecContext.create(codec_name, "r")
    ctx.sample_rate = G711_RATE
    ctx.layout = "mono"
    frames = ctx.decode(av.Packet(bytes(range(256))))
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    if pcm.shape != (256,):
        raise RuntimeError(f"unexpected {codec_name} table shape {pcm.shape}")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


_G711_TABLES: dict[AudioEncoding, np.ndarray] = {
    AudioEncoding.PCMU: _g711_table("pcm_mulaw"),
    AudioEncoding.PCMA: _g711_table("pcm_alaw"),
}


def _byte_tables(table: np.ndarray) -> tuple[bytes, bytes, bytes, bytes]:
    """For each of a float32's four bytes, what that byte is for each of the 256 code words."""
    raw = table.astype(np.float32).tobytes()
    return raw[0::4], raw[1::4], raw[2::4], raw[3::4]


#: The G.711 tables as `bytes.translate` tables, byte by byte of the float32 value (see `_g711_decode`).
_G711_BYTES = {encoding: _byte_tables(table) for encoding, table in _G711_TABLES.items()}


def _g711_decode(data: bytes, tables: tuple[bytes, bytes, bytes, bytes]) -> np.ndarray:
    """G.711 code words to float32 samples with four `bytes.translate`, the table lookup done in bytes.

    Why not `table[codes]` or `np.take`: NumPy releases the GIL around every one of those calls, however
    short, and each release wakes a thread waiting for the GIL for nothing (this runs per frame on the
    event loop). The same 1.8 µs for a 20 ms frame, and the GIL kept.
    """
    out = bytearray(4 * len(data))
    out[0::4] = data.translate(tables[0])
    out[1::4] = data.translate(tables[1])
    out[2::4] = data.translate(tables[2])
    out[3::4] = data.translate(tables[3])
    return np.frombuffer(out, dtype=np.float32)

# RFC 6716 §3.1: frame duration in 1/400 s units (2.5 ms) for each of the 32 TOC configs.
_OPUS_FRAME_UNITS = (
    [4, 8, 16, 24] * 3  # SILK NB/MB/WB: 10, 20, 40, 60 ms
    + [4, 8] * 2  # Hybrid SWB/FB: 10, 20 ms
    + [1, 2, 4, 8] * 4  # CELT NB/WB/SWB/FB: 2.5, 5, 10, 20 ms
)


_PCM16LE = np.dtype("<i2")
_PCM16_SCALE = np.float32(1.0 / 32768.0)


def opus_packet_samples(packet: bytes, rate: int = OPUS_RATE) -> int:
    """Duration of an Opus packet in samples at `rate`, from its TOC byte (no decoding).

    Why: the jitter buffer needs each frame's length on arrival (to know how far a
    participant has delivered) long before the frame is decoded in order.
    Raises `DecodeError` for packets that RFC 6716 §3.4 rules out.
    """
    if not packet:
        raise DecodeError("empty Opus packet")
    toc = packet[0]
    units = _OPUS_FRAME_UNITS[toc >> 3]
    code = toc & 0x3
    if code == 0:
        count = 1
    elif code == 1:
        if (len(packet) - 1) % 2:
            raise DecodeError("Opus code-1 packet with an odd payload length")
        count = 2
    elif code == 2:
        if len(packet) < 2:
            raise DecodeError("truncated Opus code-2 packet")
        count = 2
    else:
        if len(packet) < 2:
            raise DecodeError("truncated Opus code-3 packet")
        count = packet[1] & 0x3F
        if count == 0:
            raise DecodeError("Opus code-3 packet with zero frames")
    total_units = units * count
    if total_units > 48:  # 120 ms
        raise DecodeError(f"Opus packet of {total_units * 2.5} ms exceeds 120 ms")
    return total_units * rate // 400


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    """First plane of a float frame without `to_ndarray` (which costs ~10 µs more per frame)."""
    if frame.format.name not in ("fltp", "flt"):
        return frame.to_ndarray().reshape(-1).astype(np.float32)
    return np.frombuffer(memoryview(frame.planes[0]), dtype=np.float32, count=frame.samples)


@dataclass
class AudioDecoder:
    """Decodes one participant's frames to mono float32 at the participant's own rate.

    A corrupt frame raises `DecodeError`; the decoder stays usable for the next frame
    (after an FFmpeg error the Opus context is flushed, never left in EOF state).
    """

    audio_format: AudioFormat
    sample_rate: int = field(init=False)
    _channels: int = field(init=False)
    _opus: av.AudioCodecContext | None = field(init=False, default=None)
    _libopus: libopus.OpusDecoder | None = field(init=False, default=None)
    # PCM and G.711: a frame's byte width and accepted byte lengths, so the per-frame check is two comparisons.
    _raw_width: int = field(init=False, default=0)
    _raw_bytes: tuple[int, int] = field(init=False, default=(0, 0))

    def __post_init__(self) -> None:
        fmt = self.audio_format
        channels = fmt.channels or 1
        if channels not in (1, 2):
            raise ValueError(f"audio channels must be 1 or 2, got {channels}")
        self._channels = channels
        if fmt.encoding == AudioEncoding.PCM16LE:
            if not 8_000 <= fmt.sample_rate <= 48_000:
                raise ValueError(f"PCM16LE sample_rate must be 8000-48000, got {fmt.sample_rate}")
            self.sample_rate = fmt.sample_rate
        elif fmt.encoding in _G711_TABLES:
            rate = fmt.sample_rate or G711_RATE
            if not 8_000 <= rate <= 48_000:
                raise ValueError(f"G.711 sample_rate must be 8000 (or up to 48000), got {rate}")
            self.sample_rate = rate
        elif fmt.encoding == AudioEncoding.OPUS:
            if libopus.available():  # straight to the mix rate: no resampling for Opus participants
                self.sample_rate = OUTPUT_SAMPLE_RATE
                self._libopus = libopus.OpusDecoder(OUTPUT_SAMPLE_RATE)
            else:
                self.sample_rate = OPUS_RATE
                self._opus = self._new_opus_context()
        else:
            raise ValueError(f"unsupported audio encoding {fmt.encoding!r}")
        if fmt.encoding != AudioEncoding.OPUS:
            rate, width = self.sample_rate, (2 if fmt.encoding == AudioEncoding.PCM16LE else 1) * channels
            self._raw_width = width
            self._raw_bytes = (-(-rate * MIN_RAW_FRAME_MS // 1000) * width, rate * MAX_RAW_FRAME_MS // 1000 * width)

    def _new_opus_context(self) -> av.AudioCodecContext:
        ctx = av.CodecContext.create("opus", "r")
        ctx.sample_rate = OPUS_RATE
        ctx.layout = "mono"  # the decoder downmixes stereo packets itself
        return ctx

    @property
    def offloadable_rate(self) -> int | None:
        """The rate a decode worker process would decode this participant at (libopus Opus), else None:
        PCM and G.711 are a table lookup, cheaper here than a trip to another process."""
        return self.sample_rate if self._libopus is not None else None

    @property
    def max_frame_samples(self) -> int:
        """Longest accepted frame, in samples at `sample_rate`."""
        return self.sample_rate * MAX_FRAME_MS // 1000

    def frame_samples(self, data: bytes) -> int:
        """Validate a frame cheaply and return its duration in samples at `sample_rate`."""
        if not data:
            raise DecodeError("empty audio frame")
        encoding = self.audio_format.encoding
        if encoding == AudioEncoding.OPUS:
            samples = opus_packet_samples(data, self.sample_rate)
            blocks = -(-samples * 50 // self.sample_rate)  # started 20 ms blocks
            if len(data) > OPUS_MAX_PACKET_BYTES_PER_20MS * max(1, blocks):
                raise DecodeError(
                    f"Opus packet of {len(data)} bytes for {samples * 1000 // self.sample_rate} ms; an Opus "
                    f"packet has at most {OPUS_MAX_PACKET_BYTES_PER_20MS} bytes per 20 ms (RFC 6716)"
                )
            return samples
        size, width = len(data), self._raw_width
        shortest, longest = self._raw_bytes
        if shortest <= size <= longest and not size % width:  # the common case, checked first (per frame)
            return size // width
        if size % width:
            raise DecodeError(f"frame of {size} bytes is not a whole number of {width}-byte samples")
        samples = size // width
        rate = self.sample_rate
        if not rate * MIN_RAW_FRAME_MS <= samples * 1000 <= rate * MAX_RAW_FRAME_MS:
            raise DecodeError(
                f"frame of {len(data)} bytes is {samples * 1000 / rate:g} ms of {encoding.value} at {rate} Hz "
                f"x{self._channels}; frames must carry {MIN_RAW_FRAME_MS}-{MAX_RAW_FRAME_MS} ms "
                f"({rate * MIN_RAW_FRAME_MS // 1000 * width}-{rate * MAX_RAW_FRAME_MS // 1000 * width} bytes)"
            )
        return samples

    def decode(self, data: bytes) -> np.ndarray:
        """Decode one frame to mono float32 in [-1, 1) at `sample_rate`."""
        encoding = self.audio_format.encoding
        if encoding == AudioEncoding.OPUS:
            return self._decode_opus(data)
        self.frame_samples(data)  # validates length
        if encoding == AudioEncoding.PCM16LE:  # one ufunc converts and scales (this runs per frame)
            pcm = np.multiply(np.frombuffer(data, dtype=_PCM16LE), _PCM16_SCALE, dtype=np.float32)
        else:
            pcm = _g711_decode(data, _G711_BYTES[encoding])
        if self._channels == 2:
            pcm = pcm.reshape(-1, 2).mean(axis=1, dtype=np.float32)
        return pcm

    def decode_into(self, data: bytes, out: np.ndarray) -> int:
        """Decode a frame `frame_samples` accepted into `out[:n]` (float32); returns n.

        For the tick loop's common case, one frame per tick: PCM and G.711 are converted straight into
        the mix matrix's row (no array per frame, no copy, no second length check: `push` checked it).
        """
        encoding = self.audio_format.encoding
        if encoding == AudioEncoding.OPUS or self._channels == 2:
            pcm = self.decode(data)
            n = len(pcm)
            out[:n] = pcm
            return n
        n = len(data) // self._raw_width
        target = out if len(out) == n else out[:n]
        if encoding == AudioEncoding.PCM16LE:
            np.multiply(np.frombuffer(data, dtype=_PCM16LE), _PCM16_SCALE, out=target)
        else:
            target[:] = _g711_decode(data, _G711_BYTES[encoding])
        return n

    def _decode_opus(self, data: bytes) -> np.ndarray:
        opus_packet_samples(data)  # an empty packet would put FFmpeg in EOF state: never send one
        if self._libopus is not None:
            try:
                return self._libopus.decode(data)
            except libopus.OpusError as exc:
                raise DecodeError(f"Opus decoder rejected the packet: {exc}") from exc
        assert self._opus is not None
        try:
            frames = self._opus.decode(av.Packet(data))
        except av.error.FFmpegError as exc:
            try:
                self._opus.flush_buffers()
            except av.error.FFmpegError:
                self._opus = self._new_opus_context()
            raise DecodeError(f"Opus decoder rejected the packet: {exc}") from exc
        if not frames:
            return np.zeros(0, dtype=np.float32)
        arrays = [_mono_float(f) for f in frames]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


@dataclass
class _Group:
    """One swresample context carrying up to `capacity` participants as channels."""

    resampler: SwrResampler
    capacity: int
    slots: list[str | None]
    carry: np.ndarray  # resampled samples beyond the last block, shape (n, capacity)


class ResamplerBank:
    """Resamples many mono streams of one input rate to 16 kHz, one swresample call per group.

    `process` takes one block per stream for the same tick (all the same length) and returns
    exactly `block` output samples per stream. swresample holds back its filter delay
    (16-32 samples here) on the first call; the bank pads that once at the front, so each
    stream comes out delayed by at most 2 ms, consistently, and every later call returns
    exactly one block. A stream that is not in a call is fed silence (its channel keeps state).
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int = OUTPUT_SAMPLE_RATE,
        block: int = 320,
        group_size: int = 8,
        first_group_size: int = 4,
    ):
        if group_size < 1 or first_group_size < 1:
            raise ValueError("group sizes must be at least 1")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.block = block
        self.group_size = group_size
        self.first_group_size = first_group_size
        self._groups: list[_Group] = []
        self._where: dict[str, tuple[_Group, int]] = {}
        self._silences: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._where)

    def _slot(self, key: str) -> tuple[_Group, int]:
        found = self._where.get(key)
        if found is not None:
            return found
        for group in self._groups:
            for index, occupant in enumerate(group.slots):
                if occupant is None:
                    group.slots[index] = key
                    self._where[key] = (group, index)
                    return group, index
        # Each swresample call costs ~20 µs plus ~2.5 µs per channel: the first group is small
        # (a 1-3 person call stays cheap), later ones full size.
        capacity = self.group_size if self._groups else min(self.group_size, self.first_group_size)
        group = _Group(
            resampler=SwrResampler(self.in_rate, self.out_rate, capacity),
            capacity=capacity,
            slots=[key] + [None] * (capacity - 1),
            carry=np.zeros((0, capacity), dtype=np.float32),
        )
        self._groups.append(group)
        self._where[key] = (group, 0)
        return group, 0

    def discard(self, key: str) -> None:
        """Free a stream's channel (its group is dropped once empty)."""
        found = self._where.pop(key, None)
        if found is None:
            return
        group, index = found
        group.slots[index] = None
        if all(s is None for s in group.slots):
            self._groups.remove(group)

    def process(self, blocks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Resample one tick of every stream in `blocks`; returns float32 blocks of `block` samples."""
        if not blocks:
            return {}
        lengths = {len(b) for b in blocks.values()}
        if len(lengths) != 1:
            raise ValueError(f"blocks of one tick must have one length, got {sorted(lengths)}")
        n_in = lengths.pop()
        # `empty` and every column written (a stream's block, or silence one column at a time): NumPy
        # releases the GIL around `zeros` and `fill` of this size, which wakes a waiting thread for nothing.
        placed: dict[int, tuple[_Group, np.ndarray, list[tuple[str, int]]]] = {}
        for key, pcm in blocks.items():
            group, index = self._slot(key)
            entry = placed.get(id(group))
            if entry is None:
                entry = (group, np.empty((n_in, group.capacity), dtype=np.float32), [])
                placed[id(group)] = entry
            entry[1][:, index] = pcm
            entry[2].append((key, index))
        out: dict[str, np.ndarray] = {}
        for group, interleaved, members in placed.values():
            if len(members) < group.capacity:
                heard = {index for _, index in members}
                for index in range(group.capacity):
                    if index not in heard:
                        interleaved[:, index] = 0.0
            resampled = self._run(group, interleaved)
            for key, index in members:
                out[key] = resampled[:, index].copy()
        # Groups with no stream in this call still advance, so their timing stays aligned.
        for group in self._groups:
            if id(group) not in placed:
                self._run(group, self._silence(n_in, group.capacity))
        return out

    def _silence(self, samples: int, channels: int) -> np.ndarray:
        """A block of silence for a group none of whose streams is in this call (made once, never written)."""
        silence = self._silences.get((samples, channels))
        if silence is None:
            silence = self._silences[(samples, channels)] = np.zeros((samples, channels), dtype=np.float32)
        return silence

    def _run(self, group: _Group, interleaved: np.ndarray) -> np.ndarray:
        """One block of `group`'s channels out, a view valid until the group's next call."""
        produced = group.resampler.convert(interleaved)
        if not len(group.carry) and len(produced) == self.block:
            return produced  # steady state: exactly one block out per block in
        pieces = [group.carry, produced]
        available = sum(len(p) for p in pieces)
        if available < self.block:
            # First call (filter delay) or a rare short call: pad at the front, once.
            pieces.insert(0, np.zeros((self.block - available, group.capacity), dtype=np.float32))
        merged = np.concatenate(pieces)  # a copy: `produced` is the resampler's buffer, reused next call
        group.carry = merged[self.block :]
        return merged[: self.block]


class PyAVAudioCodecs:
    """The PyAV implementation of `callrec.core.call_media.AudioCodecs`, injected into `CallMedia`.

    With a `DecodePool` (`--decode-workers`), Opus is decoded in worker processes (`batch_decoder`).
    """

    def __init__(self, group_size: int = 8, decode_pool: DecodePool | None = None):
        self.group_size = group_size
        self.batch_decoder = decode_pool if decode_pool is not None and decode_pool.size > 0 else None

    def decoder(self, audio_format: AudioFormat) -> AudioDecoder:
        """A decoder for one participant; raises ValueError for an unusable format."""
        return AudioDecoder(audio_format)

    def resampler_bank(self, in_rate: int, out_rate: int, block: int) -> ResamplerBank:
        """A bank for all participants of one input rate in one call."""
        return ResamplerBank(in_rate, out_rate, block, self.group_size)


def decode_to_16k(audio_format: AudioFormat, frames: Iterable[bytes]) -> np.ndarray:
    """Decode consecutive frames and resample the whole stream to 16 kHz mono int16.

    For tools and tests (no jitter handling: frames are taken in the order given); the
    server's hot path is `AudioDecoder` + `core.jitter` + `ResamplerBank`.
    """
    decoder = AudioDecoder(audio_format)
    pcm = [decoder.decode(f) for f in frames]
    native = np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.float32)
    if decoder.sample_rate == OUTPUT_SAMPLE_RATE:
        out = native
    else:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=OUTPUT_SAMPLE_RATE)
        frame = av.AudioFrame.from_ndarray(native.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = decoder.sample_rate
        parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return float_to_int16(out)
