"""`python -m bench [--quick] [--only audio,video,control,ffmpeg,cluster,loadgen]`: SPEC §7's table.

Progress and per-step details go to stderr; the table (and its header: machine, load, versions)
to stdout. `--quick` runs a few seconds per row (a smoke run, under 90 s; the capacity rows are
then lower bounds, not ramped to failure). `--only` takes group names or row numbers 1-9:
1, 2, 4 -> audio (2b: the loop's CPU per Opus packet with and without the decode worker); 3, 4 -> video;
5, 6 -> control; 7 -> ffmpeg (7: the audio mix and mp3 encode,
7b: the 9-person 1080p16 composite); 8 -> cluster (SPEC §8: the audio ramp through HAProxy in front
of one node, then one node per core); 9 -> loadgen (the load generator alone, 1000 participants
against a sink that only counts: it must not be what limits the capacity rows).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import traceback

import bench  # noqa: F401  (sys.path)
from bench.common import CORES, Row, Section

GROUPS = ("audio", "video", "control", "ffmpeg", "cluster", "loadgen")
GROUP_KEYS = {"audio": "1", "video": "3", "control": "5", "ffmpeg": "7", "cluster": "8", "loadgen": "9"}
ROW_GROUPS = {"1": ["audio"], "2": ["audio"], "3": ["video"], "4": ["audio", "video"], "5": ["control"],
              "6": ["control"], "7": ["ffmpeg"], "8": ["cluster"], "9": ["loadgen"]}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(GROUPS)
    chosen: list[str] = []
    for item in (v.strip().lower() for v in value.split(",") if v.strip()):
        names = ROW_GROUPS.get(item) or ([item] if item in GROUPS else None)
        if names is None:
            raise SystemExit(f"--only: unknown row {item!r}; use {', '.join(GROUPS)} or 1-9")
        chosen += [n for n in names if n not in chosen]
    return [g for g in GROUPS if g in chosen]


def header(quick: bool, codec: str) -> list[str]:
    import av

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    from bench import machine_speed

    try:
        speed = machine_speed.describe(machine_speed.libopus_us_per_packet(), CORES)
    except (RuntimeError, OSError) as exc:  # no libopus: the audio rows will say so too
        speed = f"machine speed: not measured ({exc})"
    return [
        f"callrec bench ({'quick smoke run' if quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"machine: {CORES} cores ({cpu}), load average at start {load}; Python {platform.python_version()}, "
        f"PyAV {av.__version__} / FFmpeg {av.library_versions.get('libavcodec', ('?',))}; gateway codec {codec}",
        speed,
    ]


def render(rows: list[Row], head: list[str], elapsed: float) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:  # plain text
        for line in head:
            print(line)
        width = max(len(r.metric) for r in rows)
        vwidth = max(len(r.value) for r in rows)
        for r in rows:
            print(f"{r.key:>2}  {r.metric:<{width}}  {r.value:>{vwidth}}  {r.goal:>12}  {r.detail}")
        print(f"({elapsed:.0f} s)")
        return
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    table = Table(title="callrec performance (SPEC §7)", title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("goal", justify="right", no_wrap=True)
    table.add_column("how / notes")
    for r in rows:
        table.add_row(r.key, Text(r.metric), Text(r.value, style=None if r.ok else "bold red"), Text(r.goal),
                      Text(r.detail))
    for line in head:
        console.print(Text(line))
    console.print(table)
    console.print(Text(f"total {elapsed:.0f} s. Capacity rows: one loopback client process shares the {CORES} cores "
                  "with the server; see stderr for every step."))


async def main_async(args: argparse.Namespace, groups: list[str]) -> list[Row]:
    rows: list[Row] = []

    def guard(name: str, section: Section | None, exc: BaseException | None) -> None:
        if exc is not None:
            log(f"{name}: FAILED\n" + "".join(traceback.format_exception(exc)))
            rows.append(Row(GROUP_KEYS[name], f"{name} rows", "error", f"{type(exc).__name__}: {exc}"[:300], ok=False))
        elif section is not None:
            rows.extend(section.rows)

    for group in groups:
        started = time.monotonic()
        section: Section | None = None
        error: BaseException | None = None
        try:
            if group == "audio":
                from bench import audio_capacity, decode_offload, grpc_transport

                section = await audio_capacity.run(args.quick, args.codec, 30 if args.quick else args.audio_budget,
                                                   log)
                offload_section = await asyncio.to_thread(decode_offload.run, args.quick, log)
                section.rows.extend(offload_section.rows)
                transport_section = await asyncio.to_thread(grpc_transport.run, args.quick, log)
                section.rows.extend(transport_section.rows)
            elif group == "video":
                from bench import video_capacity

                section = await video_capacity.run(args.quick, args.codec, 20 if args.quick else args.video_budget,
                                                   log)
            elif group == "control":
                from bench import control

                section = await control.run(args.quick, args.codec, log)
            elif group == "ffmpeg":
                from bench import ffmpeg_compare, ffmpeg_video

                section = await asyncio.to_thread(ffmpeg_compare.run, args.quick, log)
                video_section = await asyncio.to_thread(ffmpeg_video.run, args.quick, log)
                section.rows.extend(video_section.rows)
            elif group == "cluster":
                from bench import cluster_capacity

                section = await cluster_capacity.run(args.quick, args.codec,
                                                     60 if args.quick else args.cluster_budget, log)
            elif group == "loadgen":
                from bench import loadgen_capacity

                section = await loadgen_capacity.run(args.quick, args.codec, log)
        except Exception as exc:  # one broken group must not lose the others' rows
            error = exc
        guard(group, section, error)
        log(f"[{group}: {time.monotonic() - started:.0f} s]")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds per row (smoke run, < 90 s)")
    parser.add_argument("--only",
                        help="comma-separated: audio, video, control, ffmpeg, cluster, loadgen, or row numbers 1-9")
    parser.add_argument("--codec", default="opus", choices=["opus", "pcm16le", "pcmu", "pcma"],
                        help="audio codec the load generator sends (default opus)")
    parser.add_argument("--audio-budget", type=float, default=330.0, help="seconds for the audio ramp (full run)")
    parser.add_argument("--video-budget", type=float, default=240.0, help="seconds for the video ramp (full run)")
    parser.add_argument("--cluster-budget", type=float, default=900.0,
                        help="seconds for the cluster ramps, one node then two (full run)")
    args = parser.parse_args()
    groups = parse_only(args.only)
    head = header(args.quick, args.codec)
    started = time.monotonic()
    for line in head:
        log(line)
    rows = sorted(asyncio.run(main_async(args, groups)), key=lambda r: r.key)
    render(rows, head, time.monotonic() - started)
    if any(r.value == "error" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
