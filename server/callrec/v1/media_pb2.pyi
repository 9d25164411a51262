from callrec.v1 import recording_pb2 as _recording_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16LE: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCMU: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCMA: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_OPUS: _ClassVar[AudioEncoding]

class VideoEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIDEO_ENCODING_UNSPECIFIED: _ClassVar[VideoEncoding]
    VIDEO_ENCODING_I420: _ClassVar[VideoEncoding]
    VIDEO_ENCODING_H264: _ClassVar[VideoEncoding]
    VIDEO_ENCODING_VP8: _ClassVar[VideoEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16LE: AudioEncoding
AUDIO_ENCODING_PCMU: AudioEncoding
AUDIO_ENCODING_PCMA: AudioEncoding
AUDIO_ENCODING_OPUS: AudioEncoding
VIDEO_ENCODING_UNSPECIFIED: VideoEncoding
VIDEO_ENCODING_I420: VideoEncoding
VIDEO_ENCODING_H264: VideoEncoding
VIDEO_ENCODING_VP8: VideoEncoding

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate", "channels")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate: int
    channels: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class VideoFormat(_message.Message):
    __slots__ = ("encoding", "width", "height")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    encoding: VideoEncoding
    width: int
    height: int
    def __init__(self, encoding: _Optional[_Union[VideoEncoding, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("server_call_id", "call_id", "gateway_id")
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    server_call_id: str
    call_id: str
    gateway_id: str
    def __init__(self, server_call_id: _Optional[str] = ..., call_id: _Optional[str] = ..., gateway_id: _Optional[str] = ...) -> None: ...

class ParticipantJoin(_message.Message):
    __slots__ = ("participant_id", "display_name", "audio_format", "video_format")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FORMAT_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FORMAT_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    display_name: str
    audio_format: AudioFormat
    video_format: VideoFormat
    def __init__(self, participant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., audio_format: _Optional[_Union[AudioFormat, _Mapping]] = ..., video_format: _Optional[_Union[VideoFormat, _Mapping]] = ...) -> None: ...

class AudioFrame(_message.Message):
    __slots__ = ("participant_id", "sequence", "timestamp_us", "data")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    sequence: int
    timestamp_us: int
    data: bytes
    def __init__(self, participant_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_us: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("participant_id", "sequence", "timestamp_us", "data", "keyframe", "width", "height")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    sequence: int
    timestamp_us: int
    data: bytes
    keyframe: bool
    width: int
    height: int
    def __init__(self, participant_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_us: _Optional[int] = ..., data: _Optional[bytes] = ..., keyframe: _Optional[bool] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ParticipantLeave(_message.Message):
    __slots__ = ("participant_id",)
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    def __init__(self, participant_id: _Optional[str] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StreamMediaRequest(_message.Message):
    __slots__ = ("open", "join", "audio", "video", "leave", "end", "media_batch")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    JOIN_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    MEDIA_BATCH_FIELD_NUMBER: _ClassVar[int]
    open: StreamOpen
    join: ParticipantJoin
    audio: AudioFrame
    video: VideoFrame
    leave: ParticipantLeave
    end: StreamEnd
    media_batch: MediaBatch
    def __init__(self, open: _Optional[_Union[StreamOpen, _Mapping]] = ..., join: _Optional[_Union[ParticipantJoin, _Mapping]] = ..., audio: _Optional[_Union[AudioFrame, _Mapping]] = ..., video: _Optional[_Union[VideoFrame, _Mapping]] = ..., leave: _Optional[_Union[ParticipantLeave, _Mapping]] = ..., end: _Optional[_Union[StreamEnd, _Mapping]] = ..., media_batch: _Optional[_Union[MediaBatch, _Mapping]] = ...) -> None: ...

class MediaBatch(_message.Message):
    __slots__ = ("audio", "video")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    audio: _containers.RepeatedCompositeFieldContainer[AudioFrame]
    video: _containers.RepeatedCompositeFieldContainer[VideoFrame]
    def __init__(self, audio: _Optional[_Iterable[_Union[AudioFrame, _Mapping]]] = ..., video: _Optional[_Iterable[_Union[VideoFrame, _Mapping]]] = ...) -> None: ...

class StreamOpened(_message.Message):
    __slots__ = ("server_call_id", "call_connection_id", "recordings")
    SERVER_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDINGS_FIELD_NUMBER: _ClassVar[int]
    server_call_id: str
    call_connection_id: str
    recordings: _containers.RepeatedCompositeFieldContainer[_recording_pb2.Recording]
    def __init__(self, server_call_id: _Optional[str] = ..., call_connection_id: _Optional[str] = ..., recordings: _Optional[_Iterable[_Union[_recording_pb2.Recording, _Mapping]]] = ...) -> None: ...

class ParticipantAck(_message.Message):
    __slots__ = ("participant_id", "last_audio_sequence", "last_video_sequence", "received", "rejected_by_reason")
    class RejectedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_AUDIO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_VIDEO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    last_audio_sequence: int
    last_video_sequence: int
    received: int
    rejected_by_reason: _containers.ScalarMap[str, int]
    def __init__(self, participant_id: _Optional[str] = ..., last_audio_sequence: _Optional[int] = ..., last_video_sequence: _Optional[int] = ..., received: _Optional[int] = ..., rejected_by_reason: _Optional[_Mapping[str, int]] = ...) -> None: ...

class MediaAck(_message.Message):
    __slots__ = ("participants",)
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[ParticipantAck]
    def __init__(self, participants: _Optional[_Iterable[_Union[ParticipantAck, _Mapping]]] = ...) -> None: ...

class RecordingStateUpdate(_message.Message):
    __slots__ = ("recording_id", "state")
    RECORDING_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    recording_id: str
    state: _recording_pb2.RecordingState
    def __init__(self, recording_id: _Optional[str] = ..., state: _Optional[_Union[_recording_pb2.RecordingState, str]] = ...) -> None: ...

class MediaWarning(_message.Message):
    __slots__ = ("participant_id", "code", "message")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    code: str
    message: str
    def __init__(self, participant_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StreamMediaResponse(_message.Message):
    __slots__ = ("opened", "ack", "recording_state", "warning")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    RECORDING_STATE_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    opened: StreamOpened
    ack: MediaAck
    recording_state: RecordingStateUpdate
    warning: MediaWarning
    def __init__(self, opened: _Optional[_Union[StreamOpened, _Mapping]] = ..., ack: _Optional[_Union[MediaAck, _Mapping]] = ..., recording_state: _Optional[_Union[RecordingStateUpdate, _Mapping]] = ..., warning: _Optional[_Union[MediaWarning, _Mapping]] = ...) -> None: ...
