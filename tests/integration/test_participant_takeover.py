"""StreamMedia: a participant may move to a new stream of the same gateway (a reconnect), never to another
gateway's stream, which ends with FAILED_PRECONDITION naming both gateways."""

from __future__ import annotations

import grpc
import pytest

from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing import ParticipantStream, tone_frames
from callrec_client import CallrecError
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess, unique

PCM = AudioFormat(AudioEncoding.PCM16LE, 16000, 1)


async def send_tone(gw: GatewayConnection, participant_id: str, first_sequence: int, seconds: float = 0.2) -> int:
    """Send a short tone; returns the next sequence number."""
    frames = ParticipantStream(participant_id, PCM, tone_frames(440, seconds, PCM), first_sequence=first_sequence,
                               start_us=first_sequence * 20_000).gateway_frames()
    for f in frames:
        await gw.audio(f.participant_id, f.sequence, f.timestamp_us, f.data)
    return first_sequence + len(frames)


async def received(gw: GatewayConnection, participant_id: str, at_least: int) -> int:
    """The server's `received` count for the participant once it reaches `at_least` (from acks)."""
    while True:
        ack = (await gw.next_response("ack", timeout=10)).ack
        counts = {p.participant_id: p.received for p in ack.participants}
        if counts.get(participant_id, 0) >= at_least:
            return counts[participant_id]


async def refused_join(target: str, call: str, gateway_id: str) -> CallrecError:
    intruder = GatewayConnection(target, call, gateway_id=gateway_id)
    await intruder.open()
    try:
        await intruder.join("alice", "Mallory")
        with pytest.raises(CallrecError) as info:
            await intruder.next_response("ack", timeout=10)
        return info.value
    finally:
        await intruder.close()


async def test_another_gateway_cannot_take_over_a_participant_but_a_reconnect_can(server: ServerProcess) -> None:
    call = unique("takeover")
    gw_a = GatewayConnection(server.target, call, gateway_id="gw-a")
    await gw_a.open()
    await gw_a.join("alice", "Alice")
    seq = await send_tone(gw_a, "alice", 1)
    assert await received(gw_a, "alice", seq - 1) == seq - 1

    error = await refused_join(server.target, call, "gw-b")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details.startswith(f"participant 'alice' of call '{call}' is sent by gateway 'gw-a'; "
                                    "gateway 'gw-b' cannot take it over")

    # gw-a is untouched, then its stream breaks and it reconnects: alice moves to the new stream
    seq = await send_tone(gw_a, "alice", seq)
    assert await received(gw_a, "alice", seq - 1) == seq - 1
    await gw_a.break_connection()
    await gw_a.close()
    gw_a2 = GatewayConnection(server.target, call, gateway_id="gw-a")
    await gw_a2.open()
    await gw_a2.join("alice", "Alice")
    seq = await send_tone(gw_a2, "alice", seq)
    assert await received(gw_a2, "alice", seq - 1) == seq - 1, "counters continue after the reconnect"

    error = await refused_join(server.target, call, "gw-b")  # still gw-a's
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    await gw_a2.end()
