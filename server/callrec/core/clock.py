"""The one clock of a call: maps gateway timestamps onto the call timeline and paces the ticks.

The mixer never reads the wall clock; it asks its clock when tick k may be produced.
Call time 0 is when the clock started; tick k covers call time [k*20 ms, (k+1)*20 ms).

* `RealtimeClock` (production): each gateway's first frame is anchored to its arrival
  time (the call's very first frame also moves call time 0 forward by less than a tick, so
  that it starts a tick: a gateway's 20 ms frames then fill their ticks whole); later frames
  are placed by their own timestamps, so network jitter does not stretch audio. Tick k is
  produced `playout_delay` after its end, which leaves that much time for late frames. The
  anchor keeps following the *fastest* arrivals (minimum of arrival - timestamp over a
  sliding window), slewed at a bounded rate, so a gateway clock that drifts against ours, or
  an unlucky first frame, is corrected gradually instead of by a jump. The playout delay
  adapts: when the event loop stalls (the mixer wakes later than its deadline, so the stream
  readers were stalled as long) or frames arrive after their tick was mixed, the delay grows
  to cover it, up to `max_playout_delay_ms`, and shrinks back once things are calm. Latency
  is cheap for a recording and media dropped as "late" is lost for good, but media waiting
  out the delay is lost at a crash (see `max_playout_delay_ms` in `callrec.config` for the
  trade).
* `MediaClock` (tests, `bench/`, `--clock media`): produces tick k as soon as every
  participant with audio has delivered media past it, so a minute of call is processed
  in a fraction of a second. A participant that left, or the end of the call, releases it.

Both take a `TimeSource`, so tests run them on fake time (`callrec.testing.FakeTime`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from callrec.core.ports import TimeSource

__all__ = [
    "ALL_DUE",
    "TICK_US",
    "Clock",
    "MediaClock",
    "MediaProgress",
    "ProgressSource",
    "RealtimeClock",
    "SystemTime",
]

#: Length of one mixer tick.
TICK_US = 20_000
#: `Clock.due_through` after the call ended: every tick is due.
ALL_DUE = 1 << 62


class SystemTime:
    """The real clock."""

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    def now(self) -> datetime:
        """`datetime.now(UTC)`."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep`."""
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class MediaProgress:
    """How far a call's audio inputs have delivered media, in call-time microseconds."""

    live_inputs: int  # participants present with an audio format
    slowest_us: int | None  # min frontier over live inputs; None while one has sent nothing
    backlogged: bool  # an input's buffer is filling up behind a silent one: stop waiting
    draining_until_us: int | None  # end of media still buffered for participants who left

    def ready(self, tick_start_us: int, tick_end_us: int) -> bool:
        """May the tick [tick_start_us, tick_end_us) be produced without waiting for more media?"""
        if self.backlogged:
            return True
        if self.live_inputs:
            return self.slowest_us is not None and self.slowest_us >= tick_end_us
        return self.draining_until_us is not None and self.draining_until_us > tick_start_us


class ProgressSource(Protocol):
    """What a clock asks the call (implemented by `CallMedia`)."""

    def media_progress(self, reorder_window_us: int) -> MediaProgress:
        """Current delivery progress; `reorder_window_us` bounds the wait for a missing frame."""
        ...


class Clock(Protocol):
    """The interface `CallMedia` drives."""

    @property
    def ended(self) -> bool:
        """True after `end()`: no more media will come, ticks are due at once."""
        ...

    def start(self) -> None:
        """Fix call time 0 (idempotent; also done by the first `place`)."""
        ...

    def place(self, gateway_id: str, timestamp_us: int) -> int:
        """Call time (µs) of a frame stamped `timestamp_us` by gateway `gateway_id`."""
        ...

    async def wait_tick(self, index: int, source: ProgressSource) -> None:
        """Return when tick `index` may be produced."""
        ...

    def due_through(self, index: int) -> int:
        """The last tick that may be produced now, `index` (the next one) or later: how far behind the call is
        (`ALL_DUE` after `end()`)."""
        ...

    def tick_time(self, index: int) -> datetime:
        """UTC wall-clock time of the start of tick `index`."""
        ...

    def notify(self) -> None:
        """Media arrived or a participant left: re-check readiness."""
        ...

    def end(self) -> None:
        """The call ended: stop waiting."""
        ...

    def note_late(self, call_us: int) -> None:
        """A frame starting at `call_us` (call time) arrived after its samples were mixed: wait longer if possible."""
        ...

    @property
    def current_playout_delay_us(self) -> int:
        """How long after a tick's end the tick is produced now (0 for a media-paced clock)."""
        ...


@dataclass
class _Anchor:
    """One gateway's mapping: call_us = timestamp_us + offset_us."""

    offset_us: float
    target_us: float
    window_start_us: float
    window_min_us: float
    last_slew_us: float


class _Raised:
    """An adaptive addition to the playout delay: raised at once, held while needed, given back slowly."""

    def __init__(self, hold_s: float, shrink_rate: float) -> None:
        self.hold_s = hold_s
        self.shrink_rate = shrink_rate  # seconds of delay given back per second of calm
        self.us = 0.0
        self.changed_at = 0.0  # monotonic time of the last raise (or shrink step)

    def raise_to(self, us: float, room_us: float, now: float) -> None:
        """At least `us` (at most `room_us`) from now on; the hold starts over."""
        self.us = max(self.us, min(room_us, us))
        self.changed_at = now

    def shrink(self, now: float) -> None:
        """Give the addition back once nothing has needed it for `hold_s`."""
        if self.us <= 0:
            self.changed_at = now
            return
        calm = now - self.changed_at
        if calm <= self.hold_s:
            return
        self.us = max(0.0, self.us - (calm - self.hold_s) * self.shrink_rate * 1e6)
        self.changed_at = now - self.hold_s


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # not cancelled by `end()` meanwhile
        future.set_result(None)


class RealtimeClock:
    """Wall-clock pacing with a playout delay and per-gateway drift correction.

    The playout delay adapts (up to `max_playout_delay_ms`) in two ways. Frames that did arrive
    after their tick was mixed raise it to what they needed, measured on the wall clock, and it
    stays raised for `calm_hold_s` (a minute) before it is given back at `shrink_rate` (20 ms/s):
    that is evidence, and the causes recur (many recordings rotating their chunks at once); so is a
    frame that came with less than `slack_ms` (50 ms, at most a quarter of the delay) to spare, and it
    raises the delay as much, before frames are lost (`_keep_slack`). A
    stall of the event loop (the mixer wakes late) raises it *before* mixing when the delay does not
    cover the stall: the frames that came while the loop was blocked are read only now, and the first
    of them ended its tick as the stall began, so the delay must be the stall plus a tick and the
    slack. That is a
    guess, so it is held only `stall_hold_s` (2 s) and given back at `stall_shrink_rate` (200 ms/s).
    Media waiting out the delay is in memory only, and it is what a kill -9 loses: a delay that
    ratchets up on every hiccup of a busy server costs that much at every crash. (Adding each stall to
    the delay did: 250 participants on 2 slow cores, stalls of 40-100 ms every second or so, pinned
    every call's delay at its 2 s maximum within 10 s; raised to the stall it stays at 0.2-0.5 s, with
    every frame on time in the same interleaved runs.)
    """

    def __init__(
        self,
        time_source: TimeSource | None = None,
        *,
        playout_delay_ms: float = 200.0,
        drift_window_s: float = 5.0,
        max_slew_ppm: float = 1000.0,
        drift_deadband_ms: float = 2.0,
        max_playout_delay_ms: float | None = None,
        stall_threshold_ms: float = 40.0,
        calm_hold_s: float = 60.0,
        shrink_rate: float = 0.02,
        stall_hold_s: float = 2.0,
        stall_shrink_rate: float = 0.2,
        slack_ms: float = 50.0,
    ) -> None:
        self.time = time_source or SystemTime()
        self.playout_delay_us = round(playout_delay_ms * 1000)
        limit = max_playout_delay_ms if max_playout_delay_ms is not None else max(2000.0, playout_delay_ms)
        self.max_playout_delay_us = max(self.playout_delay_us, round(limit * 1000))
        self._stall_threshold_s = stall_threshold_ms / 1000
        self._late = _Raised(calm_hold_s, shrink_rate)  # what late frames needed
        self._stall = _Raised(stall_hold_s, stall_shrink_rate)  # what stalls may need
        self.stalls = 0  # times the mixer woke so late that the delay had to grow
        self._slack_us = min(round(slack_ms * 1000), self.playout_delay_us // 4)  # see `_keep_slack`
        self._window_us = drift_window_s * 1e6
        self._slew = max_slew_ppm / 1e6
        self._deadband_us = drift_deadband_ms * 1000
        self._t0: float | None = None
        self._wall0: datetime | None = None
        self._anchors: dict[str, _Anchor] = {}
        self._ended = False
        self._sleeper: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # `_sleep`'s, kept (see there)

    @property
    def ended(self) -> bool:
        """True after `end()`."""
        return self._ended

    def start(self) -> None:
        """Fix call time 0 to now."""
        if self._t0 is None:
            self._t0 = self.time.monotonic()
            self._wall0 = self.time.now()

    def _elapsed_us(self) -> float:
        self.start()
        assert self._t0 is not None
        return (self.time.monotonic() - self._t0) * 1e6

    def offset_us(self, gateway_id: str) -> float | None:
        """Current call_us - timestamp_us of a gateway (None before its first frame)."""
        anchor = self._anchors.get(gateway_id)
        return None if anchor is None else anchor.offset_us

    def place(self, gateway_id: str, timestamp_us: int) -> int:
        """Anchor on first use, then follow the fastest arrivals with a bounded slew.

        The call's first frame also sets the phase of its ticks: call time 0 moves forward by less
        than a tick, so that frame starts a tick exactly. A gateway sends every participant's frames
        on one 20 ms grid, so they all land whole in their ticks, and the mixer plays each as its
        tick's block without copying it through the jitter buffer's timeline (`JitterBuffer.play_whole`).
        The frames wait at most a tick longer than the playout delay; nothing is mixed earlier.
        """
        now = self._elapsed_us()
        if not self._anchors:
            now = self._rephase(now)
        raw = now - timestamp_us  # arrival - capture: constant + network delay + clock drift
        anchor = self._anchors.get(gateway_id)
        if anchor is None:
            anchor = _Anchor(raw, raw, now, raw, now)
            self._anchors[gateway_id] = anchor
        else:
            budget = (now - anchor.last_slew_us) * self._slew
            anchor.last_slew_us = now
            error = anchor.target_us - anchor.offset_us
            anchor.offset_us += max(-budget, min(budget, error))
            anchor.window_min_us = min(anchor.window_min_us, raw)
            if now - anchor.window_start_us >= self._window_us:
                if abs(anchor.window_min_us - anchor.offset_us) > self._deadband_us:
                    anchor.target_us = anchor.window_min_us
                else:
                    anchor.target_us = anchor.offset_us
                anchor.window_start_us, anchor.window_min_us = now, math.inf
        placed = round(timestamp_us + anchor.offset_us)
        self._keep_slack(placed, now)
        return placed

    def _keep_slack(self, call_us: int, now_us: float) -> None:
        """Raise the delay before frames go late: when one comes within `slack_ms` of its tick's deadline.

        A server whose stream readers fall behind (more work queued on the loop than it does in real time)
        delivers its frames later and later, without a stall long enough to raise the delay; only late
        frames, already lost, would. A frame that came with less than `slack_ms` to spare is evidence of the
        same kind, a step earlier: the delay is raised so that it would have had that much (held like late
        frames). A frame too late for any delay (a bogus timestamp) is left to the jitter buffer's limits.
        """
        waited_us = now_us - (call_us // TICK_US + 1) * TICK_US  # how long after its tick's end it came
        needed_us = waited_us + self._slack_us - self.playout_delay_us
        if needed_us <= self._extra_us:
            return
        room = self.max_playout_delay_us - self.playout_delay_us
        if needed_us > room + self._slack_us:
            return
        self._late.raise_to(needed_us, room, self.time.monotonic())

    def _rephase(self, now_us: float) -> float:
        """Move call time 0 forward to the tick boundary just before `now_us`; returns `now_us` on the new scale."""
        assert self._t0 is not None and self._wall0 is not None
        shift_us = round(now_us) % TICK_US
        self._t0 += shift_us / 1e6
        self._wall0 += timedelta(microseconds=shift_us)
        return now_us - shift_us

    @property
    def current_playout_delay_us(self) -> int:
        """The base playout delay plus what stalls and late frames added (and calm has not yet taken back)."""
        self._shrink(self.time.monotonic())
        return self.playout_delay_us + round(self._extra_us)

    @property
    def _extra_us(self) -> float:
        """The adaptive part of the playout delay now."""
        return max(self._late.us, self._stall.us)

    @property
    def last_playout_delay_us(self) -> int:
        """The delay as of the last tick, without updating it: safe to read from another thread (metrics)."""
        return self.playout_delay_us + round(self._extra_us)

    def _shrink(self, now: float) -> None:
        self._late.shrink(now)
        self._stall.shrink(now)

    def note_late(self, call_us: int) -> None:
        """A frame starting at `call_us` came after its tick was produced: from now on, wait as long as it took.

        What the frame needed is measured on the wall clock (its arrival minus its tick's end, plus a
        tick of margin) and the delay is raised *to* that, not *by* it: the hundreds of frames one
        stall makes late raise the delay once, to the latest of them. (Adding each one's lateness
        pinned the delay at its maximum after every restart, for minutes; media held that long is
        what a kill -9 loses.)
        """
        if self._t0 is None:
            return
        now = self.time.monotonic()
        tick_end_us = (call_us // TICK_US + 1) * TICK_US
        needed_us = (now - self._t0) * 1e6 - tick_end_us + TICK_US
        self._late.raise_to(needed_us - self.playout_delay_us, self.max_playout_delay_us - self.playout_delay_us, now)

    def _deadline(self, index: int) -> float:
        assert self._t0 is not None
        return self._t0 + ((index + 1) * TICK_US + self.playout_delay_us + self._extra_us) / 1e6

    async def wait_tick(self, index: int, source: ProgressSource) -> None:
        """Sleep until the tick's end plus the playout delay (at once after `end()`).

        Waking more than `stall_threshold_ms` after the deadline means the event loop
        was blocked that long, and the stream readers with it: the frames that came during the
        stall are still unread. If the delay is shorter than the stall (plus a tick and the slack of
        `_keep_slack`), it grows to that, which gives the readers time to catch up before their ticks
        are mixed (for a few seconds only, unless frames do turn out late: see the class docstring).
        """
        if self._ended:
            return
        self.start()
        now = self.time.monotonic()
        self._shrink(now)
        delay = self._deadline(index) - now
        if -delay > self._stall_threshold_s:
            # The frames that came while the loop was blocked are read now; the first of them ends its tick
            # about when the stall began, so its deadline must be the stall's length after that, plus a tick
            # and the slack `_keep_slack` wants (else reading them would raise the delay again, as evidence
            # held a minute): a delay that already covers that needs no raise.
            needed_us = -delay * 1e6 + TICK_US + self._slack_us - self.playout_delay_us
            room = self.max_playout_delay_us - self.playout_delay_us
            if needed_us > self._extra_us and self._extra_us < room:
                self.stalls += 1
                self._stall.raise_to(needed_us, room, now)
                delay = self._deadline(index) - now
        if delay <= 0:
            return
        self._sleeper = self._sleep(delay)
        try:
            await self._sleeper
        except asyncio.CancelledError:
            if not self._ended:  # cancelled from outside, not by end(): propagate
                raise
        finally:
            self._sleeper = None

    def due_through(self, index: int) -> int:
        """The last tick whose deadline has passed, at least `index`.

        A call whose ticks fell behind (an overloaded loop, a slow decode worker) can then take
        several ticks' frames in one go instead of one round trip per tick. After `end()` every
        tick is due (`ALL_DUE`).
        """
        if self._ended:
            return ALL_DUE
        if self._t0 is None:
            return index
        elapsed_us = round((self.time.monotonic() - self._t0) * 1e6) - self.playout_delay_us - self._extra_us
        return max(index, int(elapsed_us // TICK_US) - 1)

    def _sleep(self, delay: float) -> asyncio.Future[None]:
        """A future done after `delay` seconds (cancel it to wake the waiter early).

        On the real clock a bare future and a loop timer: every call waits once per tick, and a
        Task around `asyncio.sleep` per wait cost the event loop about 5 µs more each time.
        """
        if type(self.time) is not SystemTime:
            return asyncio.ensure_future(self.time.sleep(delay))
        # Kept from the first wait: `asyncio.get_running_loop()` calls getpid() (a system call) each time.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        loop.call_later(delay, _resolve, future)
        return future

    def tick_time(self, index: int) -> datetime:
        """Call time 0 (wall clock at start) plus the tick's offset."""
        self.start()
        assert self._wall0 is not None
        return self._wall0 + timedelta(microseconds=index * TICK_US)

    def notify(self) -> None:
        """Nothing to do: real time paces this clock."""

    def end(self) -> None:
        """Stop waiting for wall time; remaining ticks are produced at once."""
        self._ended = True
        if self._sleeper is not None:
            self._sleeper.cancel()


class MediaClock:
    """Paces ticks by media delivery instead of wall time."""

    def __init__(
        self,
        start_time: datetime | None = None,
        *,
        reorder_window_ms: float = 200.0,
        time_source: TimeSource | None = None,
    ) -> None:
        self.time = time_source or SystemTime()
        self.reorder_window_us = round(reorder_window_ms * 1000)
        self._start_time = start_time
        self._wall0: datetime | None = None
        self._offsets: dict[str, int] = {}
        self._next_index = 0
        self._ended = False
        self._changed = asyncio.Event()

    @property
    def ended(self) -> bool:
        """True after `end()`."""
        return self._ended

    def start(self) -> None:
        """Fix the wall-clock time of call time 0 (the given start time, else now)."""
        if self._wall0 is None:
            self._wall0 = self._start_time or self.time.now()

    def place(self, gateway_id: str, timestamp_us: int) -> int:
        """A gateway's first frame lands at the next tick to be produced; later ones follow it."""
        self.start()
        offset = self._offsets.get(gateway_id)
        if offset is None:
            offset = self._next_index * TICK_US - timestamp_us
            self._offsets[gateway_id] = offset
        return timestamp_us + offset

    async def wait_tick(self, index: int, source: ProgressSource) -> None:
        """Wait until every live input has delivered past the tick (or the call ended)."""
        self.start()
        self._next_index = index
        start_us, end_us = index * TICK_US, (index + 1) * TICK_US
        while not self._ended:
            self._changed.clear()
            if source.media_progress(self.reorder_window_us).ready(start_us, end_us):
                return
            await self._changed.wait()

    def due_through(self, index: int) -> int:
        """Only `index`: media, not time, says when a tick is due (every tick after `end()`)."""
        return ALL_DUE if self._ended else index

    def tick_time(self, index: int) -> datetime:
        """Start time plus the tick's offset."""
        self.start()
        assert self._wall0 is not None
        return self._wall0 + timedelta(microseconds=index * TICK_US)

    def notify(self) -> None:
        """Wake the waiting tick."""
        self._changed.set()

    def note_late(self, call_us: int) -> None:
        """Nothing to do: this clock waits for media anyway."""

    @property
    def current_playout_delay_us(self) -> int:
        """Media pacing has no playout delay."""
        return 0

    def end(self) -> None:
        """Stop waiting; remaining media is drained at once."""
        self._ended = True
        self._changed.set()
