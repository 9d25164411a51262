"""Clocks on fake time: playout delay, placement by timestamp, drift correction, media-driven pacing."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import numpy as np

from callrec.core.call_hub import PRESSURE_EXTRA_US, CallMediaHub
from callrec.core.call_media import CallMedia
from callrec.core.clock import ALL_DUE, MediaClock, MediaProgress, RealtimeClock
from callrec.core.model import AudioEncoding, AudioFormat
from callrec.media.decode import PyAVAudioCodecs
from callrec.testing import EPOCH, CollectingSink, FakeTime, encode_frames, tone

PCM16 = AudioFormat(AudioEncoding.PCM16LE, 16_000, 1)


class FixedProgress:
    """A ProgressSource whose answer the test sets."""

    def __init__(self) -> None:
        self.progress = MediaProgress(1, None, False, None)

    def media_progress(self, reorder_window_us: int) -> MediaProgress:
        return self.progress


async def test_realtime_tick_waits_for_its_end_plus_the_playout_delay() -> None:
    fake = FakeTime()
    clock = RealtimeClock(fake, playout_delay_ms=200)
    clock.start()
    waiting = asyncio.create_task(clock.wait_tick(0, FixedProgress()))
    await fake.advance(0.219)
    assert not waiting.done()
    await fake.advance(0.002)
    assert waiting.done()
    assert clock.tick_time(50) == EPOCH + (clock.tick_time(50) - clock.tick_time(0))
    assert (clock.tick_time(50) - clock.tick_time(0)).total_seconds() == 1.0


async def test_realtime_places_by_timestamp_not_by_arrival() -> None:
    fake = FakeTime()
    clock = RealtimeClock(fake)
    clock.start()
    await fake.advance(0.5)
    assert clock.place("gw", 7_000_000) == 500_000  # first frame anchored to its arrival
    await fake.advance(0.090)  # the next frame arrives 70 ms "late"
    assert clock.place("gw", 7_020_000) == 520_000  # still right after the first
    assert clock.place("other", 1_000) == 590_000  # another gateway has its own anchor


async def test_the_calls_first_frame_puts_the_tick_grid_on_its_gateways_frames() -> None:
    """Call time 0 moves forward by the first frame's phase (< a tick): that gateway's frames start
    ticks exactly, the wall-clock times follow, and no tick is mixed earlier than before."""
    fake = FakeTime()
    clock = RealtimeClock(fake, playout_delay_ms=200)
    clock.start()
    before = clock.tick_time(0)
    await fake.advance(0.5073)
    assert clock.place("gw", 7_000_000) == 500_000  # not 507_300: on the tick grid
    assert clock.tick_time(0) - before == timedelta(microseconds=7_300)
    await fake.advance(0.020)
    assert clock.place("gw", 7_020_000) == 520_000
    assert clock.place("other", 1_000) == 520_000  # a later gateway is anchored, not re-phased
    waiting = asyncio.create_task(clock.wait_tick(26, FixedProgress()))  # ends at 540 ms + 200 ms delay
    await fake.advance(0.740 + 0.0073 - 0.5273 - 0.001)
    assert not waiting.done()
    await fake.advance(0.002)
    assert waiting.done()


async def test_on_the_real_time_clock_whole_frames_skip_the_timeline_and_stay_bit_exact() -> None:
    """A gateway's 20 ms frames arriving at any phase, with network jitter, play as their ticks' blocks
    (`JitterBuffer.play_whole`) once the first frame has set the grid, and the audio is unchanged."""
    source = tone(440.0, 3.0, start_sample=7)
    frames = encode_frames(source, PCM16)
    rng = random.Random(3)
    arrivals = [(0.1137 + i * 0.02 + rng.uniform(0.0, 0.060), i, 9_000_000 + i * 20_000, f)
                for i, f in enumerate(frames)]
    fake = FakeTime()
    call, sink = await stream_realtime(RealtimeClock(fake), fake, arrivals)
    assert call.stats("a").frames_rejected_by_reason == {} and call.stats("a").frames_late == 0
    out = sink.participant("a")
    start = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[start : start + len(source)], source)
    jitter = call._participants["a"].jitter
    assert jitter is not None and jitter.whole_frame_plays >= len(frames) - 1


async def stream_realtime(
    clock: RealtimeClock, fake: FakeTime, arrivals: list[tuple[float, int, int, bytes]], tail_s: float = 1.0
) -> tuple[CallMedia, CollectingSink]:
    """Push (arrival_s, sequence, timestamp_us, data) at their fake arrival times; run the call."""
    call = CallMedia("c", clock, PyAVAudioCodecs())
    call.add_participant("a", "A", PCM16, "gw")
    sink = CollectingSink()
    call.attach(sink)
    task = asyncio.create_task(call.run())
    now = 0.0
    for arrival, sequence, timestamp_us, data in sorted(arrivals, key=lambda a: a[0]):
        await fake.advance(arrival - now)
        now = arrival
        call.push_audio("a", sequence, timestamp_us, data)
    await fake.advance(tail_s)
    await call.close()
    await task
    return call, sink


async def test_network_jitter_does_not_stretch_or_break_audio() -> None:
    """Delays of 5-150 ms (reordering included) under a 200 ms playout delay: bit-exact audio."""
    source = tone(440.0, 4.0, start_sample=7)
    frames = encode_frames(source, PCM16)
    rng = random.Random(5)
    arrivals = [
        (0.1 + i * 0.02 + rng.uniform(0.005, 0.150), i, 9_000_000 + i * 20_000, f) for i, f in enumerate(frames)
    ]
    fake = FakeTime()
    call, sink = await stream_realtime(RealtimeClock(fake), fake, arrivals)
    stats = call.stats("a")
    assert stats.frames_rejected_by_reason == {} and stats.frames_late == 0
    out = sink.participant("a")
    start = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[start : start + len(source)], source)
    assert not out[start + len(source) :].any()


async def test_frames_later_than_the_playout_delay_are_counted_late() -> None:
    source = tone(440.0, 1.0, start_sample=7)
    frames = encode_frames(source, PCM16)
    arrivals = [(0.1 + i * 0.02 + (0.5 if i == 20 else 0.01), i, i * 20_000, f) for i, f in enumerate(frames)]
    fake = FakeTime()
    call, _ = await stream_realtime(RealtimeClock(fake), fake, arrivals)
    stats = call.stats("a")
    assert stats.frames_late == 1 and stats.frames_rejected_by_reason == {"late": 1}
    assert stats.gap_fill_ms == 20


async def drifting_gateway(max_slew_ppm: float, max_playout_delay_ms: float = 200.0) -> CallMedia:
    """A gateway whose clock runs 0.5 % slow: without correction, frames end up > 200 ms late."""
    frames = encode_frames(tone(300.0, 50.0), PCM16)
    arrivals = [(0.05 + i * 0.02 * 1.005, i, i * 20_000, f) for i, f in enumerate(frames)]
    fake = FakeTime()
    clock = RealtimeClock(
        fake, drift_window_s=2.0, max_slew_ppm=max_slew_ppm, max_playout_delay_ms=max_playout_delay_ms
    )
    call, _ = await stream_realtime(clock, fake, arrivals)
    return call


async def test_drift_is_corrected_gradually() -> None:
    corrected = (await drifting_gateway(max_slew_ppm=10_000)).stats("a")
    assert corrected.frames_late == 0
    assert 150 <= corrected.gap_fill_ms <= 400  # ~250 ms inserted in small steps, never a jump
    uncorrected = (await drifting_gateway(max_slew_ppm=0)).stats("a")
    assert uncorrected.frames_late > 100


async def test_an_adaptive_playout_delay_absorbs_uncorrected_drift() -> None:
    """Without slew, the late frames raise the playout delay: a handful lost instead of thousands."""
    stats = (await drifting_gateway(max_slew_ppm=0, max_playout_delay_ms=2000)).stats("a")
    assert stats.frames_late <= 5, stats


async def one_tone_call(
    seconds: float, fake: FakeTime, clock: RealtimeClock
) -> tuple[CallMedia, CollectingSink, np.ndarray, list[bytes], asyncio.Task[None]]:
    """A call of one PCM16 participant playing a tone, its mixer running on `clock`: what the tests push."""
    source = tone(440.0, seconds, start_sample=7)
    call = CallMedia("c", clock, PyAVAudioCodecs())
    call.add_participant("a", "A", PCM16, "gw")
    sink = CollectingSink()
    call.attach(sink)
    return call, sink, source, encode_frames(source, PCM16), asyncio.create_task(call.run())


def assert_every_frame_played(call: CallMedia, sink: CollectingSink, source: np.ndarray) -> None:
    """No frame late or rejected, and the tone came out sample for sample."""
    stats = call.stats("a")
    assert stats.frames_late == 0 and stats.frames_rejected_by_reason == {}, stats
    out = sink.participant("a")
    start = int(np.flatnonzero(out)[0])
    np.testing.assert_array_equal(out[start : start + len(source)], source)


async def played_out(call: CallMedia, task: asyncio.Task[None], fake: FakeTime) -> None:
    """Let the mixer play what is buffered, then end the call."""
    await fake.advance(3.0)
    await call.close()
    await task


async def stalled_loop(
    max_playout_delay_ms: float, stalls: tuple[tuple[float, float], ...] = ((2.0, 3.0),)
) -> tuple[CallMedia, CollectingSink, np.ndarray]:
    """Frames every 20 ms; the event loop blocks over each (start, end) of `stalls` (by default 2-3 s),
    then mixer and readers wake together.

    The mixer is woken first (the worst order): it finds itself behind by the stall while the
    frames that came during it are still unread.
    """
    fake = FakeTime()
    call, sink, source, frames, task = await one_tone_call(
        5.0, fake, RealtimeClock(fake, max_playout_delay_ms=max_playout_delay_ms)
    )
    now = 0.0
    backlog: list[tuple[int, bytes]] = []
    for i, data in enumerate(frames):
        arrival = 0.1 + i * 0.02
        if any(start <= arrival < end for start, end in stalls):  # the loop is blocked: read after the stall
            backlog.append((i, data))
            continue
        if backlog:
            fake.stall(arrival - now)
            now = arrival
            await fake.advance(0, yields=500)  # the mixer runs first, until it sleeps
            for j, held in backlog:
                call.push_audio("a", j, j * 20_000, held)
            backlog.clear()
        await fake.advance(arrival - now)
        now = arrival
        call.push_audio("a", i, i * 20_000, data)
    await played_out(call, task, fake)
    return call, sink, source


async def test_a_stalled_event_loop_loses_no_frames() -> None:
    call, sink, source = await stalled_loop(max_playout_delay_ms=2000)
    assert_every_frame_played(call, sink, source)
    assert isinstance(call.clock, RealtimeClock) and call.clock.stalls >= 1  # grew by the stall, before mixing
    # ... and only for a while: 3 s after the stall, most of the second it added is given back
    assert 200_000 < call.clock.current_playout_delay_us < 1_000_000


async def test_stalls_shorter_than_the_playout_delay_leave_it_alone() -> None:
    """A busy loop stalls often: each stall's frames are covered by the base delay, so none raises it.

    Eight stalls of 100 ms in 4 s (the delay covers a stall up to 130 ms: 200 ms less a tick and the 50 ms
    of slack). Adding each stall to the delay (as before 2026-12-03) pinned it at its 2 s maximum within
    seconds on a loaded server, 2 s of media in memory that a kill -9 would lose.
    """
    stalls = tuple((1.0 + k / 2, 1.0 + k / 2 + 0.1) for k in range(8))
    call, sink, source = await stalled_loop(max_playout_delay_ms=2000, stalls=stalls)
    assert_every_frame_played(call, sink, source)
    assert isinstance(call.clock, RealtimeClock)
    assert call.clock.stalls == 0 and call.clock.current_playout_delay_us == 200_000


async def test_a_stall_longer_than_the_delay_raises_it_to_cover_that_stall_not_the_sum() -> None:
    fake = FakeTime()
    clock = RealtimeClock(fake, playout_delay_ms=200, max_playout_delay_ms=2000)
    clock.start()
    await fake.advance(1.0)
    fake.stall(0.5)  # tick 39's deadline was 1.0 s: the mixer wakes 0.5 s late
    await clock.wait_tick(39, None)  # type: ignore[arg-type]  # unused by the real-time clock
    # a frame that came as the stall began is read 0.5 s later: its tick needs 0.5 s, a tick and the slack
    assert clock.stalls == 1 and clock.current_playout_delay_us == 570_000
    await fake.advance(0.2)
    fake.stall(0.3)  # a shorter stall while the first is held: already covered
    await clock.wait_tick(int(1.7 / 0.02) - 36, None)  # type: ignore[arg-type]
    assert clock.stalls == 1 and clock.current_playout_delay_us == 570_000


async def lagging_reader(slack_ms: float) -> tuple[CallMedia, CollectingSink, np.ndarray]:
    """Frames every 20 ms, read later and later: 2 ms more each (a loop with more work than it does in real
    time), up to 400 ms behind, twice the base delay, with no stall of the mixer at any point."""
    fake = FakeTime()
    call, sink, source, frames, task = await one_tone_call(
        6.0, fake, RealtimeClock(fake, max_playout_delay_ms=2000, slack_ms=slack_ms)
    )
    now = 0.0
    first = 0.1
    for i, data in enumerate(frames):
        read_at = first + i * 0.02 + (min(0.4, (i - 50) * 0.002) if i > 50 else 0.0)
        await fake.advance(read_at - now)
        now = read_at
        call.push_audio("a", i, i * 20_000, data)
    await played_out(call, task, fake)
    return call, sink, source


async def test_frames_read_later_and_later_raise_the_delay_before_any_is_late() -> None:
    call, sink, source = await lagging_reader(slack_ms=50)
    assert_every_frame_played(call, sink, source)
    assert isinstance(call.clock, RealtimeClock) and call.clock.stalls == 0  # the slack did it, not a stall
    assert 400_000 < call.clock.current_playout_delay_us <= 500_000  # held, as for late frames


async def test_without_the_slack_rule_frames_read_later_and_later_go_late() -> None:
    """The control: the delay rises only once frames are already lost."""
    call, _, _ = await lagging_reader(slack_ms=0)
    assert call.stats("a").frames_late >= 1


async def test_without_adaptation_a_stalled_loop_drops_the_stalled_second() -> None:
    """The control: the same stall with the delay pinned at 200 ms loses ~0.8 s of frames."""
    call, _, _ = await stalled_loop(max_playout_delay_ms=200)
    assert call.stats("a").frames_late >= 30


async def test_the_added_delay_shrinks_back_once_calm() -> None:
    fake = FakeTime()
    clock = RealtimeClock(fake, playout_delay_ms=200, max_playout_delay_ms=2000, calm_hold_s=10, shrink_rate=0.05)
    clock.start()
    await fake.advance(1.0)
    clock.note_late(280_000)  # its tick ended at 0.3 s, it came at 1.0 s: 700 ms + a tick of margin
    assert clock.current_playout_delay_us == 200_000 + 520_000
    await fake.advance(9.0)
    assert clock.current_playout_delay_us == 200_000 + 520_000  # held while things may still be bad
    await fake.advance(21.0)
    # 10 s hold, then 20 s at 50 ms/s gives back 1 s: all of the 520 ms
    assert clock.current_playout_delay_us == 200_000
    clock.note_late(0)  # 31 s late
    assert clock.current_playout_delay_us == 2_000_000  # capped


async def test_a_stall_raises_the_delay_for_seconds_and_late_frames_for_a_minute() -> None:
    """A stall is a guess (its frames may be unread), late frames are evidence: they are held differently."""
    fake = FakeTime()
    clock = RealtimeClock(fake, playout_delay_ms=200, max_playout_delay_ms=2000)
    clock.start()
    await fake.advance(1.0)
    fake.stall(0.5)  # the loop was blocked: the mixer wakes 0.5 s after its deadline
    await clock.wait_tick(int(1.0 / 0.02) - 10, None)  # type: ignore[arg-type]  # unused by the real-time clock
    assert clock.stalls == 1 and clock.current_playout_delay_us >= 500_000  # 0.48 s late + a tick of margin
    await fake.advance(5.0)  # 2 s held, then 200 ms/s: back to the base within seconds
    assert clock.current_playout_delay_us == 200_000
    clock.note_late(5_000_000)  # a frame of 5.0 s that came at 6.5 s: its tick ended at 5.02 s, + a tick of margin
    assert clock.current_playout_delay_us == 1_500_000
    await fake.advance(30.0)
    assert clock.current_playout_delay_us == 1_500_000  # evidence is held a minute


async def test_a_burst_of_late_frames_raises_the_delay_once_to_the_latest() -> None:
    """One stall makes hundreds of frames late: the delay must cover the worst of them, not their sum."""
    fake = FakeTime()
    clock = RealtimeClock(fake, playout_delay_ms=200, max_playout_delay_ms=2000)
    clock.start()
    await fake.advance(1.0)
    for participant in range(20):
        for call_us in range(500_000, 800_000, 20_000):  # 15 frames each, 200-500 ms too late
            clock.note_late(call_us + participant)
    # the earliest needed 1.0 s - 0.52 s + 20 ms: the delay is 500 ms, not 300 frames' worth (the cap)
    assert clock.current_playout_delay_us == 500_000
    clock.note_late(900_000)  # a later frame that needed less changes nothing
    assert clock.current_playout_delay_us == 500_000


def test_media_progress_readiness() -> None:
    assert MediaProgress(2, 40_000, False, None).ready(0, 20_000)
    assert not MediaProgress(2, 10_000, False, None).ready(0, 20_000)
    assert not MediaProgress(2, None, False, None).ready(0, 20_000)  # one input has sent nothing
    assert MediaProgress(2, None, True, None).ready(0, 20_000)  # but others pile up: go on
    assert MediaProgress(0, None, False, 30_000).ready(20_000, 40_000)  # leavers drain
    assert not MediaProgress(0, None, False, 20_000).ready(20_000, 40_000)
    assert not MediaProgress(0, None, False, None).ready(0, 20_000)  # nothing drives the clock


async def test_media_clock_waits_for_progress_and_releases_on_end() -> None:
    clock = MediaClock(start_time=EPOCH)
    source = FixedProgress()
    waiting = asyncio.create_task(clock.wait_tick(0, source))
    await asyncio.sleep(0)
    assert not waiting.done()
    source.progress = MediaProgress(1, 20_000, False, None)
    clock.notify()
    await asyncio.sleep(0)
    assert waiting.done()
    waiting = asyncio.create_task(clock.wait_tick(1, source))
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.end()
    await asyncio.sleep(0)
    assert waiting.done() and clock.ended


async def test_media_clock_call_follows_the_slowest_and_continues_after_a_leave() -> None:
    """B stops after 1 s and leaves: A's remaining 2 s still play; ticks stop at the media's end."""
    codecs = PyAVAudioCodecs()
    call = CallMedia("c", MediaClock(start_time=EPOCH), codecs)
    call.add_participant("a", "A", PCM16, "gw")
    call.add_participant("b", "B", PCM16, "gw")
    sink = CollectingSink()
    call.attach(sink)
    task = asyncio.create_task(call.run())
    a = encode_frames(tone(300.0, 3.0), PCM16)
    b = encode_frames(tone(500.0, 1.0), PCM16)
    for i in range(50):
        call.push_audio("a", i, i * 20_000, a[i])
        call.push_audio("b", i, i * 20_000, b[i])
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert 48 <= call.next_tick <= 50  # follows delivery
    for i in range(50, 100):
        call.push_audio("a", i, i * 20_000, a[i])
    await asyncio.sleep(0)
    assert call.next_tick <= 50  # B is still there and silent: wait for it
    call.remove_participant("b")
    for i in range(100, 150):
        call.push_audio("a", i, i * 20_000, a[i])
        await asyncio.sleep(0)
    await call.close()
    await task
    assert len(sink.ticks) == 150
    assert "b" in sink.ticks[49].participants and "b" not in sink.ticks[60].participants


async def test_media_clock_does_not_wait_forever_for_a_participant_that_never_sends() -> None:
    call = CallMedia("c", MediaClock(start_time=EPOCH), PyAVAudioCodecs(), backlog_frames=25)
    call.add_participant("a", "A", PCM16, "gw")
    call.add_participant("muted", "M", PCM16, "gw")
    sink = CollectingSink()
    call.attach(sink)
    task = asyncio.create_task(call.run())
    frames = encode_frames(tone(300.0, 2.0), PCM16)
    for i, frame in enumerate(frames):
        assert call.push_audio("a", i, i * 20_000, frame) is None
        await asyncio.sleep(0)
    assert call.next_tick > 50  # moving although "muted" sent nothing
    await call.close()
    await task
    assert len(sink.ticks) == 100
    assert call.stats("a").frames_rejected_by_reason == {}


async def test_a_participant_whose_timestamps_restart_at_zero_is_anchored_on_its_own() -> None:
    """B joins 2 s after A on the same gateway but stamps from 0: still recorded, not all late."""
    fake = FakeTime()
    call = CallMedia("c", RealtimeClock(fake), PyAVAudioCodecs())
    call.add_participant("a", "A", PCM16, "gw")
    call.add_participant("b", "B", PCM16, "gw")
    sink = CollectingSink()
    call.attach(sink)
    task = asyncio.create_task(call.run())
    a = encode_frames(tone(300.0, 4.0), PCM16)
    b = encode_frames(tone(500.0, 2.0), PCM16)
    for i, frame in enumerate(a):
        call.push_audio("a", i, 50_000_000 + i * 20_000, frame)
        if i >= 100:
            call.push_audio("b", i - 100, (i - 100) * 20_000, b[i - 100])
        await fake.advance(0.020)
    await fake.advance(0.5)
    await call.close()
    await task
    stats = call.stats("b")
    assert stats.frames_late == 0 and stats.frames_rejected_by_reason == {}
    heard = np.flatnonzero(sink.participant("b"))
    assert abs(heard[-1] - heard[0] + 1 - 2 * 16_000) < 40  # all 2 s of B, in one piece


async def test_the_hub_reports_pressure_while_a_call_is_late_and_not_after() -> None:
    """`media_under_pressure` (what makes uploads yield): a call's delay raised by late frames counts
    for as long as it stays raised; a call at its base delay does not."""
    fake = FakeTime()
    clocks: list[RealtimeClock] = []

    def make_clock() -> RealtimeClock:
        clocks.append(RealtimeClock(fake, playout_delay_ms=200, max_playout_delay_ms=2000))
        return clocks[-1]

    hub = CallMediaHub(make_clock, PyAVAudioCodecs())
    hub.media("calm")
    hub.media("late")
    for clock in clocks:
        clock.start()
    await fake.advance(1.0)
    assert not hub.media_under_pressure()
    clocks[1].note_late(500_000)  # a frame 480 ms too late: the delay goes to 0.5 s
    assert hub.media_under_pressure()
    await fake.advance(120.0)  # a minute's hold, then 20 ms/s back
    clocks[1].current_playout_delay_us  # noqa: B018 -- reading it applies the shrink, as a tick does
    assert clocks[1].last_playout_delay_us - 200_000 <= PRESSURE_EXTRA_US
    assert not hub.media_under_pressure()


async def test_realtime_on_the_real_clock_waits_and_end_wakes_it_without_a_stray_timer() -> None:
    """The real clock's wait is a bare future on a loop timer: it waits the tick's end plus the delay,
    `end()` wakes it at once, and the timer firing afterwards (on a cancelled future) is harmless."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    clock = RealtimeClock(playout_delay_ms=30)
    clock.start()
    started = loop.time()
    await clock.wait_tick(0, FixedProgress())
    assert loop.time() - started >= 0.045  # 20 ms tick + 30 ms delay, less the start-up above

    waiting = asyncio.create_task(clock.wait_tick(10, FixedProgress()))  # due ~0.25 s after start
    await asyncio.sleep(0.01)
    assert not waiting.done()
    clock.end()
    await asyncio.wait_for(waiting, 1.0)
    assert loop.time() - started < 0.2  # woken by end(), not by its timer
    await asyncio.sleep(0.3)  # the timer fires on the cancelled future
    assert errors == []
    loop.set_exception_handler(None)


async def test_due_through_is_the_last_tick_whose_deadline_passed() -> None:
    """How far behind a call is: tick k is due once (k + 1) ticks and the playout delay have passed."""
    fake = FakeTime()
    clock = RealtimeClock(fake, playout_delay_ms=100)
    assert clock.due_through(0) == 0  # not started: nothing says more
    clock.start()
    assert clock.due_through(0) == 0  # the next tick is never less than itself
    await fake.advance(0.100 + 0.020 * 10)  # ticks 0-9 have ended, plus the delay
    assert clock.due_through(0) == 9
    assert clock.due_through(4) == 9
    assert clock.due_through(12) == 12
    await fake.advance(0.019)
    assert clock.due_through(0) == 9  # tick 10 ends 1 ms from now
    await fake.advance(0.001)
    assert clock.due_through(0) == 10
    clock.end()
    assert clock.due_through(3) == ALL_DUE  # after the end every tick is due
    media_clock = MediaClock()
    assert media_clock.due_through(7) == 7  # media, not time, paces that clock
    media_clock.end()
    assert media_clock.due_through(7) == ALL_DUE


class SlowBatchDecoder:
    """A batch decoder whose every answer takes `latency_s` of (fake) time: a busy decode worker."""

    def __init__(self, fake: FakeTime, latency_s: float) -> None:
        self.fake = fake
        self.latency_s = latency_s
        self.requests: list[int] = []

    def handles(self, decoder: object) -> bool:
        return True

    async def decode(self, items: list[tuple[object, bytes]]) -> list[np.ndarray]:
        self.requests.append(len(items))
        await self.fake.sleep(self.latency_s)
        return [decoder.decode(packet) for decoder, packet in items]  # type: ignore[attr-defined]


class CodecsWithBatch(PyAVAudioCodecs):
    def __init__(self, batch: SlowBatchDecoder) -> None:
        super().__init__()
        self.batch_decoder = batch


async def test_a_call_behind_a_slow_batch_decoder_catches_up_in_one_request() -> None:
    """Each answer takes 5 ticks. With one request per tick the call would fall further behind every
    tick (its frames refused as early after 5 s); taking every due tick's frames in one request, it keeps
    up, and the recording has every frame, in place."""
    fake = FakeTime()
    batch = SlowBatchDecoder(fake, latency_s=0.100)
    clock = RealtimeClock(fake, playout_delay_ms=60)
    call = CallMedia("call", clock, CodecsWithBatch(batch))
    call.add_participant("p", "P", PCM16, "gw")
    sink = CollectingSink()
    call.attach(sink)
    task = asyncio.create_task(call.run())
    frames = encode_frames(tone(440.0, 8.0), PCM16)
    for i, frame in enumerate(frames):
        assert call.push_audio("p", i, 1_000_000 + i * 20_000, frame) is None, f"frame {i} refused"
        await fake.advance(0.020)
    # Behind by the playout delay (which the slow answers raised, as after a stall) and one answer, no more.
    assert len(frames) - len(sink.ticks) <= clock.current_playout_delay_us // 20_000 + 10
    assert len(batch.requests) <= len(frames) // 3  # several ticks per request
    requests = len(batch.requests)
    call.end()
    for _ in range(100):
        await fake.advance(0.1)
        if task.done():
            break
    await task
    assert len(batch.requests) - requests <= 6  # the buffered 2 s: 0.5 s per request after the end
    stats = call.stats("p")
    assert stats.frames_received == len(frames) and dict(stats.frames_rejected_by_reason) == {}
    got = sink.participant("p")
    expected = tone(440.0, 8.0)
    assert expected[0] == 0 and expected[1] != 0
    start = next(i for i, v in enumerate(got) if v != 0) - 1  # where the first frame was placed
    assert len(got) - start >= len(expected)
    assert np.abs(got[start:start + len(expected)].astype(int) - expected.astype(int)).max() <= 1
