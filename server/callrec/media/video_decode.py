"""Per-participant video decoding: I420 raw, H.264 Annex B and VP8 into yuv420p frames.

One `VideoDecoder` per participant, because H.264 and VP8 decoders keep reference frames
between packets. Every output is an `av.VideoFrame` in yuv420p (the compositor scales it
with swscale, which is why we do not convert to numpy here). A bad frame raises
`VideoDecodeError` with a short machine-readable `reason` (the server counts rejections
per reason) and leaves the decoder usable for the frames after it.
"""

from __future__ import annotations

from typing import Literal

import av
import numpy as np

from callrec.core.model import MAX_VIDEO_DIMENSION, VideoEncoding, i420_size

#: Largest width/height accepted from a gateway; bounds memory per frame (4K DCI).
MAX_DIMENSION = MAX_VIDEO_DIMENSION
#: Largest picture a decoder may allocate (4K UHD). Given to FFmpeg as `max_pixels`, so a
#: bitstream whose SPS claims 16384x16384 fails in the decoder instead of allocating ~400 MB
#: of reference frames. The server's `[limits] max_video_pixels` bounds what gateways declare.
MAX_DECODED_PIXELS = 3840 * 2160


class VideoDecodeError(Exception):
    """A video frame that could not be decoded; `reason` is a stable counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def plane_array(frame: av.VideoFrame, index: int) -> np.ndarray:
    """A writable (height, width) numpy view of one plane, skipping the line padding."""
    plane = frame.planes[index]
    buf = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
    return buf[:, : plane.width]


def frame_to_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U and V planes of a yuv420p frame as numpy views (no copy)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    return plane_array(frame, 0), plane_array(frame, 1), plane_array(frame, 2)


def planes_to_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> av.VideoFrame:
    """Copy Y, U, V planes into a new yuv420p `av.VideoFrame` (odd sizes allowed)."""
    height, width = y.shape
    frame = av.VideoFrame(width, height, "yuv420p")
    plane_array(frame, 0)[:] = y
    plane_array(frame, 1)[:] = u
    plane_array(frame, 2)[:] = v
    return frame


def i420_to_frame(data: bytes | memoryview, width: int, height: int) -> av.VideoFrame:
    """Wrap packed I420 bytes as a yuv420p frame, validating size first.

    Raises `VideoDecodeError` ("bad_dimensions" or "bad_length") instead of producing a
    sheared picture, which is what a wrong length would otherwise silently give.
    """
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
        raise VideoDecodeError("bad_dimensions", f"I420 frame {width}x{height} is outside 1..{MAX_DIMENSION}")
    expected = i420_size(width, height)
    if len(data) != expected:
        raise VideoDecodeError(
            "bad_length", f"I420 {width}x{height} needs {expected} bytes, got {len(data)}"
        )
    buf = np.frombuffer(data, np.uint8)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    ysz, csz = width * height, cw * ch
    return planes_to_frame(
        buf[:ysz].reshape(height, width),
        buf[ysz : ysz + csz].reshape(ch, cw),
        buf[ysz + csz :].reshape(ch, cw),
    )


def _h264_nal_types(data: bytes | memoryview) -> list[int]:
    """NAL unit types of an Annex B access unit (empty when there is no start code)."""
    raw = bytes(data)
    types: list[int] = []
    pos = raw.find(b"\x00\x00\x01")
    while pos >= 0 and pos + 3 < len(raw):
        types.append(raw[pos + 3] & 0x1F)
        pos = raw.find(b"\x00\x00\x01", pos + 3)
    return types


def is_keyframe(encoding: VideoEncoding, data: bytes | memoryview) -> bool:
    """Whether a decoder can start at this frame (H.264: SPS or IDR; VP8: key frame bit)."""
    if encoding is VideoEncoding.I420:
        return True
    if encoding is VideoEncoding.H264:
        types = _h264_nal_types(data)
        return 5 in types or 7 in types
    return len(data) >= 10 and (data[0] & 1) == 0 and bytes(data[3:6]) == b"\x9d\x01\x2a"


class VideoDecoder:
    """Decodes one participant's video stream, frame by frame, into yuv420p `av.VideoFrame`s.

    Compressed streams are decoded from the first key frame on: frames before it cannot be
    decoded and are skipped silently (a recording may start in the middle of a stream),
    counted in `skipped`. After a corrupt frame FFmpeg conceals the damage in the frames
    that follow, which is better for a recording than freezing until a key frame that a
    WebRTC sender may not send for minutes.
    """

    def __init__(self, encoding: VideoEncoding, width: int = 0, height: int = 0) -> None:
        self.encoding = encoding
        self.width = width
        self.height = height
        self.decoded = 0
        self.skipped = 0
        self.errors = 0
        self._started = encoding is VideoEncoding.I420
        self._ctx: av.VideoCodecContext | None = None
        if encoding is not VideoEncoding.I420:
            self._ctx = self._new_context()

    def _new_context(self) -> av.VideoCodecContext:
        name: Literal["h264", "vp8"] = "h264" if self.encoding is VideoEncoding.H264 else "vp8"
        ctx = av.CodecContext.create(name, "r")
        # One thread: frame threading would delay every output by a frame per thread, and
        # a recording worker has other decoders and an encoder to share its core with.
        ctx.thread_count = 1
        # "explode": fail loudly on a damaged frame so it is counted as rejected instead of
        # being concealed into a smeared picture.
        ctx.options = {"err_detect": "explode", "max_pixels": str(MAX_DECODED_PIXELS)}
        return ctx

    def decode(
        self, data: bytes | memoryview, width: int = 0, height: int = 0
    ) -> list[av.VideoFrame]:
        """Decode one gateway video frame; returns 0 or more yuv420p frames.

        `width`/`height` are the frame message's size (needed for I420; 0 means the size
        from join). Raises `VideoDecodeError` for a frame that cannot be decoded.
        """
        try:
            frames = self._decode(data, width or self.width, height or self.height)
        except VideoDecodeError:
            self.errors += 1
            raise
        self.decoded += len(frames)
        return frames

    def _decode(self, data: bytes | memoryview, width: int, height: int) -> list[av.VideoFrame]:
        if self.encoding is VideoEncoding.I420:
            return [i420_to_frame(data, width, height)]
        if not data:
            raise VideoDecodeError("empty", "empty video frame")
        self._check_bitstream(data)
        if not self._started:
            if not is_keyframe(self.encoding, data):
                self.skipped += 1
                return []
            self._started = True
        assert self._ctx is not None
        try:
            frames = self._ctx.decode(av.Packet(bytes(data)))
        except av.FFmpegError as exc:
            raise VideoDecodeError("corrupt", f"{self.encoding.value} decoder: {exc}") from exc
        out = []
        for frame in frames:
            if frame.width > MAX_DIMENSION or frame.height > MAX_DIMENSION or (
                frame.width * frame.height > MAX_DECODED_PIXELS
            ):
                raise VideoDecodeError("bad_dimensions", f"decoded {frame.width}x{frame.height}")
            out.append(frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p"))
        return out

    def _check_bitstream(self, data: bytes | memoryview) -> None:
        """Reject framing errors that FFmpeg would otherwise swallow without a word."""
        if self.encoding is VideoEncoding.H264:
            head = bytes(data[:4])
            if not (head.startswith(b"\x00\x00\x01") or head == b"\x00\x00\x00\x01"):
                raise VideoDecodeError("not_annex_b", "H.264 frame does not start with a start code")
        else:
            if len(data) < 3:
                raise VideoDecodeError("truncated", f"VP8 frame of {len(data)} bytes")
            key = (data[0] & 1) == 0
            if key and (len(data) < 10 or bytes(data[3:6]) != b"\x9d\x01\x2a"):
                raise VideoDecodeError("corrupt", "VP8 key frame without its start code")

    def close(self) -> None:
        """Free the codec context (decoders hold reference frames: megabytes each)."""
        self._ctx = None
