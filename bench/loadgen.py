"""Load generator: N calls of synthetic participants streamed to a server in real time.

Runs in a process of its own (so the client does not share the server's event loop):

    python -m bench.loadgen '<json config>'

and talks to the bench over stdin/stdout, one JSON object per line:

1. prepares every participant's frames (a distinct tone per participant, encoded in the
   configured codec; optional video from `callrec_client.sim_video`, raw I420 or H.264/VP8 encoded
   once, before streaming, as a 2 s loop that starts with a key frame), opens one
   `GatewayConnection` per call, joins the participants, prints `{"event": "ready"}`;
2. waits for `go` on stdin (the bench starts recordings in between), streams every call in
   real time (per call, one `media_batch` per tick holding every participant's 20 ms audio frame,
   or with `ticks_per_batch` N one every N ticks holding those N ticks' frames; and one per video
   frame time),
   prints `{"event": "streamed", ...}` with how far the sender slipped behind its schedule, how
   much media its calls had queued that gRPC had not taken yet (`backlog_max_ms`: `send` only queues,
   so the slip alone would not show a generator whose writes fall behind), and its own CPU use;
3. waits (at most 5 s) for the acks to count every frame, ends the calls and prints
   `{"event": "report", ...}` with sent / received / rejected counts per call.

Every wait is bounded; only the configured (loopback) target is contacted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import bench  # noqa: F401  (sys.path)
from callrec.core.model import AudioEncoding, AudioFormat
from callrec.v1 import media_pb2 as pb
from callrec_client.gateway import GatewayConnection
from callrec_client.simulator import native_rate, participant_audio

TICK_S = 0.02
GO_TIMEOUT_S = 180.0
#: Every this many ticks the generator notes how many requests its calls have queued unsent.
BACKLOG_SAMPLE_TICKS = 5
ACK_WAIT_S = 5.0
END_TIMEOUT_S = 60.0


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Call:
    """One call: its connection, its participants and what was sent."""

    def __init__(self, call_id: str, gw: GatewayConnection, pids: list[str]) -> None:
        self.call_id = call_id
        self.gw = gw
        self.pids = pids
        self.sent: dict[str, int] = dict.fromkeys(pids, 0)

    def last_ack(self) -> dict[str, tuple[int, dict[str, int]]]:
        for resp in reversed(self.gw.responses):
            if resp.WhichOneof("message") == "ack":
                return {p.participant_id: (p.received, dict(p.rejected_by_reason)) for p in resp.ack.participants}
        return {}

    def settled(self) -> bool:
        ack = self.last_ack()
        return all(pid in ack and ack[pid][0] + sum(ack[pid][1].values()) >= self.sent[pid] for pid in self.pids)


async def read_line(timeout: float) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout)).strip()


def video_clips(participants: int, video: dict[str, Any]) -> list[list[tuple[bytes, bool]]]:
    """Per participant, a 2 s loop of (frame data, key frame): `callrec_client.sim_video`'s pattern, raw
    I420 or, with `video["codec"]` "h264" or "vp8", encoded with one key frame at the loop's start (so
    the loop restarts cleanly)."""
    from callrec_client.sim_video import VideoEncoder, VideoPattern

    codec = video.get("codec", "i420")
    loop = int(video["fps"] * 2)
    clips = []
    for i in range(participants):
        pattern = VideoPattern(i, f"Participant {i + 1}", video["width"], video["height"], video["fps"])
        raw = [pattern.frame(k / video["fps"]) for k in range(loop)]
        if codec == "i420":
            clips.append([(frame, True) for frame in raw])
        else:
            encoder = VideoEncoder(codec, video["width"], video["height"], video["fps"], gop=loop)
            clips.append([encoder.encode(frame) for frame in raw])
    return clips


def ticks_to_send(k: int, ticks: int, ticks_per_batch: int) -> range:
    """The ticks whose frames go out at tick `k`: every `ticks_per_batch`-th tick sends the ones since the
    last batch (itself included), and the last tick sends what is left; other ticks send nothing.

    A gateway batches what it has captured, so a frame is never sent before its own tick.
    """
    if (k + 1) % ticks_per_batch and k != ticks - 1:
        return range(0)
    return range(k - k % ticks_per_batch, k + 1)


def backlog_ms(queued: int, ticks_per_batch: int, fps: float) -> float:
    """How long one call takes to send `queued` requests: a request per `ticks_per_batch` ticks of audio,
    plus one per video frame (`fps`, 0 without video)."""
    return 1000 * queued / (1 / (ticks_per_batch * TICK_S) + fps)


async def main(cfg: dict[str, Any]) -> None:
    target: str = cfg["target"]
    call_ids: list[str] = cfg["calls"]
    participants: int = cfg["participants"]
    seconds: float = cfg["seconds"]
    codec: str = cfg.get("codec", "opus")
    video: dict[str, Any] | None = cfg.get("video")
    ticks_per_batch: int = max(1, int(cfg.get("ticks_per_batch", 1)))

    fmt = AudioFormat(AudioEncoding(codec), 48_000 if codec == "opus" else 16_000, 1)
    rate = native_rate(fmt)
    # The same tones in every call: participant i of each call speaks tone i.
    audio = [participant_audio(i, fmt, seconds, speech=False) for i in range(participants)]
    ticks = min(len(a) for a in audio)
    video_codec = (video or {}).get("codec", "i420")
    clips = video_clips(participants, video) if video else []  # rendered now, not while streaming

    calls: list[Call] = []
    for n, call_id in enumerate(call_ids):
        gw = GatewayConnection(target, call_id, gateway_id=f"bench-gw-{n}", queue_size=2000)
        try:
            await asyncio.wait_for(gw.open(), 30)
        except Exception as exc:  # the server (or a proxy) did not take this call: say which, and why
            emit("error", message=f"call {n + 1} of {len(call_ids)} ({call_id}) was not opened: {exc!r}")
            return
        pids = [f"p{i + 1}" for i in range(participants)]
        for i, pid in enumerate(pids):
            await gw.join(pid, f"Participant {i + 1}", audio=codec, sample_rate=rate, channels=1,
                          video=video_codec if video else None,
                          width=video["width"] if video else 0, height=video["height"] if video else 0)
        calls.append(Call(call_id, gw, pids))
    emit("ready", ticks=ticks)

    if await read_line(GO_TIMEOUT_S) != "go":
        emit("error", message="expected go")
        return

    cpu0 = time.process_time()
    start_us = int(time.time() * 1e6)
    t0 = time.monotonic()
    slips: list[float] = []
    backlog_max = 0  # the most requests any call had queued and not yet taken by gRPC (sampled)
    next_video = 0
    fps = video["fps"] if video else 0.0
    for k in range(ticks):
        due = t0 + k * TICK_S
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        slips.append(time.monotonic() - due)
        if k and k % BACKLOG_SAMPLE_TICKS == 0:  # (before the first tick the queues still hold the joins)
            backlog_max = max(backlog_max, max(call.gw.queued for call in calls))
        batch = ticks_to_send(k, ticks, ticks_per_batch)
        for call in calls:  # the batch's ticks of each call's participants in one media_batch
            if not batch:
                break
            await call.gw.send(pb.StreamMediaRequest(media_batch=pb.MediaBatch(audio=[
                pb.AudioFrame(participant_id=pid, sequence=j + 1, timestamp_us=start_us + j * 20_000,
                              data=audio[i][j])
                for j in batch for i, pid in enumerate(call.pids)])))
            for pid in call.pids:
                call.sent[pid] += len(batch)
        while video and next_video / fps < (k + 1) * TICK_S:
            t = next_video / fps
            vts = start_us + round(t * 1e6)
            frames = [clip[next_video % len(clip)] for clip in clips]
            for call in calls:
                await call.gw.send(pb.StreamMediaRequest(media_batch=pb.MediaBatch(video=[
                    pb.VideoFrame(participant_id=pid, sequence=next_video + 1, timestamp_us=vts,
                                  data=frames[i][0], width=video["width"], height=video["height"],
                                  keyframe=frames[i][1])
                    for i, pid in enumerate(call.pids)])))
                for pid in call.pids:
                    call.sent[pid] += 1
            next_video += 1
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    slips.sort()
    emit("streamed", wall_s=wall, media_s=ticks * TICK_S, cpu_s=cpu,
         slip_max_ms=1000 * slips[-1], slip_p99_ms=1000 * slips[int(0.99 * (len(slips) - 1))],
         backlog_max_ms=backlog_ms(backlog_max, ticks_per_batch, fps))

    deadline = time.monotonic() + ACK_WAIT_S
    while time.monotonic() < deadline and not all(c.settled() for c in calls):
        await asyncio.sleep(0.1)
    report = []
    for call in calls:
        ack = call.last_ack()
        rejected: dict[str, int] = {}
        for _, (_, reasons) in ack.items():
            for reason, count in reasons.items():
                rejected[reason] = rejected.get(reason, 0) + count
        report.append({
            "call": call.call_id,
            "sent": sum(call.sent.values()),
            "received": sum(r for r, _ in ack.values()),
            "rejected": rejected,
            "warnings": sum(1 for r in call.gw.responses if r.WhichOneof("message") == "warning"),
            "error": str(call.gw.error) if call.gw.error else "",
        })
    emit("acked", calls=report)

    async def end(call: Call) -> None:
        try:
            await call.gw.end(timeout=END_TIMEOUT_S)
        except Exception as exc:  # report, do not hang
            emit("warning", message=f"{call.call_id}: end failed: {exc!r}")
        await call.gw.close()

    await asyncio.gather(*(end(c) for c in calls))
    emit("done")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main(json.loads(sys.argv[1])))
