"""The node registry and call ownership on a real PostgreSQL (cluster mode, SPEC §8).

Several `PgNodeRegistry` instances, each with its own connection pool, stand for nodes: they race
for calls, let leases lapse and release calls, and the database decides. What must hold: a call
never has two owners, a dead node's call goes to the next node that claims it, a live node's call
goes to nobody else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from callrec.core.errors import CallrecError, FailedPrecondition
from callrec.state.pg_nodes import PgNodeRegistry
from callrec.state.postgres import PostgresDatabase

Factory = Callable[..., "asyncio.Future[PgNodeRegistry]"]


@pytest.fixture
async def make_node(postgres_url: str) -> AsyncIterator[Callable[..., object]]:
    opened: list[PostgresDatabase] = []

    async def make(node_id: str, lease_s: float = 15.0) -> PgNodeRegistry:
        db = PostgresDatabase(postgres_url, max_size=20)
        await db.open()
        opened.append(db)
        node = PgNodeRegistry(db, node_id, f"127.0.0.1:{5000 + len(opened)}", lease_s=lease_s)
        await node.register()
        return node

    yield make
    for db in opened:
        await db.close()


async def test_nodes_racing_for_the_same_calls_get_one_owner_each(make_node) -> None:
    nodes = [await make_node(f"node-{i}") for i in range(3)]
    calls = [f"call-{i}" for i in range(20)]
    attempts = [(node, call) for call in calls for node in nodes for _ in range(5)]

    async def attempt(node: PgNodeRegistry, call: str) -> tuple[str, str, str | None]:
        try:
            await node.claim(call)
            return call, node.node_id, None
        except FailedPrecondition as exc:
            return call, node.node_id, exc.message

    results = await asyncio.gather(*(attempt(n, c) for n, c in attempts))
    for call in calls:
        winners = {node for c, node, refused in results if c == call and refused is None}
        assert len(winners) == 1, (call, winners)
        (winner,) = winners
        assert await nodes[0].owner(call) == winner
        for c, node, refused in results:
            if c == call and node != winner:
                assert refused is not None and f"node {winner!r}" in refused and "which is alive" in refused
    # a node's repeated claim of its own call is fine (a gateway reconnecting to it)
    owner_id = await nodes[0].owner("call-0")
    owner = next(n for n in nodes if n.node_id == owner_id)
    await owner.claim("call-0")


async def test_a_dead_nodes_call_goes_to_the_next_claimant_and_never_back(make_node) -> None:
    a = await make_node("node-a", lease_s=1.0)
    b = await make_node("node-b", lease_s=30.0)
    await a.claim("call-1")
    with pytest.raises(FailedPrecondition, match="node 'node-a'"):
        await b.claim("call-1")
    assert [(n.node_id, n.alive) for n in await b.nodes()] == [("node-a", True), ("node-b", True)]
    await asyncio.sleep(1.3)  # a never heartbeats: its lease lapses
    assert [(n.node_id, n.alive) for n in await b.nodes()] == [("node-a", False), ("node-b", True)]
    await b.claim("call-1")
    assert await a.owner("call-1") == "node-b"
    await a.heartbeat()  # a comes back to life: the call stays with b
    with pytest.raises(FailedPrecondition, match="node 'node-b'"):
        await a.claim("call-1")


async def test_only_the_owner_releases_and_a_stopped_node_gives_its_calls_up(make_node) -> None:
    a = await make_node("node-a")
    b = await make_node("node-b")
    a.start()
    await a.claim("call-1")
    await b.release("call-1")  # not b's: nothing happens
    assert await b.owner("call-1") == "node-a"
    await a.release("call-1")
    assert await b.owner("call-1") is None
    await a.claim("call-2")
    await a.stop()  # drained: its lease ends now, not in 15 s
    await b.claim("call-2")
    assert await b.owner("call-2") == "node-b"


async def test_a_node_needs_an_id_and_a_positive_lease(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url)
    with pytest.raises(ValueError, match="node_id"):
        PgNodeRegistry(db, "", "127.0.0.1:1")
    with pytest.raises(ValueError, match="lease_s"):
        PgNodeRegistry(db, "n", "127.0.0.1:1", lease_s=0)
    assert not issubclass(FailedPrecondition, type(None)) and issubclass(FailedPrecondition, CallrecError)
