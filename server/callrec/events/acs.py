"""Renders events as the JSON that ACS delivers (Event Grid and CloudEvents shapes).

Validated in the tests against ../shared/schemas and the copies in callrec/schemas.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from callrec.events.model import EventType, NewEvent

#: Event `data` enum spellings (PascalCase) by the metadata spellings used in core.
_PASCAL = {
    "audio": "Audio",
    "audioVideo": "AudioVideo",
    "mixed": "Mixed",
    "unmixed": "Unmixed",
    "wav": "Wav",
    "mp3": "Mp3",
    "mp4": "Mp4",
}


def acs_time(value: datetime) -> str:
    """RFC 3339 UTC with 7 fractional digits, as ACS writes times."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}0Z"


def recording_subject(call_id: str, server_call_id: str, recording_id: str) -> str:
    """The Event Grid subject of a recording's events."""
    return f"/recording/call/{call_id}/serverCallId/{server_call_id}/recordingId/{recording_id}"


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def _cloud_event(
    event_type: EventType,
    *,
    recording_id: str,
    server_call_id: str,
    call_id: str,
    call_connection_id: str,
    data: dict[str, Any],
    operation_context: str,
    payload: dict[str, Any],
    now: datetime | None,
) -> NewEvent:
    """A Call Automation CloudEvent about a recording: the common data fields plus `data`."""
    now = now or datetime.now(UTC)
    event_id = str(uuid.uuid4())
    where = f"calling/recordings/{server_call_id}/recordingId/{recording_id}"
    body: dict[str, Any] = {
        "callConnectionId": call_connection_id,
        "serverCallId": server_call_id,
        "correlationId": call_id,
        "recordingId": recording_id,
        **data,
    }
    if operation_context:
        body["operationContext"] = operation_context
    doc = {
        "id": event_id,
        "source": f"{where}/{event_type.value.rsplit('.', 1)[-1]}",
        "type": event_type.value,
        "data": body,
        "time": acs_time(now),
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": where,
    }
    return NewEvent(
        id=event_id,
        event_type=event_type,
        subject=recording_subject(call_id, server_call_id, recording_id),
        server_call_id=server_call_id,
        recording_id=recording_id,
        event_time=now,
        payload=payload,
        json=_dumps(doc),
    )


def recording_state_changed(
    *,
    recording_id: str,
    server_call_id: str,
    call_id: str,
    call_connection_id: str,
    active: bool,
    start_time: datetime,
    operation_context: str = "",
    now: datetime | None = None,
) -> NewEvent:
    """Microsoft.Communication.RecordingStateChanged (CloudEvent), on start, pause, resume and stop."""
    return _cloud_event(
        EventType.RECORDING_STATE_CHANGED,
        recording_id=recording_id,
        server_call_id=server_call_id,
        call_id=call_id,
        call_connection_id=call_connection_id,
        data={
            "state": "active" if active else "inactive",
            "startDateTime": acs_time(start_time),
            "recordingKind": "azureCommunicationServices",
        },
        operation_context=operation_context,
        payload={
            "recording_id": recording_id,
            "server_call_id": server_call_id,
            "call_connection_id": call_connection_id,
            "correlation_id": call_id,
            "active": active,
            "start_time": start_time.isoformat(),
        },
        now=now,
    )


def recording_file_status_updated(
    *,
    topic: str,
    recording_id: str,
    server_call_id: str,
    call_id: str,
    chunks: Sequence[dict[str, Any]],
    start_time: datetime,
    duration_ms: int,
    session_end_reason: str,
    content_type: str,
    channel_type: str,
    format: str,
    now: datetime | None = None,
) -> NewEvent:
    """Microsoft.Communication.RecordingFileStatusUpdated (Event Grid), once every chunk is stored.

    `chunks` items have documentId, index, endReason, metadataLocation,
    contentLocation and deleteLocation; content/channel/format use the metadata
    spellings ("audio", "mixed", "wav").
    """
    now = now or datetime.now(UTC)
    event_id = str(uuid.uuid4())
    subject = recording_subject(call_id, server_call_id, recording_id)
    data = {
        "recordingStorageInfo": {"recordingChunks": [dict(c) for c in chunks]},
        "recordingStartTime": acs_time(start_time),
        "recordingDurationMs": int(duration_ms),
        "recordingContentType": _PASCAL[content_type],
        "recordingChannelType": _PASCAL[channel_type],
        "recordingFormatType": _PASCAL[format],
        "sessionEndReason": session_end_reason,
    }
    doc = {
        "id": event_id,
        "topic": topic,
        "subject": subject,
        "data": data,
        "eventType": EventType.RECORDING_FILE_STATUS_UPDATED.value,
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": acs_time(now),
    }
    payload = {
        "recording_id": recording_id,
        "server_call_id": server_call_id,
        "call_id": call_id,
        "chunks": [dict(c) for c in chunks],
        "start_time": start_time.isoformat(),
        "duration_ms": int(duration_ms),
        "session_end_reason": session_end_reason,
        "content_type": content_type,
        "channel_type": channel_type,
        "format": format,
    }
    return NewEvent(
        id=event_id,
        event_type=EventType.RECORDING_FILE_STATUS_UPDATED,
        subject=subject,
        server_call_id=server_call_id,
        recording_id=recording_id,
        event_time=now,
        payload=payload,
        json=_dumps(doc),
    )


def recording_failed(
    *,
    recording_id: str,
    server_call_id: str,
    call_id: str,
    call_connection_id: str,
    code: int,
    message: str,
    operation_context: str = "",
    now: datetime | None = None,
) -> NewEvent:
    """Microsoft.Communication.StartRecordingFailed (CloudEvent): a recording could not be made."""
    return _cloud_event(
        EventType.RECORDING_FAILED,
        recording_id=recording_id,
        server_call_id=server_call_id,
        call_id=call_id,
        call_connection_id=call_connection_id,
        data={"resultInformation": {"code": 500, "subCode": int(code), "message": message}},
        operation_context=operation_context,
        payload={
            "recording_id": recording_id,
            "server_call_id": server_call_id,
            "call_id": call_id,
            "code": int(code),
            "message": message,
        },
        now=now,
    )
