"""`make bench` (`python -m bench`): SPEC §7's performance table, measured on this machine.

Rows and where each number comes from (details in each module's docstring):

* `audio_capacity` – a real server (`--clock realtime`) fed by gateway clients in a separate
  process (`bench.loadgen`); N 10-person calls recorded to mixed mp3, N ramped until frames are
  lost, rejected or late, the sender cannot keep real time, or the event loop lags. Also gives CPU
  seconds per participant-minute and memory per participant (from /proc of the server process).
* `video_capacity` – the same with 9-person calls recorded to 1080p16 mp4 through the server (one
  video worker process per recording), when the server can record mp4; else the in-process
  composite bench (`bench/video_composite.py`), labelled as such.
* `control` – control RPC latency against a live recording, and StopRecording ->
  RecordingFileStatusUpdated.
* `ffmpeg_compare` – callrec's in-process pipeline against `ffmpeg ... amix ... out.mp3` on the
  same WAV inputs, as a CPU ratio.
* `loadgen_capacity` – the load generator alone: 1000 participants from one `bench.loadgen` process
  into `bench.null_sink` (a MediaService that only counts frames), so the capacity rows are known
  to measure the server, not the client.

Everything listens on and talks to 127.0.0.1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "server", ROOT / "clients" / "python"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
