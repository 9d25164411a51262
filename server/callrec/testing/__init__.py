"""Test helpers shipped with callrec (like pipecat's `run_test`): tones, encoders, FFT, fake time.

Why shipped and not under tests/: integration tests, `bench/` and the gateway simulator
all need the same synthetic participants (a distinct tone each), the same encoders to
turn them into gateway frames, and the same ways to check what came out (dominant
frequencies, decoded files). Uses PyAV, so it lives outside `core/`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from callrec.core.call_media import CallMedia, MixTick
from callrec.core.mixer import float_to_int16
from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing.impairments import Impairments

__all__ = [
    "CallResult",
    "CollectingSink",
    "Command",
    "DecodedAudio",
    "FakeTime",
    "GatewayFrame",
    "Impairments",
    "ParticipantStream",
    "RecordingResult",
    "SimParticipant",
    "decode_file",
    "dominant_frequencies",
    "encode_frames",
    "feed",
    "interleave",
    "measure_audio_pipeline",
    "participant_frequency",
    "run_call",
    "tone",
    "tone_frames",
]

#: A fixed wall-clock origin for fake time (metadata timestamps become predictable).
EPOCH = datetime(2024, 5, 14, 9, 0, 0, tzinfo=UTC)


def participant_frequency(index: int) -> float:
    """Distinct tone of the index-th synthetic participant: 300, 500, 700, ... Hz."""
    return 300.0 + 200.0 * index


def tone(
    frequency: float,
    seconds: float,
    rate: int = 16_000,
    *,
    amplitude: float = 0.3,
    channels: int = 1,
    start_sample: int = 0,
) -> np.ndarray:
    """A sine as int16, shape (n,) for mono or (n, channels); `start_sample` continues a phase."""
    n = round(seconds * rate)
    t = (np.arange(n) + start_sample) / rate
    mono = float_to_int16((amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32))
    if channels == 1:
        return mono
    return np.repeat(mono[:, None], channels, axis=1)


def _native_rate(audio_format: AudioFormat) -> int:
    if audio_format.encoding == AudioEncoding.OPUS:
        return 48_000
    if audio_format.encoding in (AudioEncoding.PCMU, AudioEncoding.PCMA):
        return audio_format.sample_rate or 8_000
    return audio_format.sample_rate


def encode_frames(pcm: np.ndarray, audio_format: AudioFormat, frame_ms: int = 20) -> list[bytes]:
    """Cut int16 PCM at the format's rate into gateway frames of `frame_ms` in that format.

    `pcm` is (n,) or (n, channels) matching `audio_format.channels`. Opus uses libopus
    (one packet per frame), G.711 FFmpeg's encoders; a trailing partial frame is dropped.
    """
    channels = audio_format.channels or 1
    samples = pcm.reshape(len(pcm), -1).astype(np.int16)
    if samples.shape[1] != channels:
        raise ValueError(f"pcm has {samples.shape[1]} channels, format says {channels}")
    rate = _native_rate(audio_format)
    per_frame = rate * frame_ms // 1000
    count = len(samples) // per_frame
    encoding = audio_format.encoding
    if encoding == AudioEncoding.PCM16LE:
        return [samples[i * per_frame : (i + 1) * per_frame].astype("<i2").tobytes() for i in range(count)]
    if encoding in (AudioEncoding.PCMU, AudioEncoding.PCMA):
        name: Literal["pcm_mulaw", "pcm_alaw"] = "pcm_mulaw" if encoding == AudioEncoding.PCMU else "pcm_alaw"
        ctx = av.CodecContext.create(name, "w")
        ctx.sample_rate, ctx.layout, ctx.format = rate, "mono" if channels == 1 else "stereo", "s16"
        ctx.open()
        frame = av.AudioFrame.from_ndarray(samples[: count * per_frame].reshape(1, -1), format="s16", layout=ctx.layout)
        frame.sample_rate, frame.pts = rate, 0
        encoded = b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])
        width = per_frame * channels
        return [encoded[i * width : (i + 1) * width] for i in range(count)]
    if encoding == AudioEncoding.OPUS:
        layout = "mono" if channels == 1 else "stereo"
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate, ctx.layout, ctx.format = rate, layout, "s16"
        ctx.bit_rate = 32_000 * channels
        ctx.options = {"frame_duration": str(frame_ms)}
        ctx.open()
        packets: list[bytes] = []
        for i in range(count):
            chunk = samples[i * per_frame : (i + 1) * per_frame]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout=layout)
            frame.sample_rate, frame.pts = rate, i * per_frame
            frame.time_base = Fraction(1, rate)
            packets.extend(bytes(p) for p in ctx.encode(frame))
        packets.extend(bytes(p) for p in ctx.encode(None))
        return packets[:count]
    raise ValueError(f"unsupported encoding {encoding!r}")


def tone_frames(
    frequency: float,
    seconds: float,
    audio_format: AudioFormat,
    frame_ms: int = 20,
    amplitude: float = 0.3,
) -> list[bytes]:
    """A tone encoded as gateway frames in `audio_format`."""
    rate = _native_rate(audio_format)
    pcm = tone(frequency, seconds, rate, amplitude=amplitude, channels=audio_format.channels or 1)
    return encode_frames(pcm, audio_format, frame_ms)


def dominant_frequencies(
    block: np.ndarray, rate: int = 16_000, count: int = 1, min_separation_hz: float = 60.0
) -> list[float]:
    """The `count` strongest spectral peaks of a mono block, strongest first (Hann window)."""
    x = np.asarray(block, dtype=np.float64).reshape(-1)
    if x.size < 8:
        return []
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1.0 / rate)
    found: list[float] = []
    for index in np.argsort(spectrum)[::-1]:
        f = float(freqs[index])
        if spectrum[index] <= 0:
            break
        if all(abs(f - g) >= min_separation_hz for g in found):
            found.append(f)
            if len(found) == count:
                break
    return found


@dataclass(frozen=True)
class DecodedAudio:
    """A media file decoded with PyAV."""

    samples: np.ndarray  # int16, shape (n, channels)
    sample_rate: int
    channels: int
    codec: str
    bit_rate: int
    container_duration_s: float | None

    @property
    def duration_s(self) -> float:
        """Decoded length."""
        return len(self.samples) / self.sample_rate

    def channel(self, index: int) -> np.ndarray:
        """One channel as a 1-D array."""
        return self.samples[:, index]


#: Containers named by their suffix rather than probed: FFmpeg's probe cannot recognise an mp3 of fewer
#: than 7 frames (a chunk cut by a kill just after it began), though it decodes it when told the format.
_FORMAT_OF_SUFFIX = {".mp3": "mp3", ".wav": "wav"}


def decode_file(path: str | Path) -> DecodedAudio:
    """Decode the first audio stream of a file into int16 samples, with its stream parameters."""
    with av.open(str(path), format=_FORMAT_OF_SUFFIX.get(Path(path).suffix.lower())) as container:
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        channels = ctx.channels
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            array = frame.to_ndarray()
            array = array.T if frame.format.is_planar else array.reshape(-1, channels)
            if array.dtype != np.int16:
                array = float_to_int16(array.astype(np.float32))
            chunks.append(array)
        samples = np.concatenate(chunks) if chunks else np.zeros((0, channels), dtype=np.int16)
        duration = container.duration / 1_000_000 if container.duration else None
        return DecodedAudio(
            samples=samples,
            sample_rate=ctx.sample_rate,
            channels=channels,
            codec=ctx.name,
            bit_rate=int(ctx.bit_rate or container.bit_rate or 0),
            container_duration_s=duration,
        )


class FakeTime:
    """A `TimeSource` whose time moves only when a test calls `advance`."""

    def __init__(self, start: datetime = EPOCH, monotonic_start: float = 1000.0) -> None:
        self._wall0 = start
        self._mono0 = monotonic_start
        self._mono = monotonic_start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        """Fake monotonic seconds."""
        return self._mono

    def now(self) -> datetime:
        """Fake UTC wall time, moving with `monotonic`."""
        return self._wall0 + timedelta(seconds=self._mono - self._mono0)

    async def sleep(self, seconds: float) -> None:
        """Wait until `advance` has moved time by `seconds`."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._order), future))
        await future

    def stall(self, seconds: float) -> None:
        """Move time forward without waking anyone: the event loop was blocked that long.

        The next `advance` wakes every overdue sleeper, each seeing the late time, as a
        real loop does after a blocking call.
        """
        self._mono += seconds

    async def advance(self, seconds: float, yields: int = 10) -> None:
        """Move time forward, waking sleepers in deadline order and letting each run.

        After waking a sleeper it yields to the loop until that task sleeps again (a new
        sleeper appears) or `yields` rounds passed, so a task that sleeps in a loop (a
        clock) keeps up with fake time instead of lagging behind it.
        """
        target = self._mono + seconds
        for _ in range(3):  # tasks created just now start, and their sleeps count from now
            await asyncio.sleep(0)
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, when)
            if future.done():
                continue
            future.set_result(None)
            before = len(self._sleepers)
            for _ in range(yields):
                await asyncio.sleep(0)
                if len(self._sleepers) > before:
                    break
        self._mono = target
        for _ in range(3):
            await asyncio.sleep(0)


@dataclass
class CollectingSink:
    """A tick sink that keeps every tick (tests) and can concatenate the streams."""

    ticks: list[MixTick] = field(default_factory=list)

    def on_tick(self, tick: MixTick) -> None:
        """Keep the tick."""
        self.ticks.append(tick)

    def mixed(self) -> np.ndarray:
        """All mixed blocks, concatenated."""
        if not self.ticks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([t.mixed for t in self.ticks])

    def participant(self, participant_id: str) -> np.ndarray:
        """One participant's blocks (silence where absent), concatenated."""
        silence = np.zeros(320, dtype=np.int16)
        return np.concatenate([t.participants.get(participant_id, silence) for t in self.ticks])


@dataclass(frozen=True)
class GatewayFrame:
    """One audio message as a gateway would send it."""

    participant_id: str
    sequence: int
    timestamp_us: int
    data: bytes


@dataclass
class ParticipantStream:
    """A synthetic participant: its frames and where they start on the gateway clock."""

    participant_id: str
    audio_format: AudioFormat
    frames: Sequence[bytes]
    frame_ms: int = 20
    start_us: int = 1_000_000
    first_sequence: int = 1

    def gateway_frames(self) -> list[GatewayFrame]:
        """The frames with sequence numbers and capture timestamps."""
        step = self.frame_ms * 1000
        return [
            GatewayFrame(self.participant_id, self.first_sequence + i, self.start_us + i * step, data)
            for i, data in enumerate(self.frames)
        ]


def interleave(
    streams: Iterable[ParticipantStream],
    *,
    seed: int = 1,
    loss: float = 0.0,
    duplicate: float = 0.0,
    reorder_window: int = 0,
) -> list[GatewayFrame]:
    """All streams' frames in capture order, with optional impairments (see `Impairments`)."""
    frames = sorted((f for s in streams for f in s.gateway_frames()), key=lambda f: (f.timestamp_us, f.participant_id))
    return Impairments(loss, duplicate, reorder_window, seed).apply(frames)


async def feed(call_media: CallMedia, frames: Iterable[GatewayFrame], yield_every: int = 8) -> list[str | None]:
    """Push frames into a `CallMedia`, yielding to the loop now and then; returns each result."""
    push = call_media.push_audio
    results: list[str | None] = []
    for count, frame in enumerate(frames, 1):
        results.append(push(frame.participant_id, frame.sequence, frame.timestamp_us, frame.data))
        if count % yield_every == 0:
            await asyncio.sleep(0)
    return results


def measure_audio_pipeline(
    participants: int = 10,
    seconds: float = 60.0,
    encoding: AudioEncoding = AudioEncoding.OPUS,
    sample_rate: int = 48_000,
    recordings: Sequence[str] = (),
    spool_dir: Path | None = None,
) -> dict[str, float]:
    """CPU cost of one call: ingest + jitter + decode + resample + mix (+ recordings' writers).

    Runs a call of `participants` tones through `run_call` on a `MediaClock`; encoding the
    gateway frames is done first and not timed, nor is decoding the output. `recordings`
    may name "wav", "mp3" and "unmixed" recordings (their writer threads are included:
    `time.process_time` counts every thread). For bench/ and the design notes:

        python -c "from callrec.testing import measure_audio_pipeline as m; print(m(10, 60))"
    """
    import contextlib
    import tempfile

    from callrec.core.model import ChannelType, ContentType, Format, RecordingOptions
    from callrec.runtime_blas import single_threaded_blas
    from callrec.testing.call import SimParticipant, run_call, script_call

    single_threaded_blas()  # as the server runs (`serve`)

    kinds = {
        "wav": (ChannelType.MIXED, Format.WAV),
        "mp3": (ChannelType.MIXED, Format.MP3),
        "unmixed": (ChannelType.UNMIXED, Format.WAV),
    }
    fmt = AudioFormat(encoding, sample_rate, 1)
    cast = [SimParticipant(f"p{i}", tone_hz=participant_frequency(i % 20), audio_format=fmt)
            for i in range(participants)]
    script = script_call(cast, seconds)
    options = {
        name: RecordingOptions(content_type=ContentType.AUDIO, channel_type=kinds[name][0], format=kinds[name][1])
        for name in recordings
    }
    with contextlib.ExitStack() as stack:  # a spool made here is deleted after: only the figures are returned
        spool = spool_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="callrec-measure-")))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        asyncio.run(run_call(script, seconds, options, spool_dir=spool, decode=False, yield_every=participants))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    participant_minutes = participants * seconds / 60.0
    return {
        "participants": participants,
        "seconds": seconds,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_s_per_participant_minute": cpu / participant_minutes,
        "realtime_factor": seconds / wall,
    }


# The in-process call harness builds on the helpers above (it imports them lazily).
from callrec.testing.call import CallResult, Command, RecordingResult, SimParticipant, run_call  # noqa: E402
