"""Rows: concurrent 1080p16 mp4 composites sustained at real time, memory per composite.

Through the server when it can record mp4: a fresh `callrec serve --clock realtime` per step,
`bench.loadgen` streams N calls of 9 participants (a tone each, plus 320x180 H.264 video at 15 fps
from `callrec_client.sim_video`, as issue 11's goal has it) in real time, each call recorded as an
audio_video mp4 (one video worker process per recording: 9 H.264 decoders, compositing, libx264,
AAC). N doubles from 1 until a step fails (`bench.server_load`; for video also: the recording must
be finished within a few seconds of the call's end, else its worker was behind real time), then is
bisected.

Memory per composite = (server RSS + the workers' PSS while streaming - idle server RSS) / N.

If the server cannot record mp4 (StartRecording refused, or even one recording fails), the rows
come from the in-process composite bench (`bench/video_composite.py`, the default preset's full
path) instead: composites per machine = cores x 60 / CPU s per media minute, and say so.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from bench.common import CORES, Row, Section, server, wait_quiet
from bench.server_load import StepResult, interference_note, ramp, run_step

PARTICIPANTS = 9
VIDEO = {"width": 320, "height": 180, "fps": 15.0, "codec": "h264"}  # issue 11: H.264 participants
RECORD = {"content_type": "audio_video", "channel_type": "mixed", "format": "mp4"}


def _in_process(seconds: float) -> tuple[float, float, str]:
    """(CPU s per media minute, x real time, preset) of the default preset's full path, in this process."""
    import tempfile
    from pathlib import Path

    from bench.video_composite import bench_preset, camera_frames
    from callrec.media.writers.mp4 import Mp4Settings

    clips = [camera_frames(i) for i in range(PARTICIPANTS)]
    settings = Mp4Settings()
    with tempfile.TemporaryDirectory(prefix="callrec-bench-video-") as tmp:
        row = bench_preset(clips, seconds, settings, Path(tmp))
    return row["cpu_per_min"], row["speed"], settings.preset


async def run(quick: bool, codec: str, budget_s: float, log: Callable[[str], None]) -> Section:
    seconds = 4.0 if quick else 18.0
    section = Section()

    async def step(n: int) -> StepResult:
        if not quick:
            await wait_quiet(log)
        with server("--clock", "realtime") as srv:
            return await run_step(srv, n, seconds, participants=PARTICIPANTS, codec=codec, record=RECORD,
                                  video=VIDEO)

    log(f"video: N calls x {PARTICIPANTS} participants (320x180@15 H.264 + {codec}, real time, "
        f"{seconds:.0f} s each) -> 1080p16 mp4 through the server")
    server_error = ""
    results: dict[int, StepResult] = {}
    best = 0
    try:
        best, results = await ramp(step, start=1, max_steps=5, budget_s=budget_s, step_cost_s=seconds + 20,
                                   levels=[1] if quick else None, log=log)
    except Exception as exc:  # mp4 through the server does not work here: say why, fall back
        server_error = f"{type(exc).__name__}: {exc}"[:300]
        log("  mp4 through the server failed:\n    " + traceback.format_exc().strip().replace("\n", "\n    "))
    one = results.get(1)
    if one is not None and not one.passed and (one.errors or "RECORDING_STATE_COMPLETED" not in one.states):
        server_error = "; ".join(one.reasons)[:300]

    if server_error:
        cpu_per_min, speed, preset = _in_process(3.0 if quick else 10.0)
        per_machine = CORES * 60 / cpu_per_min
        log(f"  in-process composite ({preset}): {cpu_per_min:.1f} CPU s per media minute, {speed:.1f}x real time")
        section.rows.append(Row(
            "3", "1080p16 mp4 composites at real time",
            f"~{per_machine:.1f} (in-process estimate)",
            f"NOT through the server ({server_error}); bench/video_composite.py full path, {preset}: "
            f"{cpu_per_min:.1f} CPU s per minute -> {CORES} cores x 60 / that, no room left for gRPC/audio",
        ))
        section.rows.append(Row("4b", "memory per composite", "n/a",
                                "not measured: mp4 did not record through the server"))
        return section

    failed = sorted(n for n, r in results.items() if not r.passed)
    ref = results.get(best) or results[min(results)]
    if best:
        value = f">= {best}" if not failed else f"{best}"
        detail = (f"{PARTICIPANTS}-person calls via the server, worker CPU "
                  f"{ref.stream.get('children_pct', 0) / best:.0f}% of a core per composite "
                  f"(+ server {ref.stream.get('server_pct', 0) / best:.0f}%)")
        if failed:
            detail += f"; {failed[0]} failed: {results[failed[0]].reasons[0]}"
        elif quick:
            detail += "; quick: not ramped to the limit"
    else:
        value = "0"
        detail = f"even 1 composite failed: {'; '.join(ref.reasons)[:200]}"
    detail += interference_note(results.values())
    estimate, bound = ref.cpu_bound_estimate("call")
    detail += f"; upper bound by CPU alone on an idle machine ~{estimate:.1f} ({bound}, linear)"
    section.rows.append(Row("3", "1080p16 mp4 composites at real time", value, detail, goal=">= 3"))
    per = (ref.rss_load_mb - ref.rss_base_mb) / ref.calls
    section.rows.append(Row("4b", "memory per composite", f"{per:.0f} MB",
                            f"server RSS + worker PSS, {ref.rss_base_mb:.0f} MB idle -> {ref.rss_load_mb:.0f} MB "
                            f"with {ref.calls} composite(s)", goal="<= 300 MB"))
    return section
