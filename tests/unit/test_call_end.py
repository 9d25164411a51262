"""Ending a call survives what gateways and handlers do to it (issue 9, point 6), in-process on
fake time: a call-end handler that raises, a stream cancelled right after `end` or while its call
is ending, a stream cancelled before `open` took effect, and `end` followed at once by a new
`open` of the same call. Each time: every handler ran, the recording ended with `CallEnded`,
and no call media task is left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from callrec.api.media import MediaServicer
from callrec.core.call_hub import CallMediaHub
from callrec.core.call_registry import CALL_ENDED, Call, CallRegistry
from callrec.core.clock import MediaClock
from callrec.core.limits import Limits
from callrec.core.model import AudioEncoding, AudioFormat, ChannelType, ContentType, Format, RecordingOptions
from callrec.core.model import RecordingState as State
from callrec.core.ports import BlockResampler, FrameDecoder
from callrec.core.recording_registry import NoMedia, RecordingRegistry
from callrec.media.decode import PyAVAudioCodecs
from callrec.testing import EPOCH, FakeTime
from callrec.v1 import media_pb2 as mpb
from tests.unit.test_control_plane import registry_with

PCM16 = AudioFormat(AudioEncoding.PCM16LE, 16_000, 1)
WAV = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV)
FRAME = b"\x00\x00" * 320
GRACE_S = 10.0


def new_hub() -> CallMediaHub:
    return CallMediaHub(lambda: MediaClock(start_time=EPOCH), PyAVAudioCodecs())


class CrashingCodecs:
    """Codecs whose decoders accept frames and then fail with a bug (not a `DecodeError`) when decoding."""

    def __init__(self) -> None:
        self._codecs = PyAVAudioCodecs()

    def decoder(self, audio_format: AudioFormat) -> FrameDecoder:
        return CrashingDecoder(self._codecs.decoder(audio_format))

    def resampler_bank(self, in_rate: int, out_rate: int, block: int) -> BlockResampler:
        return self._codecs.resampler_bank(in_rate, out_rate, block)


class CrashingDecoder:
    def __init__(self, inner: FrameDecoder) -> None:
        self.sample_rate = inner.sample_rate
        self._inner = inner

    def frame_samples(self, data: bytes) -> int:
        return self._inner.frame_samples(data)

    def decode(self, data: bytes) -> np.ndarray:
        raise RuntimeError("decoder bug")

    def decode_into(self, data: bytes, out: np.ndarray) -> int:
        raise RuntimeError("decoder bug")


class Blocker:
    """A call-end handler that waits until released (a registry lock held elsewhere, slow storage)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.finished: list[str] = []

    async def __call__(self, call: Call, reason: str) -> None:
        self.entered.set()
        await self.release.wait()
        self.finished.append(call.server_call_id)


class Server:
    """The StreamMedia servicer over real call and recording registries and the hub (NoMedia recordings)."""

    def __init__(self, first_handler: Blocker | None = None) -> None:
        self.time = FakeTime()
        self.calls = CallRegistry(reconnect_grace_s=GRACE_S, limits=Limits(max_participants_per_call=5), time=self.time)
        if first_handler is not None:
            self.calls.on_call_ended(first_handler)
        self.recordings: RecordingRegistry
        self.recordings, _ = registry_with(NoMedia(), self.calls, self.time)
        self.hub = new_hub()
        self.calls.on_call_ended(self.hub.on_call_ended)  # after the registry's, as server.py wires it
        self.servicer = MediaServicer(self.calls, self.recordings, self.hub)

    def stream(self, requests: AsyncIterator[mpb.StreamMediaRequest]) -> Stream:
        return Stream(self, requests)


class Stream:
    """One StreamMedia call driven in-process; `task` consumes the handler's responses.

    Until `flowing` is set the consumer takes no response after `opened`, as a gateway whose
    network is slow: the handler then waits at a `yield` and what the reader queues stays queued.
    """

    def __init__(self, server: Server, requests: AsyncIterator[mpb.StreamMediaRequest]) -> None:
        self.responses: list[mpb.StreamMediaResponse] = []
        self.opened = asyncio.Event()
        self.flowing = asyncio.Event()
        context: Any = object()  # only `abort` is used, on protocol errors, which these tests make none of

        async def consume() -> None:
            async with contextlib.aclosing(server.servicer.StreamMedia(requests, context)) as responses:
                async for resp in responses:
                    self.responses.append(resp)
                    if resp.HasField("opened"):
                        self.opened.set()
                    await self.flowing.wait()

        self.task = asyncio.get_running_loop().create_task(consume())

    async def cancel(self) -> None:
        """What grpc.aio does when the client cancels: cancel the handler's task."""
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def open_(call_id: str) -> mpb.StreamMediaRequest:
    return mpb.StreamMediaRequest(open=mpb.StreamOpen(server_call_id=call_id, gateway_id="gw"))


def join(pid: str) -> mpb.StreamMediaRequest:
    return mpb.StreamMediaRequest(join=mpb.ParticipantJoin(
        participant_id=pid, audio_format=mpb.AudioFormat(encoding=mpb.AUDIO_ENCODING_PCM16LE, sample_rate=16000,
                                                         channels=1)))


def audio(pid: str, seq: int) -> mpb.StreamMediaRequest:
    return mpb.StreamMediaRequest(audio=mpb.AudioFrame(participant_id=pid, sequence=seq, timestamp_us=seq * 20_000,
                                                       data=FRAME))


END = mpb.StreamMediaRequest(end=mpb.StreamEnd(reason="hangup"))


class Gateway:
    """A gateway's request side: sends what it is given; `sent_end` is set as `end` is handed over."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[mpb.StreamMediaRequest] = asyncio.Queue()
        self.sent_end = asyncio.Event()

    def send(self, *requests: mpb.StreamMediaRequest) -> None:
        for r in requests:
            self.queue.put_nowait(r)

    async def requests(self) -> AsyncIterator[mpb.StreamMediaRequest]:
        while True:  # never half-closes: the gateway cancels instead
            r = await self.queue.get()
            if r.HasField("end"):
                self.sent_end.set()  # wakes the test before the handler's loop sees the reader's `_End`
            yield r


async def start_call(server: Server, call_id: str) -> tuple[Gateway, Stream, str]:
    """A gateway opens `call_id`, joins `alice`, a recording starts, three frames go in."""
    gw = Gateway()
    stream = server.stream(gw.requests())
    gw.send(open_(call_id), join("alice"))
    await asyncio.wait_for(stream.opened.wait(), 5)
    for _ in range(5):
        await asyncio.sleep(0)  # the join
    rec = await server.recordings.start(call_id, WAV)
    gw.send(*(audio("alice", seq) for seq in (1, 2, 3)))
    return gw, stream, rec.recording_id


async def assert_ended_cleanly(server: Server, recording_id: str) -> None:
    rec = await asyncio.wait_for(server.recordings.finalized(recording_id), 5)
    assert (rec.state, rec.session_end_reason) == (State.COMPLETED, CALL_ENDED)
    assert server.calls.calls() == [] and server.calls.ending() == 0
    assert server.hub.running_tasks() == 0


# ---------------------------------------------------------------------------- the call registry


async def test_a_raising_call_end_handler_does_not_skip_the_next_ones(caplog: pytest.LogCaptureFixture) -> None:
    calls = CallRegistry(reconnect_grace_s=GRACE_S, limits=Limits(max_participants_per_call=5), time=FakeTime())
    hub = new_hub()
    seen: list[str] = []

    async def broken(call: Call, reason: str) -> None:
        raise RuntimeError("handler bug")

    async def after(call: Call, reason: str) -> None:
        seen.append(reason)

    calls.on_call_ended(broken)
    calls.on_call_ended(after)
    calls.on_call_ended(hub.on_call_ended)
    call, stream = calls.open("c1", "", "gw")
    hub.joined(call, calls.join(call, stream, "alice", "Alice", PCM16, None))
    assert hub.running_tasks() == 1
    with caplog.at_level(logging.ERROR, logger="callrec.core.call_registry"):
        await calls.close_stream(call, stream, graceful=True)
    assert seen == [CALL_ENDED]
    assert calls.get("c1") is None and calls.ending() == 0
    assert hub.running_tasks() == 0
    (failed,) = [r for r in caplog.records if r.getMessage() == "call-end handler failed"]
    assert failed.__dict__["server_call_id"] == "c1" and failed.exc_info is not None


async def test_a_cancelled_closer_does_not_cut_the_call_end() -> None:
    calls = CallRegistry(reconnect_grace_s=GRACE_S, limits=Limits(max_participants_per_call=5), time=FakeTime())
    hub = new_hub()
    blocker = Blocker()
    calls.on_call_ended(blocker)
    calls.on_call_ended(hub.on_call_ended)
    call, stream = calls.open("c1", "", "gw")
    hub.joined(call, calls.join(call, stream, "alice", "Alice", PCM16, None))
    closer = asyncio.get_running_loop().create_task(calls.close_stream(call, stream, graceful=True))
    await asyncio.wait_for(blocker.entered.wait(), 5)
    closer.cancel()  # the stream's handler is cancelled half way through the ending
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert calls.get("c1") is None and calls.ending() == 1  # gone for new opens, still ending
    blocker.release.set()
    await calls.close()  # shutdown waits for calls still ending
    assert blocker.finished == ["c1"]
    assert calls.ending() == 0 and hub.running_tasks() == 0


async def test_a_broken_stream_without_grace_ends_its_call_in_the_registry_task() -> None:
    calls = CallRegistry(reconnect_grace_s=0, limits=Limits(max_participants_per_call=5), time=FakeTime())
    hub = new_hub()
    calls.on_call_ended(hub.on_call_ended)
    call, stream = calls.open("c1", "", "gw")
    hub.joined(call, calls.join(call, stream, "alice", "Alice", PCM16, None))
    ending = calls.end_stream(call, stream, graceful=False)
    assert ending is not None and calls.get("c1") is None
    assert calls.end_stream(call, stream, graceful=False) is None  # idempotent
    await ending
    assert hub.running_tasks() == 0


async def test_a_failed_media_task_leaves_the_hub_and_is_replaced_on_next_use() -> None:
    calls = CallRegistry(reconnect_grace_s=GRACE_S, limits=Limits(max_participants_per_call=5), time=FakeTime())
    call, stream = calls.open("c1", "", "gw")
    hub = CallMediaHub(lambda: MediaClock(start_time=EPOCH), CrashingCodecs())  # crashes at its first tick
    media = hub.media("c1")
    hub.joined(call, calls.join(call, stream, "alice", "Alice", PCM16, None))
    hub.audio(call, call.participants["alice"], 1, 20_000, FRAME)
    media.end()
    for _ in range(10):
        await asyncio.sleep(0)
    assert hub.running_tasks() == 0
    assert hub.media("c1") is not media  # a fresh pipeline, not the dead one
    assert await hub.end_call("c1") is not None
    assert hub.running_tasks() == 0


# ---------------------------------------------------------------------------- StreamMedia


async def test_a_stream_cancelled_right_after_end_completes_its_recording_call_ended() -> None:
    server = Server()
    gw, stream, recording_id = await start_call(server, "c1")
    gw.send(END)
    await asyncio.wait_for(gw.sent_end.wait(), 5)
    for _ in range(5):
        await asyncio.sleep(0)
    assert server.calls.get("c1") is None  # the reader closed the stream as it read `end`
    await stream.cancel()  # while `end` still waits in the handler's queue
    await assert_ended_cleanly(server, recording_id)  # now, not after the grace period


async def test_a_stream_cancelled_while_its_call_is_ending_completes_its_recording() -> None:
    blocker = Blocker()
    server = Server(first_handler=blocker)
    gw, stream, recording_id = await start_call(server, "c1")
    stream.flowing.set()
    gw.send(END)
    await asyncio.wait_for(blocker.entered.wait(), 5)
    for _ in range(5):
        await asyncio.sleep(0)  # the handler took `end` and waits for the ending
    last_ack = [r.ack for r in stream.responses if r.HasField("ack")][-1]  # went out first, with the counters
    assert [(p.participant_id, p.received) for p in last_ack.participants] == [("alice", 3)]
    await stream.cancel()  # the cancellation must not cut the ending
    blocker.release.set()
    await assert_ended_cleanly(server, recording_id)
    assert blocker.finished == ["c1"]


async def test_end_then_a_new_open_of_the_same_call_gets_a_new_call_and_fresh_media() -> None:
    blocker = Blocker()
    server = Server(first_handler=blocker)
    gw_a, stream_a, recording_id = await start_call(server, "c1")
    stream_a.flowing.set()
    gw_a.send(END)
    await asyncio.wait_for(blocker.entered.wait(), 5)
    gw_b = Gateway()
    stream_b = server.stream(gw_b.requests())
    stream_b.flowing.set()
    gw_b.send(open_("c1"), join("bob"), audio("bob", 1))
    for _ in range(20):
        await asyncio.sleep(0)
    assert server.calls.get("c1") is None and not stream_b.opened.is_set()  # waits for the old call's end
    blocker.release.set()
    await asyncio.wait_for(stream_b.opened.wait(), 5)
    rec = await asyncio.wait_for(server.recordings.finalized(recording_id), 5)
    assert (rec.state, rec.session_end_reason) == (State.COMPLETED, CALL_ENDED)
    for _ in range(5):
        await asyncio.sleep(0)
    new_call = server.calls.get("c1")
    assert new_call is not None and list(new_call.participants) == ["bob"]
    assert server.hub.media("c1").participant_ids == ["bob"]  # a fresh pipeline, not the ended one
    assert server.hub.running_tasks() == 1 and server.recordings.in_progress_for_call("c1") is None
    await asyncio.wait_for(stream_a.task, 5)  # its stream completed once the call had ended
    gw_b.send(END)
    await asyncio.wait_for(stream_b.task, 5)
    assert server.calls.calls() == [] and server.hub.running_tasks() == 0


async def test_a_stream_cancelled_before_open_took_effect_leaves_nothing() -> None:
    server = Server()
    never = Gateway()
    stream = server.stream(never.requests())
    for _ in range(5):
        await asyncio.sleep(0)
    await stream.cancel()
    assert server.calls.calls() == [] and server.hub.running_tasks() == 0


async def test_a_stream_cancelled_after_open_ends_its_call_after_the_grace_period() -> None:
    server = Server()
    _gw, stream, recording_id = await start_call(server, "c1")
    await stream.cancel()  # no `end`: a broken stream
    assert (await server.recordings.get(recording_id)).state is State.ACTIVE
    await server.time.advance(GRACE_S + 0.1)
    await assert_ended_cleanly(server, recording_id)


async def test_the_first_response_is_opened_even_when_open_comes_after_an_ack_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import callrec.api.media as media_api

    clock = FakeTime()
    monkeypatch.setattr(media_api, "time", clock)  # the handler's ack timer reads time.monotonic()
    server = Server()
    gw = Gateway()
    stream = server.stream(gw.requests())
    for _ in range(5):
        await asyncio.sleep(0)
    await clock.advance(2 * media_api.ACK_INTERVAL_S)  # a slow gateway (or a busy server) before `open`
    gw.send(open_("c1"))
    await asyncio.wait_for(stream.opened.wait(), 5)
    assert stream.responses[0].HasField("opened"), stream.responses[0]  # not an ack of a call not yet opened
    await stream.cancel()
    await server.time.advance(GRACE_S + 0.1)
    assert server.calls.calls() == [] and server.hub.running_tasks() == 0
