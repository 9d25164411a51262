"""`callrec gateway-sim`: a synthetic media gateway streaming N participants of one call.

Each participant speaks a distinct tone (300, 500, 700, ... Hz) or espeak-ng speech,
encoded in the chosen codec, sent in real time (or as fast as possible for servers
on the media clock), with optional network impairments: jitter, loss, reordering and
duplication. Video (a moving coloured pattern with the name, and a once-a-second
flash paired with a beep) comes from `sim_video` when `--video` is given.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing import encode_frames, participant_frequency, tone
from callrec_client.client import TlsOptions
from callrec_client.gateway import GatewayConnection

FRAME_MS = 20
SPEECH_LINES = (
    "Hello, this is participant {n}. The quick brown fox jumps over the lazy dog.",
    "Participant {n} speaking. Please confirm the order number and the delivery address.",
    "This is {n}. I can hear you clearly; let us review the agenda for today.",
)


@dataclass
class Impairments:
    """Network trouble to simulate; probabilities are per frame."""

    jitter_ms: float = 0.0
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    seed: int = 1


@dataclass
class SimReport:
    """What was sent and what the server acknowledged."""

    sent: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: int = 0
    messages: int = 0
    """StreamMedia messages that carried frames (a `media_batch` counts once)."""


def native_rate(fmt: AudioFormat) -> int:
    """The sample rate frames are encoded at."""
    if fmt.encoding is AudioEncoding.OPUS:
        return 48_000
    if fmt.encoding in (AudioEncoding.PCMU, AudioEncoding.PCMA):
        return 8_000
    return fmt.sample_rate


def speech_pcm(text: str, rate: int, seconds: float, voice: str = "en") -> np.ndarray:
    """espeak-ng speech resampled to `rate`, looped/padded to `seconds` (mono int16)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: `apt-get install espeak-ng`, or use tones (no --speech)")
    import av

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
        with av.open(str(wav)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            parts = [f.to_ndarray().reshape(-1)
                     for frame in container.decode(audio=0) for f in resampler.resample(frame)]
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    voice_pcm = np.concatenate(parts).astype(np.int16)
    gap = np.zeros(rate // 2, dtype=np.int16)
    unit = np.concatenate([voice_pcm, gap])
    total = round(seconds * rate)
    return np.resize(unit, total)


def participant_audio(index: int, fmt: AudioFormat, seconds: float, speech: bool, beeps: bool = False) -> list[bytes]:
    """The frames of one participant: a distinct tone, or speech; with `beeps`, the once-a-second
    beep that pairs with the video's flash (so A/V sync can be measured in the recording)."""
    rate = native_rate(fmt)
    if speech:
        pcm = speech_pcm(SPEECH_LINES[index % len(SPEECH_LINES)].format(n=index + 1), rate, seconds)
    else:
        pcm = tone(participant_frequency(index), seconds, rate)
    if beeps:
        from callrec_client.sim_video import add_beeps

        pcm = add_beeps(pcm, rate)
    if (fmt.channels or 1) == 2:
        pcm = np.repeat(pcm.reshape(-1, 1), 2, axis=1)
    return encode_frames(pcm, AudioFormat(fmt.encoding, rate, fmt.channels or 1), FRAME_MS)


def schedule(
    frames: dict[str, list[bytes]], start_us: int, imp: Impairments, report: SimReport
) -> list[tuple[float, str, int, int, bytes]]:
    """(send offset s, participant, sequence, timestamp_us, data), impaired and ordered by send time."""
    rng = random.Random(imp.seed)
    out: list[tuple[float, str, int, int, bytes]] = []
    for pid, datas in frames.items():
        report.sent[pid] = report.dropped[pid] = report.duplicated[pid] = 0
        for i, data in enumerate(datas):
            due = i * FRAME_MS / 1000
            if imp.loss and rng.random() < imp.loss:
                report.dropped[pid] += 1
                continue
            delay = rng.uniform(0, imp.jitter_ms / 1000) if imp.jitter_ms else 0.0
            if imp.reorder and rng.random() < imp.reorder:
                delay += 2 * FRAME_MS / 1000  # arrives after the next frame or two
            entry = (due + delay, pid, i + 1, start_us + i * FRAME_MS * 1000, data)
            out.append(entry)
            report.sent[pid] += 1
            if imp.duplicate and rng.random() < imp.duplicate:
                out.append((entry[0] + rng.uniform(0.005, 0.06), *entry[1:]))
                report.duplicated[pid] += 1
    out.sort(key=lambda e: e[0])
    return out


MAX_BATCH_FRAMES = 256
"""The server's default `[limits] max_batch_frames`."""


def _send_groups(events: list[tuple], limit: int, window_s: float = 0.0) -> list[list[tuple]]:
    """Consecutive events due at the same instant, or with `window_s` in the same window of that length
    (from the start), at most `limit` per group, in order. A group is sent when its last event is due."""
    def slot(event: tuple) -> float:
        return int(event[0] / window_s + 1e-9) if window_s else event[0]

    groups: list[list[tuple]] = []
    for event in events:
        if groups and len(groups[-1]) < limit and slot(groups[-1][-1]) == slot(event):
            groups[-1].append(event)
        else:
            groups.append([event])
    return groups


async def run_simulation(
    target: str,
    server_call_id: str,
    participants: int = 3,
    seconds: float = 10.0,
    codec: str = "pcm16le",
    sample_rate: int = 16_000,
    channels: int = 1,
    speech: bool = False,
    realtime: bool = True,
    impairments: Impairments | None = None,
    gateway_id: str = "gateway-sim",
    call_id: str = "",
    names: list[str] | None = None,
    video: bool = False,
    end: bool = True,
    on_progress: Callable[[int, int], object] | None = None,
    token: str = "",
    tls: TlsOptions | None = None,
    batch: bool = True,
    batch_ms: float = 0.0,
) -> SimReport:
    """Stream the call; returns what was sent and the server's last counters.

    With `batch`, frames due at the same instant (a tick of every participant) go in one
    `media_batch`; impairments that move a frame in time send it on its own. With `batch_ms`, every
    frame due in the same `batch_ms` window goes in one `media_batch`, sent when the newest is due:
    fewer messages (each costs the server about 0.1 ms of CPU whatever it holds, `make bench` row 2c)
    for that much more delay.
    """
    if batch_ms < 0:
        raise ValueError(f"batch_ms must be 0 or more, not {batch_ms}")
    imp = impairments or Impairments()
    fmt = AudioFormat(AudioEncoding(codec), sample_rate, channels)
    ids = [f"participant-{i + 1}" for i in range(participants)]
    display = names or [f"Participant {i + 1}" for i in range(participants)]
    frames = {pid: participant_audio(i, fmt, seconds, speech, beeps=video) for i, pid in enumerate(ids)}
    report = SimReport()
    start_us = int(time.time() * 1e6)
    plan = schedule(frames, start_us, imp, report)
    video_plan = None
    if video:
        from callrec_client.sim_video import VideoPlan

        video_plan = VideoPlan(ids, display, seconds, start_us)
    async with GatewayConnection(target, server_call_id, gateway_id=gateway_id, call_id=call_id, token=token,
                                 tls=tls) as gw:
        for pid, name in zip(ids, display, strict=True):
            await gw.join(pid, name, audio=codec, sample_rate=native_rate(fmt), channels=channels,
                          video="i420" if video_plan else None,
                          width=video_plan.width if video_plan else 0,
                          height=video_plan.height if video_plan else 0)
        events: list[tuple] = list(plan)
        if video_plan is not None:
            events += video_plan.schedule()
            events.sort(key=lambda e: (e[0], len(e) == 5))  # at equal times video first, as a camera would
        t0 = time.monotonic()
        sent = 0
        for group in _send_groups(events, MAX_BATCH_FRAMES if batch else 1, batch_ms / 1000 if batch else 0.0):
            if realtime:
                wait = t0 + group[-1][0] - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if len(group) > 1:  # a tick of every participant in one message
                await gw.batch(
                    audio=[gw.audio_frame(e[1], e[2], e[3], e[4]) for e in group if len(e) == 5],
                    video=[gw.video_frame(e[1], e[2], e[3], e[4], e[5], e[6], keyframe=e[7])
                           for e in group if len(e) > 5],
                )
            else:
                event = group[0]
                _, pid, seq, ts, data = event[:5]
                if len(event) > 5:
                    await gw.video(pid, seq, ts, data, event[5], event[6], keyframe=event[7])
                else:
                    await gw.audio(pid, seq, ts, data)
            report.messages += 1
            before, sent = sent, sent + len(group)
            if on_progress is not None and sent // 50 > before // 50:
                on_progress(sent, len(events))
        # a final ack with the server's counters
        deadline = time.monotonic() + 5
        expected = {pid: n + report.duplicated[pid] for pid, n in report.sent.items()}
        while time.monotonic() < deadline:
            try:
                ack = (await gw.next_response("ack", timeout=2)).ack
            except (TimeoutError, EOFError):
                break
            for p in ack.participants:
                report.received[p.participant_id] = p.received
                report.rejected[p.participant_id] = dict(p.rejected_by_reason)
            total = {p: report.received.get(p, 0) + sum(report.rejected.get(p, {}).values()) for p in ids}
            if all(total[p] >= expected[p] for p in ids):
                break
        report.warnings = sum(1 for r in gw.responses if r.WhichOneof("message") == "warning")
        if end:
            await gw.end()
    return report
