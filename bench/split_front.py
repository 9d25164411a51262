"""The control/media split's best case, measured before building it (issue 11: control RPC p99 <= 5 ms at 800).

`python -m bench.split_front [--participants 800] [--seconds 20] [--runs 2]` runs row 1's step (10-person
Opus calls, mixed mp3, the control probe of `bench.server_load`: one GetRecordingState every 250 ms)
against a fresh `callrec serve`, alternately

* **straight**: the load generator and the probe talk to the server, as in `make bench`;
* **front**: both talk to a relay process on another port (this module's `--serve`), which answers
  GetRecordingState from its own memory (the server's answer for that recording, fetched when the
  recording starts and refreshed every second in the background) and relays every other RPC, the media
  streams included, message for message to the server as raw bytes.

The front is what the split would put on the public port: a process that terminates gRPC and answers
control RPCs from state it holds, while the media work runs in another process. It is a pessimistic
copy: it relays the streams over a second gRPC connection (the split would hand them to a media
process through a pipe, for less CPU), and it is not a product feature (it answers state up to a second
old and never writes any). What it measures is how fast a process with no media work can answer on
this machine while the media load runs beside it, i.e. the most the split can give.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import bench  # noqa: F401  (sys.path)
from bench.common import percentile, proc_cpu, server

GET_STATE = "/callrec.v1.RecordingService/GetRecordingState"
START = "/callrec.v1.RecordingService/StartRecording"
STREAM_MEDIA = "/callrec.v1.MediaService/StreamMedia"
STREAMING_METHODS = ("/callrec.v1.EventService/SubscribeEvents", "/callrec.v1.ContentService/DownloadContent")
REFRESH_S = 1.0
MAX_MESSAGE = 64 << 20


def _raw(data: bytes) -> bytes:
    return data


def _metadata(context: Any) -> list[tuple[str, str]]:
    """The caller's metadata minus gRPC's pseudo-headers: what the relayed call carries on."""
    return [(k, v) for k, v in context.invocation_metadata() if not k.startswith(":")]


class RelayFront:
    """The generic handler of the front: GetRecordingState from memory, the rest relayed as raw bytes."""

    def __init__(self, backend: Any) -> None:
        import grpc

        self._grpc = grpc
        self.backend = backend
        self.states: dict[bytes, bytes] = {}  # serialized GetRecordingStateRequest -> the server's last answer
        self._refreshers: set[asyncio.Task[None]] = set()

    def service(self, details: Any) -> Any:
        grpc = self._grpc
        method: str = details.method
        if method == STREAM_MEDIA:
            return grpc.stream_stream_rpc_method_handler(self._relay_stream(method))
        if method == GET_STATE:
            return grpc.unary_unary_rpc_method_handler(self._get_state)
        if method in STREAMING_METHODS:
            return None  # not needed by the step: UNIMPLEMENTED
        return grpc.unary_unary_rpc_method_handler(self._relay_unary(method))

    def _unary(self, method: str) -> Any:
        return self.backend.unary_unary(method, request_serializer=_raw, response_deserializer=_raw)

    def _relay_unary(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        call = self._unary(method)

        async def relay(request: bytes, context: Any) -> bytes:
            answer: bytes = await call(request, metadata=_metadata(context))
            if method == START:
                await self._hold(answer)
            return answer

        return relay

    async def _hold(self, start_answer: bytes) -> None:
        """Keep the new recording's state from now on (as a front owning the recordings would)."""
        from callrec.v1 import recording_pb2 as rpb

        recording_id = rpb.StartRecordingResponse.FromString(start_answer).recording.recording_id
        request = rpb.GetRecordingStateRequest(recording_id=recording_id).SerializeToString()
        if request not in self.states:
            self.states[request] = await self._unary(GET_STATE)(request)
            task = asyncio.get_running_loop().create_task(self._refresh(request))
            self._refreshers.add(task)

    async def _refresh(self, request: bytes) -> None:
        call = self._unary(GET_STATE)
        while True:
            await asyncio.sleep(REFRESH_S)
            with contextlib.suppress(self._grpc.RpcError):
                self.states[request] = await call(request)

    async def _get_state(self, request: bytes, context: Any) -> bytes:
        held = self.states.get(request)
        if held is not None:
            return held
        answer: bytes = await self._unary(GET_STATE)(request, metadata=_metadata(context))
        return answer

    def _relay_stream(self, method: str) -> Callable[[AsyncIterator[bytes], Any], Any]:
        stream = self.backend.stream_stream(method, request_serializer=_raw, response_deserializer=_raw)

        async def relay(requests: AsyncIterator[bytes], context: Any) -> None:
            call = stream(metadata=_metadata(context))

            async def upstream() -> None:
                async for message in requests:
                    await call.write(message)
                await call.done_writing()

            up = asyncio.get_running_loop().create_task(upstream())
            async for answer in call:
                await context.write(answer)
            await up

        return relay


async def serve(listen: str, backend_target: str) -> None:
    """Run the front on `listen`, relaying to `backend_target`; prints `ready` once it accepts calls."""
    import grpc

    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_concurrent_streams", 4000)]
    backend = grpc.aio.insecure_channel(backend_target, options=options[:1])
    front = grpc.aio.server(options=options)
    front.add_generic_rpc_handlers([RelayFront(backend)])
    front.add_insecure_port(listen)
    await front.start()
    print("ready", flush=True)
    await front.wait_for_termination()


def start_front(port: int, backend_target: str) -> subprocess.Popen[str]:
    """The relay front in a process of its own on loopback `port`, once it accepts calls."""
    command = [sys.executable, "-m", "bench.split_front", "--serve", f"127.0.0.1:{port}", backend_target]
    front = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert front.stdout is not None
    if front.stdout.readline().strip() != "ready":
        front.kill()
        raise RuntimeError(f"the relay front did not start (exit {front.wait()})")
    return front


async def measure(participants: int, seconds: float, runs: int, port: int) -> list[dict[str, Any]]:
    """Alternate straight and front steps of row 1's load; one result dict per step."""
    from bench.audio_capacity import RAMP_LIMITS
    from bench.loadgen_capacity import NullSinkProcess

    floor = await NullSinkProcess.start()  # the floor: the same probe of a grpc.aio server without callrec code
    try:
        return await _alternate(participants, seconds, runs, port, RAMP_LIMITS, floor.target)
    finally:
        await floor.stop()


async def _alternate(participants: int, seconds: float, runs: int, port: int, limits: dict[str, int],
                     floor_target: str) -> list[dict[str, Any]]:
    from bench.server_load import run_step

    results: list[dict[str, Any]] = []
    for run in range(runs):
        for mode in ("straight", "front"):
            with server("--clock", "realtime", limits=limits) as srv:
                assert srv.proc is not None
                target, front = srv.target, None
                if mode == "front":
                    front = start_front(port, srv.target)
                    target = f"127.0.0.1:{port}"
                try:
                    front_cpu0, t0 = (proc_cpu(front.pid) if front else 0.0), time.monotonic()
                    step = await run_step(types.SimpleNamespace(proc=srv.proc, target=target),  # type: ignore[arg-type]
                                          participants // 10, seconds, floor_target=floor_target)
                    front_pct = 100 * (proc_cpu(front.pid) - front_cpu0) / (time.monotonic() - t0) if front else 0.0
                finally:
                    if front is not None:
                        front.kill()
                        front.wait()
            probes = step.probe_ms
            results.append({
                "run": run + 1, "mode": mode, "passed_frames": not any("frames" in r for r in step.reasons),
                "summary": step.summary(), "n": len(probes), "front_pct": front_pct,
                **{f"p{q}": percentile(probes, q) for q in (50, 90, 99)}, "max": max(probes, default=float("nan")),
                "floor_p50": percentile(step.floor_probe_ms, 50), "floor_p99": percentile(step.floor_probe_ms, 99),
            })
            print(results[-1]["summary"], file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.split_front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=800, help="row 1's load, in 10-person calls (800)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds a step streams (20)")
    parser.add_argument("--runs", type=int, default=2, help="pairs of steps, straight then front (2)")
    parser.add_argument("--port", type=int, default=50999, help="the front's loopback port (50999)")
    parser.add_argument("--serve", nargs=2, metavar=("LISTEN", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.install()
        asyncio.run(serve(*args.serve))
        return
    results = asyncio.run(measure(args.participants, args.seconds, args.runs, args.port))
    print(f"control probe (GetRecordingState every 250 ms) at {args.participants} participants, ms")
    print(f"{'run':>3}  {'mode':<8}  {'probes':>6}  {'p50':>6}  {'p90':>6}  {'p99':>6}  {'max':>6}  "
          f"{'front CPU':>9}  {'floor p50/p99':>13}  frames")
    for r in results:
        print(f"{r['run']:>3}  {r['mode']:<8}  {r['n']:>6}  {r['p50']:>6.1f}  {r['p90']:>6.1f}  {r['p99']:>6.1f}  "
              f"{r['max']:>6.1f}  {r['front_pct']:>8.0f}%  {r['floor_p50']:>6.1f}/{r['floor_p99']:<6.1f}  "
              f"{'all on time' if r['passed_frames'] else 'LATE/LOST'}")
    print("floor: the same probe, right after each, of bench.null_sink (a grpc.aio server without callrec code)")


if __name__ == "__main__":
    main()
