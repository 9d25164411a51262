"""Row 2c: what one gRPC message costs the server before callrec does anything with it.

A gateway's `StreamMedia` messages arrive through grpc.aio, and the transport has a fixed price per
message, whatever it holds: gRPC's own threads read the socket and parse HTTP/2, its poller thread
hands the completion to the event loop, and the loop wakes the stream's reader. This row measures
that price alone: a server process with callrec's `MediaService` proto, uvloop and a servicer that
only counts what it reads (no call, no jitter buffer, no decoding), and a client process streaming
on `STREAMS` streams, one `media_batch` per stream every 20 ms, as the load generator does for 1:1
calls (2 frames a message) and 10-person calls (10 frames). The figures are the server process's
CPU (`/proc`, all threads) per message received, and the event loop thread's part of it.

Why it matters: at one message per call per 20 ms tick, the transport's price is paid 50 times a
second per call, so a 1:1 call pays it per 2 frames. A gateway that puts several ticks in one
`media_batch` (SPEC §1 allows any number of frames) divides it (row 1e).

    python -m bench --only 2      # with the rest of the audio rows
    python -m bench.grpc_transport serve     # the server side alone (prints its port)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

from bench.common import Row, Section, proc_cpu, thread_cpu

#: Streams (calls) the client keeps open, each sending one message per tick.
STREAMS = 50
TICK_S = 0.02
#: Frames per message: a 1:1 call's tick, a 10-person call's tick.
SHAPES = (2, 10)
FRAME_BYTES = 80  # an Opus packet of a 20 ms tone at ~32 kbit/s


async def _serve() -> None:
    import grpc

    from callrec.v1 import media_pb2 as pb
    from callrec.v1 import media_pb2_grpc

    class CountingMedia(media_pb2_grpc.MediaServiceServicer):
        """Reads every message of every stream and does nothing else."""

        def __init__(self) -> None:
            self.messages = 0

        async def StreamMedia(
            self, request_iterator: AsyncIterator[pb.StreamMediaRequest], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[pb.StreamMediaResponse]:
            async for _ in request_iterator:
                self.messages += 1
            return
            yield  # a generator: the response stream stays empty

    server = grpc.aio.server()
    media_pb2_grpc.add_MediaServiceServicer_to_server(CountingMedia(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench closes stdin
    await server.stop(None)


async def _stream(port: int, frames: int, seconds: float) -> int:
    """Send one `frames`-frame batch per stream per tick for `seconds`; returns the messages sent."""
    import grpc

    from callrec.v1 import media_pb2 as pb
    from callrec.v1 import media_pb2_grpc

    data = os.urandom(FRAME_BYTES)
    message = pb.StreamMediaRequest(media_batch=pb.MediaBatch(audio=[
        pb.AudioFrame(participant_id=f"p{i + 1}", sequence=1, timestamp_us=0, data=data) for i in range(frames)]))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        calls = [stub.StreamMedia() for _ in range(STREAMS)]
        started, ticks = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            for call in calls:
                await call.write(message)
            ticks += 1
            await asyncio.sleep(max(0.0, started + ticks * TICK_S - time.monotonic()))
        for call in calls:
            await call.done_writing()
        for call in calls:
            async for _ in call:
                pass
    return ticks * STREAMS


def measure(frames: int, seconds: float) -> tuple[float, float, int]:
    """(server µs per message, of which the event loop thread's, messages) for `frames`-frame messages."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_transport", "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        asyncio.run(_stream(port, frames, 1.0))  # warm-up: connections, first messages
        cpu0, loop0 = proc_cpu(proc.pid), thread_cpu(proc.pid, proc.pid)
        messages = asyncio.run(_stream(port, frames, seconds))
        cpu, loop = proc_cpu(proc.pid) - cpu0, thread_cpu(proc.pid, proc.pid) - loop0
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return 1e6 * cpu / messages, 1e6 * loop / messages, messages


def run(quick: bool, log: Callable[[str], None]) -> Section:
    seconds = 3.0 if quick else 10.0
    parts = []
    for frames in SHAPES:
        total, loop, messages = measure(frames, seconds)
        log(f"2c: {frames}-frame messages: {messages} in {seconds:.0f} s, server {total:.0f} µs/message "
            f"(event loop {loop:.0f})")
        parts.append((frames, total, loop))
    value = " / ".join(f"{total:.0f}" for _, total, _ in parts) + " µs"
    detail = (f"server CPU per StreamMedia message received by grpc.aio + uvloop, no callrec code; {STREAMS} "
              f"streams x 50 messages/s of " + " and ".join(f"{f} frames" for f, _, _ in parts)
              + "; of it the event loop thread: " + " / ".join(f"{loop:.0f}" for _, _, loop in parts)
              + " µs, the rest gRPC's own threads. Paid per message: batch several ticks per message (row 1e)")
    return Section([Row("2c", "gRPC transport: server CPU per media message (2 / 10 frames)", value, detail)])


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        import uvloop

        uvloop.run(_serve())
    else:
        sys.exit("usage: python -m bench.grpc_transport serve   (the bench runs it; see the module docstring)")
