"""`RecordingTimeline`: where a recording's control commands fall on its call's media timeline.

Why one module: an audio and a video recording of the same call must start, pause,
resume and stop at the same sample, whatever writes their files. Commands carry an `at`
instant on the call's capture timeline (a command issued now applies to the media
captured now, which the real-time clock delivers a playout delay later); each 20 ms
`MixTick` is split at the commands that fall inside it, at sample precision, and the
pieces are handed to a `TimelineListener` (the chunker) with their pause state.

The timeline also keeps the recording's pause log (SKIP and SILENCE alike: intervals
of call time) and waits for a stop: `settle_stop(at)` schedules the stop and waits, on
the injected `TimeSource`, until the ticks have reached it, or until they stopped
coming (a media clock with no media), or a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.log import LogFields, get_logger
from callrec.core.metadata import milliseconds
from callrec.core.model import OUTPUT_SAMPLE_RATE, PauseInterval
from callrec.core.ports import TimeSource

__all__ = ["CommandKind", "Mark", "PauseSpan", "RecordingTimeline", "TimelineListener", "aware"]

log = get_logger(__name__)


class CommandKind(enum.IntEnum):
    """Control commands; at one instant they apply in this order."""

    START = 0
    PAUSE = 1
    RESUME = 2
    STOP = 3


@dataclass(frozen=True)
class Mark:
    """A point of the call timeline: its 16 kHz sample position and capture time."""

    position: int
    time: datetime


@dataclass
class PauseSpan:
    """A pause on the call timeline (16 kHz samples); `end_pos` None while it lasts."""

    start_time: datetime
    start_pos: int
    end_pos: int | None = None

    def close(self, position: int) -> None:
        """End the pause at `position` (no-op when already ended)."""
        if self.end_pos is None:
            self.end_pos = max(self.start_pos, position)

    @property
    def duration_ms(self) -> int | float:
        """Exact milliseconds (0 while open)."""
        return milliseconds((self.end_pos or self.start_pos) - self.start_pos, OUTPUT_SAMPLE_RATE)


class TimelineListener(Protocol):
    """What the timeline tells, in timeline order (implemented by `core.chunker.Chunker`)."""

    def began(self, mark: Mark, paused: bool) -> None:
        """The recording starts at `mark` (already paused when `paused`)."""
        ...

    def paused(self, mark: Mark) -> None:
        """A pause starts at `mark`."""
        ...

    def resumed(self, mark: Mark) -> None:
        """The pause ends at `mark`."""
        ...

    def media(self, tick: MixTick, start: int, end: int, paused: bool) -> None:
        """Samples [start, end) of `tick` belong to the recording, paused or not."""
        ...


def aware(moment: datetime) -> datetime:
    """A naive datetime taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _mark(tick: MixTick, offset: int) -> Mark:
    return Mark(tick.index * TICK_SAMPLES + offset, tick.time + timedelta(seconds=offset / OUTPUT_SAMPLE_RATE))


class RecordingTimeline:
    """One recording's commands on its call's timeline (see the module docstring)."""

    def __init__(
        self,
        *,
        pause_on_start: bool,
        start_at: datetime | None,
        time: TimeSource,
        idle_timeout: float = 0.5,
        log_fields: LogFields | None = None,
    ) -> None:
        self._time = time
        self._idle_timeout = idle_timeout
        self._log_fields = log_fields or {}
        self._commands: list[tuple[datetime, int, CommandKind]] = []
        self._order = itertools.count()
        self._start_at = aware(start_at) if start_at is not None else None
        if self._start_at is not None:
            self._schedule(self._start_at, CommandKind.START)
        self._paused = pause_on_start
        self._requested_paused = pause_on_start
        self._started = False
        self._stopped = False
        self._start_time: datetime | None = None
        self._position: int | None = None  # after the last sample taken
        self._position_time: datetime | None = None
        self._end_pos: int | None = None
        self._pause_log: list[PauseSpan] = []
        self._created_at = time.monotonic()
        self._last_tick_at: float | None = None
        self._stop_reached = asyncio.Event()

    # ------------------------------------------------------------------ commands
    def pause(self, at: datetime) -> None:
        """Pause at `at` (no-op if already paused then)."""
        self._requested_paused = True
        self._schedule(aware(at), CommandKind.PAUSE)

    def resume(self, at: datetime) -> None:
        """Resume at `at` (no-op if not paused then)."""
        self._requested_paused = False
        self._schedule(aware(at), CommandKind.RESUME)

    def stop(self, at: datetime) -> None:
        """Ignore media after `at`. Schedule it before the ticks pass `at`: media taken cannot be cut."""
        self._schedule(aware(at), CommandKind.STOP)

    def _schedule(self, at: datetime, command: CommandKind) -> None:
        self._commands.append((at, next(self._order), command))
        self._commands.sort(key=lambda c: (c[0], c[1]))

    # ------------------------------------------------------------------ state
    @property
    def paused(self) -> bool:
        """The state last requested by pause()/resume() (or pause_on_start)."""
        return self._requested_paused

    @property
    def paused_now(self) -> bool:
        """Whether the media taken last was paused."""
        return self._paused

    @property
    def started(self) -> bool:
        """True once the recording's first sample is placed."""
        return self._started

    @property
    def stopped(self) -> bool:
        """True once the stop instant was reached."""
        return self._stopped

    @property
    def start_time(self) -> datetime | None:
        """When the recording started on the call's timeline (None before its first tick)."""
        return self._start_time

    @property
    def end_position(self) -> int:
        """Where the recording ends: the stop position, else after the last sample taken."""
        end = self._end_pos if self._end_pos is not None else self._position
        assert end is not None, "end_position before the recording began"
        return end

    @property
    def pause_intervals(self) -> list[PauseInterval]:
        """Every pause applied so far (an ongoing one without duration)."""
        return [
            PauseInterval(p.start_time, None if p.end_pos is None else timedelta(milliseconds=p.duration_ms))
            for p in self._pause_log
        ]

    def close_pauses(self, position: int) -> None:
        """End the pause log's open pause at `position` (the recording ends)."""
        for pause in self._pause_log:
            pause.close(position)

    # ------------------------------------------------------------------ ticks
    def tick_arrived(self) -> None:
        """A tick reached the recording (taken or not): media is still flowing."""
        self._last_tick_at = self._time.monotonic()

    def take(self, tick: MixTick, listener: TimelineListener) -> None:
        """Split `tick` at the commands inside it and tell `listener` what happens, in order."""
        samples = tick.samples
        if not self._started and self._start_at is None:
            self._begin(_mark(tick, 0), listener)
        cursor = 0
        while self._commands and self._commands[0][0] < tick.end_time:
            at, _, command = self._commands.pop(0)
            offset = min(samples, max(0, round((at - tick.time).total_seconds() * OUTPUT_SAMPLE_RATE)))
            if offset > cursor:
                if self._started:
                    listener.media(tick, cursor, offset, self._paused)
                cursor = offset
            self._apply(command, _mark(tick, offset), listener)
            if self._stopped:
                return
        if cursor < samples and self._started:
            listener.media(tick, cursor, samples, self._paused)
        self._position = tick.index * TICK_SAMPLES + samples
        self._position_time = tick.end_time

    def _apply(self, command: CommandKind, mark: Mark, listener: TimelineListener) -> None:
        if command is CommandKind.START:
            if not self._started:
                self._begin(mark, listener)
        elif command is CommandKind.STOP:
            self._stopped = True
            self._end_pos = mark.position
            if self._started:
                self._position, self._position_time = mark.position, mark.time
            self._stop_reached.set()
        else:
            paused = command is CommandKind.PAUSE
            if paused == self._paused:
                return
            self._paused = paused
            if not self._started:
                return
            if paused:
                self._pause_log.append(PauseSpan(mark.time, mark.position))
                listener.paused(mark)
            else:
                self.close_pauses(mark.position)
                listener.resumed(mark)

    def _begin(self, mark: Mark, listener: TimelineListener) -> None:
        self._started = True
        self._start_time = mark.time
        self._position, self._position_time = mark.position, mark.time
        if self._paused:
            self._pause_log.append(PauseSpan(mark.time, mark.position))
        listener.began(mark, self._paused)

    def begin_without_media(self, at: datetime | None, listener: TimelineListener) -> None:
        """Finish a recording that never saw a tick: it begins (and ends) at `at` (else start_at, else now)."""
        if self._started:
            return
        moment = aware(at) if at is not None else self._start_at or self._time.now()
        self._begin(Mark(self._position or 0, moment), listener)

    # ------------------------------------------------------------------ the stop wait
    async def settle_stop(self, at: datetime | None, timeout: float) -> None:
        """Stop at `at` (None: after the last tick taken) and wait for the ticks that reach it.

        The real-time clock delivers a tick every 20 ms, the stop instant a playout delay
        later; a media clock with no media delivers none, so waiting the whole timeout
        would only delay StopRecording: the wait ends when no tick came for `idle_timeout`.
        """
        if at is None or self._stopped:
            return
        at = aware(at)
        self.stop(at)
        if self._position_time is not None and self._position_time > at:
            log.warning("stop time already passed: stopping after the media taken", **self._log_fields)
            return
        if self._position_time is not None and self._position_time >= at:
            return
        called_at = self._time.monotonic()
        deadline = called_at + timeout
        while not self._stop_reached.is_set():
            now = self._time.monotonic()
            last = self._last_tick_at if self._last_tick_at is not None else self._created_at
            if now >= deadline or now - max(last, called_at) >= self._idle_timeout:
                log.warning("stopping before the media reached the stop time", **self._log_fields)
                return
            reached = asyncio.ensure_future(self._stop_reached.wait())
            slept = asyncio.ensure_future(self._time.sleep(min(0.05, deadline - now)))
            try:
                await asyncio.wait({reached, slept}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (reached, slept):
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
