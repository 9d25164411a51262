"""`AcsRecordingEvents`: core's `RecordingEventsPort`, rendered in ACS's shapes into the durable log.

Core says what happened to a recording (state changed, files stored, failed); this
module turns it into the ACS Event Grid documents of `events.acs` and appends them to
the `EventLog`, so core knows neither JSON shapes nor the log.
"""

from __future__ import annotations

from callrec.core.recording_state import Recording
from callrec.events import acs
from callrec.events.log import EventLogPort

__all__ = ["AcsRecordingEvents"]


class AcsRecordingEvents:
    """Publishes recording events to the event log (implements `core.ports.RecordingEventsPort`)."""

    def __init__(self, log: EventLogPort, resource_id: str) -> None:
        self.log = log
        self.resource_id = resource_id

    async def state_changed(self, rec: Recording, active: bool) -> None:
        """Microsoft.Communication.RecordingStateChanged."""
        await self.log.append(
            acs.recording_state_changed(
                recording_id=rec.recording_id,
                server_call_id=rec.server_call_id,
                call_id=rec.call_id,
                call_connection_id=rec.call_connection_id,
                active=active,
                start_time=rec.start_time,
                operation_context=rec.options.operation_context,
            )
        )

    async def file_status_updated(self, rec: Recording) -> None:
        """Microsoft.Communication.RecordingFileStatusUpdated, listing every chunk."""
        opts = rec.options
        await self.log.append(
            acs.recording_file_status_updated(
                topic=self.resource_id,
                recording_id=rec.recording_id,
                server_call_id=rec.server_call_id,
                call_id=rec.call_id,
                chunks=[
                    {
                        "documentId": c.document_id,
                        "index": c.index,
                        "endReason": c.end_reason.value,
                        "metadataLocation": c.metadata_location,
                        "contentLocation": c.content_location,
                        "deleteLocation": c.delete_location,
                    }
                    for c in rec.chunks
                ],
                start_time=rec.start_time,
                duration_ms=int(rec.duration.total_seconds() * 1000),
                session_end_reason=rec.session_end_reason,
                content_type=opts.content_type.value,
                channel_type=opts.channel_type.value,
                format=opts.format.value,
            )
        )

    async def failed(self, rec: Recording, code: int, message: str) -> None:
        """Microsoft.Communication.StartRecordingFailed with the failure's code and message."""
        await self.log.append(
            acs.recording_failed(
                recording_id=rec.recording_id,
                server_call_id=rec.server_call_id,
                call_id=rec.call_id,
                call_connection_id=rec.call_connection_id,
                code=code,
                message=message,
                operation_context=rec.options.operation_context,
            )
        )
