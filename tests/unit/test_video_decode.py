"""VideoDecoder: I420 validation, H.264 Annex B and VP8 decoding, corrupt frames counted, not fatal."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from callrec.core.model import VideoEncoding
from callrec.media.video_decode import (
    VideoDecodeError,
    VideoDecoder,
    frame_to_planes,
    i420_size,
    is_keyframe,
    planes_to_frame,
)

W, H = 320, 240


def _source(i: int) -> av.VideoFrame:
    """Frame i of a test clip: grey level 40 + 15*i, so each decoded frame can be identified."""
    y = np.full((H, W), 40 + 15 * i, np.uint8)
    y[i * 8 : i * 8 + 32, i * 8 : i * 8 + 32] = 235  # a moving square: real motion to code
    chroma = np.full((H // 2, W // 2), 128, np.uint8)
    return planes_to_frame(y, chroma, chroma)


def _encode(codec: str, n: int, options: dict[str, str]) -> list[bytes]:
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = W, H, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 30), Fraction(30)
    ctx.options = options
    packets: list[bytes] = []
    for i in range(n):
        frame = _source(i)
        frame.pts = i
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets


def _h264(n: int = 10) -> list[bytes]:
    return _encode("libx264", n, {"preset": "ultrafast", "tune": "zerolatency", "g": "5"})


def _vp8(n: int = 10) -> list[bytes]:
    return _encode("libvpx", n, {"deadline": "realtime", "g": "5", "cpu-used": "8"})


def _luma(frame: av.VideoFrame) -> int:
    y, _, _ = frame_to_planes(frame)
    return int(y[H - 10, W - 10])


def test_i420_even_and_odd_sizes_decode_to_exact_planes() -> None:
    for w, h in ((320, 240), (321, 241)):
        cw, ch = (w + 1) // 2, (h + 1) // 2
        data = np.concatenate(
            [np.full(w * h, 81, np.uint8), np.full(cw * ch, 90, np.uint8), np.full(cw * ch, 240, np.uint8)]
        )
        assert data.size == i420_size(w, h)
        (frame,) = VideoDecoder(VideoEncoding.I420, w, h).decode(data.tobytes())
        y, u, v = frame_to_planes(frame)
        assert (frame.width, frame.height, frame.format.name) == (w, h, "yuv420p")
        assert y.shape == (h, w) and u.shape == (ch, cw)
        assert (y == 81).all() and (u == 90).all() and (v == 240).all()


def test_i420_wrong_length_is_a_typed_error_and_the_next_frame_still_decodes() -> None:
    dec = VideoDecoder(VideoEncoding.I420, W, H)
    good = bytes(i420_size(W, H))
    with pytest.raises(VideoDecodeError) as info:
        dec.decode(good[:-1])
    assert info.value.reason == "bad_length"
    with pytest.raises(VideoDecodeError) as info:
        dec.decode(good, width=99999, height=2)
    assert info.value.reason == "bad_dimensions"
    # The frame message's own size wins over the size from join.
    assert dec.decode(bytes(i420_size(64, 48)), 64, 48)[0].width == 64
    assert len(dec.decode(good)) == 1
    assert (dec.errors, dec.decoded) == (2, 2)


@pytest.mark.parametrize(("encoding", "packets"), [(VideoEncoding.H264, _h264), (VideoEncoding.VP8, _vp8)])
def test_compressed_streams_decode_every_frame(encoding: VideoEncoding, packets: object) -> None:
    data = packets()  # type: ignore[operator]
    assert is_keyframe(encoding, data[0])
    dec = VideoDecoder(encoding)
    frames = [f for p in data for f in dec.decode(p)]
    assert len(frames) == 10
    assert all((f.width, f.height, f.format.name) == (W, H, "yuv420p") for f in frames)
    lumas = [_luma(f) for f in frames]
    assert all(abs(lu - (40 + 15 * i)) <= 6 for i, lu in enumerate(lumas)), lumas


@pytest.mark.parametrize(("encoding", "packets"), [(VideoEncoding.H264, _h264), (VideoEncoding.VP8, _vp8)])
def test_corrupt_frame_raises_and_later_frames_decode(encoding: VideoEncoding, packets: object) -> None:
    data = packets()  # type: ignore[operator]
    bad = data[3][: len(data[3]) // 3]  # a frame cut short, as packet loss leaves it
    dec = VideoDecoder(encoding)
    decoded, errors = [], []
    for i, p in enumerate(data):
        try:
            decoded += [(i, f) for f in dec.decode(bytes(bad) if i == 3 else p)]
        except VideoDecodeError as exc:
            errors.append((i, exc.reason))
    assert errors == [(3, "corrupt")]
    assert [i for i, _ in decoded] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    # From the next key frame (g=5) on the picture is exact again.
    assert abs(_luma(decoded[-1][1]) - (40 + 15 * 9)) <= 6
    assert dec.errors == 1


def test_h264_damaged_slice_data_is_detected() -> None:
    data = _h264()
    bad = bytearray(data[3])
    bad[10:20] = b"\xff" * 10
    dec = VideoDecoder(VideoEncoding.H264)
    with pytest.raises(VideoDecodeError):
        for i, p in enumerate(data[:4]):
            dec.decode(bytes(bad) if i == 3 else p)
    assert len(dec.decode(data[4])) == 1


def test_framing_errors_have_their_own_reasons() -> None:
    with pytest.raises(VideoDecodeError) as info:
        VideoDecoder(VideoEncoding.H264).decode(b"garbage without start code")
    assert info.value.reason == "not_annex_b"
    with pytest.raises(VideoDecodeError) as info:
        VideoDecoder(VideoEncoding.VP8).decode(b"\x00\x01")
    assert info.value.reason == "truncated"
    with pytest.raises(VideoDecodeError) as info:
        VideoDecoder(VideoEncoding.VP8).decode(b"\x00" * 20)  # key frame bit, no start code
    assert info.value.reason == "corrupt"
    with pytest.raises(VideoDecodeError) as info:
        VideoDecoder(VideoEncoding.H264).decode(b"")
    assert info.value.reason == "empty"


def test_stream_joined_mid_gop_waits_for_a_key_frame_without_errors() -> None:
    data = _h264(12)  # key frames at 0, 5, 10
    dec = VideoDecoder(VideoEncoding.H264)
    frames = [f for p in data[2:] for f in dec.decode(p)]
    assert (dec.skipped, dec.errors) == (3, 0)
    assert len(frames) == 7
    assert abs(_luma(frames[0]) - (40 + 15 * 5)) <= 6
