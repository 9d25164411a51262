"""The audio mixer: sums participants' 20 ms blocks without wrap-around, and rates who speaks.

Why a limiter and not a plain sum or an average: a plain int16 sum wraps (a loud
crowd becomes noise), an average makes one speaker among ten inaudible. The mixer sums
in float32, then a gain stage that never boosts gives headroom only when the sum gets
loud (instant attack, slow release, ramped across the block so it does not click), and
a tanh knee above -3 dBFS catches what is left: the output can approach but never
exceed full scale, whatever the number of participants. One speaker at a normal level
passes untouched (gain 1, below the knee).

All outputs of a call come from one `Mixer.mix` per tick: the mixed block, each
participant's own block (unmixed recordings) and per-participant energy / speaking
flags (unmixed channel assignment, active speaker in the video grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["CEILING", "DEFAULT_KNEE", "MixResult", "Mixer", "db_to_linear", "float_to_int16", "soft_limit"]


def db_to_linear(db: float) -> float:
    """dBFS to a linear amplitude (0 dBFS = 1.0)."""
    return float(10.0 ** (db / 20.0))


def float_to_int16(pcm: np.ndarray) -> np.ndarray:
    """Round float PCM in [-1, 1) to int16, saturating (never wrapping).

    Two in-place ufuncs rather than `np.clip`: on a 20 ms block clip's Python wrapper costs
    more than the arithmetic, and this runs for every tick of every call.
    """
    scaled: np.ndarray = np.multiply(pcm, np.float32(32768.0))
    np.rint(scaled, out=scaled)
    np.minimum(scaled, np.float32(32767.0), out=scaled)
    np.maximum(scaled, np.float32(-32768.0), out=scaled)
    return scaled.astype(np.int16)


#: Ceiling of the limiter: the largest positive int16 value, so the output stays symmetric.
CEILING = 32767 / 32768


#: Where the limiter's tanh curve starts (-3 dBFS): below it `soft_limit` is the identity.
DEFAULT_KNEE = db_to_linear(-3.0)


def soft_limit(x: np.ndarray, knee: float = DEFAULT_KNEE) -> np.ndarray:
    """Identity below `knee`; above it a tanh curve that approaches `CEILING` but never exceeds it.

    Continuous with slope 1 at the knee, so a signal that only grazes it is not distorted.
    Returns a new float32 array.
    """
    y = np.asarray(x, dtype=np.float32)
    magnitude = np.abs(y)
    room = np.float32(CEILING - knee)
    limited = np.float32(knee) + room * np.tanh((magnitude - np.float32(knee)) / room)
    return np.where(magnitude > knee, np.copysign(limited, y), y).astype(np.float32, copy=False)


class MixResult:
    """One tick of mixer output; arrays are fresh per tick, so sinks may keep them.

    `blocks` and `energy_db` are computed on first use and kept: a mixed recording needs neither,
    and converting every participant's block costs as much as the mix on a small call. (An explicit
    cache, not `functools.cached_property`: compiled by mypyc that becomes a plain property, which
    would convert the whole matrix again for every participant an unmixed recording asks for.)
    """

    __slots__ = ("_blocks", "_energy_db", "mean_square", "mixed", "pcm", "speaking")

    def __init__(self, mixed: np.ndarray, pcm: np.ndarray, mean_square: np.ndarray, speaking: list[bool]) -> None:
        self.mixed = mixed  # int16, shape (samples,)
        self.pcm = pcm  # float32, shape (participants, samples): the mixer's input, rows in the order given to mix()
        self.mean_square = mean_square  # float32, shape (participants,)
        self.speaking = speaking  # per participant, in the order given to mix()
        self._blocks: np.ndarray | None = None
        self._energy_db: np.ndarray | None = None

    @property
    def converted(self) -> bool:
        """Whether `blocks` or `energy_db` was asked for (a mixed recording never asks)."""
        return self._blocks is not None or self._energy_db is not None

    @property
    def blocks(self) -> np.ndarray:
        """int16, shape (participants, samples): each participant's own block."""
        if self._blocks is None:
            self._blocks = float_to_int16(self.pcm)
        return self._blocks

    @property
    def energy_db(self) -> np.ndarray:
        """float32, shape (participants,): RMS level in dBFS."""
        if self._energy_db is None:
            levels: np.ndarray = 10.0 * np.log10(np.maximum(self.mean_square, np.float32(1e-12)))
            self._energy_db = levels.astype(np.float32)
        return self._energy_db


class Mixer:
    """Stateful mixer of one call (limiter gain and speaking hangovers carry across ticks)."""

    def __init__(
        self,
        *,
        knee_dbfs: float = -3.0,
        release_ms: float = 300.0,
        tick_ms: float = 20.0,
        speech_threshold_dbfs: float = -45.0,
        speech_hangover_ms: float = 300.0,
    ) -> None:
        self.knee = db_to_linear(knee_dbfs)
        self.speech_threshold_dbfs = speech_threshold_dbfs
        self._threshold_power = np.float32(10.0 ** (speech_threshold_dbfs / 10.0))
        self._release = math.exp(-tick_ms / release_ms)
        self._hangover_ticks = max(0, round(speech_hangover_ms / tick_ms))
        self._gain = 1.0
        self._hangover: dict[str, int] = {}
        self._ramps: dict[int, np.ndarray] = {}  # block length -> (1..n)/n, for the gain ramp
        self._ones_by_rows: dict[int, np.ndarray] = {}

    @property
    def gain(self) -> float:
        """Current limiter gain (1.0 = no reduction)."""
        return self._gain

    def forget(self, participant_id: str) -> None:
        """Drop a departed participant's speaking state."""
        self._hangover.pop(participant_id, None)

    def mix(self, ids: Sequence[str], blocks: np.ndarray) -> MixResult:
        """Mix float32 blocks of shape (len(ids), samples) in [-1, 1).

        The result keeps `blocks` (its int16 `blocks` are made from them on first use): pass a
        matrix made for this tick and do not change it afterwards.
        """
        if blocks.ndim != 2 or blocks.shape[0] != len(ids):
            raise ValueError(f"blocks must have shape ({len(ids)}, samples), got {blocks.shape}")
        if blocks.dtype != np.float32:  # `vecmat` and `vecdot` keep their input's precision
            blocks = blocks.astype(np.float32)
        samples = blocks.shape[1]
        if not ids:
            return MixResult(np.zeros(samples, dtype=np.int16), np.zeros((0, samples), dtype=np.float32),
                             np.zeros(0, dtype=np.float32), [])
        # ufuncs called directly: on 20 ms blocks the per-call overhead of the array methods' and
        # einsum's Python wrappers is most of the cost, and this runs for every tick of every call.
        # The row sum and the energies are `vecmat` / `vecdot`, not reductions over the whole matrix:
        # NumPy releases the GIL around any loop of more than 500 elements, and every release wakes a
        # writer thread waiting for the GIL only to send it back to sleep (a futex wake and two context
        # switches, measured at ~10 % of the pipeline's CPU with reductions and `np.square` here).
        rows = blocks.shape[0]
        total = blocks[0].copy() if rows == 1 else np.vecmat(self._ones(rows), blocks)
        peak = float(np.maximum.reduce(np.abs(total)))
        gained, peak = self._apply_gain(total, peak)
        mixed = soft_limit(gained, self.knee) if peak > self.knee else gained

        mean_square = np.vecdot(blocks, blocks)
        mean_square /= np.float32(samples)
        loud = (mean_square > self._threshold_power).tolist()
        speaking = loud
        hangover = self._hangover
        if hangover or any(loud):
            speaking = list(loud)
            ticks = self._hangover_ticks
            for row, participant_id in enumerate(ids):
                if loud[row]:
                    hangover[participant_id] = ticks
                else:
                    left = hangover.get(participant_id, 0)
                    if left > 0:
                        hangover[participant_id] = left - 1
                        speaking[row] = True
        scaled = np.multiply(mixed, np.float32(32768.0))
        np.rint(scaled, out=scaled)
        return MixResult(
            mixed=scaled.astype(np.int16),  # within +-CEILING: no clip needed
            pcm=blocks,
            mean_square=mean_square,
            speaking=speaking,
        )

    def _ones(self, rows: int) -> np.ndarray:
        """A float32 vector of `rows` ones (made once per call size): `vecmat` with it sums the rows."""
        ones = self._ones_by_rows.get(rows)
        if ones is None:
            ones = self._ones_by_rows[rows] = np.ones(rows, dtype=np.float32)
        return ones

    def _apply_gain(self, total: np.ndarray, peak: float) -> tuple[np.ndarray, float]:
        """Apply the limiter gain (ramped across the block); returns the block and its new peak bound."""
        target = 1.0 if peak <= self.knee else self.knee / peak
        released = 1.0 - (1.0 - self._gain) * self._release
        new_gain = min(target, released)
        old_gain = self._gain
        self._gain = new_gain
        if old_gain == new_gain:  # steady (no reduction, or a constant one while a loud call goes on): no ramp
            return (total, peak) if new_gain == 1.0 else (total * np.float32(new_gain), peak * new_gain)
        n = total.shape[0]
        steps = self._ramps.get(n)
        if steps is None:  # the same block length every tick: made once
            steps = self._ramps[n] = np.arange(1, n + 1, dtype=np.float32) / np.float32(n)
        ramp = np.float32(old_gain) + np.float32(new_gain - old_gain) * steps
        return total * ramp, peak * max(old_gain, new_gain)
