import datetime

from callrec.v1 import recording_pb2 as _recording_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeEventsRequest(_message.Message):
    __slots__ = ("event_types", "server_call_id", "recording_id", "after_sequence", "from_oldest")
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_OLDEST_FIELD_NUMBER: _ClassVar[int]
    event_types: _containers.RepeatedScalarFieldContainer[str]
    server_call_id: str
    recording_id: str
    after_sequence: int
    from_oldest: bool
    def __init__(self, event_types: _Optional[_Iterable[str]] = ..., server_call_id: _Optional[str] = ..., recording_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., from_oldest: _Optional[bool] = ...) -> None: ...

class SubscribeEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class RecordingStateChangedEvent(_message.Message):
    __slots__ = ("recording_id", "server_call_id", "call_connection_id", "correlation_id", "state", "start_time")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    server_call_id: str
    call_connection_id: str
    correlation_id: str
    state: _recording_pb2.RecordingState
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, recording_id: _Optional[str] = ..., server_call_id: _Optional[str] = ..., call_connection_id: _Optional[str] = ..., correlation_id: _Optional[str] = ..., state: _Optional[_Union[_recording_pb2.RecordingState, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordingFileStatusUpdatedEvent(_message.Message):
    __slots__ = ("recording_id", "server_call_id", "call_id", "chunks", "recording_start_time", "recording_duration", "session_end_reason", "content_type", "channel_type", "format")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RECORDING_START_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDING_DURATION_FIELD_NUMBER: _ClassVar[int]
    SESSION_END_REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    server_call_id: str
    call_id: str
    chunks: _containers.RepeatedCompositeFieldContainer[_recording_pb2.RecordingChunk]
    recording_start_time: _timestamp_pb2.Timestamp
    recording_duration: _duration_pb2.Duration
    session_end_reason: str
    content_type: _recording_pb2.RecordingContentType
    channel_type: _recording_pb2.RecordingChannelType
    format: _recording_pb2.RecordingFormat
    def __init__(self, recording_id: _Optional[str] = ..., server_call_id: _Optional[str] = ..., call_id: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[_recording_pb2.RecordingChunk, _Mapping]]] = ..., recording_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recording_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., session_end_reason: _Optional[str] = ..., content_type: _Optional[_Union[_recording_pb2.RecordingContentType, str]] = ..., channel_type: _Optional[_Union[_recording_pb2.RecordingChannelType, str]] = ..., format: _Optional[_Union[_recording_pb2.RecordingFormat, str]] = ...) -> None: ...

class RecordingFailedEvent(_message.Message):
    __slots__ = ("recording_id", "server_call_id", "call_id", "error")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    server_call_id: str
    call_id: str
    error: _recording_pb2.RecordingError
    def __init__(self, recording_id: _Optional[str] = ..., server_call_id: _Optional[str] = ..., call_id: _Optional[str] = ..., error: _Optional[_Union[_recording_pb2.RecordingError, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "id", "event_type", "subject", "event_time", "json", "recording_state_changed", "recording_file_status_updated", "recording_failed")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    RECORDING_STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    RECORDING_FILE_STATUS_UPDATED_FIELD_NUMBER: _ClassVar[int]
    RECORDING_FAILED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    id: str
    event_type: str
    subject: str
    event_time: _timestamp_pb2.Timestamp
    json: str
    recording_state_changed: RecordingStateChangedEvent
    recording_file_status_updated: RecordingFileStatusUpdatedEvent
    recording_failed: RecordingFailedEvent
    def __init__(self, sequence: _Optional[int] = ..., id: _Optional[str] = ..., event_type: _Optional[str] = ..., subject: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., json: _Optional[str] = ..., recording_state_changed: _Optional[_Union[RecordingStateChangedEvent, _Mapping]] = ..., recording_file_status_updated: _Optional[_Union[RecordingFileStatusUpdatedEvent, _Mapping]] = ..., recording_failed: _Optional[_Union[RecordingFailedEvent, _Mapping]] = ...) -> None: ...
