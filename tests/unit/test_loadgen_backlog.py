"""The load generator's write backlog (issue 11, row 9): how much media its calls queued that gRPC had not taken.

`send` only queues, so a generator whose event loop cannot write as fast as it sends keeps its schedule
(no slip) while its media falls behind: the backlog is what shows it, and a row that trusts the generator
must fail on it.
"""

from __future__ import annotations

import pytest

from bench.loadgen import backlog_ms
from bench.loadgen_capacity import Measurement
from bench.server_load import SLIP_LIMIT_MS
from callrec.v1 import media_pb2 as pb
from callrec_client.gateway import GatewayConnection


@pytest.mark.parametrize(("queued", "ticks_per_batch", "fps", "expected_ms"), [
    (0, 1, 0.0, 0.0),
    (5, 1, 0.0, 100.0),  # one request per 20 ms tick
    (5, 3, 0.0, 300.0),  # a request holds 3 ticks
    (13, 1, 15.0, 200.0),  # 50 audio + 15 video requests a second
])
def test_backlog_is_the_time_the_queued_requests_cover(queued: int, ticks_per_batch: int, fps: float,
                                                       expected_ms: float) -> None:
    assert backlog_ms(queued, ticks_per_batch, fps) == pytest.approx(expected_ms)


def test_a_backlog_over_the_limit_makes_the_generator_the_bottleneck() -> None:
    m = Measurement(calls=100, seconds=18.0, sent=10, received=10)
    m.backlog_max_ms = SLIP_LIMIT_MS
    assert m.bottleneck_reasons() == []
    m.backlog_max_ms = SLIP_LIMIT_MS + 60
    (reason,) = m.bottleneck_reasons()
    assert "fell 160 ms behind" in reason and f"limit {SLIP_LIMIT_MS:.0f} ms" in reason


async def test_queued_counts_what_grpc_has_not_taken() -> None:
    """Before the stream is opened nothing takes the queue: each `send` stays queued (no traffic: the
    channel to the loopback address is never used)."""
    gw = GatewayConnection("127.0.0.1:9", "call-1", queue_size=10)
    try:
        assert gw.queued == 0
        for _ in range(3):
            await gw.send(pb.StreamMediaRequest(end=pb.StreamEnd(reason="x")))
        assert gw.queued == 3
    finally:
        await gw.channel.close()
