"""The shipped HAProxy config carries a gateway's many calls on its one connection.

A gateway process opens a `GatewayConnection` per call; gRPC pools their channels' connections per target, so
every call is an HTTP/2 stream on one connection to the proxy. HAProxy allows 100 streams per connection unless
told otherwise: the 101st call's `open` waited for a free stream and timed out (found by `make bench ARGS="--only
cluster"`: 128 calls from one load generator through 2 nodes). Real parts: Debian's haproxy with
deploy/haproxy.cfg (rendered with free ports) in front of one `callrec serve` on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.cluster import HAPROXY_TEMPLATE, HaproxyProcess, render_haproxy, wait_routed
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, free_port, unique

#: More calls than HAProxy's default of 100 streams on one connection.
CALLS = 150


@pytest.fixture
def proxy_target(make_server: Callable[..., ServerProcess], tmp_path: Path) -> Iterator[str]:
    """One node behind deploy/haproxy.cfg; the proxy's address once it routes."""
    node = make_server("--clock", "media")
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(render_haproxy(HAPROXY_TEMPLATE.read_text(), port, [("node1", node.port, 0)]))
    proxy = HaproxyProcess(config, tmp_path / "haproxy.log").start()
    target = f"127.0.0.1:{port}"
    try:
        wait_routed(target, proxy, nodes=1)
        yield target
    finally:
        proxy.stop()


async def test_one_gateway_process_opens_more_calls_than_an_h2_connection_allows_by_default(proxy_target: str) -> None:
    gateways = [GatewayConnection(proxy_target, unique(f"streams-{n}"), gateway_id=f"gw-{n}") for n in range(CALLS)]
    opened: list[GatewayConnection] = []
    try:
        for gw in gateways:  # one after the other, as the load generator does: each open holds its stream
            await asyncio.wait_for(gw.open(), 10)
            opened.append(gw)
        # each was answered `opened` by the node, for its own call, while all the others stayed open
        assert [gw.opened.server_call_id for gw in opened] == [gw.server_call_id for gw in gateways]
        assert not any(gw.closed.is_set() for gw in opened)
    finally:
        await asyncio.gather(*(gw.close() for gw in opened), return_exceptions=True)
