"""EventService: streams the durable event log to subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from callrec.api import convert
from callrec.api.errors import streaming
from callrec.core.errors import InvalidArgument, OutOfRange
from callrec.events.log import EventLog
from callrec.events.model import EventFilter, EventType
from callrec.v1 import events_pb2 as pb
from callrec.v1 import events_pb2_grpc


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """SubscribeEvents: replay from a cursor, then follow the log."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def _start_after(self, request: pb.SubscribeEventsRequest) -> int:
        last = self.log.last_sequence()
        if request.HasField("after_sequence"):
            after = request.after_sequence
            if after > last:
                raise OutOfRange(
                    f"after_sequence {after} is beyond the newest event ({last}); "
                    "resume with the sequence of the last event you received"
                )
            oldest = self.log.oldest_sequence()
            if after + 1 < oldest:
                raise OutOfRange(
                    f"events after {after} are no longer retained (oldest kept: {oldest}); "
                    "resubscribe with from_oldest=true and reconcile with ListRecordings"
                )
            return after
        return 0 if request.from_oldest else last

    @streaming
    async def SubscribeEvents(
        self, request: pb.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeEventsResponse]:
        known = {t.value for t in EventType}
        unknown = [t for t in request.event_types if t not in known]
        if unknown:
            raise InvalidArgument(f"unknown event_types {unknown}; known: {', '.join(sorted(known))}")
        flt = EventFilter(frozenset(request.event_types), request.server_call_id, request.recording_id)
        async for stored in self.log.follow(self._start_after(request), flt):
            yield pb.SubscribeEventsResponse(event=convert.event(stored))
