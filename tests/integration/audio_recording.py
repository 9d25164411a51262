"""Helpers for end-to-end audio tests: stream a synthetic call into a real server, record it,
and fetch what was stored through ContentService."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing import GatewayFrame, ParticipantStream, decode_file, interleave, tone_frames
from callrec.v1 import events_pb2 as epb
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient
from callrec_client.gateway import GatewayConnection
from tests.harness import unique
from tests.integration.test_events import collect
from tests.integration.test_recording_service import wait_state

FILE_STATUS = "Microsoft.Communication.RecordingFileStatusUpdated"


@dataclass
class Speaker:
    """A synthetic participant: a tone in a codec, starting `start_s` into the call."""

    participant_id: str
    frequency: float
    audio_format: AudioFormat = field(default_factory=lambda: AudioFormat(AudioEncoding.PCM16LE, 16000, 1))
    seconds: float = 3.0
    start_s: float = 0.0
    amplitude: float = 0.3


@dataclass
class Recorded:
    """A finished recording: resource, event, chunk files and metadata documents."""

    recording: pb.Recording
    event: epb.Event
    media: list[Path]
    metadata: list[dict]

    def decoded(self, index: int = 0):
        return decode_file(self.media[index])


def frames_of(speakers: Sequence[Speaker]) -> list[ParticipantStream]:
    streams = []
    for s in speakers:
        frames = tone_frames(s.frequency, s.seconds, s.audio_format, amplitude=s.amplitude)
        streams.append(ParticipantStream(s.participant_id, s.audio_format, frames,
                                         start_us=1_000_000 + round(s.start_s * 1e6)))
    return streams


async def download(client: AsyncCallrecClient, location: str, offset: int = 0, length: int = 0) -> bytes:
    return b"".join([piece.data async for piece in client.download(location, offset, length)])


async def record_call(
    target: str,
    speakers: Sequence[Speaker],
    tmp: Path,
    frames: list[GatewayFrame] | None = None,
    on_frame: Callable[[int], Awaitable[None]] | None = None,
    **options,
) -> Recorded:
    """Open a call, start a recording, send every frame, end the call, fetch the stored chunks.

    `on_frame(n)` runs after the n-th frame went out (a test's chance to break something mid-call)."""
    call_id = unique("audio")
    options.setdefault("content_type", "audio")
    options.setdefault("format", "wav")
    async with AsyncCallrecClient(target) as client, GatewayConnection(target, call_id, gateway_id="gw") as gw:
        for s in speakers:
            f = s.audio_format
            await gw.join(s.participant_id, s.participant_id.title(), audio=f.encoding.value,
                          sample_rate=f.sample_rate, channels=f.channels)
        rec = await client.start_recording(call_id, **options)
        for sent, frame in enumerate(frames if frames is not None else interleave(frames_of(speakers)), 1):
            await gw.audio(frame.participant_id, frame.sequence, frame.timestamp_us, frame.data)
            if on_frame is not None:
                await on_frame(sent)
        await gw.end()
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=60)
        (event,) = await collect(client, 1, recording_id=rec.recording_id, event_types=[FILE_STATUS],
                                 from_oldest=True)
        media, metadata = [], []
        for chunk in done.chunks:
            path = tmp / f"{rec.recording_id[-8:]}-{chunk.index}{Path(chunk.content_location).suffix}"
            path.write_bytes(await download(client, chunk.content_location))
            media.append(path)
            metadata.append(json.loads(await download(client, chunk.metadata_location)))
    return Recorded(done, event, media, metadata)


def assert_no_gap(samples: np.ndarray, rate: int, what: str) -> None:
    """No silent 10 ms window (under a tenth of the median level) between the first and the last 100 ms:
    that is what a gap filled with silence looks like. A quieter stretch is not one (an Opus stream's
    onset ramps up over its first few hundred milliseconds)."""
    edge, window = rate // 10, rate // 100
    body = samples[edge: len(samples) - edge].astype(np.float64)
    rms = np.sqrt((body[: len(body) // window * window].reshape(-1, window) ** 2).mean(axis=1))
    assert rms.min() > 0.1 * np.median(rms), f"{what}: a gap (silent 10 ms) at {rms.argmin() * 10 + 100} ms"
