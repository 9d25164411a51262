"""`callrec_playout_delay_max_seconds`: how much media a kill -9 could lose now, on /metrics.

Media waiting out the playout delay is in memory only, and the delay grows when the server is
overloaded; an operator (and the soak benchmark) reads this gauge to see it. Through a real
server on the real-time clock: 0 without a call, the configured delay while a call streams,
0 again once the call has ended.
"""

from __future__ import annotations

import asyncio
import time

from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, free_port, unique
from tests.integration.test_call_end_cancelled import scrape

FRAME = b"\x00\x00" * 320  # 20 ms of 16 kHz PCM16LE silence


async def _gauge_until(port: int, wanted: float, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = (await asyncio.to_thread(scrape, port))["callrec_playout_delay_max_seconds"]
        if value == wanted or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_the_playout_delay_gauge_follows_the_calls(make_server) -> None:
    port = free_port()
    server: ServerProcess = make_server("--clock", "realtime", "--playout-delay-ms", "300", "--reconnect-grace", "0",
                                        "--metrics-listen", f"127.0.0.1:{port}")
    assert await _gauge_until(port, 0.0) == 0.0, "no call: nothing held"
    call_id = unique("gauge")
    async with GatewayConnection(server.target, call_id, gateway_id="gw") as gw:
        await gw.join("alice")
        for seq in range(1, 51):  # a second of audio, in real time
            await gw.audio("alice", seq, seq * 20_000, FRAME)
            await asyncio.sleep(0.02)
        held = (await asyncio.to_thread(scrape, port))["callrec_playout_delay_max_seconds"]
        # 0.3 s configured; an overloaded test machine may have added some (never less than the base)
        assert 0.3 <= held <= 2.0, held
        await gw.end("hangup")
    assert await _gauge_until(port, 0.0) == 0.0, "the call ended: its delay no longer counts"
