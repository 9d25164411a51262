import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordingContentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORDING_CONTENT_TYPE_UNSPECIFIED: _ClassVar[RecordingContentType]
    RECORDING_CONTENT_TYPE_AUDIO: _ClassVar[RecordingContentType]
    RECORDING_CONTENT_TYPE_AUDIO_VIDEO: _ClassVar[RecordingContentType]

class RecordingChannelType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORDING_CHANNEL_TYPE_UNSPECIFIED: _ClassVar[RecordingChannelType]
    RECORDING_CHANNEL_TYPE_MIXED: _ClassVar[RecordingChannelType]
    RECORDING_CHANNEL_TYPE_UNMIXED: _ClassVar[RecordingChannelType]

class RecordingFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORDING_FORMAT_UNSPECIFIED: _ClassVar[RecordingFormat]
    RECORDING_FORMAT_WAV: _ClassVar[RecordingFormat]
    RECORDING_FORMAT_MP3: _ClassVar[RecordingFormat]
    RECORDING_FORMAT_MP4: _ClassVar[RecordingFormat]

class PauseMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAUSE_MODE_UNSPECIFIED: _ClassVar[PauseMode]
    PAUSE_MODE_SKIP: _ClassVar[PauseMode]
    PAUSE_MODE_SILENCE: _ClassVar[PauseMode]

class RecordingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORDING_STATE_UNSPECIFIED: _ClassVar[RecordingState]
    RECORDING_STATE_ACTIVE: _ClassVar[RecordingState]
    RECORDING_STATE_INACTIVE: _ClassVar[RecordingState]
    RECORDING_STATE_STOPPING: _ClassVar[RecordingState]
    RECORDING_STATE_COMPLETED: _ClassVar[RecordingState]
    RECORDING_STATE_FAILED: _ClassVar[RecordingState]

class ExternalStorageKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXTERNAL_STORAGE_KIND_UNSPECIFIED: _ClassVar[ExternalStorageKind]
    EXTERNAL_STORAGE_KIND_S3: _ClassVar[ExternalStorageKind]
    EXTERNAL_STORAGE_KIND_AZURE_BLOB: _ClassVar[ExternalStorageKind]
RECORDING_CONTENT_TYPE_UNSPECIFIED: RecordingContentType
RECORDING_CONTENT_TYPE_AUDIO: RecordingContentType
RECORDING_CONTENT_TYPE_AUDIO_VIDEO: RecordingContentType
RECORDING_CHANNEL_TYPE_UNSPECIFIED: RecordingChannelType
RECORDING_CHANNEL_TYPE_MIXED: RecordingChannelType
RECORDING_CHANNEL_TYPE_UNMIXED: RecordingChannelType
RECORDING_FORMAT_UNSPECIFIED: RecordingFormat
RECORDING_FORMAT_WAV: RecordingFormat
RECORDING_FORMAT_MP3: RecordingFormat
RECORDING_FORMAT_MP4: RecordingFormat
PAUSE_MODE_UNSPECIFIED: PauseMode
PAUSE_MODE_SKIP: PauseMode
PAUSE_MODE_SILENCE: PauseMode
RECORDING_STATE_UNSPECIFIED: RecordingState
RECORDING_STATE_ACTIVE: RecordingState
RECORDING_STATE_INACTIVE: RecordingState
RECORDING_STATE_STOPPING: RecordingState
RECORDING_STATE_COMPLETED: RecordingState
RECORDING_STATE_FAILED: RecordingState
EXTERNAL_STORAGE_KIND_UNSPECIFIED: ExternalStorageKind
EXTERNAL_STORAGE_KIND_S3: ExternalStorageKind
EXTERNAL_STORAGE_KIND_AZURE_BLOB: ExternalStorageKind

class ChannelAffinity(_message.Message):
    __slots__ = ("channel", "participant_id")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    channel: int
    participant_id: str
    def __init__(self, channel: _Optional[int] = ..., participant_id: _Optional[str] = ...) -> None: ...

class ExternalStorage(_message.Message):
    __slots__ = ("kind", "container_url")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_URL_FIELD_NUMBER: _ClassVar[int]
    kind: ExternalStorageKind
    container_url: str
    def __init__(self, kind: _Optional[_Union[ExternalStorageKind, str]] = ..., container_url: _Optional[str] = ...) -> None: ...

class PauseInterval(_message.Message):
    __slots__ = ("start_time", "duration")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RecordingParticipant(_message.Message):
    __slots__ = ("participant_id", "display_name", "channel")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    display_name: str
    channel: int
    def __init__(self, participant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., channel: _Optional[int] = ...) -> None: ...

class RecordingChunk(_message.Message):
    __slots__ = ("document_id", "index", "end_reason", "metadata_location", "content_location", "delete_location")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_LOCATION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    DELETE_LOCATION_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    index: int
    end_reason: str
    metadata_location: str
    content_location: str
    delete_location: str
    def __init__(self, document_id: _Optional[str] = ..., index: _Optional[int] = ..., end_reason: _Optional[str] = ..., metadata_location: _Optional[str] = ..., content_location: _Optional[str] = ..., delete_location: _Optional[str] = ...) -> None: ...

class RecordingError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class MediaStats(_message.Message):
    __slots__ = ("frames_received", "frames_rejected_by_reason", "frames_late", "gap_fill_ms")
    class FramesRejectedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FRAMES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_REJECTED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    FRAMES_LATE_FIELD_NUMBER: _ClassVar[int]
    GAP_FILL_MS_FIELD_NUMBER: _ClassVar[int]
    frames_received: int
    frames_rejected_by_reason: _containers.ScalarMap[str, int]
    frames_late: int
    gap_fill_ms: int
    def __init__(self, frames_received: _Optional[int] = ..., frames_rejected_by_reason: _Optional[_Mapping[str, int]] = ..., frames_late: _Optional[int] = ..., gap_fill_ms: _Optional[int] = ...) -> None: ...

class Recording(_message.Message):
    __slots__ = ("recording_id", "server_call_id", "call_id", "state", "content_type", "channel_type", "format", "audio_channel_participant_ordering", "channel_affinity", "pause_on_start", "pause_mode", "destination", "external_storage", "chunk_max_duration", "chunk_max_bytes", "request_id", "unmixed_max_channels", "start_time", "pause_intervals", "participants", "chunks", "duration", "session_end_reason", "error", "media_stats", "stop_time", "operation_context", "upload_status")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNEL_PARTICIPANT_ORDERING_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ON_START_FIELD_NUMBER: _ClassVar[int]
    PAUSE_MODE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UNMIXED_MAX_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    PAUSE_INTERVALS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    SESSION_END_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MEDIA_STATS_FIELD_NUMBER: _ClassVar[int]
    STOP_TIME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_STATUS_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    server_call_id: str
    call_id: str
    state: RecordingState
    content_type: RecordingContentType
    channel_type: RecordingChannelType
    format: RecordingFormat
    audio_channel_participant_ordering: _containers.RepeatedScalarFieldContainer[str]
    channel_affinity: _containers.RepeatedCompositeFieldContainer[ChannelAffinity]
    pause_on_start: bool
    pause_mode: PauseMode
    destination: str
    external_storage: ExternalStorage
    chunk_max_duration: _duration_pb2.Duration
    chunk_max_bytes: int
    request_id: str
    unmixed_max_channels: int
    start_time: _timestamp_pb2.Timestamp
    pause_intervals: _containers.RepeatedCompositeFieldContainer[PauseInterval]
    participants: _containers.RepeatedCompositeFieldContainer[RecordingParticipant]
    chunks: _containers.RepeatedCompositeFieldContainer[RecordingChunk]
    duration: _duration_pb2.Duration
    session_end_reason: str
    error: RecordingError
    media_stats: MediaStats
    stop_time: _timestamp_pb2.Timestamp
    operation_context: str
    upload_status: UploadStatus
    def __init__(self, recording_id: _Optional[str] = ..., server_call_id: _Optional[str] = ..., call_id: _Optional[str] = ..., state: _Optional[_Union[RecordingState, str]] = ..., content_type: _Optional[_Union[RecordingContentType, str]] = ..., channel_type: _Optional[_Union[RecordingChannelType, str]] = ..., format: _Optional[_Union[RecordingFormat, str]] = ..., audio_channel_participant_ordering: _Optional[_Iterable[str]] = ..., channel_affinity: _Optional[_Iterable[_Union[ChannelAffinity, _Mapping]]] = ..., pause_on_start: _Optional[bool] = ..., pause_mode: _Optional[_Union[PauseMode, str]] = ..., destination: _Optional[str] = ..., external_storage: _Optional[_Union[ExternalStorage, _Mapping]] = ..., chunk_max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., chunk_max_bytes: _Optional[int] = ..., request_id: _Optional[str] = ..., unmixed_max_channels: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pause_intervals: _Optional[_Iterable[_Union[PauseInterval, _Mapping]]] = ..., participants: _Optional[_Iterable[_Union[RecordingParticipant, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[RecordingChunk, _Mapping]]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., session_end_reason: _Optional[str] = ..., error: _Optional[_Union[RecordingError, _Mapping]] = ..., media_stats: _Optional[_Union[MediaStats, _Mapping]] = ..., stop_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., operation_context: _Optional[str] = ..., upload_status: _Optional[_Union[UploadStatus, _Mapping]] = ...) -> None: ...

class UploadStatus(_message.Message):
    __slots__ = ("pending_files", "stored_files", "failed_files", "last_error")
    PENDING_FILES_FIELD_NUMBER: _ClassVar[int]
    STORED_FILES_FIELD_NUMBER: _ClassVar[int]
    FAILED_FILES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    pending_files: int
    stored_files: int
    failed_files: int
    last_error: str
    def __init__(self, pending_files: _Optional[int] = ..., stored_files: _Optional[int] = ..., failed_files: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class StartRecordingRequest(_message.Message):
    __slots__ = ("server_call_id", "content_type", "channel_type", "format", "audio_channel_participant_ordering", "channel_affinity", "pause_on_start", "pause_mode", "destination", "external_storage", "chunk_max_duration", "chunk_max_bytes", "request_id", "unmixed_max_channels", "operation_context")
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHANNEL_PARTICIPANT_ORDERING_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    PAUSE_ON_START_FIELD_NUMBER: _ClassVar[int]
    PAUSE_MODE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_STORAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UNMIXED_MAX_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    OPERATION_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    server_call_id: str
    content_type: RecordingContentType
    channel_type: RecordingChannelType
    format: RecordingFormat
    audio_channel_participant_ordering: _containers.RepeatedScalarFieldContainer[str]
    channel_affinity: _containers.RepeatedCompositeFieldContainer[ChannelAffinity]
    pause_on_start: bool
    pause_mode: PauseMode
    destination: str
    external_storage: ExternalStorage
    chunk_max_duration: _duration_pb2.Duration
    chunk_max_bytes: int
    request_id: str
    unmixed_max_channels: int
    operation_context: str
    def __init__(self, server_call_id: _Optional[str] = ..., content_type: _Optional[_Union[RecordingContentType, str]] = ..., channel_type: _Optional[_Union[RecordingChannelType, str]] = ..., format: _Optional[_Union[RecordingFormat, str]] = ..., audio_channel_participant_ordering: _Optional[_Iterable[str]] = ..., channel_affinity: _Optional[_Iterable[_Union[ChannelAffinity, _Mapping]]] = ..., pause_on_start: _Optional[bool] = ..., pause_mode: _Optional[_Union[PauseMode, str]] = ..., destination: _Optional[str] = ..., external_storage: _Optional[_Union[ExternalStorage, _Mapping]] = ..., chunk_max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., chunk_max_bytes: _Optional[int] = ..., request_id: _Optional[str] = ..., unmixed_max_channels: _Optional[int] = ..., operation_context: _Optional[str] = ...) -> None: ...

class StartRecordingResponse(_message.Message):
    __slots__ = ("recording",)
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    recording: Recording
    def __init__(self, recording: _Optional[_Union[Recording, _Mapping]] = ...) -> None: ...

class GetRecordingStateRequest(_message.Message):
    __slots__ = ("recording_id",)
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    def __init__(self, recording_id: _Optional[str] = ...) -> None: ...

class GetRecordingStateResponse(_message.Message):
    __slots__ = ("recording",)
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    recording: Recording
    def __init__(self, recording: _Optional[_Union[Recording, _Mapping]] = ...) -> None: ...

class PauseRecordingRequest(_message.Message):
    __slots__ = ("recording_id",)
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    def __init__(self, recording_id: _Optional[str] = ...) -> None: ...

class PauseRecordingResponse(_message.Message):
    __slots__ = ("recording",)
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    recording: Recording
    def __init__(self, recording: _Optional[_Union[Recording, _Mapping]] = ...) -> None: ...

class ResumeRecordingRequest(_message.Message):
    __slots__ = ("recording_id",)
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    def __init__(self, recording_id: _Optional[str] = ...) -> None: ...

class ResumeRecordingResponse(_message.Message):
    __slots__ = ("recording",)
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    recording: Recording
    def __init__(self, recording: _Optional[_Union[Recording, _Mapping]] = ...) -> None: ...

class StopRecordingRequest(_message.Message):
    __slots__ = ("recording_id",)
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    def __init__(self, recording_id: _Optional[str] = ...) -> None: ...

class StopRecordingResponse(_message.Message):
    __slots__ = ("recording",)
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    recording: Recording
    def __init__(self, recording: _Optional[_Union[Recording, _Mapping]] = ...) -> None: ...

class ListRecordingsRequest(_message.Message):
    __slots__ = ("server_call_id", "state", "page_size", "page_token")
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    server_call_id: str
    state: RecordingState
    page_size: int
    page_token: str
    def __init__(self, server_call_id: _Optional[str] = ..., state: _Optional[_Union[RecordingState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRecordingsResponse(_message.Message):
    __slots__ = ("recordings", "next_page_token")
    RECORDINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recordings: _containers.RepeatedCompositeFieldContainer[Recording]
    next_page_token: str
    def __init__(self, recordings: _Optional[_Iterable[_Union[Recording, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
