"""Ports: the small protocols through which core reaches everything outside it.

Why: `core/` holds the recording logic and imports only `callrec.core`, the standard
library and numpy (tests/unit/test_architecture.py enforces it). Codecs and writers
(PyAV), the video worker process, the SQLite repositories, the event log and the
stores live in the outer packages, which implement these protocols; the composition
root (`callrec.server`) plugs implementations in. A test can plug in fakes instead.

Implementations: `media.decode.PyAVAudioCodecs` (AudioCodecs), `media.writers`
(AudioWriterFactory), `media.video_worker.VideoWorker` (VideoWorkerPort),
`state.recordings.RecordingRepository` (RecordingRepositoryPort),
`state.chunks.ChunkIndex` (ChunkIndexPort), `events.recording_events.AcsRecordingEvents`
(RecordingEventsPort), `storage.outbox.Outbox` (UploadQueuePort),
`storage.resolver.StoreResolver` (StorageTargetsPort).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from callrec.core.model import (
    AudioFormat,
    ChunkEndReason,
    ChunkInfo,
    DecodeError,
    RecordedParticipant,
    RecordingState,
    VideoEncoding,
)

if TYPE_CHECKING:
    from callrec.core.call_registry import Call, CallParticipant
    from callrec.core.recording_state import Recording

__all__ = [
    "AudioCodecs",
    "AudioWriter",
    "AudioWriterFactory",
    "AudioWriterHost",
    "BlockResampler",
    "CallOwnershipPort",
    "ChunkIndexPort",
    "ChunkRepairPort",
    "ChunkWritten",
    "FinishedMedia",
    "FrameDecoder",
    "FrameRejected",
    "MediaIngest",
    "MediaRecorderPort",
    "OrphanRecordingsPort",
    "RecordingEventsPort",
    "RecordingRepositoryPort",
    "RepairedMedia",
    "StorageTargetsPort",
    "StoredChunk",
    "TimeSource",
    "UploadQueuePort",
    "VideoWorkerError",
    "VideoWorkerEvent",
    "VideoWorkerPort",
    "WorkerFailed",
    "WorkerProgress",
]


# -- time --------------------------------------------------------------------------------------


class TimeSource(Protocol):
    """Where core gets time from: the system (`core.clock.SystemTime`) or `testing.FakeTime`."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def now(self) -> datetime:
        """Current UTC wall-clock time."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this source's time."""
        ...


# -- audio codecs and writers (media/) ---------------------------------------------------------


class FrameDecoder(Protocol):
    """Decodes one participant's frames (see `callrec.media.decode.AudioDecoder`)."""

    sample_rate: int

    def frame_samples(self, data: bytes) -> int:
        """Validate a frame and return its length in samples; raises `DecodeError`."""
        ...

    def decode(self, data: bytes) -> np.ndarray:
        """Mono float32 PCM at `sample_rate`; raises `DecodeError` and stays usable."""
        ...

    def decode_into(self, data: bytes, out: np.ndarray) -> int:
        """Decode a frame `frame_samples` accepted into `out[:n]` (float32, at least the frame's length);
        returns n. Raises `DecodeError` as `decode` does."""
        ...


class BlockResampler(Protocol):
    """Resamples one tick of many streams of one rate (see `media.decode.ResamplerBank`)."""

    def process(self, blocks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One output block per input stream."""
        ...

    def discard(self, key: str) -> None:
        """Forget a stream."""
        ...


class BatchDecoder(Protocol):
    """Decodes many participants' frames at once, elsewhere (see `callrec.media.decode_pool.DecodePool`).

    `CallMedia` awaits it once per tick with every due frame of the decoders it `handles`, so the
    decoding can run in another process while the event loop serves other calls.
    """

    def handles(self, decoder: FrameDecoder) -> bool:
        """Whether this decoder's frames go through `decode` (others are decoded in place)."""
        ...

    async def decode(self, items: Sequence[tuple[FrameDecoder, bytes]]) -> list[np.ndarray | DecodeError]:
        """One result per (decoder, frame), in order: the PCM `decoder.decode` would give, or its error."""
        ...


class AudioCodecs(Protocol):
    """Factory of decoders and resamplers; `batch_decoder` (optional attribute) offloads decoding."""

    def decoder(self, audio_format: AudioFormat) -> FrameDecoder:
        """A decoder for one participant; ValueError if the format is unusable."""
        ...

    def resampler_bank(self, in_rate: int, out_rate: int, block: int) -> BlockResampler:
        """A resampler for all participants of one input rate."""
        ...


class AudioWriter(Protocol):
    """Writes one chunk's media file (implementations in `callrec.media.writers`)."""

    @property
    def bytes_written(self) -> int:
        """Bytes of the file so far."""
        ...

    def write(self, samples: np.ndarray) -> None:
        """Append int16 samples: shape (n,) for mono, (n, channels) for unmixed (channels may grow)."""
        ...

    def close(self) -> Path:
        """Finish and fsync the file; returns its path."""
        ...


class AudioWriterFactory(Protocol):
    """Opens writers of one format and answers the questions rotation and metadata ask."""

    content_type: str  # MIME type, e.g. "audio/wav"
    extension: str  # file extension without dot

    def open(self, path: Path) -> AudioWriter:
        """A writer for a new chunk file (called in a worker thread)."""
        ...

    def bit_rate(self, channels: int) -> int:
        """`audioConfiguration.bitRate` of a chunk with `channels` channels."""
        ...

    def projected_bytes(self, samples: int, channels: int) -> int:
        """File size (upper bound) once `samples` frames are written and the file closed."""
        ...


class AudioWriterHost(Protocol):
    """Audio writers kept in another process (`media.writer_pool.AudioWriterPool`), driven from the loop.

    Why: a writer thread asks for the GIL back after every encode and every write, and each time the
    event loop that every call shares gives it up (see `media.writer_pool`). Here the loop only queues
    each batch; the writes of one writer happen in the order they were queued.
    """

    def open(self, factory: AudioWriterFactory, path: Path, on_error: Callable[[BaseException], None]) -> int:
        """Open a writer of `factory` on `path` there; returns its key. `on_error` (called on the loop)
        hears of anything that fails it later: opening, a write, the process's exit."""
        ...

    def write(self, key: int, pieces: Sequence[np.ndarray]) -> None:
        """Queue blocks for the writer (int16, or float32 in [-1, 1) converted there): one batch."""
        ...

    def journal(self, key: int, path: Path, document: dict[str, Any], previous: Path | None) -> None:
        """Write a chunk's journal there (`journal_files.write_journal`: `path` afresh, not fsynced, then
        `previous` removed), after the writes queued before it; a failure there fails the writer `key` (its
        `on_error`)."""
        ...

    def close(self, key: int) -> asyncio.Future[Path]:
        """Finish and fsync the file after everything queued; the future gives its path (or the error)."""
        ...


@dataclass(frozen=True)
class RepairedMedia:
    """A crashed chunk's media file, made valid: how much media it holds."""

    samples: int  # 16 kHz samples (video: frames x 1000)
    channels: int


class ChunkRepairPort(Protocol):
    """Makes a chunk file that a crash left open valid, up to what reached the disk (`media.writers.repair`)."""

    def repair(self, media_path: Path, journal: Mapping[str, object]) -> RepairedMedia | None:
        """Fix the file in place (blocking: run it in a thread); None when it holds no media."""
        ...


# -- the video worker process (media/video_worker.py) ------------------------------------------


@dataclass(frozen=True)
class ChunkWritten:
    """A chunk file was closed (by `rotate` or `finish`): it is complete and playable."""

    path: Path
    bytes_written: int
    duration_s: float
    video_frames: int


@dataclass(frozen=True)
class WorkerProgress:
    """Sent once per second of media: size and duration of the open chunk (for chunk limits)."""

    path: Path
    bytes_written: int
    duration_s: float


@dataclass(frozen=True)
class FrameRejected:
    """A participant's video frame could not be decoded (count it under `reason`)."""

    participant_id: str
    reason: str
    message: str


@dataclass(frozen=True)
class WorkerFailed:
    """The worker failed or died; the recording cannot continue."""

    message: str


VideoWorkerEvent = ChunkWritten | WorkerProgress | FrameRejected | WorkerFailed


class VideoWorkerError(Exception):
    """The video worker failed; the message says why (shown in the recording's `error`)."""


class VideoWorkerPort(Protocol):
    """One mp4 recording's compositor and encoder, in a process of its own.

    Commands are cheap and never block (safe on the event loop); `finish` blocks (run
    it in a thread). Events arrive through the callback given at construction.
    """

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before start / after it ended)."""
        ...

    @property
    def video_frames_dropped(self) -> int:
        """Raw frames thinned or dropped under load."""
        ...

    def join(self, participant_id: str, display_name: str, video: VideoEncoding | None,
             width: int = 0, height: int = 0) -> None:
        """A participant entered (video None: audio only, shown as a name card)."""
        ...

    def leave(self, participant_id: str) -> None:
        """A participant left: their tile is freed."""
        ...

    def video(self, participant_id: str, data: bytes, t: float | None = None, *,
              width: int = 0, height: int = 0, raw: bool = False) -> bool:
        """A frame to show from call time `t` (seconds); False when dropped."""
        ...

    def audio(self, block: np.ndarray, t: float, speaking: Mapping[str, bool]) -> bool:
        """Mixed audio from call time `t` and who is speaking."""
        ...

    def pause(self, silence: bool) -> None:
        """Pause: skip mode writes nothing; silence mode writes silence and a slate."""
        ...

    def resume(self) -> None:
        """Resume writing into the same chunk."""
        ...

    def rotate(self, new_path: Path) -> None:
        """Close the current chunk (a `ChunkWritten` follows) and continue in `new_path`."""
        ...

    def finish(self, timeout: float = 60.0) -> list[ChunkWritten]:
        """Close the last chunk and stop; every chunk written; raises `VideoWorkerError`."""
        ...


# -- media ingest (driven by api/media.py) -----------------------------------------------------


class MediaIngest(Protocol):
    """Receives a call's participants and frames; returns a rejection reason or None."""

    def joined(self, call: Call, participant: CallParticipant) -> None:
        """A participant entered (or re-joined)."""
        ...

    def left(self, call: Call, participant: CallParticipant) -> None:
        """A participant left."""
        ...

    def audio(self, call: Call, participant: CallParticipant, sequence: int, timestamp_us: int,
              data: bytes) -> str | None:
        """An audio frame; None when accepted, else why it was rejected."""
        ...

    def video(self, call: Call, participant: CallParticipant, sequence: int, timestamp_us: int, data: bytes,
              keyframe: bool, width: int, height: int) -> str | None:
        """A video frame; None when accepted, else why it was rejected."""
        ...


# -- the media side of recordings (core.media_recorder) ----------------------------------------


@dataclass(frozen=True)
class FinishedMedia:
    """What the media side reports when a recording's files are all stored."""

    chunks: Sequence[ChunkInfo]
    duration: timedelta
    participants: Sequence[RecordedParticipant] = ()


class MediaRecorderPort(Protocol):
    """The media side of recordings, as the recording registry drives it."""

    async def start(self, recording: Recording, call: Call | None, *, first_index_gap: int = 1) -> None:
        """Begin writing the recording (paused already when pause_on_start); its first chunk index is
        `first_index_gap` after the last one indexed (more than 1 leaves room for chunks a dead node
        may still finish)."""
        ...

    def pause(self, recording: Recording, at: datetime) -> None:
        """Stop writing media (skip) or write silence (silence mode)."""
        ...

    def resume(self, recording: Recording, at: datetime) -> None:
        """Write media again."""
        ...

    async def finish(self, recording: Recording) -> FinishedMedia:
        """Finalise the last chunk and store every chunk; raise CallrecError on failure."""
        ...

    async def recover(self, recording: Recording) -> list[int]:
        """After a crash: finish the chunks the last process left open and queue them for upload; returns
        the indexes of the chunks it indexed."""
        ...

    async def wait_stored(self, recording_id: str) -> str | None:
        """Wait until this node's files of the recording are stored: None, or why some failed for good."""
        ...

    async def stored_chunks(self, recording_id: str) -> list[StoredChunk]:
        """The recording's indexed chunks (of every node), by index."""
        ...

    def spooled(self) -> list[str]:
        """Recording ids with a spool directory on this node."""
        ...


# -- state (state/) ----------------------------------------------------------------------------


class RecordingRepositoryPort(Protocol):
    """Durable recordings and idempotency keys.

    Async because the cluster's implementation (PostgreSQL) does network I/O: a query must never
    hold the event loop that mixes every call's media.
    """

    def transaction(self) -> AbstractAsyncContextManager[object]:
        """Everything saved inside (by this task) commits together."""
        ...

    async def save(self, rec: Recording) -> None:
        """Insert or update a recording."""
        ...

    async def get(self, recording_id: str) -> Recording | None:
        """A recording by id."""
        ...

    async def in_progress(self) -> list[Recording]:
        """Recordings that were active, paused or stopping (for recovery)."""
        ...

    async def list(self, server_call_id: str, state: RecordingState | None, page_size: int,
                   page_token: str) -> tuple[list[Recording], str]:
        """A page, newest first; ValueError for a bad token."""
        ...

    async def remember_request(self, request_id: str, recording_id: str) -> None:
        """Remember which recording a StartRecording request_id created."""
        ...

    async def recall_request(self, request_id: str, window: timedelta) -> str | None:
        """The recording a request_id created within `window`, if any."""
        ...


class CallOwnershipPort(Protocol):
    """Which node of a cluster owns each call (`state.pg_nodes.PgNodeRegistry`; none on a single node).

    A call belongs to the node where its gateway opened it, while that node's lease lasts: so a call
    never has two owners, and a dead node's calls go to whichever node their gateways re-open them on.
    """

    async def claim(self, server_call_id: str) -> None:
        """Make this node the call's owner; FailedPrecondition naming the owner when another live node is."""
        ...

    async def release(self, server_call_id: str) -> None:
        """The call ended here: forget its owner (if it is still this node)."""
        ...


class OrphanRecordingsPort(Protocol):
    """Cluster mode: recordings in progress whose node died (its lease lapsed); `state.pg_recordings`.

    Each method moves the recordings it returns to this node in one atomic statement, so a recording
    is taken over by one node only.
    """

    async def take_over_call(self, server_call_id: str) -> list[Recording]:
        """The call's recordings in progress on a dead node, now this node's (its gateway re-opened it here)."""
        ...

    async def take_over_abandoned(self, dead_for_s: float) -> list[Recording]:
        """Recordings in progress on nodes dead for more than `dead_for_s` whose call no live node owns,
        now this node's (to be ended: no gateway came back for them)."""
        ...


@dataclass(frozen=True)
class StoredChunk:
    """One chunk as stored: locations, keys and the target that holds them."""

    document_id: str
    recording_id: str
    chunk_index: int
    end_reason: str
    target: str
    media_key: str
    metadata_key: str
    media_type: str
    content_location: str
    metadata_location: str
    delete_location: str
    samples: int = 0
    """Audio samples at 16 kHz (the chunk's recorded duration)."""
    participants: str = "[]"
    """JSON list of the chunk's participants ({participant_id, display_name, channel})."""

    def info(self) -> ChunkInfo:
        """The chunk as the recording resource and RecordingFileStatusUpdated list it."""
        return ChunkInfo(self.document_id, self.chunk_index, ChunkEndReason(self.end_reason), self.metadata_location,
                         self.content_location, self.delete_location)


class ChunkIndexPort(Protocol):
    """Which chunks a recording has and where they are stored (async: see RecordingRepositoryPort)."""

    async def add(self, chunk: StoredChunk) -> None:
        """Index a chunk (before its upload starts)."""
        ...

    async def for_recording(self, recording_id: str) -> list[StoredChunk]:
        """A recording's chunks in index order."""
        ...


# -- events and storage (events/, storage/) ----------------------------------------------------


class RecordingEventsPort(Protocol):
    """Publishes a recording's events (ACS shapes, durable log: `events.recording_events`)."""

    async def state_changed(self, rec: Recording, active: bool) -> None:
        """RecordingStateChanged."""
        ...

    async def file_status_updated(self, rec: Recording) -> None:
        """RecordingFileStatusUpdated: every chunk is stored."""
        ...

    async def failed(self, rec: Recording, code: int, message: str) -> None:
        """The recording failed (code is a google.rpc code number)."""
        ...


class UploadQueuePort(Protocol):
    """The durable upload outbox: files go in, the stores receive them with retries."""

    async def enqueue(self, group_id: str, target: str, key: str, path: Path, content_type: str) -> int:
        """Queue one file of a group (a recording id); returns its upload id."""
        ...

    async def wait_stored(self, group_id: str) -> str | None:
        """Wait until every file of the group is stored: None, or why some failed for good."""
        ...

    async def queued_keys(self, group_id: str) -> set[str]:
        """Every key the group ever queued, whatever its state."""
        ...


class StorageTargetsPort(Protocol):
    """Storage targets by name (configured) or by external container (bring-your-own-storage)."""

    def external_target(self, kind: str, container_url: str) -> str:
        """The target string of an external container."""
        ...

    def check(self, target: str) -> None:
        """ValueError (with a message for the user) when the target cannot be used."""
        ...

    def location(self, target: str, key: str) -> str:
        """The location an object of `key` has in the target (what events announce)."""
        ...

    def describe(self, target: str) -> str:
        """The target for humans (no credentials)."""
        ...
