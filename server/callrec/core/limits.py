"""Limits on everything a client sends, and the checks that name them.

Every field of every request has a bound, because every one of them is stored, logged,
put into events or kept in memory for the life of a call: a 1 MiB call id would make
each later event larger than a gRPC message may be. A check that fails raises
`InvalidArgument` (the input itself is bad) or `ResourceExhausted` (the server is full),
and its message names the limit and the `[limits]` setting that changes it, so the user
knows both what to fix and where the knob is.

The values live in one frozen dataclass, `Limits`, which is also the `[limits]` section
of the config file (`callrec.config` re-exports it).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from callrec.core.errors import InvalidArgument, ResourceExhausted
from callrec.core.model import VideoEncoding, VideoFormat, i420_size

__all__ = [
    "OPUS_MAX_PACKET_BYTES_PER_20MS",
    "Limits",
    "check_batch",
    "check_count",
    "check_items",
    "check_text",
    "video_frame_problem",
]

#: Smallest cap on a compressed video frame, whatever its resolution (tiny pictures, big headers).
MIN_COMPRESSED_FRAME_CAP = 64 * 1024

#: RFC 6716 §3.4 (R2): no Opus frame is larger than 1275 bytes; a packet carries at most
#: one frame per 2.5-20 ms, so 1275 bytes per started 20 ms of audio bounds every valid packet.
OPUS_MAX_PACKET_BYTES_PER_20MS = 1275


@dataclass(frozen=True)
class Limits:
    """Resource and input limits ([limits] in the TOML file); each has an error naming it."""

    max_recordings: int = 200
    """Recordings in progress (active or paused) at once, server-wide."""
    max_participants_per_call: int = 100
    """Participants one call may have."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message accepted (a 1080p I420 frame is ~3 MiB)."""
    max_buffered_ms_per_participant: int = 5_000
    """Media buffered per participant (not yet mixed) before frames are rejected as overflow."""
    max_calls: int = 500
    """Calls open at once (gateways' `open`s), server-wide."""
    max_streams: int = 1000
    """StreamMedia streams at once, server-wide (a stream counts from its first message)."""
    max_video_recordings: int = 8
    """mp4 recordings at once: each runs a video worker process."""
    max_event_subscribers: int = 1000
    """SubscribeEvents streams at once."""
    max_subscriber_queue: int = 10_000
    """Events queued for one subscriber that does not read; then its stream ends (resume with after_sequence)."""
    max_id_bytes: int = 128
    """Length of any id a client sends (server_call_id, call_id, gateway_id, participant_id, request_id, ...)."""
    max_display_name_bytes: int = 256
    """Length of a participant's display name."""
    max_operation_context_bytes: int = 1024
    """Length of StartRecording's operation_context."""
    max_location_bytes: int = 4096
    """Length of a location, destination, container URL or page token."""
    max_list_items: int = 64
    """Items in any list of a request (channel ordering, channel affinity, event types)."""
    max_batch_frames: int = 256
    """Frames in one `media_batch` (audio and video together): a tick of 256 participants."""
    max_video_pixels: int = 1920 * 1088
    """Largest video frame (width x height), declared at join or found by the decoder."""
    max_frame_ahead_ms: int = 5_000
    """How far past the playout point a frame's timestamp may lie; further ones are rejected as early."""
    open_timeout_s: float = 10.0
    """Seconds a new StreamMedia stream may take to send `open` before it is closed."""


def _setting(name: str) -> str:
    return f"[limits] {name}"


def check_text(value: str, field: str, max_bytes: int, setting: str) -> None:
    """`InvalidArgument` when `value` is longer than `max_bytes` in UTF-8."""
    if len(value) * 4 <= max_bytes:  # cheap: no string of this many characters can be too long
        return
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes; the limit is {max_bytes} bytes ({_setting(setting)})"
        )


def check_items(items: Sized, field: str, max_items: int, setting: str = "max_list_items") -> None:
    """`InvalidArgument` when a request's list has more than `max_items` entries."""
    if len(items) > max_items:
        raise InvalidArgument(
            f"{field} has {len(items)} entries; the limit is {max_items} ({_setting(setting)})"
        )


def check_batch(audio_frames: int, video_frames: int, limits: Limits) -> None:
    """`InvalidArgument` when a `media_batch` holds more than `max_batch_frames` frames."""
    frames = audio_frames + video_frames
    if frames > limits.max_batch_frames:
        raise InvalidArgument(
            f"media_batch has {frames} frames ({audio_frames} audio, {video_frames} video); the limit is "
            f"{limits.max_batch_frames} ({_setting('max_batch_frames')}): send the rest in another batch"
        )


def check_count(current: int, limit: int, what: str, setting: str) -> None:
    """`ResourceExhausted` when one more `what` would exceed `limit`."""
    if current >= limit:
        raise ResourceExhausted(
            f"{what}: the server already has {current}, its limit ({_setting(setting)} = {limit}); "
            "try again later or raise the limit"
        )


def video_frame_problem(fmt: VideoFormat, size: int, width: int, height: int, max_pixels: int) -> str | None:
    """Why a video frame of `size` bytes cannot be right (a rejection reason), or None.

    The frame's own width/height (0 = the format's) must be positive and at most
    `max_pixels`; an I420 frame is exactly its picture's size; a compressed frame is no
    larger than the raw picture would be (a real encoder never needs more), so a gateway
    cannot make the server hold more than one raw picture per frame.
    """
    w, h = width or fmt.width, height or fmt.height
    if w < 0 or h < 0 or w * h > max_pixels:
        return "bad_dimensions"
    if fmt.encoding == VideoEncoding.I420:
        if w == 0 or h == 0:
            return "bad_dimensions"
        return None if size == i420_size(w, h) else "bad_length"
    # A compressed stream may leave its size to the bitstream: then the largest allowed picture bounds it.
    raw = i420_size(w, h) if w and h else max_pixels * 3 // 2
    return "frame_too_large" if size > max(raw, MIN_COMPRESSED_FRAME_CAP) else None
