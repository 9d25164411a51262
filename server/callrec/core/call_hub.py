"""`CallMediaHub`: the `MediaIngest` the StreamMedia handler drives, one `CallMedia` per open call.

It creates a call's media pipeline (jitter buffers, decoders, the one mixer pass on the
call's clock) on first use, routes frames and participants into it, feeds video
recordings their participants and frames, and ends the pipeline when the call ends.

A pipeline's task leaves the hub when it finishes, however it finishes (ended, failed,
cancelled), so a failed pipeline is replaced on next use instead of swallowing the call's
media; `end_call` waits for the task without cancelling it when its caller is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from callrec.core.call_media import CallMedia, MixTick, TickSink
from callrec.core.call_registry import Call, CallParticipant
from callrec.core.clock import Clock, MediaClock, RealtimeClock
from callrec.core.limits import Limits, video_frame_problem
from callrec.core.log import get_logger
from callrec.core.model import MediaStats, RejectReason, VideoFormat
from callrec.core.ports import AudioCodecs

__all__ = ["CallMediaHub", "VideoSink", "make_clock_factory"]

log = get_logger(__name__)


class VideoSink(Protocol):
    """What an mp4 recording needs besides ticks: participants and their video frames."""

    def on_tick(self, tick: MixTick) -> None:
        """The call's mixed audio and speaking flags, every 20 ms."""
        ...

    def join(self, participant_id: str, display_name: str, video: VideoFormat | None) -> None:
        """A participant is in the call (also called for those present when the recording starts)."""
        ...

    def leave(self, participant_id: str) -> None:
        """A participant left."""
        ...

    def video(self, participant_id: str, data: bytes, call_us: int, width: int, height: int,
              keyframe: bool) -> str | None:
        """A video frame placed on the call timeline; returns a rejection reason or None."""
        ...


@dataclass
class _CallEntry:
    media: CallMedia
    task: asyncio.Task[None]
    ended: bool = False
    video_sinks: list[VideoSink] = field(default_factory=list)


#: Adaptive playout delay above a call's base that counts as its media falling behind (`media_under_pressure`).
PRESSURE_EXTRA_US = 100_000


def make_clock_factory(
    kind: str, playout_delay_ms: int, max_playout_delay_ms: int | None = None
) -> Callable[[], Clock]:
    """The clock of each call: "realtime" (production) or "media" (tests, benchmarks)."""
    if kind == "media":
        return MediaClock
    return lambda: RealtimeClock(playout_delay_ms=playout_delay_ms, max_playout_delay_ms=max_playout_delay_ms)


class CallMediaHub:
    """One CallMedia per open call, created on demand, ended when the call ends."""

    def __init__(self, make_clock: Callable[[], Clock], codecs: AudioCodecs, limits: Limits | None = None) -> None:
        self.make_clock = make_clock
        self.codecs = codecs
        self.limits = limits or Limits()
        self._calls: dict[str, _CallEntry] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def media(self, server_call_id: str) -> CallMedia:
        """The call's media pipeline (started on first use)."""
        entry = self._calls.get(server_call_id)
        if entry is None or entry.ended:
            media = CallMedia(server_call_id, self.make_clock(), self.codecs,
                              max_buffered_ms=self.limits.max_buffered_ms_per_participant,
                              max_ahead_ms=self.limits.max_frame_ahead_ms)
            task = asyncio.get_running_loop().create_task(media.run(), name=f"call-media-{server_call_id}")
            entry = _CallEntry(media, task)
            self._calls[server_call_id] = entry
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._task_done(server_call_id, entry))
        return entry.media

    def _task_done(self, server_call_id: str, entry: _CallEntry) -> None:
        self._tasks.discard(entry.task)
        entry.ended = True
        if self._calls.get(server_call_id) is entry:
            del self._calls[server_call_id]
        if not entry.task.cancelled() and (exc := entry.task.exception()) is not None:
            log.error("call media task failed", call_id=server_call_id, exc_info=exc)

    def running_tasks(self) -> int:
        """How many calls' media tasks are running (a metric: 0 once every call has ended)."""
        return len(self._tasks)

    def max_playout_delay_s(self) -> float:
        """The largest playout delay of any real-time call now (a metric; read from the metrics thread).

        Media waiting out the delay is in memory only: this is what a kill -9 can lose on top of the
        write batch, and it grows when the server is overloaded.
        """
        clocks = [entry.media.clock for entry in list(self._calls.values())]
        return max((c.last_playout_delay_us / 1e6 for c in clocks if isinstance(c, RealtimeClock)), default=0.0)

    def media_under_pressure(self) -> bool:
        """True while a real-time call's playout delay is raised more than `PRESSURE_EXTRA_US` above its base.

        Raised means frames came late or the event loop stalled within the last minute: the server is
        short of CPU for its calls, and work that can wait (uploads) should yield.
        """
        for entry in list(self._calls.values()):
            clock = entry.media.clock
            if not isinstance(clock, RealtimeClock):
                continue
            if clock.last_playout_delay_us - clock.playout_delay_us > PRESSURE_EXTRA_US:
                return True
        return False

    def is_realtime(self, server_call_id: str) -> bool:
        """True when the call's pipeline runs on the real-time clock."""
        entry = self._calls.get(server_call_id)
        return entry is not None and isinstance(entry.media.clock, RealtimeClock)

    def media_time(self, server_call_id: str, wall: datetime) -> datetime:
        """Where a control command issued at `wall` falls on the call's media timeline.

        The real-time clock's ticks carry capture times, so `wall` maps to itself; the
        media clock runs as fast as media arrives, so "now" is the tick being produced.
        """
        entry = self._calls.get(server_call_id)
        if entry is None or isinstance(entry.media.clock, RealtimeClock):
            return wall
        return entry.media.clock.tick_time(entry.media.next_tick)

    def attach(self, server_call_id: str, sink: TickSink) -> None:
        """Feed a sink the call's ticks."""
        self.media(server_call_id).attach(sink)

    def attach_video(self, call: Call | None, server_call_id: str, sink: VideoSink) -> None:
        """Feed a video sink ticks, participants (those present now first) and video frames."""
        media = self.media(server_call_id)
        entry = self._calls[server_call_id]
        if call is not None:
            for p in call.participants.values():
                sink.join(p.participant_id, p.display_name, p.video_format)
        entry.video_sinks.append(sink)
        media.attach(sink)

    def detach(self, server_call_id: str, sink: TickSink) -> None:
        """Stop feeding a sink (no-op when the call's pipeline is gone)."""
        entry = self._calls.get(server_call_id)
        if entry is not None:
            entry.media.detach(sink)
            entry.video_sinks = [s for s in entry.video_sinks if s is not sink]

    def stats(self, server_call_id: str) -> MediaStats | None:
        """The call's media counters so far (None when its pipeline is gone)."""
        entry = self._calls.get(server_call_id)
        return entry.media.call_stats() if entry is not None else None

    async def end_call(self, server_call_id: str) -> MediaStats | None:
        """The call is over: play out what is buffered, stop the tick loop; idempotent.

        The tick loop is told to end before anything is awaited: a caller cancelled while it
        waits for the play-out does not cancel the loop, which still ends on its own.
        """
        entry = self._calls.get(server_call_id)
        if entry is None:
            return None
        entry.ended = True
        entry.media.end()
        await asyncio.wait((entry.task,))
        return entry.media.call_stats()

    async def on_call_ended(self, call: Call, reason: str) -> None:
        """CallRegistry hook."""
        await self.end_call(call.server_call_id)

    async def close(self) -> None:
        """End every call's pipeline (server shutdown)."""
        for server_call_id in list(self._calls):
            await self.end_call(server_call_id)

    # ---- MediaIngest ---------------------------------------------------------------------------
    def joined(self, call: Call, participant: CallParticipant) -> None:
        """A participant entered: it gets a media input and every video recording a tile."""
        media = self.media(call.server_call_id)
        stream = call.streams.get(participant.connection_id)
        gateway_id = stream.gateway_id if stream is not None else participant.connection_id
        if participant.participant_id in media.participant_ids:
            media.remove_participant(participant.participant_id)
        media.add_participant(participant.participant_id, participant.display_name, participant.audio_format,
                              gateway_id)
        for sink in self._calls[call.server_call_id].video_sinks:
            sink.join(participant.participant_id, participant.display_name, participant.video_format)

    def left(self, call: Call, participant: CallParticipant) -> None:
        """A participant left: its buffered media plays out, its tiles are freed."""
        entry = self._calls.get(call.server_call_id)
        if entry is not None:
            entry.media.remove_participant(participant.participant_id)
            for sink in entry.video_sinks:
                sink.leave(participant.participant_id)

    def audio(self, call: Call, participant: CallParticipant, sequence: int, timestamp_us: int,
              data: bytes) -> str | None:
        """An audio frame into the participant's jitter buffer."""
        return self.media(call.server_call_id).push_audio(participant.participant_id, sequence, timestamp_us, data)

    def video(self, call: Call, participant: CallParticipant, sequence: int, timestamp_us: int, data: bytes,
              keyframe: bool, width: int, height: int) -> str | None:
        """A video frame, placed on the call timeline like the participant's audio, to every video sink."""
        if participant.video_format is None:
            return "no_video_format"
        if not data:
            return "empty_frame"
        reason = video_frame_problem(participant.video_format, len(data), width, height, self.limits.max_video_pixels)
        if reason is not None:
            return reason
        entry = self._calls.get(call.server_call_id)
        if entry is None or not entry.video_sinks:
            return None  # counted; no mp4 recording consumes video right now
        call_us = entry.media.place_video(participant.participant_id, timestamp_us)
        if call_us is None:
            return RejectReason.UNKNOWN_PARTICIPANT
        if entry.media.too_far_ahead(call_us):
            return RejectReason.EARLY
        if entry.media.too_far_behind(call_us):
            return RejectReason.LATE
        reasons = [sink.video(participant.participant_id, data, call_us, width, height, keyframe)
                   for sink in entry.video_sinks]
        return next((r for r in reasons if r), None)
