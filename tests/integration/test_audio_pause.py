"""Pause and resume on the real-time clock: the gateway streams in real time, a tone that
changes every second, so the recording shows exactly which seconds were cut or silenced."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing import decode_file, dominant_frequencies, encode_frames, tone
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient
from callrec_client.gateway import GatewayConnection
from tests.integration.audio_recording import download
from tests.integration.test_recording_service import wait_state

RATE = 16_000
FMT = AudioFormat(AudioEncoding.PCM16LE, RATE, 1)
STEPS = [300, 400, 500, 600, 700, 800]  # one per second


def stepped_frames() -> list[bytes]:
    pcm = np.concatenate([tone(f, 1.0, RATE, start_sample=i * RATE) for i, f in enumerate(STEPS)])
    return encode_frames(pcm, FMT)


def freq(samples: np.ndarray, start: float, end: float) -> int:
    (f,) = dominant_frequencies(samples[int(start * RATE):int(end * RATE)], RATE)
    return round(f / 10) * 10


def rms(samples: np.ndarray, start: float, end: float) -> float:
    block = samples[int(start * RATE):int(end * RATE)].astype(np.float64)
    return float(np.sqrt(np.mean(block ** 2)))


async def stream_with_commands(
    target: str, call_id: str, tmp, commands: dict[float, str], **options
) -> tuple:
    """Stream 6 s in real time; at each `commands` second call pause/resume; return (recording, file,
    meta, the sender's worst lateness in seconds).

    The commands run beside the stream (in order), not between its frames: a control RPC slowed by a
    loaded machine must not hold the media back. The worst lateness is how far behind its real-time
    schedule the sender ever was (a loaded CI box): a frame that late can land a tick off, so the
    timing assertions allow that much on top of their tolerance.
    """
    frames = stepped_frames()
    async with AsyncCallrecClient(target) as client, GatewayConnection(target, call_id, gateway_id="gw") as gw:
        await gw.join("alice", "Alice")
        rec = await client.start_recording(call_id, content_type="audio", format="wav", **options)
        t0 = time.monotonic()
        pending = sorted(commands.items())
        previous: asyncio.Task | None = None
        worst_late = 0.0

        async def command(verb: str, after: asyncio.Task | None) -> None:
            if after is not None:
                await after
            await getattr(client, f"{verb}_recording")(rec.recording_id)

        for i, data in enumerate(frames):
            due = t0 + i * 0.02
            while pending and pending[0][0] <= i * 0.02:
                _, verb = pending.pop(0)
                previous = asyncio.create_task(command(verb, previous))
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            worst_late = max(worst_late, time.monotonic() - due)
            await gw.audio("alice", i + 1, 1_000_000 + i * 20_000, data)
        if previous is not None:
            await previous
        await gw.end()
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
        chunk = done.chunks[0]
        path = tmp / f"{call_id}.wav"
        with open(path, "wb") as out:
            out.write(await download(client, chunk.content_location))
        meta = json.loads(await download(client, chunk.metadata_location))
    return done, decode_file(path), meta, worst_late


@pytest.fixture(scope="module")
def realtime_server(tmp_path_factory):
    from tests.harness import ServerProcess

    proc = ServerProcess(tmp_path_factory.mktemp("rt"), "--clock", "realtime", "--playout-delay-ms", "100")
    proc.start()
    yield proc
    proc.stop()


async def test_pause_skip_cuts_the_span(realtime_server, validate_json, tmp_path):
    done, audio, meta, late = await stream_with_commands(realtime_server.target, "skip-call", tmp_path,
                                                         {2.0: "pause", 4.0: "resume"})
    validate_json("recording-chunk-metadata", meta)
    (interval,) = meta["pauseResumeIntervals"]
    assert abs(interval["duration"] - 2000) <= 60 + 1000 * late
    assert abs(audio.duration_s - (6.0 - interval["duration"] / 1000)) <= 0.04 + late, f"sender late {late:.3f} s"
    samples = audio.channel(0)
    assert [freq(samples, s + 0.2, s + 0.8) for s in range(4)] == [300, 400, 700, 800]
    assert len(done.pause_intervals) == 1


async def test_pause_silence_keeps_the_timeline(realtime_server, validate_json, tmp_path):
    _, audio, meta, late = await stream_with_commands(realtime_server.target, "silence-call", tmp_path,
                                                      {2.0: "pause", 4.0: "resume"}, pause_mode="silence")
    validate_json("recording-chunk-metadata", meta)
    (interval,) = meta["pauseResumeIntervals"]
    assert abs(interval["duration"] - 2000) <= 60 + 1000 * late
    assert abs(audio.duration_s - 6.0) <= 0.04 + late, f"sender late {late:.3f} s"
    samples = audio.channel(0)
    assert freq(samples, 0.2, 0.8) == 300 and freq(samples, 1.2, 1.8) == 400
    assert rms(samples, 2.1, 3.9) < 5  # silence exactly where paused
    assert freq(samples, 4.2, 4.8) == 700 and freq(samples, 5.2, 5.8) == 800


async def test_pause_on_start_then_resume(realtime_server, tmp_path):
    _, audio, _, late = await stream_with_commands(realtime_server.target, "pos-call", tmp_path, {3.0: "resume"},
                                                   pause_on_start=True)
    assert abs(audio.duration_s - 3.0) <= 0.06 + late, f"sender late {late:.3f} s"
    samples = audio.channel(0)
    assert [freq(samples, s + 0.2, s + 0.8) for s in range(3)] == [600, 700, 800]
