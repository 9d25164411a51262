"""`bench.null_sink`: the counting MediaService the load generator's row (9) is measured against, and the
server without callrec code row 1d probes beside the real one (the floor on the machine).

Row 9 trusts the sink's acks to say every frame the generator sent arrived, so the acks must count
exactly what was sent, per participant, and `end` must close the stream (the generator waits for
that before it reports `done`). Through the real process on loopback, as the bench starts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from callrec.v1 import media_pb2 as pb
from callrec.v1 import recording_pb2 as rpb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import ROOT, unique

SENT = {"alice": 7, "bob": 5}  # frames per participant: different, so a swapped count shows


@pytest.fixture
def sink_target() -> Iterator[str]:
    """`python -m bench.null_sink` on a loopback port; stopped by closing its stdin (then killed)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.null_sink"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("event") == "ready", ready
        yield f"127.0.0.1:{ready['port']}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # EOF: the sink stops by itself
        try:
            assert proc.wait(5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def batches() -> list[pb.StreamMediaRequest]:
    """One media_batch per tick, holding a frame of each participant that still has one to send."""
    return [pb.StreamMediaRequest(media_batch=pb.MediaBatch(audio=[
        GatewayConnection.audio_frame(pid, seq, seq * 20_000, b"\xf8\xff\xfe")
        for pid, count in SENT.items() if seq <= count]))
        for seq in range(1, max(SENT.values()) + 1)]


def counted(resp: pb.StreamMediaResponse) -> dict[str, tuple[int, int, int]]:
    return {p.participant_id: (p.received, p.last_audio_sequence, sum(p.rejected_by_reason.values()))
            for p in resp.ack.participants}


async def test_the_sink_acks_exactly_what_was_sent_and_end_closes_the_stream(sink_target: str) -> None:
    call_id = unique("sink")
    gw = GatewayConnection(sink_target, call_id, gateway_id="gw")
    await gw.open()
    try:
        assert gw.opened is not None and gw.opened.server_call_id == call_id and gw.opened.call_connection_id
        for pid in SENT:
            await gw.join(pid, audio="opus", sample_rate=48_000)
        for request in batches():
            await gw.send(request)
        expected = {pid: (n, n, 0) for pid, n in SENT.items()}
        ack = counted(await gw.next_response("ack", timeout=3))  # acks come at least once a second
        if ack != expected:  # that one was taken before the last frames arrived
            ack = counted(await gw.next_response("ack", timeout=3))
        assert ack == expected
        await gw.end(timeout=3)  # sends `end`, waits until the sink closed the stream
        assert gw.error is None
        assert counted(gw.responses[-1]) == expected, "the last ack, after `end`, counts everything"
    finally:
        await gw.close()


async def test_the_sink_answers_get_recording_state_like_a_real_server_and_nothing_else(
    sink_target: str, server
) -> None:
    """Row 1d probes it beside the real server as the floor, so it must answer the same client with a message of
    about the real answer's size (a 10-person mixed mp3 recording mid-call), and pretend nothing more."""
    call_id = unique("floor")
    gw = GatewayConnection(server.target, call_id, gateway_id="gw")
    await gw.open()
    try:
        for n in range(10):
            await gw.join(f"p{n + 1}", audio="pcm16le", sample_rate=16_000)
        async with AsyncCallrecClient(server.target) as real:
            started = await real.start_recording(call_id, content_type="audio", channel_type="mixed", format="mp3")
            await gw.send(pb.StreamMediaRequest(media_batch=pb.MediaBatch(audio=[
                GatewayConnection.audio_frame(f"p{n + 1}", 1, 0, b"\0\0" * 320) for n in range(10)])))
            real_answer = await real.get_recording_state(started.recording_id)
            await real.stop_recording(started.recording_id)
    finally:
        await gw.close()
    async with AsyncCallrecClient(sink_target) as floor:
        canned = await floor.get_recording_state(started.recording_id)
        assert canned.state == rpb.RECORDING_STATE_ACTIVE
        assert [p.participant_id for p in canned.participants] == [f"p{n + 1}" for n in range(10)]
        real_bytes, canned_bytes = real_answer.ByteSize(), canned.ByteSize()
        assert real_bytes / 2 <= canned_bytes <= real_bytes * 2, (real_bytes, canned_bytes)
        with pytest.raises(CallrecError) as caught:
            await floor.start_recording(call_id, content_type="audio", channel_type="mixed", format="mp3")
        assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
