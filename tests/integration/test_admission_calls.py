"""Admission's per-call cost on a real server (`--capacity-calls`, CALLREC_CAPACITY_CALLS): calls are refused by
their number even when their participants are few, and an ended call gives its share back."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from callrec_client.client import CallrecError
from callrec_client.gateway import GatewayConnection


async def open_call(target: str, server_call_id: str) -> GatewayConnection:
    gateway = GatewayConnection(target, server_call_id, gateway_id=f"gw-{server_call_id}")
    await gateway.open()
    await gateway.join("p1", "p1", audio="pcm16le", sample_rate=16_000, channels=1)
    return gateway


async def test_calls_are_refused_by_their_number_and_admitted_again_when_one_ends(make_server) -> None:
    # 3 calls of capacity, the ceiling at 80 %: a third call would make 100 %, refused; participants cost nothing
    server = make_server("--admission-ceiling", "0.8", "--reconnect-grace", "0",
                         env={"CALLREC_CAPACITY_CALLS": "3"})
    prefix = uuid.uuid4().hex[:8]
    first = await open_call(server.target, f"{prefix}-1")
    second = await open_call(server.target, f"{prefix}-2")
    for pid in ("p2", "p3", "p4"):  # participants of admitted calls are not what this capacity counts
        await second.join(pid, pid, audio="pcm16le", sample_rate=16_000, channels=1)
    await asyncio.sleep(0.3)
    refused = GatewayConnection(server.target, f"{prefix}-3", gateway_id="gw-3")
    with pytest.raises(CallrecError) as caught:
        await refused.open()
    await refused.close()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    for fragment in ("this node is full", "a new call would take it to 100%", "5 audio participants (not costed)",
                     "2 calls of 3", "admission_ceiling"):
        assert fragment in caught.value.details, caught.value.details
    # one call ends: its share is free again, and a new call is admitted
    await first.end()
    await first.close()
    third = None
    for _ in range(50):
        try:
            third = await open_call(server.target, f"{prefix}-4")
            break
        except CallrecError as exc:  # the ended call is removed just after its stream closes
            assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            await asyncio.sleep(0.1)
    assert third is not None, "a call ended, yet a new one is still refused"
    await third.close()
    await second.close()
