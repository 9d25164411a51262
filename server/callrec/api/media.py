"""MediaService: turns a gateway's bidirectional stream into call registry and ingest calls.

One reader task consumes the request iterator (the only way a bidi stream is read)
and queues what must go back; the handler's generator yields those, the call's
recording-state notices and an `ack` at least once a second.

Closing never awaits in a place a cancellation can cut: the reader closes the stream the
moment it reads `end` (so a gateway that cancels right after `end` cannot race it, and a new
`open` of the same call id that arrives later makes a new call), and the handler's `finally`
closes a broken stream synchronously. The call's ending runs in the call registry's own task;
the handler only waits for it (shielded) before the stream completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from callrec import metrics
from callrec.api import auth, convert
from callrec.api.errors import status_of
from callrec.api.forward import Forwarder, NodeAddress
from callrec.core.call_registry import Call, CallParticipant, CallRegistry, GatewayStream, RecordingNotice
from callrec.core.errors import CallrecError, InvalidArgument
from callrec.core.limits import check_batch
from callrec.core.ports import MediaIngest
from callrec.core.recording_registry import RecordingRegistry
from callrec.logs import get_logger
from callrec.v1 import media_pb2 as pb
from callrec.v1 import media_pb2_grpc

log = get_logger("api.media")

ACK_INTERVAL_S = 1.0
MAX_WARNINGS_PER_SECOND = 20


@dataclass
class _End:
    """The gateway sent `end`: the stream is closed already, `ending` runs the call's end if it was the last."""

    reason: str
    ack: pb.StreamMediaResponse
    """The last `ack`, taken before the stream's participants left the call."""
    ending: asyncio.Task[None] | None


@dataclass
class _Broken:
    """The gateway half-closed without `end`."""


_FRAMES_RECEIVED = {kind: metrics.FRAMES_RECEIVED.labels(kind) for kind in ("audio", "video")}

_Item = pb.StreamMediaResponse | _End | _Broken | CallrecError
"""What the reader and the notice forwarder queue for the handler."""


class _Session:
    """State of one StreamMedia stream."""

    def __init__(self, calls: CallRegistry, ingest: MediaIngest) -> None:
        self.calls = calls
        self.ingest = ingest
        self.call: Call | None = None
        self.stream: GatewayStream | None = None
        self.closed = False
        """The stream was closed with `end` (the handler must not close it again as broken)."""
        self.out: asyncio.Queue[_Item] = asyncio.Queue(2000)
        self.warning_window = 0.0
        self.warnings_in_window = 0
        self._accepted = {"audio": 0, "video": 0}
        """Frames accepted since the last `flush_counts()`, by kind (the metric is bumped once per message)."""

    def warn(self, participant_id: str, code: str, message: str) -> None:
        """Queue a warning, at most MAX_WARNINGS_PER_SECOND (the counters in `ack` carry the rest)."""
        now = time.monotonic()
        if now - self.warning_window >= 1.0:
            self.warning_window, self.warnings_in_window = now, 0
        if self.warnings_in_window >= MAX_WARNINGS_PER_SECOND:
            return
        self.warnings_in_window += 1
        with contextlib.suppress(asyncio.QueueFull):
            self.out.put_nowait(convert.warning(participant_id, code, message))

    def count(self, participant: CallParticipant, reason: str | None, kind: str) -> None:
        assert self.call is not None
        if reason is None:
            self._accepted[kind] += 1
            participant.stats.frames_received += 1
            self.call.stats.frames_received += 1
            return
        metrics.FRAMES_REJECTED.labels(kind, reason).inc()
        participant.stats.reject(reason)
        self.call.stats.reject(reason)
        self.warn(participant.participant_id, reason, f"{kind} frame rejected: {reason}")

    def flush_counts(self) -> None:
        """Add the frames accepted since the last call to `callrec_frames_received_total`: once per message,
        not per frame (a labelled counter takes a lock; a batch holds every participant's frame)."""
        for kind, accepted in self._accepted.items():
            if accepted:
                _FRAMES_RECEIVED[kind].inc(accepted)
                self._accepted[kind] = 0

    def ack(self) -> pb.StreamMediaResponse:
        assert self.call is not None and self.stream is not None
        return convert.ack(self.call, self.stream)


async def _prepend(
    first: pb.StreamMediaRequest, rest: AsyncIterator[pb.StreamMediaRequest]
) -> AsyncIterator[pb.StreamMediaRequest]:
    """The stream's messages with the first one, already read, in front again."""
    yield first
    async for request in rest:
        yield request


SERVICE = pb.DESCRIPTOR.services_by_name["MediaService"].full_name


class MediaServicer(media_pb2_grpc.MediaServiceServicer):
    """StreamMedia."""

    def __init__(self, calls: CallRegistry, recordings: RecordingRegistry, ingest: MediaIngest) -> None:
        self.calls = calls
        self.recordings = recordings
        self.ingest = ingest
        self.forwarder: Forwarder | None = None
        """Cluster mode: a stream of a call another live node owns is relayed to that node."""

    def _handle(self, s: _Session, req: pb.StreamMediaRequest) -> None:
        kind = req.WhichOneof("message")
        if kind is None:
            raise InvalidArgument(
                "empty StreamMediaRequest: set one of open, join, audio, video, media_batch, leave, end"
            )
        if s.call is None:
            if kind != "open":
                raise InvalidArgument(f"expected `open` as the first message of the stream, got `{kind}`")
            o = req.open
            auth.require_call(o.server_call_id)  # a gateway token limited to calls opens only those
            s.call, s.stream = self.calls.open(o.server_call_id, o.call_id, o.gateway_id)
            in_progress = self.recordings.in_progress_for_call(o.server_call_id)
            s.out.put_nowait(convert.opened(o.server_call_id, s.stream.connection_id, in_progress))
            return
        assert s.stream is not None
        call, stream = s.call, s.stream
        if kind == "open":
            raise InvalidArgument("`open` was already sent on this stream; send it exactly once, first")
        if kind == "audio":
            self._audio(s, call, stream, req.audio)
        elif kind == "media_batch":
            batch = req.media_batch
            check_batch(len(batch.audio), len(batch.video), self.calls.limits)
            for frame in batch.audio:
                self._audio(s, call, stream, frame)
            for video_frame in batch.video:
                self._video(s, call, stream, video_frame)
        elif kind == "video":
            self._video(s, call, stream, req.video)
        elif kind == "join":
            j = req.join
            audio = convert.audio_format(j.audio_format) if j.HasField("audio_format") else None
            video = convert.video_format(j.video_format) if j.HasField("video_format") else None
            p = self.calls.join(call, stream, j.participant_id, j.display_name, audio, video)
            self.ingest.joined(call, p)
        elif kind == "leave":
            p = self.calls.leave(call, stream, req.leave.participant_id)
            self.ingest.left(call, p)
        elif kind == "end":
            last_ack = s.ack()
            s.closed = True
            ending = self.calls.end_stream(call, stream, graceful=True)
            raise _EndOfStream(_End(req.end.reason, last_ack, ending))

    def _audio(self, s: _Session, call: Call, stream: GatewayStream, f: pb.AudioFrame) -> None:
        p = self.calls.participant(call, stream, f.participant_id, "audio frame")
        reason = self.ingest.audio(call, p, f.sequence, f.timestamp_us, f.data)
        p.last_audio_sequence = max(p.last_audio_sequence, f.sequence)
        s.count(p, reason, "audio")

    def _video(self, s: _Session, call: Call, stream: GatewayStream, v: pb.VideoFrame) -> None:
        p = self.calls.participant(call, stream, v.participant_id, "video frame")
        reason = self.ingest.video(call, p, v.sequence, v.timestamp_us, v.data, v.keyframe, v.width, v.height)
        p.last_video_sequence = max(p.last_video_sequence, v.sequence)
        s.count(p, reason, "video")

    def _open_deadline(self, s: _Session) -> asyncio.TimerHandle:
        """Close a stream that has not sent `open` within `[limits] open_timeout_s` (it holds a slot)."""
        timeout = self.calls.limits.open_timeout_s

        def expire() -> None:
            if s.call is None:
                with contextlib.suppress(asyncio.QueueFull):
                    s.out.put_nowait(InvalidArgument(
                        f"no `open` within {timeout:g} s ([limits] open_timeout_s): send `open` first"
                    ))

        return asyncio.get_running_loop().call_later(timeout, expire)

    async def _read(self, s: _Session, requests: AsyncIterator[pb.StreamMediaRequest]) -> None:
        try:
            async for req in requests:
                if s.call is None and req.HasField("open"):
                    await self._open(s, req)
                    continue
                try:
                    self._handle(s, req)
                finally:
                    s.flush_counts()
            await s.out.put(_Broken())
        except _EndOfStream as end:
            await s.out.put(end.end)
        except CallrecError as exc:
            await s.out.put(exc)

    async def _open(self, s: _Session, req: pb.StreamMediaRequest) -> None:
        """`open`: after the call's previous ending, and in cluster mode after this node became its owner
        (taking over a dead node's recordings of it). A token's call limit is checked before anything is
        claimed, and a claim whose `open` is then refused (a limit, a bad id) is given back at once: a
        refused open must not keep a call on this node."""
        call_id = req.open.server_call_id
        auth.require_call(call_id)
        await self.calls.wait_ended(call_id)
        await self.calls.claim(call_id)  # cluster mode: one owner per call
        try:
            await self.recordings.take_over(call_id)  # ... and a dead node's recordings of it
            self._handle(s, req)
        except BaseException:
            if self.calls.get(call_id) is None:
                await asyncio.shield(self.calls.release(call_id))
            raise

    async def _forward_notices(self, s: _Session) -> None:
        while s.stream is None:
            await asyncio.sleep(0.05)
        while True:
            notice: RecordingNotice = await s.stream.notices.get()
            await s.out.put(convert.recording_state(notice))

    async def StreamMedia(
        self, request_iterator: AsyncIterator[pb.StreamMediaRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamMediaResponse]:
        try:
            self.calls.admit_stream()
        except CallrecError as exc:
            await context.abort(status_of(exc), exc.message)
        try:
            requests: AsyncIterator[pb.StreamMediaRequest] = request_iterator
            if self.forwarder is not None and not Forwarder.was_forwarded(context):
                first, owner = await self._owner_of_stream(request_iterator, context)
                if first is None:
                    return
                if owner is not None:
                    log.info("relaying a stream to the call's owner", server_call_id=first.open.server_call_id,
                             node=owner.node_id)
                    async for response in self.forwarder.bidi(owner, f"/{SERVICE}/StreamMedia", first,
                                                              request_iterator, pb.StreamMediaResponse, context):
                        yield response
                    return
                requests = _prepend(first, request_iterator)
            async for response in self._serve(requests, context):
                yield response
        finally:
            self.calls.release_stream()

    async def _owner_of_stream(
        self, requests: AsyncIterator[pb.StreamMediaRequest], context: grpc.aio.ServicerContext
    ) -> tuple[pb.StreamMediaRequest | None, NodeAddress | None]:
        """Cluster mode: the stream's first message and, when it opens a call another live node owns, that
        node (the proxy hashed the call elsewhere, e.g. after its first node came back). Aborts as the
        local path would for a stream that sends nothing, or not `open`, within `open_timeout_s`."""
        assert self.forwarder is not None
        timeout = self.calls.limits.open_timeout_s
        try:
            first = await asyncio.wait_for(anext(aiter(requests), None), timeout)
        except TimeoutError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"no `open` within {timeout:g} s ([limits] open_timeout_s): send `open` first")
            raise AssertionError("unreachable") from None
        if first is None or not first.HasField("open") or not first.open.server_call_id:
            return first, None  # the local path answers it (an empty stream, or a wrong first message)
        call_id = first.open.server_call_id
        try:
            auth.require_call(call_id)
            self.calls.check_id(call_id, "open.server_call_id")
            if self.calls.get(call_id) is not None:
                return first, None  # open here: ours
            owner = await self.forwarder.locator.node_of_call(call_id)
            if owner is None:
                owner = await self._spare_node(call_id)
            return first, owner
        except CallrecError as exc:
            await context.abort(status_of(exc), exc.message)
            raise AssertionError("unreachable") from None

    async def _spare_node(self, call_id: str) -> NodeAddress | None:
        """A new call that lands on a full node (the proxy hashes calls, it does not weigh them) goes to
        the least loaded node under the ceiling, if any: relayed there, it becomes that node's call. None
        (answer here, which refuses it with RESOURCE_EXHAUSTED) when this node has room or all are full."""
        admission = self.calls.admission
        if admission is None or self.forwarder is None or not admission.full():
            return None
        spare = await self.forwarder.locator.least_loaded(admission.capacity.ceiling)
        if spare is not None:
            log.info("this node is full: the new call goes to a node with room", server_call_id=call_id,
                     node=spare.node_id, load=round(admission.load(), 2))
        return spare

    async def _serve(
        self, request_iterator: AsyncIterator[pb.StreamMediaRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamMediaResponse]:
        s = _Session(self.calls, self.ingest)
        open_deadline = self._open_deadline(s)
        reader = asyncio.create_task(self._read(s, request_iterator))
        notices = asyncio.create_task(self._forward_notices(s))
        failure: CallrecError | None = None
        opened = False  # acks only after `opened`, which is always the first response
        last_ack = time.monotonic()
        try:
            while True:
                timeout = ACK_INTERVAL_S - (time.monotonic() - last_ack)
                item: _Item | None = None
                if not s.out.empty():
                    item = s.out.get_nowait()
                elif timeout > 0:  # with no time left, wait_for would cancel the get before it ran
                    with contextlib.suppress(TimeoutError):
                        item = await asyncio.wait_for(s.out.get(), timeout=timeout)
                if time.monotonic() - last_ack >= ACK_INTERVAL_S:
                    last_ack = time.monotonic()
                    if opened:
                        yield s.ack()
                if item is None:
                    continue
                if isinstance(item, _End):
                    yield item.ack
                    log.info("gateway ended stream", reason=item.reason[:256],
                             server_call_id=s.call.server_call_id if s.call else None)
                    if item.ending is not None:
                        await asyncio.shield(item.ending)  # a cancelled stream leaves it running
                    return
                if isinstance(item, _Broken):
                    return
                if isinstance(item, CallrecError):
                    failure = item
                    break
                opened = opened or item.HasField("opened")
                yield item
        finally:
            open_deadline.cancel()
            reader.cancel()
            notices.cancel()
            if s.call is not None and s.stream is not None and not s.closed:
                self.calls.end_stream(s.call, s.stream, graceful=False)  # awaits nothing: cannot be cut
        if failure is not None:
            log.warning("stream rejected", error=failure.message)
            await context.abort(status_of(failure), failure.message)


class _EndOfStream(Exception):
    """Raised by the reader when the gateway sends `end` (the stream is closed by then)."""

    def __init__(self, end: _End) -> None:
        super().__init__(end.reason)
        self.end = end

