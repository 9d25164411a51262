"""EventService through a real server: RecordingStateChanged on every change, ACS JSON valid
against the schemas, filters, and resume with after_sequence exactly once."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from callrec.v1 import events_pb2 as epb
from callrec.v1 import events_pb2_grpc as epb_grpc
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import unique
from tests.integration.test_recording_service import wait_state

STATE_CHANGED = "Microsoft.Communication.RecordingStateChanged"


async def collect(client: AsyncCallrecClient, count: int, timeout: float = 10, **filters) -> list[epb.Event]:
    """The first `count` events of a subscription."""
    out: list[epb.Event] = []

    async def read() -> None:
        async for event in client.subscribe_events(**filters):
            out.append(event)
            if len(out) == count:
                return

    await asyncio.wait_for(read(), timeout)
    return out


async def test_state_changes_publish_valid_acs_events(make_server, validate_json):
    srv = make_server("--clock", "media")
    async with AsyncCallrecClient(srv.target) as client, GatewayConnection(
        srv.target, "call-ev", gateway_id="gw", call_id="corr-ev"
    ) as gw:
        rec = await client.start_recording("call-ev", content_type="audio", format="wav", operation_context="ctx")
        await client.pause_recording(rec.recording_id)
        await client.pause_recording(rec.recording_id)  # no-op: no event
        await client.resume_recording(rec.recording_id)
        await client.stop_recording(rec.recording_id)
        await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED)
        events = await collect(client, 4, from_oldest=True)
        assert [e.sequence for e in events] == [1, 2, 3, 4]  # from 1, no gaps
        states = []
        for event in events:
            assert event.event_type == STATE_CHANGED
            assert event.subject == f"/recording/call/corr-ev/serverCallId/call-ev/recordingId/{rec.recording_id}"
            doc = json.loads(event.json)
            validate_json("recording-state-changed", doc)
            data = doc["data"]
            assert doc["id"] == event.id and doc["type"] == STATE_CHANGED
            assert data["recordingId"] == rec.recording_id
            assert data["serverCallId"] == "call-ev"
            assert data["correlationId"] == "corr-ev"
            assert data["callConnectionId"] == gw.opened.call_connection_id
            assert data["operationContext"] == "ctx"
            assert data["recordingKind"] == "azureCommunicationServices"
            typed = event.recording_state_changed
            assert typed.recording_id == rec.recording_id and typed.correlation_id == "corr-ev"
            assert (typed.state == pb.RECORDING_STATE_ACTIVE) == (data["state"] == "active")
            states.append(data["state"])
        assert states == ["active", "inactive", "active", "inactive"]
        await gw.end()


async def test_correlation_id_defaults_to_server_call_id(server, validate_json):
    call_id = unique("call")
    async with AsyncCallrecClient(server.target) as client, GatewayConnection(server.target, call_id) as gw:
        sub = asyncio.ensure_future(collect(client, 1, server_call_id=call_id))
        await asyncio.sleep(0.3)
        rec = await client.start_recording(call_id, content_type="audio", format="wav")
        (event,) = await sub
        doc = json.loads(event.json)
        validate_json("recording-state-changed", doc)
        assert doc["data"]["correlationId"] == call_id and doc["data"]["state"] == "active"
        assert "operationContext" not in doc["data"]
        await client.stop_recording(rec.recording_id)
        await gw.end()


async def test_filters(server):
    a_call, b_call = unique("a"), unique("b")
    async with AsyncCallrecClient(server.target) as client, GatewayConnection(
        server.target, a_call
    ) as ga, GatewayConnection(server.target, b_call) as gb:
        only_b = asyncio.ensure_future(collect(client, 2, server_call_id=b_call))
        await asyncio.sleep(0.3)
        ra = await client.start_recording(a_call, content_type="audio", format="wav")
        rb = await client.start_recording(b_call, content_type="audio", format="wav")
        await client.stop_recording(ra.recording_id)
        await client.stop_recording(rb.recording_id)
        events = await only_b
        assert {e.recording_state_changed.server_call_id for e in events} == {b_call}
        by_rec = await collect(client, 2, recording_id=ra.recording_id, from_oldest=True)
        assert {e.recording_state_changed.recording_id for e in by_rec} == {ra.recording_id}
        by_type = await collect(client, 1, event_types=[STATE_CHANGED], recording_id=rb.recording_id,
                                from_oldest=True)
        assert by_type[0].event_type == STATE_CHANGED
        await ga.end()
        await gb.end()


async def test_resume_after_sequence_sees_every_event_exactly_once(make_server):
    srv = make_server("--clock", "media")
    async with AsyncCallrecClient(srv.target) as client, GatewayConnection(srv.target, "c") as gw:
        rec = await client.start_recording("c", content_type="audio", format="wav")
        for _ in range(3):
            await client.pause_recording(rec.recording_id)
            await client.resume_recording(rec.recording_id)
        first = await collect(client, 3, from_oldest=True)  # then "disconnect"
        last_seen = first[-1].sequence
        # more events while the subscriber is away
        for _ in range(2):
            await client.pause_recording(rec.recording_id)
            await client.resume_recording(rec.recording_id)
        await client.stop_recording(rec.recording_id)
        rest = await collect(client, 12 - 3, after_sequence=last_seen)
        sequences = [e.sequence for e in first + rest]
        assert sequences == list(range(1, 13))
        assert len({e.id for e in first + rest}) == 12
        await gw.end()


async def test_subscribe_errors(server):
    async with AsyncCallrecClient(server.target) as client:
        with pytest.raises(CallrecError) as info:
            await collect(client, 1, event_types=["Microsoft.Communication.Nope"])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "Microsoft.Communication.RecordingStateChanged" in info.value.details
        with pytest.raises(CallrecError) as info:
            await collect(client, 1, after_sequence=10**9)
        assert info.value.code == grpc.StatusCode.OUT_OF_RANGE
        assert "beyond the newest event" in info.value.details


FILE_STATUS = "Microsoft.Communication.RecordingFileStatusUpdated"


async def test_filters_are_exact_over_a_shared_log(server):
    # two calls with two recordings each, on the session's server whose log holds every other test's
    # events too: each filter (applied in SQL) returns exactly its events, in order, resumable.
    calls = [unique("fa"), unique("fb")]
    recs: dict[str, list[str]] = {}
    async with AsyncCallrecClient(server.target) as client:
        gateways = [GatewayConnection(server.target, c) for c in calls]
        for gw in gateways:
            await gw.open()
        for call in calls:
            for _ in range(2):
                rec = await client.start_recording(call, content_type="audio", format="wav")
                await client.pause_recording(rec.recording_id)
                await client.stop_recording(rec.recording_id)
                await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED)
                recs.setdefault(call, []).append(rec.recording_id)
        a, b = calls
        everything_a = await until_quiet(client, from_oldest=True, server_call_id=a)
        assert everything_a and all(f"/serverCallId/{a}/" in e.subject for e in everything_a)
        sequences = [e.sequence for e in everything_a]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        files_a = await until_quiet(client, from_oldest=True, server_call_id=a, event_types=[FILE_STATUS])
        assert [e.recording_file_status_updated.recording_id for e in files_a] == recs[a]
        assert files_a == [e for e in everything_a if e.event_type == FILE_STATUS]
        one = await until_quiet(client, from_oldest=True, recording_id=recs[b][1])
        assert one and {e.event_type for e in one} == {STATE_CHANGED, FILE_STATUS}
        assert all(recs[b][1] in e.subject for e in one)
        both_types = await until_quiet(client, from_oldest=True, server_call_id=b,
                                       event_types=[FILE_STATUS, STATE_CHANGED])
        assert [e.sequence for e in both_types] == [e.sequence for e in await until_quiet(
            client, from_oldest=True, server_call_id=b)]
        # resume in the middle of a filtered stream: the rest, exactly once
        rest = await until_quiet(client, after_sequence=everything_a[1].sequence, server_call_id=a)
        assert [e.sequence for e in rest] == sequences[2:]
        for gw in gateways:
            await gw.end()
            await gw.close()


async def until_quiet(client: AsyncCallrecClient, quiet: float = 0.5, **filters) -> list[epb.Event]:
    """Every event of a subscription (at least one, within 10 s) until none came for `quiet` seconds."""
    out: list[epb.Event] = []
    stream = client.subscribe_events(**filters)
    try:
        while True:
            out.append(await asyncio.wait_for(anext(stream), quiet if out else 10))
    except TimeoutError:
        return out
    finally:
        await stream.aclose()


async def test_filter_sizes_are_limited(server):
    async with AsyncCallrecClient(server.target) as client:
        with pytest.raises(CallrecError) as info:
            await collect(client, 1, event_types=[STATE_CHANGED] * 65)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "event_types" in info.value.details and "max_list_items" in info.value.details
        for field in ("server_call_id", "recording_id"):
            with pytest.raises(CallrecError) as info:
                await collect(client, 1, **{field: "x" * 129})
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert field in info.value.details and "max_id_bytes" in info.value.details
        with pytest.raises(CallrecError) as info:
            await collect(client, 1, event_types=["x" * 10_000])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_id_bytes" in info.value.details
        assert len(info.value.details) < 500  # the oversized value is not echoed back


async def test_event_subscribers_are_capped(make_server, tmp_path):
    config = tmp_path / "callrec.toml"
    config.write_text("[limits]\nmax_event_subscribers = 2\n")
    srv = make_server("--clock", "media", "--config", str(config))
    async with AsyncCallrecClient(srv.target) as client, GatewayConnection(srv.target, "c") as gw:
        first = asyncio.ensure_future(collect(client, 1, timeout=30))
        second = asyncio.ensure_future(collect(client, 1, timeout=30))
        await asyncio.sleep(0.5)
        with pytest.raises(CallrecError) as info:
            await collect(client, 1)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_event_subscribers" in info.value.details
        first.cancel()
        await asyncio.sleep(0.5)  # its slot is free again
        third = asyncio.ensure_future(collect(client, 1, timeout=30))
        await asyncio.sleep(0.5)
        rec = await client.start_recording("c", content_type="audio", format="wav")
        assert [e.sequence for e in await second] == [e.sequence for e in await third] == [1]
        await client.stop_recording(rec.recording_id)
        await gw.end()


async def test_a_subscriber_that_stops_reading_is_cut_off_and_resumes_exactly_once(make_server, tmp_path):
    config = tmp_path / "callrec.toml"
    config.write_text("[limits]\nmax_subscriber_queue = 5\n")
    srv = make_server("--clock", "media", "--config", str(config))
    # a 64 KiB HTTP/2 window (no BDP growth): a client that does not read holds only ~50 events in flight
    async with AsyncCallrecClient(srv.target) as client, GatewayConnection(srv.target, "c") as gw, \
            grpc.aio.insecure_channel(srv.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stalled = epb_grpc.EventServiceStub(channel).SubscribeEvents(epb.SubscribeEventsRequest())
        await asyncio.sleep(0.3)
        rec = await client.start_recording("c", content_type="audio", format="wav")
        for _ in range(100):  # 200 events, never read by `stalled`
            await client.pause_recording(rec.recording_id)
            await client.resume_recording(rec.recording_id)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for resp in stalled:
                received.append(resp.event.sequence)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = info.value.details() or ""
        assert "max_subscriber_queue" in details
        resume = int(details.split("after_sequence=")[1].split()[0])
        assert received == list(range(1, resume + 1)) and resume < 201
        rest = await collect(client, 201 - resume, after_sequence=resume)
        assert received + [e.sequence for e in rest] == list(range(1, 202))
        await client.stop_recording(rec.recording_id)
        await gw.end()
