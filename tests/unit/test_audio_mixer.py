"""Mixer: no wrap-around with a loud crowd, transparent for one speaker, speaking flags."""

from __future__ import annotations

import numpy as np

from callrec.core.mixer import CEILING, Mixer, db_to_linear, soft_limit

SAMPLES = 320


def sine(freq: float, ticks: int, amplitude: float, phase: float = 0.0) -> np.ndarray:
    t = np.arange(ticks * SAMPLES) / 16_000
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def run(mixer: Mixer, streams: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list]:
    """Mix (participants, samples) tick by tick."""
    mixed, results = [], []
    for k in range(streams.shape[1] // SAMPLES):
        result = mixer.mix(ids, streams[:, k * SAMPLES : (k + 1) * SAMPLES])
        mixed.append(result.mixed)
        results.append(result)
    return np.concatenate(mixed), results


def test_twenty_loud_participants_never_wrap() -> None:
    """20 full-scale voices in phase (worst case: sum 20x full scale) and 20 at random phases."""
    ids = [f"p{i}" for i in range(20)]
    in_phase = np.stack([sine(440, 50, 0.999) for _ in ids])
    rng = np.random.default_rng(1)
    scattered = np.stack([sine(200 + 37 * i, 50, 0.999, rng.uniform(0, 6.28)) for i in range(20)])
    for streams in (in_phase, scattered):
        mixed, _ = run(Mixer(), streams, ids)
        total = streams.sum(axis=0)
        assert mixed.dtype == np.int16
        assert int(np.abs(mixed.astype(np.int32)).max()) <= 32767
        loud = np.abs(total) > 0.05
        # Wrap-around would flip signs: the output always keeps the sign of the true sum.
        assert np.all(np.sign(mixed[loud]) == np.sign(total[loud]))
        assert np.abs(mixed).max() > 0.5 * 32767  # limited, not muted


def test_one_speaker_at_normal_level_passes_bit_exact() -> None:
    voice = sine(300, 20, 0.3)
    silent = np.zeros_like(voice)
    mixed, results = run(Mixer(), np.stack([voice, silent, silent]), ["a", "b", "c"])
    expected = np.clip(np.rint(voice * 32768), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(mixed, expected)
    np.testing.assert_array_equal(np.concatenate([r.blocks[0] for r in results]), expected)
    assert all(r.blocks.shape == (3, SAMPLES) for r in results)


def test_gain_recovers_after_a_loud_burst() -> None:
    mixer = Mixer(release_ms=100)
    loud = np.stack([sine(300, 10, 0.9) for _ in range(6)])
    run(mixer, loud, [f"p{i}" for i in range(6)])
    assert mixer.gain < 0.2
    quiet = np.stack([sine(300, 50, 0.2)] + [np.zeros(50 * SAMPLES, np.float32)] * 5)
    run(mixer, quiet, [f"p{i}" for i in range(6)])
    assert mixer.gain > 0.99


def test_soft_limit_is_identity_below_the_knee_and_bounded_above() -> None:
    knee = db_to_linear(-3)
    x = np.linspace(-30, 30, 100_001, dtype=np.float32)
    y = soft_limit(x, knee)
    below = np.abs(x) <= knee
    np.testing.assert_array_equal(y[below], x[below])
    assert np.all(np.abs(y) <= np.float32(CEILING))
    assert np.all(np.diff(y) >= 0)  # monotonic: no fold-over


def test_speaking_flags_energy_and_hangover() -> None:
    mixer = Mixer(speech_threshold_dbfs=-45, speech_hangover_ms=100)  # 5 ticks of hangover
    talk = np.concatenate([sine(300, 10, 0.1), np.zeros(20 * SAMPLES, np.float32)])
    hum = np.full(30 * SAMPLES, 0.001, dtype=np.float32)  # -60 dBFS
    _, results = run(mixer, np.stack([talk, hum]), ["talker", "hum"])
    speaking = [bool(r.speaking[0]) for r in results]
    assert speaking[:10] == [True] * 10
    assert speaking[10:15] == [True] * 5  # hangover
    assert not any(speaking[15:])
    assert not any(bool(r.speaking[1]) for r in results)
    assert abs(float(results[0].energy_db[0]) - 20 * np.log10(0.1 / np.sqrt(2))) < 0.5
    assert abs(float(results[0].energy_db[1]) + 60) < 0.5


def test_no_participants_gives_silence() -> None:
    result = Mixer().mix([], np.zeros((0, SAMPLES), np.float32))
    assert result.mixed.shape == (SAMPLES,) and not result.mixed.any()


def test_blocks_and_levels_are_made_on_first_use_and_equal_the_inputs() -> None:
    """A mixed recording never asks for each participant's int16 block: `mix` must not make them.
    When asked, they are the inputs rounded and saturated, and levels are their RMS in dBFS."""
    from callrec.core.call_media import ParticipantBlocks
    from callrec.core.mixer import float_to_int16

    pcm = np.stack([sine(300, 1, 0.5), np.full(SAMPLES, 1.5, np.float32), np.full(SAMPLES, -1.5, np.float32)])
    result = Mixer().mix(["a", "b", "c"], pcm)
    assert not result.converted
    blocks = ParticipantBlocks(["a", "b", "c"], result)
    assert list(blocks) == ["a", "b", "c"] and len(blocks) == 3
    assert "b" in blocks and "z" not in blocks and 7 not in blocks
    assert not result.converted  # keys and membership did not convert
    np.testing.assert_array_equal(blocks["a"], np.rint(pcm[0] * 32768).astype(np.int16))
    assert set(blocks["b"].tolist()) == {32767} and set(blocks["c"].tolist()) == {-32768}  # saturated
    assert blocks.get("z") is None
    assert result.converted and result.blocks is result.blocks  # converted once, then kept for every sink
    np.testing.assert_array_equal(float_to_int16(np.array([0.99999, -1.0, 2.0, -2.0], np.float32)),
                                  np.array([32767, -32768, 32767, -32768], np.int16))
    assert abs(float(result.energy_db[0]) - 20 * np.log10(0.5 / np.sqrt(2))) < 0.1
    assert abs(float(result.energy_db[1]) - 20 * np.log10(1.5)) < 0.01


def test_a_steady_loud_call_is_scaled_by_its_constant_gain() -> None:
    """While the gain holds (a loud call that stays loud), each block is the sum times that gain: the
    ramp from a gain to the same gain is skipped, and the samples are those the ramp would give."""
    ids = [f"p{i}" for i in range(6)]
    streams = np.stack([sine(300, 30, 0.9) for _ in ids])  # the same peak every tick: the gain settles
    mixer = Mixer()
    run(mixer, streams[:, : 20 * SAMPLES], ids)
    held = mixer.gain
    assert held < 0.2
    block = streams[:, 20 * SAMPLES : 21 * SAMPLES]
    result = mixer.mix(ids, block)
    assert mixer.gain == held  # held, not ramping
    total = np.add.reduce(block, axis=0, dtype=np.float32)
    ramped = total * (np.float32(held) + np.float32(0.0) * (np.arange(1, SAMPLES + 1, dtype=np.float32) / SAMPLES))
    expected = np.rint(soft_limit(ramped) * np.float32(32768.0)).astype(np.int16)
    np.testing.assert_array_equal(result.mixed, expected)
    assert int(np.abs(result.mixed.astype(np.int32)).max()) > 0.5 * 32767


def test_float64_blocks_are_mixed_as_float32() -> None:
    result = Mixer().mix(["a", "b"], np.full((2, 320), 0.1))  # float64, as a caller may pass
    assert result.pcm.dtype == result.mean_square.dtype == np.float32
    np.testing.assert_array_equal(result.mixed, np.full(320, 6554, np.int16))  # 0.2 * 32768, rounded
