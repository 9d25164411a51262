"""Rows: control RPC latency p50/p99, and StopRecording -> RecordingFileStatusUpdated.

A fresh `callrec serve --clock realtime`; one 10-person call streams in real time from
`bench.loadgen` (a separate process) and is recorded as mixed mp3 to the local store. Against
that live recording, one client on loopback sends, one at a time:

* GetRecordingState x `gets` (500 by default), then PauseRecording + ResumeRecording x `pairs`
  (each a state change: SQLite write + event published); latency = client-side round trip;
* then `stops` times: (re)start a recording of the call, let it record ~2 s, subscribe to its
  RecordingFileStatusUpdated events (from the oldest, so none can be missed), call
  StopRecording and time until the event arrives (the chunk is finalised, stored and
  announced; the local store is a file copy, so remote stores add their upload time).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

from bench.common import Row, Section, median, percentile, server
from bench.server_load import LoadGen
from callrec.v1 import recording_pb2 as rpb
from callrec_client import AsyncCallrecClient, CallrecError

FILE_STATUS = "Microsoft.Communication.RecordingFileStatusUpdated"
RECORD = {"content_type": "audio", "channel_type": "mixed", "format": "mp3"}


async def _start(client: AsyncCallrecClient, call_id: str) -> rpb.Recording:
    """Start a recording of the call, waiting (bounded) for the previous one to let go of it."""
    for _ in range(100):
        try:
            return await client.start_recording(call_id, **RECORD)
        except CallrecError:
            await asyncio.sleep(0.1)
    return await client.start_recording(call_id, **RECORD)


async def _stop_to_file(client: AsyncCallrecClient, recording_id: str) -> tuple[float, float]:
    """(StopRecording round trip, StopRecording -> RecordingFileStatusUpdated received), seconds."""
    got = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        async for _event in client.subscribe_events(event_types=[FILE_STATUS], recording_id=recording_id,
                                                   from_oldest=True):
            if not got.done():
                got.set_result(time.perf_counter())
            return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)  # the subscription is open (it would replay the event anyway)
    start = time.perf_counter()
    await client.stop_recording(recording_id)
    rpc = time.perf_counter() - start
    try:
        arrived = await asyncio.wait_for(got, 60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return rpc, arrived - start


async def run(quick: bool, codec: str, log: Callable[[str], None]) -> Section:
    gets, pairs, stops = (100, 20, 2) if quick else (500, 100, 5)
    seconds = 14.0 if quick else 30.0
    section = Section()
    log(f"control: {gets} GetRecordingState, {pairs} Pause+Resume, {stops} StopRecording against a live "
        f"10-person call ({codec}, real time) recorded to mixed mp3")
    with server("--clock", "realtime") as srv:
        call_id = f"bench-ctl-{uuid.uuid4().hex[:6]}"
        gen = await LoadGen.start({"target": srv.target, "calls": [call_id], "participants": 10,
                                   "seconds": seconds, "codec": codec, "video": None})
        try:
            async with AsyncCallrecClient(srv.target) as client:
                rec = await _start(client, call_id)
                await gen.go()
                await asyncio.sleep(1.0)
                lat: dict[str, list[float]] = {"get": [], "pause": [], "resume": []}
                for _ in range(gets):
                    t = time.perf_counter()
                    await client.get_recording_state(rec.recording_id)
                    lat["get"].append(time.perf_counter() - t)
                for _ in range(pairs):
                    t = time.perf_counter()
                    await client.pause_recording(rec.recording_id)
                    lat["pause"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    await client.resume_recording(rec.recording_id)
                    lat["resume"].append(time.perf_counter() - t)
                stop_rpc: list[float] = []
                to_file: list[float] = []
                for i in range(stops):
                    if i:
                        rec = await _start(client, call_id)
                    await asyncio.sleep(2.0)
                    rpc, total = await _stop_to_file(client, rec.recording_id)
                    stop_rpc.append(rpc)
                    to_file.append(total)
        finally:
            await gen.close()

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * percentile(values, q):.1f}"

    for kind, values in lat.items():
        log(f"  {kind:<7} n={len(values):>4}  p50 {ms(values, 50)} ms  p99 {ms(values, 99)} ms  "
            f"max {1000 * max(values):.1f} ms")
    control = lat["pause"] + lat["resume"]
    section.rows.append(Row("5a", "control RPC latency p50 / p99: GetRecordingState",
                            f"{ms(lat['get'], 50)} / {ms(lat['get'], 99)} ms",
                            f"{gets} sequential calls on loopback against a live recording", goal="p99 <= 5 ms"))
    section.rows.append(Row("5b", "control RPC latency p50 / p99: Pause + Resume",
                            f"{ms(control, 50)} / {ms(control, 99)} ms",
                            f"{pairs} pairs; each is a state change (SQLite + event)"))
    log("  stop -> file status (s): " + ", ".join(f"{v:.3f}" for v in to_file)
        + "; StopRecording RPC (s): " + ", ".join(f"{v:.3f}" for v in stop_rpc))
    section.rows.append(Row("6", "StopRecording -> RecordingFileStatusUpdated",
                            f"{1000 * median(to_file):.0f} ms (max {1000 * max(to_file):.0f})",
                            f"median of {stops}, ~2 s mp3 recordings, local store, event received by a subscriber"))
    return section
