"""Rows: audio participants sustained at real time, CPU s per participant-minute, memory per participant.

A fresh `callrec serve --clock realtime` per step; `bench.loadgen` (its own process) opens N
calls of 10 participants, each sending a distinct tone as 20 ms frames (Opus by default, as a
WebRTC gateway would) in real time, and every call is recorded as mixed mp3. N doubles until a
step fails (see `bench.server_load` for what fails a step), then is bisected.

* participants sustained = 10 x the largest passing N;
* CPU s per participant-minute = the CPU of the server process (all threads, /proc) and of its
  decode workers from the moment streaming starts until every recording is COMPLETED (so the mp3
  flush and local store are in), divided by participants x media minutes, at that N;
* memory per participant = (server RSS + its decode workers' PSS during the second half of
  streaming - that of the idle server) / participants, at that N;
* 1d: the control RPC latency (GetRecordingState, probed every 250 ms) during that step, and beside it the
  same probe of `bench.null_sink` (a grpc.aio server without callrec code) right after each: the floor;
* 1b, 1c: the same ramp for PCMU in with unmixed wav out (10-person calls), and for 1:1 calls
  (Opus, mixed mp3): one gRPC stream carries 2 participants there, not 10.
* 1e: row 1c's 1:1 calls with the gateway sending 3 ticks (60 ms) of frames per `media_batch`
  instead of one: the transport's price per message (row 2c) paid a third as often.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.common import Row, Section, percentile, server, wait_quiet
from bench.loadgen_capacity import NullSinkProcess
from bench.server_load import PROBE_INTERVAL_S, StepResult, interference_note, ramp, run_step

PARTICIPANTS = 10
#: Row 1's first step (calls of 10).
START_CALLS = 10

#: Above any step the ramps reach (row 1c's 1:1 calls: 400 calls and recordings for 800 participants), so a
#: step is decided by the machine, not by the default limits of recordings, calls and streams.
RAMP_LIMITS = {"max_recordings": 4000, "max_calls": 4000, "max_streams": 8000}


async def run(quick: bool, codec: str, budget_s: float, log: Callable[[str], None]) -> Section:
    seconds = 4.0 if quick else 18.0

    floor = await NullSinkProcess.start()  # row 1d's floor: a grpc.aio server without callrec code
    try:
        return await _run(quick, codec, budget_s, seconds, floor.target, log)
    finally:
        await floor.stop()


async def _run(quick: bool, codec: str, budget_s: float, seconds: float, floor_target: str,
               log: Callable[[str], None]) -> Section:
    async def step(n: int) -> StepResult:
        if not quick:
            await wait_quiet(log)
        with server("--clock", "realtime", limits=RAMP_LIMITS) as srv:
            return await run_step(srv, n, seconds, participants=PARTICIPANTS, codec=codec,
                                  floor_target=floor_target)

    log(f"audio: N calls x {PARTICIPANTS} participants ({codec}, real time, {seconds:.0f} s each) -> mixed mp3")
    # From 10 calls: 10, 20, 40, 80, then bisection, within the budget. From 2, doubling alone took all seven
    # steps to reach 128 calls on a machine that holds 64 (the run of 2026-12-02 12:00: 640, not bisected).
    best, results = await ramp(step, start=START_CALLS, max_steps=7, budget_s=budget_s, step_cost_s=seconds + 15,
                               levels=[1, 3] if quick else None, log=log)
    section = Section()
    failed = sorted(n for n, r in results.items() if not r.passed)
    ref = results.get(best) or results[min(results)]
    if best:
        value = f"{best * PARTICIPANTS}"
        if not failed:
            value = f">= {value}"
        detail = f"{best} x {PARTICIPANTS}-person calls, {codec} in, zero frames lost/late"
        if failed:
            first = results[failed[0]]
            detail += f"; {failed[0] * PARTICIPANTS} failed: {first.reasons[0]}"
        else:
            detail += "; no step failed (quick: not ramped to the limit)" if quick else "; no step failed"
    else:
        value = "< 10"
        detail = f"even 1 call failed: {'; '.join(ref.reasons)[:200]}"
    detail += interference_note(results.values())
    estimate, bound = ref.cpu_bound_estimate("participant")
    detail += (f"; upper bound by CPU alone on an idle machine ~{estimate:.0f} ({bound}; linear from "
               f"{ref.stream.get('main_thread_pct', 0):.0f}% loop thread, {ref.client_cpu_pct:.0f}% client "
               f"at {ref.total_participants})")
    section.rows.append(Row("1", "audio participants at real time (mixed mp3, 10-person calls)", value, detail,
                            goal=">= 800"))

    cpu_detail = (f"CPU of the server and its decode workers / participant-minutes, {ref.calls} call(s) x "
                  f"{ref.media_s:.0f} s, server {ref.stream.get('server_pct', 0):.0f}% and workers "
                  f"{ref.stream.get('children_pct', 0):.0f}% of a core while streaming")
    smallest = results[min(results)]
    if smallest is not ref:
        cpu_detail += f"; {smallest.calls} call(s): {smallest.cpu_per_participant_minute:.3f}"
    section.rows.append(Row("2", "CPU s per participant-minute (mixed mp3)", f"{ref.cpu_per_participant_minute:.3f}",
                            cpu_detail))
    per_participant = (ref.rss_load_mb - ref.rss_base_mb) / ref.total_participants
    section.rows.append(Row("4a", "memory per audio participant", f"{per_participant:.2f} MB",
                            f"server RSS + decode workers' PSS {ref.rss_base_mb:.0f} MB idle -> "
                            f"{ref.rss_load_mb:.0f} MB with {ref.total_participants} participants", goal="<= 0.5 MB"))
    section.rows.append(control_row(ref))
    for variant in VARIANTS:
        section.rows.append(await variant_row(variant, quick, budget_s * VARIANT_BUDGET_SHARE, log))
    return section


def control_row(ref: StepResult) -> Row:
    """Row 1d: GetRecordingState latency, probed every 250 ms while the row-1 load streams (same step), and
    beside it the same probe of a server without callrec code at the same moments: the floor on this machine."""
    probes = ref.probe_ms
    value = f"{percentile(probes, 50):.1f} / {percentile(probes, 99):.1f} ms" if probes else "n/a"
    detail = (f"GetRecordingState every {PROBE_INTERVAL_S * 1000:.0f} ms ({len(probes)} probes) while "
              f"{ref.total_participants} participants stream; max {max(probes, default=float('nan')):.0f} ms")
    floor = ref.floor_probe_ms
    if floor:
        detail += (f"; the same client against a grpc.aio server without callrec code (bench.null_sink), right "
                   f"after each probe: p50 / p99 {percentile(floor, 50):.1f} / {percentile(floor, 99):.1f} ms")
    if ref.floor_errors:
        detail += f" ({len(ref.floor_errors)} of its probes failed: {ref.floor_errors[0][:80]})"
    return Row("1d", "control RPC p50 / p99 during the row-1 load", value, detail, goal="p99 <= 5 ms")


@dataclass(frozen=True)
class Variant:
    """Another shape of audio load the issue asks to report beside row 1."""

    key: str
    metric: str
    participants: int  # per call
    codec: str
    record: dict[str, str]
    start_calls: int
    ticks_per_batch: int = 1


#: Row 1b starts at 10 calls, as row 1 does, so its doubling reaches the goal's 800 itself (10, 20, 40, 80); from 8
#: it went 640, 1280, and an overloaded 1280 (115 s to finish its recordings) left no budget to bisect between.
VARIANTS = (
    Variant("1b", "audio participants at real time (PCMU in, unmixed wav, 10-person calls)", 10, "pcmu",
            {"content_type": "audio", "channel_type": "unmixed", "format": "wav"}, 10),
    Variant("1c", "audio participants at real time (1:1 calls, Opus in, mixed mp3)", 2, "opus",
            {"content_type": "audio", "channel_type": "mixed", "format": "mp3"}, 20),
    Variant("1e", "audio participants at real time (1:1 calls, Opus, mixed mp3, 3 ticks per message)", 2,
            "opus", {"content_type": "audio", "channel_type": "mixed", "format": "mp3"}, 20, ticks_per_batch=3),
)
#: The share of `--audio-budget` each variant ramp may use (row 1 has its own): seven steps of about 35 s, so a
#: ramp from 20 calls that first fails at 320 bisects twice (240, then 200 or 280), not once.
VARIANT_BUDGET_SHARE = 0.75


async def variant_row(variant: Variant, quick: bool, budget_s: float, log: Callable[[str], None]) -> Row:
    """Ramp one variant like row 1 (double until a step fails, then bisect) and report the largest passing load."""
    seconds = 4.0 if quick else 18.0

    async def step(n: int) -> StepResult:
        if not quick:
            await wait_quiet(log)
        with server("--clock", "realtime", limits=RAMP_LIMITS) as srv:
            return await run_step(srv, n, seconds, participants=variant.participants, codec=variant.codec,
                                  record=variant.record, ticks_per_batch=variant.ticks_per_batch)

    log(f"audio: N calls x {variant.participants} participants ({variant.codec}, real time, "
        f"{variant.ticks_per_batch} tick(s) per message) -> {variant.record['channel_type']} "
        f"{variant.record['format']}")
    best, results = await ramp(step, start=variant.start_calls, max_steps=7, budget_s=budget_s,
                               step_cost_s=seconds + 15,
                               levels=[max(1, 10 // variant.participants)] if quick else None, log=log)
    failed = sorted(n for n, r in results.items() if not r.passed)
    if not best:
        first = results[min(results)]
        return Row(variant.key, variant.metric, f"< {variant.participants}",
                   f"even {min(results)} call(s) failed: {'; '.join(first.reasons)[:200]}", goal=">= 800")
    ref = results[best]
    value = f"{best * variant.participants}" if failed else f">= {best * variant.participants}"
    detail = (f"{best} x {variant.participants}-person calls, zero frames lost/late; loop thread "
              f"{ref.stream.get('main_thread_pct', 0):.0f}%, {ref.cpu_per_participant_minute:.3f} CPU s per "
              f"participant-minute")
    if failed:
        detail += f"; {failed[0] * variant.participants} failed: {results[failed[0]].reasons[0]}"[:300]
    elif quick:
        detail += "; quick: not ramped to the limit"
    return Row(variant.key, variant.metric, value, detail, goal=">= 800")
