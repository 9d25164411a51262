"""Per-participant jitter buffer: orders frames, drops duplicates and late ones, fills gaps.

Positions are sample indices on the *call* timeline at the participant's own sample rate
(tick k covers [k*rate/50, (k+1)*rate/50)), computed from the gateway's `timestamp_us`
by the call's clock. The buffer has two halves:

* encoded frames waiting for their turn, keyed by sequence number (duplicates) and
  ordered by position (due time). `pop_due(until)` hands out, in sequence order, every
  frame that starts before `until`, so the caller decodes a stateful codec (Opus) in order.
  A waiting frame is kept as plain ints and bytes (its data and length by sequence, its due
  time and sequence packed into one int in the heap), not as objects: the garbage collector
  does not track those. A frame object per waiting frame put every buffered frame in the
  young generation, and each young collection walked them all: at 300 participants with a
  raised playout delay, 30 000 frames, 40-130 ms per collection, which stalled the loop, which
  raised the playout delay further (measured with a gc callback on the server);
* decoded PCM placed on the timeline by `place()`, read one tick at a time by `read()`.

Placement follows the frames' own timestamps, not their arrival (network jitter must not
stretch audio). A frame that continues the previous one within `gap_tolerance_ms` is
appended seamlessly (timestamp rounding, decoders that emit a few samples more or less,
slow clock corrections); a larger jump forward is a gap that stays silent (counted in
`gap_fill_ms`); a jump backwards trims the overlap (a frame entirely overlapped is
rejected "overlap"). Frames whose samples were already played out are rejected "late".
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from heapq import heappop, heappush

import numpy as np

from callrec.core.model import MediaStats, RejectReason
from callrec.core.zeros import zeros

__all__ = ["MAX_SEQUENCE", "EncodedFrame", "JitterBuffer"]

#: Sequence numbers are the API's uint64: one packs below a frame's position in one int (`_due`).
MAX_SEQUENCE = (1 << 64) - 1
_SEQUENCE_BITS = 64


@dataclass(slots=True)
class EncodedFrame:
    """One encoded frame, as `pop_due` hands it out (made then: waiting frames are not objects)."""

    sequence: int
    position: int  # first sample, call timeline, participant's rate
    samples: int  # nominal length in samples (from the frame header / byte length)
    data: bytes

    @property
    def end(self) -> int:
        """Position just after the frame's last nominal sample."""
        return self.position + self.samples


class JitterBuffer:
    """Orders, de-duplicates and places one participant's frames; counts into `stats`."""

    def __init__(
        self,
        sample_rate: int,
        stats: MediaStats | None = None,
        *,
        capacity: int = 1000,
        gap_tolerance_ms: float = 5.0,
        max_early_ms: int = 60_000,
        history: int = 1024,
        backlog_frames: int = 250,
        max_buffered_ms: int = 5_000,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.sample_rate = sample_rate
        self.stats = stats if stats is not None else MediaStats()
        self.capacity = capacity
        self.backlog_frames = backlog_frames
        self._tolerance = round(gap_tolerance_ms * sample_rate / 1000)
        self._max_early = max_early_ms * sample_rate // 1000
        self.max_buffered = max_buffered_ms * sample_rate // 1000
        self._buffered = 0  # samples of the frames waiting
        # The frames waiting, by sequence: their data and nominal length. No object per frame (see the
        # module docstring): ints and bytes are not tracked by the garbage collector.
        self._data: dict[int, bytes] = {}
        self._samples: dict[int, int] = {}
        self._due: list[int] = []  # heap of `position << 64 | sequence`: ordered by position, then sequence
        # The sequences played lately, for telling a duplicate from a late frame: slot `sequence %
        # history` holds the last sequence played there (one store per frame, one load per arrival).
        self._history: list[int] = [-1] * max(1, history)
        self._played: int | None = None  # everything before this position has been read
        self._cursor: int | None = None  # where the next contiguous frame would start
        self.whole_frame_plays = 0  # ticks `play_whole` served (a frame skipped the timeline)
        self._gap_samples = 0
        # Delivery frontier, for the media-driven clock.
        self._reach: int | None = None
        self._reach_pending: list[tuple[int, int]] = []
        self._max_end: int | None = None
        # Decoded PCM on the timeline: positions [_start, _start + _len), held in _buf[_off : _off + _len].
        # Reading moves `_off` on instead of moving what stays to the front of the buffer: with several
        # ticks placed ahead (a call catching up decodes them in one request) every tick's read moved all
        # of them (measured: most of `read`'s time at 600 participants).
        self._buf = zeros(max(1, sample_rate // 4), np.float32)
        self._start = 0
        self._len = 0
        self._off = 0

    # ------------------------------------------------------------------ arrival
    def __len__(self) -> int:
        """Encoded frames waiting."""
        return len(self._data)

    @property
    def played_until(self) -> int | None:
        """Position up to which the timeline has been read (None before the first read)."""
        return self._played

    def push(self, sequence: int, position: int, samples: int, data: bytes) -> RejectReason | None:
        """Queue an arriving frame; returns None if accepted, else the (counted) reason."""
        if not 0 <= sequence <= MAX_SEQUENCE:
            raise ValueError(f"sequence {sequence} is not a uint64")
        history, waiting = self._history, self._data
        if sequence in waiting or history[sequence % len(history)] == sequence:
            return self._reject(RejectReason.DUPLICATE)
        end = position + samples
        played = self._played
        if played is not None:
            if end <= played:
                self.stats.frames_late += 1
                return self._reject(RejectReason.LATE)
            if position > played + self._max_early:
                return self._reject(RejectReason.EARLY)
        if len(waiting) >= self.capacity or self._buffered + samples > self.max_buffered:
            return self._reject(RejectReason.BUFFER_FULL)
        waiting[sequence] = data
        self._samples[sequence] = samples
        self._buffered += samples
        heappush(self._due, position << _SEQUENCE_BITS | sequence)
        if self._max_end is None or end > self._max_end:
            self._max_end = end
        reach = self._reach
        if reach is None:
            self._reach = end
        elif position <= reach + self._tolerance:
            if end > reach:
                self._reach = end
        else:
            heappush(self._reach_pending, (position, end))
        if self._reach_pending:
            self._absorb()
        return None

    def _reject(self, reason: RejectReason) -> RejectReason:
        self.stats.reject(reason)
        return reason

    def _absorb(self) -> None:
        pending = self._reach_pending
        while pending and self._reach is not None and pending[0][0] <= self._reach + self._tolerance:
            _, end = heapq.heappop(pending)
            self._reach = max(self._reach, end)

    # ------------------------------------------------------------------ playout
    def pop_due(self, until: int) -> list[EncodedFrame]:
        """Remove and return, in sequence order, every frame that starts before `until`."""
        due = self._due
        bound = until << _SEQUENCE_BITS  # a key below it is a frame that starts before `until`
        if not due or due[0] >= bound:
            return []
        out: list[EncodedFrame] = []
        history = self._history
        slots = len(history)
        waiting, lengths = self._data, self._samples
        while due and due[0] < bound:
            key = heappop(due)
            sequence = key & MAX_SEQUENCE
            samples = lengths.pop(sequence)
            self._buffered -= samples
            out.append(EncodedFrame(sequence, key >> _SEQUENCE_BITS, samples, waiting.pop(sequence)))
            history[sequence % slots] = sequence
        if len(out) > 1:
            out.sort(key=lambda f: f.sequence)
        return out

    def next_due(self) -> int | None:
        """Position of the earliest frame waiting (None when none waits)."""
        return self._due[0] >> _SEQUENCE_BITS if self._due else None

    def drop_due(self, until: int) -> None:
        """Pop the frames that start before `until` without playing them (nothing records the call).

        The cursor moves past them as if they had been placed, so playing that resumes later does
        not count them as a gap.
        """
        frames = self.pop_due(until)
        if frames:
            end = max(f.end for f in frames)
            self._cursor = end if self._cursor is None else max(self._cursor, end)

    def place(self, frame: EncodedFrame, pcm: np.ndarray) -> None:
        """Put a popped frame's decoded PCM (float32, participant's rate) on the timeline."""
        start = frame.position
        if self._cursor is not None:
            jump = start - self._cursor
            if -self._tolerance <= jump <= self._tolerance:
                start = self._cursor
            elif jump > 0:
                self._gap_samples += jump
                self.stats.gap_fill_ms = self._gap_samples * 1000 // self.sample_rate
            else:
                cut = self._cursor - start
                if cut >= len(pcm):
                    self._reject(RejectReason.OVERLAP)
                    return
                pcm = pcm[cut:]
                start = self._cursor
        played = self._played
        if played is not None and start < played:
            cut = played - start
            if cut >= len(pcm):
                self._cursor = start + len(pcm)
                self.stats.frames_late += 1
                self._reject(RejectReason.LATE)
                return
            pcm = pcm[cut:]
            start = played
        self._cursor = start + len(pcm)
        self._write(start, pcm)

    def play_whole(self, frame: EncodedFrame, start: int, end: int, decoded_samples: int) -> bool:
        """Play `frame` as the whole of tick [start, end) without copying it through the timeline.

        The common case, one frame per tick that continues the last one exactly, costs a write into
        the timeline and a read back out (measured: ~4 µs of the ~10 µs per participant per tick).
        When `frame` (just popped by `pop_due(end)`, the only frame due, decoded to `decoded_samples`)
        would be placed at `start` (its own position, or the cursor within the gap tolerance), covers
        the tick exactly and nothing else is placed, the state moves on as
        `place(frame, pcm)` then `read(start, end)` would have moved it, and True says the caller's PCM
        is the tick's block. Otherwise nothing changes, and the caller places and reads as usual.
        """
        cursor = self._cursor  # `place` puts a frame within the tolerance of the cursor on the cursor
        lands = frame.position == start if cursor is None else (
            cursor == start and abs(frame.position - start) <= self._tolerance)
        if (not lands or self._len or decoded_samples != end - start
                or (self._played is not None and self._played != start)):
            return False
        self._cursor = end
        self.advance(end)  # nothing is buffered (`self._len` is 0): the playout point and frontier move on
        self.whole_frame_plays += 1
        return True

    def read(self, start: int, end: int) -> np.ndarray:
        """Return samples [start, end) (silence where nothing was placed) and drop them."""
        n = end - start
        data_start, data_end = self._start, self._start + self._len
        lo, hi = max(start, data_start), min(end, data_end)
        to_index = self._off - data_start  # position p is at _buf[p + to_index]
        if self._len and lo == start and hi == end:
            out = self._buf[start + to_index : end + to_index].copy()
        else:
            out = zeros(n, np.float32)  # the GIL kept: see `core.zeros`
            if self._len and lo < hi:
                out[lo - start : hi - start] = self._buf[lo + to_index : hi + to_index]
        self.advance(end)
        return out

    def advance(self, end: int) -> None:
        """Drop everything before `end` unread: `read(start, end)` without making its samples.

        For a call that nothing records: its playout point moves on as if the tick were heard.
        """
        if self._len:
            data_start = self._start
            if data_start + self._len <= end:
                self._len = self._off = 0
            elif data_start < end:
                dropped = end - data_start
                self._off += dropped
                self._start, self._len = end, self._len - dropped
        self._played = end if self._played is None else max(self._played, end)
        if self._reach is not None and self._reach < end:
            self._reach = end
            self._absorb()

    def _write(self, start: int, pcm: np.ndarray) -> None:
        n = len(pcm)
        if n == 0:
            return
        if self._len == 0:
            self._off = 0
            self._ensure(n)
            self._start, self._len = start, n
            self._buf[:n] = pcm
            return
        if start < self._start:  # a frame placed before buffered data (odd timestamps): extend to the left
            shift = self._start - start
            if self._off >= shift:
                self._off -= shift
            else:
                self._ensure(self._len + shift)
                off = self._off
                self._buf[off + shift : off + shift + self._len] = self._buf[off : off + self._len]
            self._buf[self._off : self._off + shift] = 0.0
            self._start, self._len = start, self._len + shift
        data_end = self._start + self._len
        new_end = max(data_end, start + n)
        self._ensure(new_end - self._start)
        to_index = self._off - self._start  # position p is at _buf[p + to_index]
        if start > data_end:
            self._buf[data_end + to_index : start + to_index] = 0.0
        self._buf[start + to_index : start + to_index + n] = pcm
        self._len = new_end - self._start

    def _ensure(self, size: int) -> None:
        """Room for `size` samples from the data's start: the data moves to the buffer's front, or to a larger one.

        The buffer stays at least twice what it holds, so the data moves to the front at most once per half
        a buffer read: with several ticks placed ahead, a buffer just large enough moved them every tick or two.
        """
        buf, off, length = self._buf, self._off, self._len
        if off + size <= len(buf):
            return
        if 2 * size > len(buf):
            grown = zeros(max(2 * size, 2 * len(buf)), np.float32)
            grown[:length] = buf[off : off + length]
            self._buf = grown
        else:
            buf[:length] = buf[off : off + length]
        self._off = 0

    # ------------------------------------------------------------------ progress
    def frontier(self, reorder_window: int) -> int | None:
        """How far this participant has delivered media, for the media-driven clock.

        The end of the contiguous run of frames received (in position order), or, when a
        frame is missing, `reorder_window` samples short of the newest frame's end (so a
        lost frame delays the clock by at most that much). None until the first frame.
        """
        if self._reach is None:
            return None
        assert self._max_end is not None
        return max(self._reach, self._max_end - reorder_window)

    def backlogged(self) -> bool:
        """Many frames wait although the oldest is due soon: another input is holding the clock."""
        if not self._due or (len(self._data) < self.backlog_frames and self._buffered < self.max_buffered // 2):
            return False
        horizon = (self._played or 0) + self.sample_rate * 5  # due within 5 s of the playout point
        return self._due[0] >> _SEQUENCE_BITS <= horizon

    def pending_until(self) -> int | None:
        """End of the last media not played yet (frames or placed PCM); None when drained."""
        ends: list[int] = []
        if self._due:
            samples = self._samples
            ends.append(max((key >> _SEQUENCE_BITS) + samples[key & MAX_SEQUENCE] for key in self._due))
        if self._len:
            ends.append(self._start + self._len)
        return max(ends) if ends else None
