"""`bench.split_front`'s relay front: the instrument that measured what the control/media split can give.

It must carry a recorded call's media unchanged (or its step measures a different load) and answer
GetRecordingState from what it holds (or it measures the server's loop again)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bench.server_load import run_step
from bench.split_front import start_front
from callrec_client import AsyncCallrecClient
from tests.harness import ServerProcess, free_port


async def test_the_front_relays_a_recorded_call_and_answers_its_state_from_memory(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", "--clock", "realtime").start()
    port = free_port()
    front = start_front(port, srv.target)
    target = f"127.0.0.1:{port}"
    try:
        step = await run_step(SimpleNamespace(proc=srv.proc, target=target), 1, 2.0,  # type: ignore[arg-type]
                              participants=2, codec="pcmu")
        assert step.passed, step.reasons  # every frame accepted on time through the relay, the recording finished
        assert step.probe_ms
        async with AsyncCallrecClient(srv.target) as server_client:
            recordings = (await server_client.list_recordings()).recordings
        assert len(recordings) == 1
        rid = recordings[0].recording_id
        srv.kill()  # from now on only the front's memory can answer
        async with AsyncCallrecClient(target) as client:
            held = await client.get_recording_state(rid)
        assert held.recording_id == rid
        assert held.server_call_id == recordings[0].server_call_id
    finally:
        front.kill()
        front.wait()
        srv.stop()
