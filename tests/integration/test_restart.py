"""Durability: state and events survive restarts; SIGTERM drains; kill -9 recovers."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.integration.test_events import collect
from tests.integration.test_recording_service import wait_state


@pytest.mark.slow  # ~11 s (make test-slow); the kill -9 tests below stay in make test
async def test_sigterm_drains_and_state_survives_restart(make_server, tmp_path):
    data = tmp_path / "data"
    first = make_server("--clock", "media", data_dir=data)
    async with AsyncCallrecClient(first.target) as client:
        gw = GatewayConnection(first.target, "call-r", gateway_id="gw")
        await gw.open()
        done = await client.start_recording("call-r", content_type="audio", format="wav", request_id="req-1")
        await client.stop_recording(done.recording_id)
        await wait_state(client, done.recording_id, pb.RECORDING_STATE_COMPLETED)
        live = await client.start_recording("call-r", content_type="audio", format="mp3")
        await client.pause_recording(live.recording_id)
    assert first.terminate() == 0  # SIGTERM: drains and exits cleanly
    assert "draining" in first.log_text() and "stopped" in first.log_text()
    await gw.close()

    second = make_server("--clock", "media", data_dir=data)
    async with AsyncCallrecClient(second.target) as client:
        rec = await client.get_recording_state(done.recording_id)
        assert rec.state == pb.RECORDING_STATE_COMPLETED and rec.session_end_reason == "StoppedByRequest"
        drained = await client.get_recording_state(live.recording_id)
        assert drained.state == pb.RECORDING_STATE_COMPLETED
        assert drained.session_end_reason == "ServerShutdown"
        assert len(drained.pause_intervals) == 1 and drained.pause_intervals[0].HasField("duration")
        page = await client.list_recordings("call-r")
        assert [r.recording_id for r in page.recordings] == [live.recording_id, done.recording_id]
        events = await collect(client, 7, from_oldest=True)
        assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7]
        kinds = [(e.event_type.rsplit(".", 1)[-1], e.recording_state_changed.recording_id or
                  e.recording_file_status_updated.recording_id) for e in events]
        assert kinds == [  # start, stop, files; start, pause, drain-stop, files
            ("RecordingStateChanged", done.recording_id), ("RecordingStateChanged", done.recording_id),
            ("RecordingFileStatusUpdated", done.recording_id), ("RecordingStateChanged", live.recording_id),
            ("RecordingStateChanged", live.recording_id), ("RecordingStateChanged", live.recording_id),
            ("RecordingFileStatusUpdated", live.recording_id)]
        # idempotency keys survive too; the call must be open for a start
        async with GatewayConnection(second.target, "call-r", gateway_id="gw") as gw2:
            again = await client.start_recording("call-r", content_type="audio", format="wav", request_id="req-1")
            assert again.recording_id == done.recording_id
            fresh = await client.start_recording("call-r", content_type="audio", format="wav")
            # sequence numbers continue after the restart
            (event,) = await collect(client, 1, recording_id=fresh.recording_id, from_oldest=True)
            assert event.sequence == 8
            await client.stop_recording(fresh.recording_id)
            await gw2.end()


#: The grace of the restart tests: it starts when the restarted server recovers the call, so it must cover the rest
#: of that server's start-up and the gateway's re-open on a loaded machine (2 s did not, once, with the suite's
#: other process busy beside it); the reconnect test then waits past it to show the re-opened call kept its recording.
RECONNECT_GRACE_S = 5


async def test_kill_9_recovers_active_recording_then_ends_with_server_restarted(make_server, tmp_path):
    data = tmp_path / "data"
    grace = str(RECONNECT_GRACE_S)  # the recording must still be ACTIVE when the client first asks
    first = make_server("--clock", "media", "--reconnect-grace", grace, data_dir=data)
    async with AsyncCallrecClient(first.target) as client:
        gw = GatewayConnection(first.target, "call-k", gateway_id="gw")
        await gw.open()
        rec = await client.start_recording("call-k", content_type="audio", format="wav")
    first.kill()
    await gw.close()
    second = make_server("--clock", "media", "--reconnect-grace", grace, data_dir=data)
    async with AsyncCallrecClient(second.target) as client:
        recovered = await client.get_recording_state(rec.recording_id)
        assert recovered.state == pb.RECORDING_STATE_ACTIVE
        # the call is known again (for the grace period): a second start is refused, not NOT_FOUND
        with pytest.raises(CallrecError) as info:
            await client.start_recording("call-k", content_type="audio", format="wav")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=15)
        assert done.session_end_reason == "ServerRestarted"


async def test_kill_9_then_gateway_reconnects_and_recording_continues(make_server, tmp_path):
    data = tmp_path / "data"
    grace = str(RECONNECT_GRACE_S)
    first = make_server("--clock", "media", "--reconnect-grace", grace, data_dir=data)
    async with AsyncCallrecClient(first.target) as client:
        gw = GatewayConnection(first.target, "call-g", gateway_id="gw")
        await gw.open()
        rec = await client.start_recording("call-g", content_type="audio", format="wav")
    first.kill()
    await gw.close()
    second = make_server("--clock", "media", "--reconnect-grace", grace, data_dir=data)
    async with AsyncCallrecClient(second.target) as client, GatewayConnection(
        second.target, "call-g", gateway_id="gw"
    ) as again:
        assert [r.recording_id for r in again.opened.recordings] == [rec.recording_id]
        await asyncio.sleep(RECONNECT_GRACE_S + 0.5)
        assert (await client.get_recording_state(rec.recording_id)).state == pb.RECORDING_STATE_ACTIVE
        await client.stop_recording(rec.recording_id)
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED)
        assert done.session_end_reason == "StoppedByRequest"
        await again.end()


async def test_a_recording_whose_target_left_the_config_fails_and_the_server_starts(make_server, tmp_path):
    """Start-up never crash-loops: recovery of a recording to a target that is gone fails only it."""
    from tests.integration.test_storage_e2e import write_config

    data = tmp_path / "data"
    config = write_config(tmp_path / "with.toml", {"archive": {"kind": "local", "path": str(tmp_path / "archive")}})
    first = make_server("--clock", "media", "--config", str(config), data_dir=data)
    async with AsyncCallrecClient(first.target) as client:
        gw = GatewayConnection(first.target, "call-t", gateway_id="gw")
        await gw.open()
        await gw.join("p", "P")
        rec = await client.start_recording("call-t", content_type="audio", format="wav", destination="archive")
        for i in range(50):
            await gw.audio("p", i + 1, 1_000_000 + i * 20_000, b"\x10\x00" * 320)
        await asyncio.sleep(0.5)
    first.kill()
    await gw.close()
    without = write_config(tmp_path / "without.toml", {})
    second = make_server("--clock", "media", "--config", str(without), data_dir=data)
    async with AsyncCallrecClient(second.target) as client:
        failed = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_FAILED, timeout=10)
        assert "archive" in failed.error.message and "could not recover" in failed.error.message
        # the server serves: another call records to the default target
        async with GatewayConnection(second.target, "call-u", gateway_id="gw") as gw2:
            other = await client.start_recording("call-u", content_type="audio", format="wav")
            await client.stop_recording(other.recording_id)
            assert (await wait_state(client, other.recording_id, pb.RECORDING_STATE_COMPLETED)).chunks
            await gw2.end()
