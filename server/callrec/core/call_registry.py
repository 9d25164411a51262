"""Calls as gateways define them: `open` creates a call, `join`/`leave` its participants,
`end` (or a broken stream plus the reconnect grace period) ends it.

A call exists while at least one gateway stream is open on it, or while a broken
stream still has time to reconnect. When it ends, every `on_call_ended` handler is awaited in
order (the recording registry stops the call's recording with `CallEnded`, then the media hub
ends the call's mixer task).

Why the ending runs in a task of the registry's own: the last stream usually closes in a gRPC
handler, and a gateway that cancels its stream right after `end` cancels that handler. Awaited
inline, a cancellation that landed during the ending cut it half way: the call was gone, but its
recording stayed ACTIVE and its mixer task ran on; and a handler that raised skipped the ones
after it (tests/unit/test_call_end.py shows both). So the call leaves the registry synchronously
(a new `open` of the same id makes a new call) and its handlers run in a task that no stream's
cancellation reaches, each even if another raised; `close()` waits for those still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from callrec.core.admission import Admission
from callrec.core.clock import SystemTime
from callrec.core.errors import FailedPrecondition, InvalidArgument
from callrec.core.limits import Limits, check_count, check_text
from callrec.core.log import get_logger
from callrec.core.model import AudioFormat, MediaStats, RecordingState, VideoFormat
from callrec.core.ports import CallOwnershipPort, TimeSource

log = get_logger(__name__)

CALL_ENDED = "CallEnded"
SERVER_RESTARTED = "ServerRestarted"


@dataclass(frozen=True)
class RecordingNotice:
    """Tells gateways of a call that one of its recordings changed state."""

    recording_id: str
    state: RecordingState


@dataclass
class CallParticipant:
    """A participant as its gateway announced it (control plane), with receive counters."""

    participant_id: str
    display_name: str
    audio_format: AudioFormat | None
    video_format: VideoFormat | None
    connection_id: str
    stats: MediaStats = field(default_factory=MediaStats)
    last_audio_sequence: int = 0
    last_video_sequence: int = 0
    gateway_id: str = ""
    """The gateway whose stream joined it: only that gateway's streams may take it over (a reconnect)."""


@dataclass
class GatewayStream:
    """One open StreamMedia stream; `notices` carries messages back to its gateway."""

    connection_id: str
    gateway_id: str
    notices: asyncio.Queue[RecordingNotice] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    participant_ids: set[str] = field(default_factory=set)


@dataclass
class Call:
    """A call: its gateway streams and participants."""

    server_call_id: str
    call_id: str
    first_connection_id: str
    streams: dict[str, GatewayStream] = field(default_factory=dict)
    participants: dict[str, CallParticipant] = field(default_factory=dict)
    stats: MediaStats = field(default_factory=MediaStats)
    grace_task: asyncio.Task[None] | None = None


CallEndedHandler = Callable[[Call, str], Awaitable[None]]

ENDING_WAIT_S = 10.0
"""How long `open` of a call id waits for the previous call of that id to finish ending."""


class CallRegistry:
    """All calls currently open on this server, by server_call_id."""

    def __init__(self, reconnect_grace_s: float, limits: Limits | None = None,
                 time: TimeSource | None = None, ownership: CallOwnershipPort | None = None) -> None:
        self.reconnect_grace_s = reconnect_grace_s
        self.ownership = ownership
        """Cluster mode: which node owns each call (None on a single node: every call is ours)."""
        self.admission: Admission | None = None
        """Cost-based admission of new calls and participants (None: the count limits only)."""
        self.time: TimeSource = time or SystemTime()
        self.limits = limits or Limits()
        self.streams = 0  # StreamMedia streams being served (`admit_stream` / `release_stream`)
        self._calls: dict[str, Call] = {}
        self._on_ended: list[CallEndedHandler] = []
        # call-end handlers still running: by server_call_id (its latest call), and all of them
        self._ending: dict[str, asyncio.Task[None]] = {}
        self._ending_tasks: set[asyncio.Task[None]] = set()

    def on_call_ended(self, handler: CallEndedHandler) -> None:
        """Register a coroutine called once when a call ends (in registration order, in a task of the
        registry's; one that raises is logged with the call id and the next still runs)."""
        self._on_ended.append(handler)

    def get(self, server_call_id: str) -> Call | None:
        """The open call, or None."""
        return self._calls.get(server_call_id)

    def call_count(self) -> int:
        """Calls open on this node (admission's per-call cost), those waiting for their gateway included."""
        return len(self._calls)

    def participant_count(self) -> int:
        """Participants of every open call (what admission counts)."""
        return sum(len(call.participants) for call in self._calls.values())

    def calls(self) -> list[Call]:
        """Every open call."""
        return list(self._calls.values())

    def ending(self) -> int:
        """How many ended calls still run their call-end handlers."""
        return len(self._ending_tasks)

    async def wait_ended(self, server_call_id: str, timeout: float = ENDING_WAIT_S) -> None:
        """Return once the last call of this id has run its call-end handlers (at most `timeout` s).

        A gateway that ends a call and at once opens the same id again gets a new call; waiting
        here first keeps the old call's ending (its recording's stop, its mixer's end) from
        reaching the new one's media. A cancelled waiter leaves the ending running.
        """
        task = self._ending.get(server_call_id)
        if task is None or task.done():
            return
        _, pending = await asyncio.wait((task,), timeout=timeout)
        if pending:
            log.warning("previous call still ending; opening anyway", server_call_id=server_call_id,
                        waited_s=timeout)

    async def claim(self, server_call_id: str) -> None:
        """Cluster mode: become the call's owner before its stream opens here, and release it when it ends.

        FailedPrecondition names the owner when another live node has the call. Ids are checked first,
        so nothing oversized reaches the shared state; an empty id is left to `open` to refuse.
        """
        if self.ownership is None or not server_call_id:
            return
        self.check_id(server_call_id, "open.server_call_id")
        await self.ownership.claim(server_call_id)

    async def release(self, server_call_id: str) -> None:
        """Cluster mode: give the call's ownership back (it ended here, or its `open` was refused)."""
        if self.ownership is not None and server_call_id:
            await self.ownership.release(server_call_id)

    def admit_stream(self) -> None:
        """A new StreamMedia stream; ResourceExhausted past `[limits] max_streams`."""
        check_count(self.streams, self.limits.max_streams, "too many media streams", "max_streams")
        self.streams += 1

    def release_stream(self) -> None:
        """A stream admitted by `admit_stream` is over."""
        self.streams -= 1

    def check_id(self, value: str, field: str) -> None:
        """InvalidArgument when an id is longer than `[limits] max_id_bytes`."""
        check_text(value, field, self.limits.max_id_bytes, "max_id_bytes")

    def open(self, server_call_id: str, call_id: str, gateway_id: str) -> tuple[Call, GatewayStream]:
        """A gateway opens (or re-opens after a break) a call; cancels a pending grace period."""
        if not server_call_id:
            raise InvalidArgument("open.server_call_id is required: the call this stream carries")
        if not gateway_id:
            raise InvalidArgument("open.gateway_id is required: a stable id of the sending gateway")
        self.check_id(server_call_id, "open.server_call_id")
        self.check_id(call_id, "open.call_id")
        self.check_id(gateway_id, "open.gateway_id")
        call = self._calls.get(server_call_id)
        if call is None:
            check_count(len(self._calls), self.limits.max_calls, "too many open calls", "max_calls")
            if self.admission is not None:
                self.admission.check_open()
        stream = GatewayStream(connection_id=str(uuid.uuid4()), gateway_id=gateway_id)
        if call is None:
            call = Call(server_call_id, call_id or server_call_id, stream.connection_id)
            self._calls[server_call_id] = call
        elif call.grace_task is not None:
            call.grace_task.cancel()
            call.grace_task = None
            log.info("gateway reconnected", server_call_id=server_call_id, gateway_id=gateway_id)
        call.streams[stream.connection_id] = stream
        log.info("stream opened", server_call_id=server_call_id, gateway_id=gateway_id,
                 connection_id=stream.connection_id)
        return call, stream

    def adopt(self, server_call_id: str, call_id: str, connection_id: str, reason: str) -> Call:
        """Re-create a call known only from persisted state (after a restart), with no stream yet.

        It ends with `reason` unless a gateway re-opens it within the grace period.
        """
        call = self._calls.get(server_call_id)
        if call is None:
            call = Call(server_call_id, call_id, connection_id)
            self._calls[server_call_id] = call
            self._start_grace(call, reason)
        return call

    def join(
        self,
        call: Call,
        stream: GatewayStream,
        participant_id: str,
        display_name: str,
        audio_format: AudioFormat | None,
        video_format: VideoFormat | None,
    ) -> CallParticipant:
        """A participant enters (a repeated join updates it)."""
        if not participant_id:
            raise InvalidArgument("join.participant_id is required")
        self.check_id(participant_id, "join.participant_id")
        check_text(display_name, "join.display_name", self.limits.max_display_name_bytes, "max_display_name_bytes")
        if video_format is not None and video_format.width * video_format.height > self.limits.max_video_pixels:
            raise InvalidArgument(
                f"join.video_format is {video_format.width}x{video_format.height}, more than "
                f"{self.limits.max_video_pixels} pixels ([limits] max_video_pixels)"
            )
        existing = call.participants.get(participant_id)
        self._refuse_takeover(call, stream, existing)
        if existing is None:
            check_count(len(call.participants), self.limits.max_participants_per_call,
                        f"call {call.server_call_id} is full", "max_participants_per_call")
            if self.admission is not None:
                self.admission.check_join()
        participant = CallParticipant(participant_id, display_name, audio_format, video_format, stream.connection_id,
                                      gateway_id=stream.gateway_id)
        if existing is not None:
            participant.stats = existing.stats
            participant.last_audio_sequence = existing.last_audio_sequence
            participant.last_video_sequence = existing.last_video_sequence
            other = call.streams.get(existing.connection_id)
            if other is not None:
                other.participant_ids.discard(participant_id)
        call.participants[participant_id] = participant
        stream.participant_ids.add(participant_id)
        return participant

    @staticmethod
    def _refuse_takeover(call: Call, stream: GatewayStream, existing: CallParticipant | None) -> None:
        """FailedPrecondition when `existing` (a participant being joined again) belongs to another gateway.

        A join on a new stream of the same gateway moves the participant there (a reconnect); one
        gateway must not take over, and so silence or replace, media another gateway is sending,
        and a gateway whose stream broke must find its participants still its own when it returns.
        """
        if existing is None or not existing.gateway_id or existing.gateway_id == stream.gateway_id:
            return
        owner, pid = existing.gateway_id, existing.participant_id
        raise FailedPrecondition(
            f"participant {pid!r} of call {call.server_call_id!r} is sent by gateway {owner!r}; gateway "
            f"{stream.gateway_id!r} cannot take it over (only a stream of {owner!r} can, e.g. when it reconnects): "
            f"use another participant_id, or let {owner!r} send `leave` first"
        )

    def participant(self, call: Call, stream: GatewayStream, participant_id: str, what: str) -> CallParticipant:
        """The participant a frame names; FailedPrecondition when it has not joined on this stream."""
        if participant_id not in stream.participant_ids:
            self.check_id(participant_id, f"{what} participant_id")
            raise FailedPrecondition(
                f"{what} for participant {participant_id!r}, which has not joined on this stream: "
                "send `join` for it first"
            )
        return call.participants[participant_id]

    def leave(self, call: Call, stream: GatewayStream, participant_id: str) -> CallParticipant:
        """A participant leaves."""
        participant = self.participant(call, stream, participant_id, "leave")
        stream.participant_ids.discard(participant_id)
        del call.participants[participant_id]
        return participant

    def end_stream(self, call: Call, stream: GatewayStream, graceful: bool) -> asyncio.Task[None] | None:
        """A stream ended: with `end` (graceful) or broken; idempotent, and nothing here awaits.

        When it was the call's last stream, a graceful end (or a broken one without a grace
        period) removes the call at once and returns the task running its call-end handlers;
        a broken one starts the reconnect grace period instead.
        """
        if call.streams.pop(stream.connection_id, None) is None:
            return None
        if graceful:
            for pid in list(stream.participant_ids):
                call.participants.pop(pid, None)
        log.info("stream closed", server_call_id=call.server_call_id, connection_id=stream.connection_id,
                 graceful=graceful)
        if call.streams:
            return None
        if graceful or self.reconnect_grace_s <= 0:
            return self._end(call, CALL_ENDED)
        self._start_grace(call, CALL_ENDED)
        return None

    async def close_stream(self, call: Call, stream: GatewayStream, graceful: bool) -> None:
        """`end_stream`, then wait for the call's ending if it ended (a cancelled caller does not cut it)."""
        ending = self.end_stream(call, stream, graceful)
        if ending is not None:
            await asyncio.shield(ending)

    def _start_grace(self, call: Call, reason: str) -> None:
        async def expire() -> None:
            await self.time.sleep(self.reconnect_grace_s)
            call.grace_task = None
            if not call.streams:
                log.info("reconnect grace period over", server_call_id=call.server_call_id, reason=reason)
                self._end(call, reason)

        call.grace_task = asyncio.get_running_loop().create_task(expire())

    def _end(self, call: Call, reason: str) -> asyncio.Task[None] | None:
        """Remove the call now; its handlers run in a task of the registry's (None if already ended)."""
        if self._calls.get(call.server_call_id) is not call:
            return None
        del self._calls[call.server_call_id]
        log.info("call ended", server_call_id=call.server_call_id, reason=reason)
        task = asyncio.get_running_loop().create_task(self._run_handlers(call, reason),
                                                      name=f"call-ended-{call.server_call_id}")
        self._ending[call.server_call_id] = task
        self._ending_tasks.add(task)
        task.add_done_callback(lambda t: self._ended(call.server_call_id, t))
        return task

    def _ended(self, server_call_id: str, task: asyncio.Task[None]) -> None:
        self._ending_tasks.discard(task)
        if self._ending.get(server_call_id) is task:
            del self._ending[server_call_id]

    async def _run_handlers(self, call: Call, reason: str) -> None:
        """Await every handler in order; one that raises is logged and the next still runs."""
        cancelled = False
        for handler in list(self._on_ended):
            name = getattr(handler, "__qualname__", repr(handler))
            try:
                await handler(call, reason)
            except asyncio.CancelledError:
                # only a loop shutting down cancels this task: the other handlers still run first
                cancelled = True
                log.warning("call-end handler cancelled", server_call_id=call.server_call_id, handler=name)
            except Exception:
                log.exception("call-end handler failed", server_call_id=call.server_call_id, reason=reason,
                              handler=name)
        if cancelled:
            raise asyncio.CancelledError

    def notify(self, server_call_id: str, notice: RecordingNotice) -> None:
        """Queue a recording-state notice to every gateway stream of the call (drops if a gateway is stuck)."""
        call = self._calls.get(server_call_id)
        if call is None:
            return
        for stream in call.streams.values():
            with contextlib.suppress(asyncio.QueueFull):
                stream.notices.put_nowait(notice)

    async def close(self, timeout: float = ENDING_WAIT_S) -> None:
        """Cancel pending grace timers and wait (at most `timeout` s) for calls still ending (shutdown)."""
        for call in self._calls.values():
            if call.grace_task is not None:
                call.grace_task.cancel()
        if self._ending_tasks:
            await asyncio.wait(set(self._ending_tasks), timeout=timeout)
