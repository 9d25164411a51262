"""Row 2b: the event loop's CPU per Opus packet, decoded on the loop or handed to a decode worker.

What `--decode-workers` trades: libopus leaves the loop thread, pickling and pipe reads come in.
Both sides decode the same packets (the load generator's 48 kHz hybrid Opus tones, to 16 kHz) as
`CallMedia` asks for them: every tick, each of `CALLS` calls asks for its 10 participants' packets
at once, the calls' requests in one turn of the loop. The figure is the loop thread's own CPU
(`time.thread_time`) per packet; on the worker's side the worker process's CPU is given too.

    python -m bench --only 2      # with the rest of the audio rows
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bench.common import Row, Section, proc_cpu

CALLS = 20
PARTICIPANTS = 10


async def _loop_cpu_per_packet(workers: int, ticks: int) -> tuple[float, float]:
    """(loop thread µs per packet, worker processes' µs per packet) over `ticks` ticks of `CALLS` calls."""
    from callrec.core.model import AudioEncoding, AudioFormat
    from callrec.media.decode import PyAVAudioCodecs
    from callrec.media.decode_pool import DecodePool
    from callrec_client.simulator import participant_audio

    fmt = AudioFormat(AudioEncoding.OPUS, 48_000, 1)
    packets = participant_audio(0, fmt, 2.0, speech=False)
    pool = DecodePool(workers)
    codecs = PyAVAudioCodecs(decode_pool=pool)
    decoders = [[codecs.decoder(fmt) for _ in range(PARTICIPANTS)] for _ in range(CALLS)]

    async def call_tick(call: int, tick: int) -> None:
        items = [(d, packets[tick % len(packets)]) for d in decoders[call]]
        if workers:
            await pool.decode(items)
        else:
            for decoder, packet in items:
                decoder.decode(packet)

    try:
        await asyncio.gather(*(call_tick(c, 0) for c in range(CALLS)))  # workers started, decoders made
        worker_cpu0 = sum(proc_cpu(pid) for pid in pool.pids)
        cpu0 = time.thread_time()
        for tick in range(1, ticks + 1):
            await asyncio.gather(*(call_tick(c, tick) for c in range(CALLS)))
        cpu = time.thread_time() - cpu0
        worker_cpu = sum(proc_cpu(pid) for pid in pool.pids) - worker_cpu0
    finally:
        await pool.close()
    n = CALLS * PARTICIPANTS * ticks
    return 1e6 * cpu / n, 1e6 * worker_cpu / n


def run(quick: bool, log: Callable[[str], None]) -> Section:
    ticks = 100 if quick else 500
    log(f"decode offload: {CALLS} calls x {PARTICIPANTS} Opus participants, {ticks} ticks, "
        "on the loop and via 1 worker")
    here, _ = asyncio.run(_loop_cpu_per_packet(0, ticks))
    loop_side, worker_side = asyncio.run(_loop_cpu_per_packet(1, ticks))
    log(f"  on the loop: {here:.1f} µs per packet; with a worker: loop {loop_side:.1f} µs, worker {worker_side:.1f} µs")
    section = Section()
    section.rows.append(Row(
        "2b", "event-loop CPU per Opus packet: decoded on the loop / via the decode worker",
        f"{here:.1f} / {loop_side:.1f} µs",
        f"{CALLS} calls x {PARTICIPANTS} participants ticking together, {ticks} ticks, 48 kHz hybrid Opus to 16 kHz; "
        f"the worker process spent {worker_side:.1f} µs per packet (libopus, unpickling, pipes)",
    ))
    return section
