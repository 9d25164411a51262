"""The only module that knows both protobuf messages and core types."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from callrec.core.call_registry import Call, GatewayStream, RecordingNotice
from callrec.core.errors import InvalidArgument
from callrec.core.model import (
    AudioEncoding,
    AudioFormat,
    ChannelPin,
    ChannelType,
    ContentType,
    ExternalStorage,
    Format,
    PauseMode,
    RecordingOptions,
    RecordingState,
    VideoEncoding,
    VideoFormat,
)
from callrec.core.recording_state import Recording
from callrec.core.upload_admin import UploadInfo, UploadState
from callrec.events.model import EventType, StoredEvent
from callrec.security.redact import redact_url
from callrec.v1 import events_pb2, media_pb2, recording_pb2, uploads_pb2

pb = recording_pb2

CONTENT_TYPES = {
    pb.RECORDING_CONTENT_TYPE_UNSPECIFIED: ContentType.AUDIO_VIDEO,
    pb.RECORDING_CONTENT_TYPE_AUDIO: ContentType.AUDIO,
    pb.RECORDING_CONTENT_TYPE_AUDIO_VIDEO: ContentType.AUDIO_VIDEO,
}
CHANNEL_TYPES = {
    pb.RECORDING_CHANNEL_TYPE_UNSPECIFIED: ChannelType.MIXED,
    pb.RECORDING_CHANNEL_TYPE_MIXED: ChannelType.MIXED,
    pb.RECORDING_CHANNEL_TYPE_UNMIXED: ChannelType.UNMIXED,
}
FORMATS = {
    pb.RECORDING_FORMAT_UNSPECIFIED: Format.MP4,
    pb.RECORDING_FORMAT_WAV: Format.WAV,
    pb.RECORDING_FORMAT_MP3: Format.MP3,
    pb.RECORDING_FORMAT_MP4: Format.MP4,
}
PAUSE_MODES = {
    pb.PAUSE_MODE_UNSPECIFIED: PauseMode.SKIP,
    pb.PAUSE_MODE_SKIP: PauseMode.SKIP,
    pb.PAUSE_MODE_SILENCE: PauseMode.SILENCE,
}
EXTERNAL_KINDS = {pb.EXTERNAL_STORAGE_KIND_S3: "s3", pb.EXTERNAL_STORAGE_KIND_AZURE_BLOB: "azure_blob"}
STATES = {
    RecordingState.ACTIVE: pb.RECORDING_STATE_ACTIVE,
    RecordingState.INACTIVE: pb.RECORDING_STATE_INACTIVE,
    RecordingState.STOPPING: pb.RECORDING_STATE_STOPPING,
    RecordingState.COMPLETED: pb.RECORDING_STATE_COMPLETED,
    RecordingState.FAILED: pb.RECORDING_STATE_FAILED,
}
STATES_FROM_PB = {v: k for k, v in STATES.items()}
AUDIO_ENCODINGS = {
    media_pb2.AUDIO_ENCODING_PCM16LE: AudioEncoding.PCM16LE,
    media_pb2.AUDIO_ENCODING_PCMU: AudioEncoding.PCMU,
    media_pb2.AUDIO_ENCODING_PCMA: AudioEncoding.PCMA,
    media_pb2.AUDIO_ENCODING_OPUS: AudioEncoding.OPUS,
}
VIDEO_ENCODINGS = {
    media_pb2.VIDEO_ENCODING_I420: VideoEncoding.I420,
    media_pb2.VIDEO_ENCODING_H264: VideoEncoding.H264,
    media_pb2.VIDEO_ENCODING_VP8: VideoEncoding.VP8,
}


_PbEnum = TypeVar("_PbEnum", bound=int)
_CoreValue = TypeVar("_CoreValue")


def _enum(table: Mapping[_PbEnum, _CoreValue], value: _PbEnum, field: str, enum_type: EnumTypeWrapper) -> _CoreValue:
    """Look up an enum value, rejecting numbers this server does not know."""
    if value not in table:
        names = ", ".join(n for n, v in enum_type.items() if v in table)
        raise InvalidArgument(f"{field}: unknown value {value}; expected one of {names}")
    return table[value]


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """datetime (UTC) -> Timestamp."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def duration(value: timedelta) -> duration_pb2.Duration:
    """timedelta -> Duration."""
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def start_options(req: recording_pb2.StartRecordingRequest) -> RecordingOptions:
    """StartRecordingRequest -> RecordingOptions with defaults resolved (values validated in core)."""
    external = None
    if req.HasField("external_storage"):
        kind = req.external_storage.kind
        if kind not in EXTERNAL_KINDS:
            raise InvalidArgument(
                "external_storage.kind must be EXTERNAL_STORAGE_KIND_S3 or EXTERNAL_STORAGE_KIND_AZURE_BLOB"
            )
        external = ExternalStorage(EXTERNAL_KINDS[kind], req.external_storage.container_url)
    chunk_max = timedelta(hours=4)
    if req.HasField("chunk_max_duration"):
        chunk_max = req.chunk_max_duration.ToTimedelta()
    return RecordingOptions(
        content_type=_enum(CONTENT_TYPES, req.content_type, "content_type", pb.RecordingContentType),
        channel_type=_enum(CHANNEL_TYPES, req.channel_type, "channel_type", pb.RecordingChannelType),
        format=_enum(FORMATS, req.format, "format", pb.RecordingFormat),
        audio_channel_participant_ordering=tuple(req.audio_channel_participant_ordering),
        channel_affinity=tuple(ChannelPin(a.channel, a.participant_id) for a in req.channel_affinity),
        pause_on_start=req.pause_on_start,
        pause_mode=_enum(PAUSE_MODES, req.pause_mode, "pause_mode", pb.PauseMode),
        destination=req.destination,
        external_storage=external,
        chunk_max_duration=chunk_max,
        chunk_max_bytes=req.chunk_max_bytes,
        request_id=req.request_id,
        unmixed_max_channels=req.unmixed_max_channels or 5,
        operation_context=req.operation_context,
    )


def state_filter(value: recording_pb2.RecordingState) -> RecordingState | None:
    """ListRecordingsRequest.state -> filter (None = any)."""
    if value == pb.RECORDING_STATE_UNSPECIFIED:
        return None
    if value not in STATES_FROM_PB:
        raise InvalidArgument(f"state: unknown value {value}; expected a RecordingState or UNSPECIFIED for any")
    return STATES_FROM_PB[value]


def _redact(url: str) -> str:
    """Drop query strings (SAS tokens), user-info and fragments from URLs shown back to clients."""
    return redact_url(url)


def recording(rec: Recording) -> recording_pb2.Recording:
    """Recording entity -> protobuf resource."""
    o = rec.options
    msg = pb.Recording(
        recording_id=rec.recording_id,
        server_call_id=rec.server_call_id,
        call_id=rec.call_id,
        state=STATES[rec.state],
        content_type={v: k for k, v in CONTENT_TYPES.items() if k}[o.content_type],
        channel_type={v: k for k, v in CHANNEL_TYPES.items() if k}[o.channel_type],
        format={v: k for k, v in FORMATS.items() if k}[o.format],
        audio_channel_participant_ordering=o.audio_channel_participant_ordering,
        channel_affinity=[pb.ChannelAffinity(channel=p.channel, participant_id=p.participant_id)
                          for p in o.channel_affinity],
        pause_on_start=o.pause_on_start,
        pause_mode={v: k for k, v in PAUSE_MODES.items() if k}[o.pause_mode],
        destination=o.destination,
        chunk_max_duration=duration(o.chunk_max_duration),
        chunk_max_bytes=o.chunk_max_bytes,
        request_id=o.request_id,
        unmixed_max_channels=o.unmixed_max_channels,
        start_time=timestamp(rec.start_time),
        duration=duration(rec.duration),
        session_end_reason=rec.session_end_reason,
        operation_context=o.operation_context,
    )
    if o.external_storage is not None:
        kind = {v: k for k, v in EXTERNAL_KINDS.items()}[o.external_storage.kind]
        url = _redact(o.external_storage.container_url)
        msg.external_storage.CopyFrom(pb.ExternalStorage(kind=kind, container_url=url))
    for p in rec.pause_intervals:
        interval = msg.pause_intervals.add(start_time=timestamp(p.start_time))
        if p.duration is not None:
            interval.duration.CopyFrom(duration(p.duration))
    for part in rec.participants:
        msg.participants.add(participant_id=part.participant_id, display_name=part.display_name, channel=part.channel)
    for c in rec.chunks:
        msg.chunks.add(
            document_id=c.document_id,
            index=c.index,
            end_reason=c.end_reason.value,
            metadata_location=c.metadata_location,
            content_location=c.content_location,
            delete_location=c.delete_location,
        )
    if rec.error is not None:
        msg.error.CopyFrom(pb.RecordingError(code=rec.error.code, message=rec.error.message))
    stats = rec.media_stats
    msg.media_stats.CopyFrom(
        pb.MediaStats(
            frames_received=stats.frames_received,
            frames_rejected_by_reason=stats.frames_rejected_by_reason,
            frames_late=stats.frames_late,
            gap_fill_ms=stats.gap_fill_ms,
        )
    )
    if rec.stop_time is not None:
        msg.stop_time.CopyFrom(timestamp(rec.stop_time))
    return msg


def audio_format(msg: media_pb2.AudioFormat) -> AudioFormat:
    """join.audio_format -> AudioFormat, with rates and channels checked per codec."""
    encoding = _enum(AUDIO_ENCODINGS, msg.encoding, "join.audio_format.encoding", media_pb2.AudioEncoding)
    channels = msg.channels or 1
    if channels not in (1, 2):
        raise InvalidArgument(f"join.audio_format.channels must be 1 or 2; got {msg.channels}")
    if encoding is AudioEncoding.PCM16LE:
        rate = msg.sample_rate
        if not 8000 <= rate <= 48000:
            raise InvalidArgument(f"join.audio_format.sample_rate must be 8000-48000 Hz for PCM16LE; got {rate}")
    elif encoding is AudioEncoding.OPUS:
        rate = msg.sample_rate or 48000
    else:
        rate = msg.sample_rate or 8000
        if rate != 8000 or channels != 1:
            raise InvalidArgument("join.audio_format: PCMU/PCMA are 8000 Hz mono (sample_rate 8000 or 0, channels 1)")
    return AudioFormat(encoding, rate, channels)


def video_format(msg: media_pb2.VideoFormat) -> VideoFormat:
    """join.video_format -> VideoFormat."""
    encoding = _enum(VIDEO_ENCODINGS, msg.encoding, "join.video_format.encoding", media_pb2.VideoEncoding)
    return VideoFormat(encoding, msg.width, msg.height)


def event(stored: StoredEvent) -> events_pb2.Event:
    """A logged event -> protobuf Event with its typed payload."""
    e = stored.event
    p = e.payload
    msg = events_pb2.Event(
        sequence=stored.sequence,
        id=e.id,
        event_type=e.event_type.value,
        subject=e.subject,
        event_time=timestamp(e.event_time),
        json=e.json,
    )
    if e.event_type is EventType.RECORDING_STATE_CHANGED:
        msg.recording_state_changed.CopyFrom(
            events_pb2.RecordingStateChangedEvent(
                recording_id=p["recording_id"],
                server_call_id=p["server_call_id"],
                call_connection_id=p["call_connection_id"],
                correlation_id=p["correlation_id"],
                state=pb.RECORDING_STATE_ACTIVE if p["active"] else pb.RECORDING_STATE_INACTIVE,
                start_time=timestamp(datetime.fromisoformat(p["start_time"])),
            )
        )
    elif e.event_type is EventType.RECORDING_FILE_STATUS_UPDATED:
        body = events_pb2.RecordingFileStatusUpdatedEvent(
            recording_id=p["recording_id"],
            server_call_id=p["server_call_id"],
            call_id=p["call_id"],
            recording_start_time=timestamp(datetime.fromisoformat(p["start_time"])),
            recording_duration=duration(timedelta(milliseconds=p["duration_ms"])),
            session_end_reason=p["session_end_reason"],
            content_type={v: k for k, v in CONTENT_TYPES.items() if k}[ContentType(p["content_type"])],
            channel_type={v: k for k, v in CHANNEL_TYPES.items() if k}[ChannelType(p["channel_type"])],
            format={v: k for k, v in FORMATS.items() if k}[Format(p["format"])],
        )
        for c in p["chunks"]:
            body.chunks.add(
                document_id=c["documentId"],
                index=c["index"],
                end_reason=c["endReason"],
                metadata_location=c["metadataLocation"],
                content_location=c["contentLocation"],
                delete_location=c["deleteLocation"],
            )
        msg.recording_file_status_updated.CopyFrom(body)
    elif e.event_type is EventType.RECORDING_FAILED:
        msg.recording_failed.CopyFrom(
            events_pb2.RecordingFailedEvent(
                recording_id=p["recording_id"],
                server_call_id=p["server_call_id"],
                call_id=p["call_id"],
                error=pb.RecordingError(code=p["code"], message=p["message"]),
            )
        )
    return msg


# -- MediaService responses ----------------------------------------------------------------------


def opened(server_call_id: str, connection_id: str, in_progress: Recording | None) -> media_pb2.StreamMediaResponse:
    """`opened`: the stream's call connection id and the call's recording in progress, if any."""
    return media_pb2.StreamMediaResponse(opened=media_pb2.StreamOpened(
        server_call_id=server_call_id,
        call_connection_id=connection_id,
        recordings=[recording(in_progress)] if in_progress else [],
    ))


def ack(call: Call, stream: GatewayStream) -> media_pb2.StreamMediaResponse:
    """`ack`: per participant of the stream, the last sequences and the receive counters."""
    acks = []
    for pid in sorted(stream.participant_ids):
        p = call.participants.get(pid)
        if p is None:
            continue
        acks.append(media_pb2.ParticipantAck(
            participant_id=pid,
            last_audio_sequence=p.last_audio_sequence,
            last_video_sequence=p.last_video_sequence,
            received=p.stats.frames_received,
            rejected_by_reason=p.stats.frames_rejected_by_reason,
        ))
    return media_pb2.StreamMediaResponse(ack=media_pb2.MediaAck(participants=acks))


def warning(participant_id: str, code: str, message: str) -> media_pb2.StreamMediaResponse:
    """`warning`: one rejected frame or a problem the gateway should know of."""
    return media_pb2.StreamMediaResponse(
        warning=media_pb2.MediaWarning(participant_id=participant_id, code=code, message=message))


def recording_state(notice: RecordingNotice) -> media_pb2.StreamMediaResponse:
    """`recording_state`: a recording of the call changed state."""
    return media_pb2.StreamMediaResponse(recording_state=media_pb2.RecordingStateUpdate(
        recording_id=notice.recording_id, state=STATES[notice.state]))


# -- UploadService -------------------------------------------------------------------------------

UPLOAD_STATES = {
    UploadState.PENDING: uploads_pb2.UPLOAD_STATE_PENDING,
    UploadState.STORED: uploads_pb2.UPLOAD_STATE_STORED,
    UploadState.FAILED: uploads_pb2.UPLOAD_STATE_FAILED,
}
UPLOAD_STATES_FROM_PB = {v: k for k, v in UPLOAD_STATES.items()}


def upload_state_filter(value: uploads_pb2.UploadState) -> UploadState | None:
    """ListUploadsRequest.state -> filter (None = any)."""
    if value == uploads_pb2.UPLOAD_STATE_UNSPECIFIED:
        return None
    return _enum(UPLOAD_STATES_FROM_PB, value, "state", uploads_pb2.UploadState)


def upload(info: UploadInfo) -> uploads_pb2.Upload:
    """An upload of the outbox -> protobuf Upload."""
    msg = uploads_pb2.Upload(
        upload_id=info.upload_id,
        recording_id=info.recording_id,
        target=info.target,
        key=info.key,
        state=UPLOAD_STATES[info.state],
        attempts=info.attempts,
        last_error=info.last_error,
        create_time=timestamp(info.created_at),
        spool_path=info.spool_path,
        location=info.location,
        node_id=info.node_id,
    )
    if info.next_attempt_at is not None:
        msg.next_attempt_time.CopyFrom(timestamp(info.next_attempt_at))
    if info.deadline_at is not None:
        msg.deadline_time.CopyFrom(timestamp(info.deadline_at))
    return msg
