"""Plain domain types shared by the core, media, storage and events layers.

Nothing here knows gRPC or PyAV: `api/convert.py` translates these to and from
protobuf, `media/` turns them into files. Enum values are the spellings used in
the recording metadata files (SPEC §3), so serialising them is free.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class ContentType(enum.StrEnum):
    """What a recording captures (metadata spelling)."""

    AUDIO = "audio"
    AUDIO_VIDEO = "audioVideo"


class ChannelType(enum.StrEnum):
    """Mixed into one channel, or one participant per channel."""

    MIXED = "mixed"
    UNMIXED = "unmixed"


class Format(enum.StrEnum):
    """File format of a recording's chunks; the value is also the file extension."""

    WAV = "wav"
    MP3 = "mp3"
    MP4 = "mp4"


class PauseMode(enum.StrEnum):
    """SKIP cuts paused spans out of the file; SILENCE keeps them as silence."""

    SKIP = "skip"
    SILENCE = "silence"


class RecordingState(enum.StrEnum):
    """Life cycle of a recording (SPEC §1 states)."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def in_progress(self) -> bool:
        """Active or paused: the call's one recording slot is taken."""
        return self in (RecordingState.ACTIVE, RecordingState.INACTIVE)


class ChunkEndReason(enum.StrEnum):
    """Why a chunk ended (ACS endReason)."""

    SESSION_ENDED = "SessionEnded"
    CHUNK_MAXIMUM_SIZE_EXCEEDED = "ChunkMaximumSizeExceeded"
    #: The server died with the chunk open; it was finished from its spool at the next start.
    SERVER_RESTARTED = "ServerRestarted"


class AudioEncoding(enum.StrEnum):
    """Audio codecs a gateway may send."""

    PCM16LE = "pcm16le"
    PCMU = "pcmu"
    PCMA = "pcma"
    OPUS = "opus"


class VideoEncoding(enum.StrEnum):
    """Video codecs a gateway may send."""

    I420 = "i420"
    H264 = "h264"
    VP8 = "vp8"


#: The only valid (channel, content, format) combinations, exactly as ACS.
VALID_COMBINATIONS: tuple[tuple[ChannelType, ContentType, Format], ...] = (
    (ChannelType.MIXED, ContentType.AUDIO_VIDEO, Format.MP4),
    (ChannelType.MIXED, ContentType.AUDIO, Format.MP3),
    (ChannelType.MIXED, ContentType.AUDIO, Format.WAV),
    (ChannelType.UNMIXED, ContentType.AUDIO, Format.WAV),
)

#: Output audio of every format: 16 kHz (SPEC §2).
OUTPUT_SAMPLE_RATE = 16_000
#: Nominal mp3 bit rate (SPEC §2).
MP3_BIT_RATE = 48_000
#: Video frame rate of mp4 recordings (SPEC §2: 16 fps).
VIDEO_FPS = 16
#: Audio samples per video frame: 16000 / 16, an integer, which is what keeps A/V exact.
SAMPLES_PER_VIDEO_FRAME = OUTPUT_SAMPLE_RATE // VIDEO_FPS
#: Largest width or height of a participant's video frame.
MAX_VIDEO_DIMENSION = 4096


def i420_size(width: int, height: int) -> int:
    """Byte length of a packed I420 image (chroma planes round odd sizes up)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    return width * height + 2 * cw * ch


@dataclass(frozen=True)
class AudioFormat:
    """A participant's audio as the gateway sends it."""

    encoding: AudioEncoding
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class VideoFormat:
    """A participant's video as the gateway sends it."""

    encoding: VideoEncoding
    width: int
    height: int


@dataclass(frozen=True)
class ChannelPin:
    """`channel_affinity`: a participant pinned to an unmixed channel."""

    channel: int
    participant_id: str


@dataclass(frozen=True)
class ExternalStorage:
    """Bring-your-own-storage: kind is "s3" or "azure_blob"."""

    kind: str
    container_url: str


@dataclass(frozen=True)
class RecordingOptions:
    """Everything StartRecording asked for, with defaults resolved."""

    content_type: ContentType = ContentType.AUDIO_VIDEO
    channel_type: ChannelType = ChannelType.MIXED
    format: Format = Format.MP4
    audio_channel_participant_ordering: tuple[str, ...] = ()
    channel_affinity: tuple[ChannelPin, ...] = ()
    pause_on_start: bool = False
    pause_mode: PauseMode = PauseMode.SKIP
    destination: str = ""
    external_storage: ExternalStorage | None = None
    chunk_max_duration: timedelta = timedelta(hours=4)
    chunk_max_bytes: int = 0
    request_id: str = ""
    unmixed_max_channels: int = 5
    operation_context: str = ""


@dataclass(frozen=True)
class PauseInterval:
    """One pause; duration is None while it is still going on."""

    start_time: datetime
    duration: timedelta | None = None


@dataclass(frozen=True)
class ChunkInfo:
    """A stored chunk, as announced in RecordingFileStatusUpdated."""

    document_id: str
    index: int
    end_reason: ChunkEndReason
    metadata_location: str
    content_location: str
    delete_location: str


@dataclass(frozen=True)
class RecordedParticipant:
    """A participant as a recording lists it (metadata, events); channel -1 when mixed/unassigned.

    The other participant types, one per layer: `core.call_registry.CallParticipant` (as its
    gateway announced it) and `core.call_media.ParticipantInput` (its media on the call timeline).
    """

    participant_id: str
    display_name: str = ""
    channel: int = -1


@dataclass(frozen=True)
class RecordingError:
    """Why a recording failed: a google.rpc.Code number and a message."""

    code: int
    message: str


@dataclass
class MediaStats:
    """Counters of received and rejected media for one call or participant."""

    frames_received: int = 0
    frames_rejected_by_reason: dict[str, int] = field(default_factory=dict)
    frames_late: int = 0
    gap_fill_ms: int = 0

    def reject(self, reason: str, count: int = 1) -> None:
        """Count a rejected frame under `reason`."""
        self.frames_rejected_by_reason[reason] = self.frames_rejected_by_reason.get(reason, 0) + count


class RejectReason(enum.StrEnum):
    """Why an incoming media frame was not used (keys of `MediaStats.frames_rejected_by_reason`)."""

    EMPTY_FRAME = "empty_frame"
    DUPLICATE = "duplicate"
    LATE = "late"
    EARLY = "early"
    OVERLAP = "overlap"
    DECODE_ERROR = "decode_error"
    BUFFER_FULL = "buffer_full"
    UNKNOWN_PARTICIPANT = "unknown_participant"
    NO_AUDIO_FORMAT = "no_audio_format"


class DecodeError(ValueError):
    """A media frame cannot be decoded; the frame is rejected and the decoder stays usable.

    Defined here (not in media/) so that core code can catch it without importing PyAV.
    """

    reason = RejectReason.DECODE_ERROR
