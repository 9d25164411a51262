"""Rows: audio participants sustained at real time, CPU s per participant-minute, memory per participant.

A fresh `callrec serve --clock realtime` per step; `bench.loadgen` (its own process) opens N
calls of 10 participants, each sending a distinct tone as 20 ms frames (Opus by default, as a
WebRTC gateway would) in real time, and every call is recorded as mixed mp3. N doubles until a
step fails (see `bench.server_load` for what fails a step), then is bisected.

* participants sustained = 10 x the largest passing N;
* CPU s per participant-minute = the server process's CPU (all threads, /proc) from the moment
  streaming starts until every recording is COMPLETED (so the mp3 flush and local store are in),
  divided by participants x media minutes, at that N;
* memory per participant = (server RSS during the second half of streaming - RSS of the idle
  server) / participants, at that N.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.common import Row, Section, server, wait_quiet
from bench.server_load import StepResult, ramp, run_step

PARTICIPANTS = 10


async def run(quick: bool, codec: str, budget_s: float, log: Callable[[str], None]) -> Section:
    seconds = 4.0 if quick else 18.0

    async def step(n: int) -> StepResult:
        if not quick:
            await wait_quiet(log)
        with server("--clock", "realtime") as srv:
            return await run_step(srv, n, seconds, participants=PARTICIPANTS, codec=codec)

    log(f"audio: N calls x {PARTICIPANTS} participants ({codec}, real time, {seconds:.0f} s each) -> mixed mp3")
    best, results = await ramp(step, start=2, max_steps=7, budget_s=budget_s, step_cost_s=seconds + 15,
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
    others = max(r.others_pct for r in results.values())
    if others > 20:
        detail += f" [other processes used up to {others:.0f}% of a core meanwhile]"
    estimate, bound = ref.cpu_bound_estimate("participant")
    detail += (f"; upper bound by CPU alone on an idle machine ~{estimate:.0f} ({bound}; linear from "
               f"{ref.stream.get('main_thread_pct', 0):.0f}% loop thread, {ref.client_cpu_pct:.0f}% client "
               f"at {ref.total_participants})")
    section.rows.append(Row("1", "audio participants at real time (mixed mp3, 10-person calls)", value, detail,
                            goal=">= 800"))

    cpu_detail = (f"server process CPU / participant-minutes, {ref.calls} call(s) x {ref.media_s:.0f} s, "
                  f"{ref.stream.get('server_pct', 0):.0f}% of a core while streaming")
    smallest = results[min(results)]
    if smallest is not ref:
        cpu_detail += f"; {smallest.calls} call(s): {smallest.cpu_per_participant_minute:.3f}"
    section.rows.append(Row("2", "CPU s per participant-minute (mixed mp3)", f"{ref.cpu_per_participant_minute:.3f}",
                            cpu_detail))
    per_participant = (ref.rss_load_mb - ref.rss_base_mb) / ref.total_participants
    section.rows.append(Row("4a", "memory per audio participant", f"{per_participant:.2f} MB",
                            f"server RSS {ref.rss_base_mb:.0f} MB idle -> {ref.rss_load_mb:.0f} MB "
                            f"with {ref.total_participants} participants", goal="<= 0.5 MB"))
    return section
