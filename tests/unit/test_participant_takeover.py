"""A participant moves to another stream only of the same gateway (a reconnect), never to another gateway's."""

from __future__ import annotations

import pytest

from callrec.core.call_registry import CallRegistry
from callrec.core.errors import ErrorCode, FailedPrecondition
from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing import FakeTime

PCM = AudioFormat(AudioEncoding.PCM16LE, 16000, 1)


def registry() -> CallRegistry:
    return CallRegistry(reconnect_grace_s=30, time=FakeTime())


async def test_a_reconnect_of_the_same_gateway_takes_its_participant_over() -> None:
    calls = registry()
    call, first = calls.open("call-1", "", "gw-a")
    alice = calls.join(call, first, "alice", "Alice", PCM, None)
    alice.stats.frames_received = 7
    calls.end_stream(call, first, graceful=False)  # the stream broke; the call waits for a reconnect

    call_again, second = calls.open("call-1", "", "gw-a")
    assert call_again is call
    moved = calls.join(call, second, "alice", "Alice", PCM, None)
    assert moved.gateway_id == "gw-a" and moved.connection_id == second.connection_id
    assert moved.stats.frames_received == 7, "counters carry over"
    assert calls.participant(call, second, "alice", "audio frame") is moved
    await calls.close()


async def test_the_same_gateway_may_move_a_participant_between_two_open_streams() -> None:
    calls = registry()
    call, first = calls.open("call-1", "", "gw-a")
    calls.join(call, first, "alice", "Alice", PCM, None)
    _, second = calls.open("call-1", "", "gw-a")
    calls.join(call, second, "alice", "Alice", PCM, None)
    assert "alice" not in first.participant_ids and "alice" in second.participant_ids
    await calls.close()


@pytest.mark.parametrize("first_stream_broke", [False, True])
async def test_another_gateway_cannot_take_a_participant_over(first_stream_broke: bool) -> None:
    calls = registry()
    call, first = calls.open("call-1", "", "gw-a")
    alice = calls.join(call, first, "alice", "Alice", PCM, None)
    _, other = calls.open("call-1", "", "gw-b")
    if first_stream_broke:  # not even while gw-a reconnects: its participant stays its own
        calls.end_stream(call, first, graceful=False)
    with pytest.raises(FailedPrecondition) as info:
        calls.join(call, other, "alice", "Mallory", PCM, None)
    assert info.value.code is ErrorCode.FAILED_PRECONDITION
    assert str(info.value).startswith("participant 'alice' of call 'call-1' is sent by gateway 'gw-a'; "
                                      "gateway 'gw-b' cannot take it over")
    assert call.participants["alice"] is alice and alice.display_name == "Alice"
    if not first_stream_broke:
        assert "alice" in first.participant_ids
    # gw-b may still bring its own participants, and a participant gw-a let go
    calls.join(call, other, "bob", "Bob", PCM, None)
    if not first_stream_broke:
        calls.leave(call, first, "alice")
        assert calls.join(call, other, "alice", "Alice", PCM, None).gateway_id == "gw-b"
    await calls.close()
