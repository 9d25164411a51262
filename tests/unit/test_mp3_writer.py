"""The mixed-mp3 writer: libmp3lame called directly (ctypes), and PyAV's encoder as the fallback.

Each file is decoded with PyAV and checked for what players rely on: every written sample comes
back (the Info tag's delay and padding make decoding gapless), the tone is where it was written,
the stream is 16 kHz mono CBR 48 kbps with no ID3 tag, and it starts with an Info frame both when
finished and while it is still being written (what crash repair finds).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from callrec.media import lame
from callrec.media.writers import Mp3Writer, Mp3WriterFactory, PyAVMp3Writer
from callrec.media.writers.repair import cut_mp3, mp3_frame_length
from callrec.testing import decode_file, dominant_frequencies

RATE = 16_000


def tone_samples(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)


def decoded(path: Path) -> tuple[np.ndarray, av.AudioStream, float | None]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        duration = container.duration / 1e6 if container.duration else None
        return pcm, stream, duration


def write_in_uneven_pieces(writer: Mp3Writer | PyAVMp3Writer, samples: np.ndarray) -> None:
    """Writes of 1 s, 20 ms, 7 samples, 0 samples...: the encoder must not care how audio is cut."""
    sizes = [16_000, 320, 7, 0, 4_999, 1]
    start = 0
    k = 0
    while start < len(samples):
        size = sizes[k % len(sizes)]
        writer.write(samples[start:start + size])
        start += size
        k += 1


@pytest.fixture(params=["libmp3lame", "pyav"])
def factory(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Mp3WriterFactory:
    if request.param == "pyav":
        monkeypatch.setattr("callrec.media.lame.available", lambda: False)
    return Mp3WriterFactory()


def test_the_writer_uses_libmp3lame_itself_when_it_loads() -> None:
    assert lame.available()  # PyAV's wheel bundles it
    assert type(Mp3WriterFactory().open(Path("/dev/null"))) is Mp3Writer


def test_the_systems_libmp3lame_comes_before_the_copy_in_pyavs_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's build takes 3.5-4x less CPU for the same encode (see `media.native_libs`); the wheel's copy
    stays the fallback, and the start-up log names the one in use."""
    import ctypes.util

    from callrec.media import native_libs

    system = ctypes.util.find_library("mp3lame")
    assert system is not None, "make test-deps installs Debian's libmp3lame0"
    loaded = lame._library()
    assert loaded is not None and loaded._name == system
    assert lame.describe() == f"libmp3lame 3.100 ({system})"
    opus = native_libs.load_codec_library("opus", "libopus.so.0")
    assert opus is not None and "av.libs" in opus._name, "other codecs keep PyAV's copy first"
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    fallback = native_libs.load_codec_library("mp3lame", "libmp3lame.so.absent", prefer_system=True)
    assert fallback is not None and "av.libs" in fallback._name


def test_every_sample_comes_back_at_16k_mono_48kbps(factory: Mp3WriterFactory, tmp_path: Path) -> None:
    samples = np.concatenate([tone_samples(440.0, 1.5), tone_samples(880.0, 1.5)])
    writer = factory.open(tmp_path / "a.mp3")
    write_in_uneven_pieces(writer, samples)
    assert writer.samples_written == len(samples)
    path = writer.close()
    pcm, stream, duration = decoded(path)
    assert (stream.rate, stream.channels, stream.bit_rate) == (RATE, 1, 48_000)
    assert len(pcm) == len(samples)  # gapless: the encoder delay and the last frame's padding are trimmed
    assert duration is not None and abs(duration - 3.0) <= 0.020
    for start, freq in ((0.2, 440.0), (1.7, 880.0)):
        block = pcm[round(start * RATE): round((start + 1.0) * RATE)]
        assert abs(dominant_frequencies(block, RATE)[0] - freq) < 3
    level = np.sqrt(np.mean(pcm[RATE:2 * RATE] ** 2)) * 32768
    assert level == pytest.approx(8000 / np.sqrt(2), rel=0.1)
    data = path.read_bytes()
    assert not data.startswith(b"ID3") and data[-128:-125] != b"TAG"  # no tags: size follows the samples
    assert len(data) % 216 == 0  # whole CBR frames: the Info frame, then audio
    assert len(data) <= factory.projected_bytes(len(samples), 1)  # chunk rotation by bytes relies on it


def test_the_file_starts_with_an_info_frame_while_it_is_written(factory: Mp3WriterFactory, tmp_path: Path) -> None:
    """A kill -9 leaves the file as it is mid-write: its first frame must already be the Info tag,
    else crash repair would count it as 36 ms of audio."""
    writer = factory.open(tmp_path / "b.mp3")
    writer.write(tone_samples(500.0, 1.0))
    data = (tmp_path / "b.mp3").read_bytes()
    assert writer.bytes_written == len(data) > 0
    first = mp3_frame_length(data[:4])
    assert first == 216  # MPEG-2 Layer III, 48 kbps at 16 kHz
    assert b"Info" in data[:first] or b"Xing" in data[:first]
    assert mp3_frame_length(data[first:first + 4]) == 216  # then audio frames
    writer.close()


def test_a_kill_at_any_moment_leaves_an_empty_file_or_a_decodable_mp3(tmp_path: Path) -> None:
    """What a kill -9 finds after each 20 ms write (as the recording's writer jobs hand them over): nothing
    yet, or an Info frame and at least two audio frames, which crash repair keeps and FFmpeg decodes.
    (A single audio frame is a file FFmpeg cannot open: the 20-kill crash test met one.)"""
    writer = Mp3WriterFactory().open(tmp_path / "k.mp3")
    samples = tone_samples(600.0, 0.6)
    seen_empty = seen_media = False
    for k in range(0, len(samples), 320):
        writer.write(samples[k:k + 320])
        data = (tmp_path / "k.mp3").read_bytes()
        if not data:
            seen_empty = True
            continue
        seen_media = True
        first = mp3_frame_length(data[:4])
        assert first is not None and b"Info" in data[:first], k
        killed = tmp_path / f"killed-{k}.mp3"
        killed.write_bytes(data)
        repaired = cut_mp3(killed)
        assert repaired is not None and repaired.samples > 0, (k, repaired)  # after the 1105-sample encoder delay
        pcm, _, _ = decoded(killed)
        assert len(pcm) > 0
    assert seen_empty and seen_media  # both states happen within the first 0.6 s
    writer.close()


def test_a_writer_closed_without_audio_leaves_a_file_and_no_error(factory: Mp3WriterFactory, tmp_path: Path) -> None:
    writer = factory.open(tmp_path / "c.mp3")
    assert writer.close() == tmp_path / "c.mp3"
    assert writer.close() == tmp_path / "c.mp3"  # twice is harmless


def test_lame_refuses_an_impossible_stream_and_a_closed_encoder() -> None:
    with pytest.raises(lame.LameError, match=r"lame_set_out_samplerate\(7000\) was refused"):
        lame.Mp3Encoder(7_000, 48_000, 7)  # no mp3 has 7 kHz
    encoder = lame.Mp3Encoder(RATE, 48_000, 7)
    assert encoder.info_frame() == b""  # no frame out yet: no tag to write
    assert encoder.encode(np.zeros(0, dtype=np.int16)) == b""
    encoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        encoder.encode(tone_samples(500.0, 0.1))


def test_a_libmp3lame_without_a_needed_function_means_the_pyav_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that loads but lacks a function we call (a LAME before 3.98) is not used: PyAV encodes."""
    import ctypes

    monkeypatch.setattr("callrec.media.lame.load_codec_library", lambda stem, soname, **_: ctypes.CDLL(None))
    lame._library.cache_clear()
    try:
        assert not lame.available()
        assert type(Mp3WriterFactory().open(Path("/dev/null"))) is PyAVMp3Writer
    finally:
        lame._library.cache_clear()



def test_a_cut_too_short_for_ffmpegs_probe_is_remuxed_counted_and_decoded(tmp_path: Path) -> None:
    """A kill just after a chunk began left this file in the 20-kill crash test: the Info frame and 3 audio
    frames, its header stale (5 frames). FFmpeg's probe cannot name it (mp3 and h263 both score 25), so
    repair and the harness name the format: the header is rewritten, every sample counted, the file decoded."""
    killed = tmp_path / "killed.mp3"
    original = (Path(__file__).parent / "data" / "killed-chunk-4-frames.mp3").read_bytes()
    killed.write_bytes(original + original[216:270])  # and the start of a frame the kill cut short
    with pytest.raises(av.error.InvalidDataError):
        av.open(str(killed)).close()  # what `ffprobe` says too, unless told `-f mp3`
    repaired = cut_mp3(killed)
    decoded_samples = decode_file(killed).samples.shape[0]
    assert repaired is not None and repaired.samples == decoded_samples > 0
    data = killed.read_bytes()
    frame = mp3_frame_length(data[:4])
    assert frame == 216 and len(data) == 4 * frame  # whole frames only: the cut-short one is gone
    assert [mp3_frame_length(data[i : i + 4]) for i in range(0, len(data), frame)] == [frame] * 4
    assert b"Info" in data[:frame] or b"Xing" in data[:frame]
    assert data[:frame] != original[:frame]  # the remux wrote a true header in place of the stale one
