"""`run_call`: drive one call in-process on the media clock and get its recordings back, decoded.

Why: a recording test wants to say "three people, these tones and colours, pause at
2 s, resume at 3 s, record wav and mp4" and assert on what came out, without a gRPC
server, real time or a private copy of the pipeline. `run_call` builds the production
pieces (the `CallMediaHub` with PyAV codecs on a `MediaClock`, `AudioRecording` and
`VideoRecording` with the real writers and the video worker process), feeds them the
participants' frames in capture order as a gateway would, applies the control commands
at their media times, ends the call and decodes every chunk.

Example::

    import asyncio
    from callrec.core.model import ChannelType, ContentType, Format, RecordingOptions
    from callrec.testing import Command, SimParticipant, dominant_frequencies, run_call

    wav = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV)
    result = asyncio.run(run_call(
        [SimParticipant("alice", tone_hz=300), SimParticipant("bob", tone_hz=500, join_at=1.0)],
        seconds=4,
        recordings={"mixed": wav},
        commands=[Command(2.0, "pause", "mixed"), Command(3.0, "resume", "mixed")],
    ))
    audio = result["mixed"].audio              # every chunk decoded and joined: 3 s (the pause is cut)
    print(dominant_frequencies(audio[:16000, 0], count=1))   # [300.0]: bob joins at 1 s
    print(result["mixed"].metadata[0]["pauseResumeIntervals"])

Media time t is `EPOCH + t`: the first frame of the call is captured at t = 0.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import numpy as np

from callrec.core.audio_recording import AudioRecording
from callrec.core.call_hub import CallMediaHub
from callrec.core.call_registry import Call, CallParticipant, GatewayStream
from callrec.core.chunker import FinishedChunk
from callrec.core.clock import MediaClock
from callrec.core.model import (
    OUTPUT_SAMPLE_RATE,
    AudioEncoding,
    AudioFormat,
    Format,
    MediaStats,
    RecordingOptions,
    VideoEncoding,
    VideoFormat,
)
from callrec.core.recording_engine import RecordingEngine
from callrec.media.decode import PyAVAudioCodecs
from callrec.media.video_output import make_video_recording_factory
from callrec.media.writers import writer_factory_for
from callrec.media.writers.mp4 import Mp4Settings
from callrec.testing.impairments import Impairments

__all__ = ["Action", "CallResult", "CallScript", "Command", "DecodedVideo", "RecordingResult", "SimParticipant",
           "decode_video", "rgb_to_yuv", "run_call", "script_call", "solid_i420"]

RATE = OUTPUT_SAMPLE_RATE
#: Fast settings for tests: a small grid, the fastest preset.
TEST_MP4 = Mp4Settings(width=320, height=180, preset="ultrafast")


def rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.709 limited-range (Y, U, V) of an RGB colour, as the compositor's output decodes."""
    r, g, b = (c / 255.0 for c in rgb)
    kr, kb = 0.2126, 0.0722
    y = kr * r + (1 - kr - kb) * g + kb * b
    u = 128 + 224 * (b - y) / (2 * (1 - kb))
    v = 128 + 224 * (r - y) / (2 * (1 - kr))
    return round(16 + 219 * y), round(u), round(v)


def solid_i420(width: int, height: int, yuv: tuple[int, int, int]) -> bytes:
    """A packed I420 frame of one colour given as (Y, U, V)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    return bytes([yuv[0]]) * (width * height) + bytes([yuv[1]]) * (cw * ch) + bytes([yuv[2]]) * (cw * ch)


@dataclass
class SimParticipant:
    """A synthetic participant: a tone (or custom audio) and a solid colour (or custom frames).

    Clock faults: `clock_offset_s` shifts its capture timestamps against its gateway's
    (a participant whose clock started elsewhere), `clock_drift` makes them run fast
    (0.001 = 0.1 %). Audio is generated at the format's own rate and channel count
    (Opus: 48 kHz) and encoded as the gateway would send it.
    """

    participant_id: str
    display_name: str = ""
    tone_hz: float | None = None  # default: 300, 500, 700, ... by position
    audio: Callable[[float, int], np.ndarray] | None = None  # int16 PCM at the format's rate for [t, t + n)
    speaks: Callable[[float], bool] = lambda t: True
    audio_format: AudioFormat = field(default_factory=lambda: AudioFormat(AudioEncoding.PCM16LE, RATE, 1))
    colour: tuple[int, int, int] | None = None  # RGB; None and no `frames`: no video
    frames: Callable[[float], bytes] | None = None  # I420 frame at time t
    video_size: tuple[int, int] = (160, 90)
    fps: float = 16.0
    video_codec: Literal["i420", "h264", "vp8"] = "i420"
    join_at: float = 0.0
    leave_at: float | None = None
    clock_offset_s: float = 0.0
    clock_drift: float = 0.0
    gateway_id: str = "gw"

    @property
    def has_video(self) -> bool:
        """True when it sends video."""
        return self.colour is not None or self.frames is not None


#: What a control command does.
Action = Literal["pause", "resume", "stop"]


@dataclass(frozen=True)
class Command:
    """A control command at media time `at` (seconds) for one recording, or all (`recording` None)."""

    at: float
    action: Action
    recording: str | None = None


@dataclass
class DecodedVideo:
    """An mp4 chunk decoded: per-frame times and luma, frames kept by `keep`, audio placed by pts."""

    width: int
    height: int
    frame_times: list[float]
    mean_y: list[float]
    kept: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
    audio: np.ndarray  # float32 mono, index / audio_rate = seconds on the file's clock
    audio_rate: int

    def luma(self, index: int) -> np.ndarray:
        """The Y plane of a kept frame."""
        return self.kept[index][0]


@dataclass
class RecordingResult:
    """One recording of the call: its chunks, their metadata documents, decoded media."""

    chunks: list[FinishedChunk]
    metadata: list[dict[str, object]]
    audio: np.ndarray  # int16 (n, channels): every chunk's audio joined (wav/mp3)
    videos: list[DecodedVideo] = field(default_factory=list)  # one per mp4 chunk
    error: str | None = None


@dataclass
class CallResult:
    """Every recording of the call by name, and the call's media counters.

    The chunk files are under `spool_dir`. When `run_call` made that directory itself (no `spool_dir`
    given), the result owns it: it is deleted with the result (garbage collection, interpreter exit) or at
    `cleanup()`, so a test suite calling `run_call` thousands of times leaves nothing in the temp folder.
    Pass `spool_dir` to keep the files.
    """

    recordings: dict[str, RecordingResult]
    stats: dict[str, MediaStats]  # per participant: received, rejected by reason, late, gap fill
    audio_frames_sent: int
    spool_dir: Path | None = None
    _owned_spool: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False, compare=False)

    def __getitem__(self, name: str) -> RecordingResult:
        return self.recordings[name]

    def cleanup(self) -> None:
        """Delete the chunk files now if `run_call` made their directory (a `spool_dir` given is left alone)."""
        if self._owned_spool is not None:
            self._owned_spool.cleanup()


@dataclass(order=True)
class _Message:
    at_us: int  # when it is captured (sent in this order, as a live gateway would)
    kind: int  # 0 video before 1 audio at one instant: the media clock mixes a tick once its audio is in
    order: int
    ts_us: int = field(compare=False)  # the timestamp it carries: the participant's capture clock
    pid: str = field(compare=False)
    sequence: int = field(compare=False)
    data: bytes = field(compare=False)
    size: tuple[int, int] = field(compare=False, default=(0, 0))
    keyframe: bool = field(compare=False, default=True)


def _capture_us(p: SimParticipant, t: float, start_us: int) -> int:
    """The participant's capture timestamp of call instant `t`: offset and drift applied."""
    return start_us + round((p.clock_offset_s + t * (1.0 + p.clock_drift)) * 1e6)


def _native_rate(fmt: AudioFormat) -> int:
    if fmt.encoding == AudioEncoding.OPUS:
        return 48_000
    return fmt.sample_rate or 8_000


def _audio_messages(p: SimParticipant, index: int, seconds: float, start_us: int) -> list[_Message]:
    from callrec.testing import encode_frames, tone

    fmt = p.audio_format
    rate, channels = _native_rate(fmt), fmt.channels or 1
    per_frame = rate // 50
    until = seconds if p.leave_at is None else min(seconds, p.leave_at)
    first = round(p.join_at * 50)
    blocks = []
    for i in range(first, round(until * 50)):
        t = i / 50
        if p.audio is not None:
            pcm = p.audio(t, per_frame)
        elif p.speaks(t):
            pcm = tone(p.tone_hz or 300.0 + 200.0 * index, 0.02, rate, channels=channels, start_sample=i * per_frame)
        else:
            pcm = np.zeros((per_frame, channels) if channels > 1 else per_frame, np.int16)
        blocks.append(pcm)
    frames = encode_frames(np.concatenate(blocks), fmt) if blocks else []
    return [_Message(round((first + k) / 50 * 1e6), 1, 0, _capture_us(p, (first + k) / 50, start_us),
                     p.participant_id, k + 1, data) for k, data in enumerate(frames)]


def _video_messages(p: SimParticipant, seconds: float, start_us: int) -> list[_Message]:
    if not p.has_video:
        return []
    w, h = p.video_size
    encoder = None
    if p.video_codec != "i420":
        from callrec_client.sim_video import VideoEncoder

        encoder = VideoEncoder(p.video_codec, w, h, p.fps)
    colour = rgb_to_yuv(p.colour) if p.colour is not None else (16, 128, 128)
    until = seconds if p.leave_at is None else min(seconds, p.leave_at)
    out = []
    for i in range(int(p.join_at * p.fps), int(until * p.fps)):
        t = i / p.fps
        data = p.frames(t) if p.frames is not None else solid_i420(w, h, colour)
        key = True
        if encoder is not None:
            data, key = encoder.encode(data)
            if not data:
                continue
        out.append(_Message(round(t * 1e6), 0, 0, _capture_us(p, t, start_us), p.participant_id, i + 1, data,
                            (w, h), key))
    return out


#: Gateway timestamps start here: room for capture clocks up to 10 s behind their gateway's.
START_US = 10_000_000


@dataclass(frozen=True)
class CallScript:
    """A call's gateway messages, encoded in advance (`script_call`): benchmarks time only the run."""

    participants: tuple[SimParticipant, ...]
    seconds: float
    messages: tuple[_Message, ...]
    audio_frames: int


def script_call(participants: Sequence[SimParticipant], seconds: float,
                impairments: Impairments | None = None) -> CallScript:
    """Encode every participant's frames as its gateway would send them (impairments on the audio)."""
    messages, audio = _messages(participants, seconds, START_US, impairments)
    return CallScript(tuple(participants), seconds, tuple(messages), audio)


def _messages(cast: Sequence[SimParticipant], seconds: float, start_us: int,
              impairments: Impairments | None) -> tuple[list[_Message], int]:
    """Every message of the call in sending order (audio impaired), and how many audio frames were sent."""
    audio = sorted(m for index, p in enumerate(cast) for m in _audio_messages(p, index, seconds, start_us))
    if impairments is not None:
        audio = impairments.apply(audio)
    for order, m in enumerate(audio):  # keep the impaired order among messages of one instant
        m.order = order
    video = [m for p in cast for m in _video_messages(p, seconds, start_us)]
    merged = sorted([*audio, *video], key=lambda m: (m.at_us, m.kind, m.order)) if impairments is None \
        else _merge(audio, sorted(video))
    return merged, len(audio)


def _merge(audio: list[_Message], video: list[_Message]) -> list[_Message]:
    """Impaired audio keeps its (shuffled) order; each video frame goes before the first audio past it."""
    out: list[_Message] = []
    v = 0
    for m in audio:
        while v < len(video) and video[v].at_us <= m.at_us:
            out.append(video[v])
            v += 1
        out.append(m)
    out.extend(video[v:])
    return out


def _video_format(p: SimParticipant) -> VideoFormat | None:
    if not p.has_video:
        return None
    return VideoFormat(VideoEncoding(p.video_codec), *p.video_size)


def decode_video(path: Path, keep: Callable[[int], bool] = lambda i: False) -> DecodedVideo:
    """Decode an mp4 chunk: every frame's time and mean luma, the frames `keep` selects, the audio by pts."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        times, means, kept = [], [], {}
        for i, frame in enumerate(container.decode(stream)):
            times.append(float(frame.time or 0.0))
            planes = frame.to_ndarray(format="yuv420p")
            luma = planes[:height]
            means.append(float(luma.mean()))
            if keep(i):
                u = planes[height : height + height // 4].reshape(height // 2, width // 2)
                v = planes[height + height // 4 :].reshape(height // 2, width // 2)
                kept[i] = (luma.copy(), u.copy(), v.copy())
    with av.open(str(path)) as container:
        astream = container.streams.audio[0]
        rate = astream.codec_context.sample_rate
        pieces = [(round(float(f.time or 0.0) * rate), f.to_ndarray().reshape(-1)) for f in container.decode(astream)]
    audio = np.zeros(max((at + len(x) for at, x in pieces), default=0), np.float32)
    for at, x in pieces:
        audio[at : at + len(x)] = x
    return DecodedVideo(width, height, times, means, kept, audio, rate)


async def run_call(
    participants: Sequence[SimParticipant] | CallScript,
    seconds: float,
    recordings: Mapping[str, RecordingOptions],
    *,
    decode: bool = True,
    commands: Sequence[Command] = (),
    spool_dir: Path | None = None,
    mp4: Mp4Settings = TEST_MP4,
    keep_frames: Callable[[int], bool] = lambda i: False,
    impairments: Impairments | None = None,
    call_id: str = "sim-call",
    resource_id: str = "sim-resource",
    yield_every: int = 16,
) -> CallResult:
    """Run a call of `seconds` with `participants`, making `recordings`; see the module docstring.

    Recordings start with the call (t = 0). A recording that fails is returned with its
    `error` and whatever chunks it finished. `impairments` apply to the audio frames.
    `participants` may be a `script_call` made in advance (then `impairments` is its own);
    `decode=False` leaves the files undecoded (benchmarks).
    """
    from callrec.testing import EPOCH, decode_file

    script = participants if isinstance(participants, CallScript) else \
        script_call(participants, seconds, impairments)
    participants = script.participants
    owned: tempfile.TemporaryDirectory[str] | None = None  # made here: the result owns it (deleted with it)
    if spool_dir is None:
        owned = tempfile.TemporaryDirectory(prefix="callrec-run-call-")
        spool = Path(owned.name)
    else:
        spool = spool_dir
    hub = CallMediaHub(lambda: MediaClock(start_time=EPOCH), PyAVAudioCodecs())
    call = Call(call_id, call_id, "conn-0")
    for gateway_id in dict.fromkeys(p.gateway_id for p in participants):
        call.streams[gateway_id] = GatewayStream(connection_id=gateway_id, gateway_id=gateway_id)
    media = hub.media(call.server_call_id)
    make_video = make_video_recording_factory("media", settings=mp4, environ={})
    sinks: dict[str, RecordingEngine] = {}
    finished: dict[str, list[FinishedChunk]] = {name: [] for name in recordings}
    for name, options in recordings.items():
        on_chunk = finished[name].append
        if options.format is Format.MP4:
            video = make_video(name, call.call_id, options, spool / name, resource_id, on_chunk, start_at=EPOCH)
            hub.attach_video(call, call.server_call_id, video)
            sinks[name] = video
        else:
            audio_recording = AudioRecording(name, call.call_id, options, spool / name, resource_id,
                                             writer_factory_for(options), on_chunk, start_at=EPOCH)
            hub.attach(call.server_call_id, audio_recording)
            sinks[name] = audio_recording
    for command in commands:
        at = EPOCH + np.timedelta64(round(command.at * 1e6), "us").item()
        for name, sink in sinks.items():
            if command.recording in (None, name):
                getattr(sink, command.action)(at)

    joined: dict[str, CallParticipant] = {}

    def join(p: SimParticipant) -> CallParticipant:
        member = CallParticipant(p.participant_id, p.display_name or p.participant_id, p.audio_format,
                                 _video_format(p), p.gateway_id)
        call.participants[p.participant_id] = member
        call.streams[p.gateway_id].participant_ids.add(p.participant_id)
        hub.joined(call, member)
        joined[p.participant_id] = member
        return member

    for p in participants:
        if p.join_at <= 0:
            join(p)
    pending_joins = sorted((p for p in participants if p.join_at > 0), key=lambda p: p.join_at)
    leaves = sorted((p for p in participants if p.leave_at is not None), key=lambda p: p.leave_at or 0.0)
    for count, m in enumerate(script.messages, 1):
        t = m.at_us / 1e6
        while pending_joins and pending_joins[0].join_at <= t:
            join(pending_joins.pop(0))
        while leaves and (leaves[0].leave_at or 0.0) <= t:
            gone = leaves.pop(0)
            member = joined.pop(gone.participant_id, None)
            if member is not None:
                hub.left(call, member)
        member = joined.get(m.pid)
        if member is None:
            continue
        # Stay in step with the mixer, as a live gateway does: a video frame then reaches the
        # worker just before the audio of its instant, not seconds ahead of it (the compositor
        # keeps only a few frames waiting for their time).
        for _ in range(200):
            if media.next_tick * 0.02 >= t - 0.1:
                break
            await asyncio.sleep(0)
        if m.kind == 1:
            hub.audio(call, member, m.sequence, m.ts_us, m.data)
        else:
            hub.video(call, member, m.sequence, m.ts_us, m.data, m.keyframe, *m.size)
        if count % yield_every == 0:
            await asyncio.sleep(0)
    await hub.end_call(call.server_call_id)
    results: dict[str, RecordingResult] = {}
    for name, sink in sinks.items():
        error = None
        try:
            await sink.finish()
        except Exception as exc:  # returned to the test, which asserts on it
            error = str(exc)
        chunks = finished[name]
        metadata = [json.loads(c.metadata_path.read_text()) for c in chunks]
        if not decode:
            videos, audio = [], np.zeros((0, 1), np.int16)
        elif recordings[name].format is Format.MP4:
            videos = [decode_video(c.media_path, keep_frames) for c in chunks]
            audio = np.zeros((0, 1), np.int16)
        else:
            videos = []
            decoded = [decode_file(c.media_path).samples for c in chunks]
            width = max((d.shape[1] for d in decoded), default=1)
            audio = np.concatenate([np.pad(d, ((0, 0), (0, width - d.shape[1]))) for d in decoded]) if decoded \
                else np.zeros((0, 1), np.int16)
        results[name] = RecordingResult(chunks, metadata, audio, videos, error)
    return CallResult(results, media.participant_stats(), script.audio_frames, spool, owned)
