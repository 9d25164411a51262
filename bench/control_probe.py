"""A control client in a process of its own: GetRecordingState every `--interval` seconds, each one timed.

    python -m bench.control_probe --target 127.0.0.1:50060 --recording ID --seconds 18 [--interval 0.1]

prints `{"event": "ready"}` once connected and, at the end, `{"event": "done", "ms": [...], "errors": [...]}` on
stdout, one JSON object a line. Stops early at EOF on stdin.

Why a process: `bench.server_load.run_step`'s own probe shares the bench's process and the machine's loaded
cores, so it pays its own wake-ups beside the server's. Row 8g runs this one under `chrt -r N` (real-time
priority, like the control path it measures) as the stand-in for a client on another machine, whose wake-ups
the load does not delay. Only loopback targets are ever probed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from bench import ROOT
from callrec.config import is_loopback
from callrec_client import AsyncCallrecClient, CallrecError

READY_S = 30.0


async def probe(target: str, recording_id: str, seconds: float, interval: float) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(1 << 16) else None)
    async with AsyncCallrecClient(target) as client:
        with contextlib.suppress(CallrecError):
            await client.get_recording_state(recording_id)  # the channel's connection, not timed
        print(json.dumps({"event": "ready"}), flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.is_set():
            start = time.perf_counter()
            try:
                await client.get_recording_state(recording_id)
                latencies.append(1000 * (time.perf_counter() - start))
            except CallrecError as exc:
                errors.append(f"{exc.code.name}: {exc.details}"[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    return {"event": "done", "ms": [round(v, 3) for v in latencies], "errors": errors[:20]}


class ProbeProcess:
    """`python -m bench.control_probe` as a child, at SCHED_RR `priority` (`chrt -r`; 0: normal priority)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, target: str, recording_id: str, seconds: float, priority: int = 0,
                    interval: float = 0.1) -> ProbeProcess:
        """Started and connected (RuntimeError with its stderr when it could not: `chrt` not permitted...)."""
        cmd = [sys.executable, "-m", "bench.control_probe", "--target", target, "--recording", recording_id,
               "--seconds", str(seconds), "--interval", str(interval)]
        if priority:
            cmd = ["chrt", "-r", str(priority), *cmd]
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), READY_S)
        if not line.startswith(b'{"event": "ready"'):
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(f"control probe did not start: {err[-500:] or line!r}")
        return cls(proc)

    async def finish(self, timeout: float = 30.0) -> tuple[list[float], list[str]]:
        """Stop it (EOF on stdin) and return (latencies in ms, errors)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            out, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return [], ["control probe did not stop in time"]
        done = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
        return list(done.get("ms", [])), list(done.get("errors", ["control probe printed nothing"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT on loopback")
    parser.add_argument("--recording", required=True, help="the recording id to read")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    if not is_loopback(args.target.rpartition(":")[0].strip("[]")):
        parser.error(f"--target must be a loopback address; got {args.target}")
    print(json.dumps(asyncio.run(probe(args.target, args.recording, args.seconds, args.interval))), flush=True)


if __name__ == "__main__":
    main()
