"""`bench.null_sink`: the counting MediaService the load generator's row (9) is measured against.

Row 9 trusts the sink's acks to say every frame the generator sent arrived, so the acks must count
exactly what was sent, per participant, and `end` must close the stream (the generator waits for
that before it reports `done`). Through the real process on loopback, as the bench starts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from callrec.v1 import media_pb2 as pb
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
