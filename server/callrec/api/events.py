"""EventService: streams the durable event log to subscribers.

The handler writes with `context.write` rather than yielding, so it can notice, while a write is held
by gRPC's flow control (the client is not reading), that the subscription overflowed, and end it with
RESOURCE_EXHAUSTED at once: the subscriber's slot and queue are freed then, not when (if ever) the
client reads again. Filters are held to the `[limits]` input limits (list length, id bytes) before
they reach SQL or an error message.
"""

from __future__ import annotations

import asyncio

import grpc

from callrec.api import auth, convert
from callrec.api.errors import status_of
from callrec.core.errors import CallrecError, InvalidArgument, OutOfRange
from callrec.core.limits import Limits, check_items, check_text
from callrec.events.log import EventLogPort, EventSubscription
from callrec.events.model import EventFilter, EventType
from callrec.v1 import events_pb2 as pb
from callrec.v1 import events_pb2_grpc


def _ignore_result(task: asyncio.Future[None]) -> None:
    """Retrieve the outcome of a write abandoned when its subscription ended (no 'never retrieved')."""
    if not task.cancelled():
        task.exception()


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """SubscribeEvents: replay from a cursor, then follow the log."""

    def __init__(self, log: EventLogPort, limits: Limits | None = None) -> None:
        self.log = log
        self.limits = limits or Limits()

    async def _start_after(self, request: pb.SubscribeEventsRequest) -> int:
        last = await self.log.last_sequence()
        oldest = await self.log.oldest_sequence()
        if request.HasField("after_sequence"):
            after = request.after_sequence
            if after > last:
                raise OutOfRange(
                    f"after_sequence {after} is beyond the newest event ({last}); "
                    "resume with the sequence of the last event you received"
                )
            if after + 1 < oldest:
                raise OutOfRange(
                    f"events after {after} are no longer retained (oldest kept: {oldest}); "
                    "resubscribe with from_oldest=true and reconcile with ListRecordings"
                )
            return after
        # from_oldest starts just before the oldest retained event (not at 0), so a resume point named
        # before anything was delivered is still retained.
        return oldest - 1 if request.from_oldest else last

    def _filter(self, request: pb.SubscribeEventsRequest) -> EventFilter:
        """The request's filters, held to the input limits before anything echoes them."""
        check_items(request.event_types, "event_types", self.limits.max_list_items)
        for value in request.event_types:
            check_text(value, "an entry of event_types", self.limits.max_id_bytes, "max_id_bytes")
        check_text(request.server_call_id, "server_call_id", self.limits.max_id_bytes, "max_id_bytes")
        check_text(request.recording_id, "recording_id", self.limits.max_id_bytes, "max_id_bytes")
        known = {t.value for t in EventType}
        unknown = [t for t in request.event_types if t not in known]
        if unknown:
            raise InvalidArgument(f"unknown event_types {unknown}; known: {', '.join(sorted(known))}")
        return EventFilter(frozenset(request.event_types), request.server_call_id, request.recording_id)

    async def SubscribeEvents(self, request: pb.SubscribeEventsRequest, context: grpc.aio.ServicerContext) -> None:
        """Stream matching events until the client cancels (or the subscription overflows)."""
        try:
            flt = self._filter(request)
            auth.require_call(request.server_call_id)  # a call-limited token subscribes to one of its calls
            with self.log.subscribe(await self._start_after(request), flt) as sub:
                await self._stream(sub, context)
        except CallrecError as exc:
            await context.abort(status_of(exc), exc.message)

    @staticmethod
    async def _stream(sub: EventSubscription, context: grpc.aio.ServicerContext) -> None:
        ended = asyncio.ensure_future(sub.wait_ended())
        try:
            while True:
                stored = await sub.next()
                write = asyncio.ensure_future(context.write(pb.SubscribeEventsResponse(event=convert.event(stored))))
                # Handed to gRPC: a started write is sent before any status that follows it.
                sub.delivered = stored.sequence
                await asyncio.wait((write, ended), return_when=asyncio.FIRST_COMPLETED)
                if not write.done():  # the client stopped reading long enough to overflow the queue
                    write.add_done_callback(_ignore_result)
                    raise sub.overflow_error()
                write.result()
        finally:
            ended.cancel()
