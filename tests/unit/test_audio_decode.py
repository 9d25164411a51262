"""Audio decoding: every gateway encoding to 16 kHz mono, corrupt frames, the resampler bank."""

from __future__ import annotations

import numpy as np
import pytest

from callrec.core.model import AudioEncoding, AudioFormat, DecodeError
from callrec.media.decode import AudioDecoder, ResamplerBank, decode_to_16k, opus_packet_samples
from callrec.testing import dominant_frequencies, encode_frames, tone, tone_frames

FORMATS = [
    pytest.param(AudioFormat(AudioEncoding.OPUS, 48_000, 1), id="opus-mono"),
    pytest.param(AudioFormat(AudioEncoding.OPUS, 48_000, 2), id="opus-stereo"),
    pytest.param(AudioFormat(AudioEncoding.PCMU, 8_000, 1), id="pcmu"),
    pytest.param(AudioFormat(AudioEncoding.PCMA, 8_000, 1), id="pcma"),
    pytest.param(AudioFormat(AudioEncoding.PCM16LE, 48_000, 2), id="pcm16-48k-stereo"),
    pytest.param(AudioFormat(AudioEncoding.PCM16LE, 44_100, 1), id="pcm16-44k1"),
    pytest.param(AudioFormat(AudioEncoding.PCM16LE, 16_000, 1), id="pcm16-16k"),
    pytest.param(AudioFormat(AudioEncoding.PCM16LE, 8_000, 1), id="pcm16-8k"),
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_encoding_decodes_to_16k_with_the_right_tone(fmt: AudioFormat) -> None:
    frames = tone_frames(700.0, 1.0, fmt)
    assert len(frames) == 50
    pcm = decode_to_16k(fmt, frames)
    assert pcm.dtype == np.int16
    assert abs(len(pcm) - 16_000) <= 32  # 1 s at 16 kHz (resampler edges)
    peak = dominant_frequencies(pcm[1600:-1600], 16_000)[0]
    assert abs(peak - 700.0) < 5.0
    level = np.sqrt(np.mean(pcm[1600:-1600].astype(np.float64) ** 2)) / 32768
    assert 0.1 < level < 0.35  # a 0.3-amplitude sine has RMS 0.21; codecs stay close


def test_decoder_rates_and_frame_lengths() -> None:
    opus = AudioDecoder(AudioFormat(AudioEncoding.OPUS, 0, 1))
    assert opus.sample_rate == 16_000  # libopus decodes straight to the mix rate
    for ms in (10, 20, 40, 60):
        (packet,) = tone_frames(500.0, ms / 1000, AudioFormat(AudioEncoding.OPUS, 48_000, 1), frame_ms=ms)[:1]
        assert opus.frame_samples(packet) == 16 * ms
        assert len(opus.decode(packet)) == 16 * ms
    pcmu = AudioDecoder(AudioFormat(AudioEncoding.PCMU, 0, 1))
    assert pcmu.sample_rate == 8_000
    assert pcmu.frame_samples(b"\xff" * 160) == 160
    stereo = AudioDecoder(AudioFormat(AudioEncoding.PCM16LE, 48_000, 2))
    assert stereo.frame_samples(b"\x00" * 3840) == 960
    assert stereo.decode(b"\x00" * 3840).shape == (960,)


def test_opus_toc_parsing() -> None:
    assert opus_packet_samples(bytes([0x78, 0x01])) == 960  # hybrid FB 20 ms, one frame
    assert opus_packet_samples(bytes([0x7A, 0x01])) == 1920  # code 2: two frames
    assert opus_packet_samples(bytes([0x7B, 0x03])) == 2880  # code 3: three frames
    assert opus_packet_samples(bytes([0xF0])) == 480  # CELT FB 10 ms
    for bad in (b"", bytes([0x7B]), bytes([0x7B, 0x00]), bytes([0x7B, 0x07]), bytes([0x79, 0x01])):
        with pytest.raises(DecodeError):
            opus_packet_samples(bad)


@pytest.mark.parametrize(
    "fmt, bad",
    [
        (AudioFormat(AudioEncoding.OPUS, 48_000, 1), b"\xff\xff\xff"),  # FFmpeg: invalid data
        (AudioFormat(AudioEncoding.OPUS, 48_000, 1), b""),  # would be EOF for FFmpeg
        (AudioFormat(AudioEncoding.OPUS, 48_000, 1), bytes([0x7B, 0x00])),  # code 3, zero frames
        (AudioFormat(AudioEncoding.PCM16LE, 16_000, 1), b"\x00\x01\x02"),  # odd length
        (AudioFormat(AudioEncoding.PCM16LE, 48_000, 2), b"\x00" * 6),  # not whole stereo samples
        (AudioFormat(AudioEncoding.PCM16LE, 8_000, 1), b"\x00" * 2 * 8000),  # 1 s: longer than 120 ms
        (AudioFormat(AudioEncoding.PCMU, 8_000, 1), b""),
    ],
)
def test_a_corrupt_frame_raises_and_the_decoder_keeps_working(fmt: AudioFormat, bad: bytes) -> None:
    decoder = AudioDecoder(fmt)
    good = tone_frames(500.0, 0.2, fmt)
    first = decoder.decode(good[0])
    with pytest.raises(DecodeError):
        decoder.decode(bad)
    after = [decoder.decode(frame) for frame in good[1:]]
    assert all(len(pcm) > 0 for pcm in after)
    assert len(first) > 0


def test_unusable_formats_are_refused() -> None:
    for fmt in (
        AudioFormat(AudioEncoding.PCM16LE, 96_000, 1),
        AudioFormat(AudioEncoding.PCM16LE, 16_000, 3),
        AudioFormat(AudioEncoding.PCMU, 4_000, 1),
    ):
        with pytest.raises(ValueError):
            AudioDecoder(fmt)


def test_g711_round_trip_is_faithful() -> None:
    for encoding in (AudioEncoding.PCMU, AudioEncoding.PCMA):
        fmt = AudioFormat(encoding, 8_000, 1)
        source = tone(440.0, 0.5, 8_000)
        frames = encode_frames(source, fmt)
        decoder = AudioDecoder(fmt)
        decoded = np.concatenate([decoder.decode(f) for f in frames]) * 32768
        error = decoded - source[: len(decoded)]
        snr = 10 * np.log10(np.mean(source.astype(np.float64) ** 2) / np.mean(error**2))
        assert snr > 30  # G.711 gives ~38 dB on a sine


def test_resampler_bank_keeps_every_stream_separate_and_continuous() -> None:
    """Ten 48 kHz streams in 8-channel groups: each comes out with its own tone, 320 samples a tick."""
    bank = ResamplerBank(48_000, group_size=8)
    freqs = {f"p{i}": 300.0 + 150.0 * i for i in range(10)}
    sources = {pid: tone(f, 1.0, 48_000).astype(np.float32) / 32768 for pid, f in freqs.items()}
    outputs: dict[str, list[np.ndarray]] = {pid: [] for pid in freqs}
    for tick in range(50):
        blocks = {pid: src[tick * 960 : (tick + 1) * 960] for pid, src in sources.items()}
        for pid, out in bank.process(blocks).items():
            assert out.shape == (320,)
            outputs[pid].append(out)
    assert len(bank) == 10
    for pid, f in freqs.items():
        pcm = np.concatenate(outputs[pid])
        assert abs(dominant_frequencies(pcm[800:], 16_000)[0] - f) < 3
        # Continuity: a clean sine has almost no energy off its peak (no clicks at block joins).
        spectrum = np.abs(np.fft.rfft(pcm[800:] * np.hanning(len(pcm) - 800)))
        peak = int(np.argmax(spectrum))
        off_peak = np.delete(spectrum, range(max(0, peak - 8), peak + 9))
        assert off_peak.max() < spectrum[peak] * 0.01
    bank.discard("p3")
    bank.discard("p9")
    assert len(bank) == 8
    out = bank.process({"new": np.zeros(960, np.float32), "p0": sources["p0"][:960]})
    assert set(out) == {"new", "p0"} and len(bank) == 9


def test_resampler_bank_rejects_mixed_lengths() -> None:
    bank = ResamplerBank(8_000)
    with pytest.raises(ValueError):
        bank.process({"a": np.zeros(160, np.float32), "b": np.zeros(161, np.float32)})


@pytest.mark.parametrize("channels", [1, 2])
def test_without_libopus_pyav_decodes_opus_at_48k_to_the_same_tone(
    monkeypatch: pytest.MonkeyPatch, channels: int
) -> None:
    """The fallback where libopus cannot be loaded: FFmpeg's decoder at 48 kHz, then the resampler."""
    fmt = AudioFormat(AudioEncoding.OPUS, 48_000, channels)
    frames = tone_frames(700.0, 1.0, fmt)
    direct = decode_to_16k(fmt, frames)
    monkeypatch.setattr("callrec.media.opus.available", lambda: False)
    fallback = AudioDecoder(fmt)
    assert fallback.sample_rate == 48_000
    assert fallback.frame_samples(frames[0]) == 960
    via_pyav = decode_to_16k(fmt, frames)
    assert abs(len(via_pyav) - len(direct)) <= 32
    for pcm in (direct, via_pyav):
        assert abs(dominant_frequencies(pcm[1600:-1600], 16_000)[0] - 700.0) < 5.0
    level = [np.sqrt(np.mean(p[1600:-1600].astype(np.float64) ** 2)) for p in (direct, via_pyav)]
    assert level[0] == pytest.approx(level[1], rel=0.1)


def test_libopus_refuses_a_corrupt_packet_and_decodes_the_next() -> None:
    from callrec.media.opus import OpusDecoder, OpusError

    frames = tone_frames(500.0, 0.1, AudioFormat(AudioEncoding.OPUS, 48_000, 1))
    decoder = OpusDecoder(16_000)
    assert len(decoder.decode(frames[0])) == 320
    with pytest.raises(OpusError):
        decoder.decode(bytes([0x7B, 0x00]))  # code 3 with zero frames (RFC 6716 §3.2.5)
    assert len(decoder.decode(frames[1])) == 320
    decoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        decoder.decode(frames[2])
    with pytest.raises(ValueError, match="44100"):
        OpusDecoder(44_100)


@pytest.mark.parametrize(
    "fmt, width",
    [
        (AudioFormat(AudioEncoding.PCM16LE, 16_000, 1), 2),
        (AudioFormat(AudioEncoding.PCM16LE, 44_100, 2), 4),  # 10 ms is 441 samples: no whole-ms rounding
        (AudioFormat(AudioEncoding.PCMU, 8_000, 1), 1),
        (AudioFormat(AudioEncoding.PCMA, 11_025, 1), 1),  # 110.25 samples in 10 ms: the bound rounds up
    ],
)
def test_raw_frame_lengths_are_accepted_exactly_from_10_to_60_ms(fmt: AudioFormat, width: int) -> None:
    """The per-frame check is two comparisons on precomputed byte bounds; they must equal the rule
    `10 ms <= samples / rate <= 60 ms` at every length around both bounds."""
    decoder = AudioDecoder(fmt)
    rate = decoder.sample_rate
    for samples in range(rate * 10 // 1000 - 3, rate * 60 // 1000 + 4):
        for extra in (0, 1) if width > 1 else (0,):
            data = b"\x00" * (samples * width + extra)
            allowed = extra == 0 and rate * 10 <= samples * 1000 <= rate * 60
            if allowed:
                assert decoder.frame_samples(data) == samples
                assert len(decoder.decode(data)) == samples
            else:
                with pytest.raises(DecodeError, match=r"whole number|frames must carry 10-60 ms"):
                    decoder.frame_samples(data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_into_writes_what_decode_returns_and_nothing_past_it(fmt: AudioFormat) -> None:
    """The tick loop decodes one-frame ticks straight into the mix matrix's row (`decode_into`)."""
    into, plain = AudioDecoder(fmt), AudioDecoder(fmt)  # two decoders: Opus keeps state between frames
    for frame in tone_frames(700.0, 0.2, fmt):
        expected = plain.decode(frame)
        row = np.full(len(expected) + 7, 9.0, dtype=np.float32)
        n = into.decode_into(frame, row)
        assert n == len(expected) == into.frame_samples(frame)
        np.testing.assert_array_equal(row[:n], expected)
        assert (row[n:] == 9.0).all(), "nothing is written past the frame"
        exact = np.empty(n, dtype=np.float32)
        if fmt.encoding != AudioEncoding.OPUS:  # a stateless decoder: the same frame again, into a row of its size
            assert into.decode_into(frame, exact) == n
            np.testing.assert_array_equal(exact, expected)


def test_decode_into_raises_for_a_corrupt_opus_packet_and_keeps_decoding() -> None:
    fmt = AudioFormat(AudioEncoding.OPUS, 48_000, 1)
    decoder = AudioDecoder(fmt)
    frames = tone_frames(700.0, 0.1, fmt)
    row = np.zeros(320, dtype=np.float32)
    with pytest.raises(DecodeError):
        decoder.decode_into(bytes([0x7B, 0x00]), row)  # code 3 with zero frames (RFC 6716 §3.2.5)
    assert decoder.decode_into(frames[1], row) == 320


def test_g711_is_decoded_by_byte_translation_to_exactly_ffmpegs_table() -> None:
    from callrec.media.decode import _G711_BYTES, _G711_TABLES, _g711_decode

    codes = bytes(range(256)) * 2
    for encoding in (AudioEncoding.PCMU, AudioEncoding.PCMA):
        np.testing.assert_array_equal(_g711_decode(codes, _G711_BYTES[encoding]),
                                      _G711_TABLES[encoding][np.frombuffer(codes, dtype=np.uint8)])


@pytest.mark.parametrize("in_rate, channels", [(8_000, 4), (48_000, 8), (44_100, 3), (8_000, 1)])
def test_libswresample_called_directly_gives_pyavs_resampler_output(in_rate: int, channels: int) -> None:
    """The bank's resampler is libswresample through ctypes; PyAV's (a filter graph around the same
    library, with its defaults) must give the very same samples, first call's held-back delay included."""
    import av

    from callrec.media.swresample import SwrResampler

    block = in_rate // 50
    t = np.arange(block * 40) / in_rate
    pcm = np.stack([0.3 * np.sin(2 * np.pi * (300 + 170 * c) * t) for c in range(channels)], axis=1)
    pcm = pcm.astype(np.float32)
    ours = SwrResampler(in_rate, 16_000, channels)
    layout = av.AudioLayout(f"{channels} channels")
    theirs = av.AudioResampler(format="flt", layout=layout, rate=16_000)
    mine, reference = [], []
    for k in range(40):
        chunk = pcm[k * block:(k + 1) * block]
        mine.append(ours.convert(chunk).copy())
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk).reshape(1, -1), format="flt", layout=layout)
        frame.sample_rate = in_rate
        reference += [f.to_ndarray().reshape(-1, channels) for f in theirs.resample(frame)]
    assert len(mine[0]) < 320 and all(len(m) == 320 for m in mine[2:]), "the filter's delay, then steady blocks"
    np.testing.assert_array_equal(np.concatenate(mine), np.concatenate(reference))
    with pytest.raises(ValueError, match="shape"):
        ours.convert(np.zeros((block, channels + 1), dtype=np.float32))
    ours.close()
    with pytest.raises(RuntimeError, match="closed"):
        ours.convert(pcm[:block])
