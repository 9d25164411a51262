"""`SpoolRepair`: makes a chunk file that a crash left open valid, up to what reached the disk.

Implements core's `ChunkRepairPort` (`core.chunk_recovery` calls it at start-up):

- mixed wav: the header's sizes are set from the file's length, cut to whole samples;
- unmixed wav: the per-channel raw spool files are assembled (`UnmixedWavWriter.recover`);
- mp3: cut after the last complete MPEG frame (frame lengths read from each header),
  then remuxed by PyAV so the Xing/Info header tells the true frame count;
- mp4 (fragmented): the worker process outlives the server and finishes its file when
  the server dies (its command pipe closes), so it is waited for first (bounded), then
  the file is cut after its last complete `moof` + `mdat` fragment (the writer starts a
  fragment at least once a second, so at most a second is lost).
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
from collections.abc import Mapping
from pathlib import Path

import av

from callrec.core.model import SAMPLES_PER_VIDEO_FRAME
from callrec.core.ports import RepairedMedia
from callrec.logs import get_logger
from callrec.media.writers.base import WAV_HEADER_BYTES, mp3_frame_length
from callrec.media.writers.unmixed_wav import UnmixedWavWriter, sidecar_path

__all__ = ["SpoolRepair", "cut_mp3", "cut_mp4", "fix_wav", "mp3_frame_length"]

log = get_logger("repair")

def fix_wav(path: Path) -> RepairedMedia | None:
    """Set a PCM wav's RIFF and data sizes from its length (whole samples); None without a header."""
    size = path.stat().st_size
    if size < WAV_HEADER_BYTES:
        return None
    with open(path, "r+b") as handle:
        header = handle.read(WAV_HEADER_BYTES)
        if header[:4] != b"RIFF" or header[36:40] != b"data":
            return None
        channels = struct.unpack_from("<H", header, 22)[0] or 1
        data = size - WAV_HEADER_BYTES
        data -= data % (2 * channels)
        handle.seek(4)
        handle.write(struct.pack("<I", 36 + data))
        handle.seek(40)
        handle.write(struct.pack("<I", data))
        handle.truncate(WAV_HEADER_BYTES + data)
        handle.flush()
        os.fsync(handle.fileno())
    return RepairedMedia(data // (2 * channels), channels)


def cut_mp3(path: Path) -> RepairedMedia | None:
    """Cut after the last complete frame and remux (true Info header); None without a frame."""
    if not path.exists():
        return None
    data = path.read_bytes()
    offset = 0
    audio_frames = 0
    while True:
        length = mp3_frame_length(data[offset : offset + 4])
        if length is None or offset + length > len(data):
            break
        if not (offset == 0 and _is_info_frame(data[:length])):
            audio_frames += 1
        offset += length
    if audio_frames == 0:  # nothing, or only the Xing/Info header frame: killed before the first audio frame
        return None
    with open(path, "r+b") as handle:
        handle.truncate(offset)
    remuxed = path.with_name(path.name + ".remux")
    try:
        # The format named: FFmpeg's probe cannot tell a cut of fewer than 7 frames (0.25 s at 16 kHz) from
        # other formats (score 25, as h263), and such cuts are what a kill just after a chunk began leaves.
        with (av.open(str(path), format="mp3") as source,
              av.open(str(remuxed), "w", format="mp3", options={"id3v2_version": "0"}) as target):  # as written
            stream = source.streams.audio[0]
            out = target.add_stream_from_template(stream)
            for packet in source.demux(stream):
                if packet.dts is None:
                    continue
                packet.stream = out
                target.mux(packet)
        os.replace(remuxed, path)
    except (av.FFmpegError, OSError, ValueError) as exc:  # the cut file still plays; only its header is stale
        log.warning("mp3 remux after a crash failed; keeping the cut file", path=str(path), error=str(exc))
        with contextlib.suppress(OSError):
            remuxed.unlink()
    samples = 0
    try:
        with av.open(str(path), format="mp3") as container:
            for frame in container.decode(audio=0):
                samples += frame.samples
    except (av.FFmpegError, OSError, ValueError) as exc:  # undecodable: count the frames instead
        log.warning("mp3 cut after a crash cannot be decoded; counting its frames", path=str(path), error=str(exc))
        samples = audio_frames * _mp3_samples_per_frame(data[:4])
    return RepairedMedia(samples, 1) if samples else None


def _is_info_frame(frame: bytes) -> bool:
    """True for the Xing/Info header frame an encoder writes first (it carries no audio)."""
    return b"Xing" in frame[:64] or b"Info" in frame[:64]


def _mp3_samples_per_frame(header: bytes) -> int:
    """Samples of one Layer III frame: 1152 for MPEG-1, 576 for MPEG-2 and 2.5."""
    return 1152 if (header[1] >> 3) & 0x3 == 3 else 576


def _boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level ISO BMFF boxes (type, start, end) that are complete."""
    out: list[tuple[str, int, int]] = []
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            if offset + 16 > len(data):
                break
            size = struct.unpack_from(">Q", data, offset + 8)[0]
            header = 16
        elif size == 0:
            size = len(data) - offset
        if size < header or offset + size > len(data):
            break
        out.append((kind.decode("latin-1"), offset, offset + size))
        offset += size
    return out


def cut_mp4(path: Path) -> RepairedMedia | None:
    """Cut a fragmented mp4 after its last complete fragment; None when it has none."""
    if not path.exists():
        return None
    data = path.read_bytes()
    boxes = _boxes(data)
    if not any(kind == "moov" for kind, _, _ in boxes):
        return None
    end, fragment_open = 0, False
    for kind, _, box_end in boxes:
        if kind == "moof":
            fragment_open = True
            continue
        if kind == "mdat" and fragment_open:
            fragment_open = False
        elif fragment_open:
            break
        end = box_end
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    with av.open(str(path)) as container:
        frames = sum(1 for packet in container.demux(video=0) if packet.size)
    return RepairedMedia(frames * SAMPLES_PER_VIDEO_FRAME, 1) if frames else None


def _wait_for_worker(pid: int, timeout: float) -> None:
    """Let an orphaned video worker finish its file (it does when the server dies), then stop it."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if b"callrec.media.video_worker" not in cmdline.read_bytes():
                return  # gone (or a zombie, or the pid was reused by something else)
        except OSError:
            return
        time.sleep(0.05)
    log.warning("orphaned video worker did not finish in time; killing it", pid=pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


class SpoolRepair:
    """`ChunkRepairPort` for the formats the writers produce (see the module docstring)."""

    def __init__(self, worker_wait_s: float = 20.0) -> None:
        self.worker_wait_s = worker_wait_s

    def repair(self, media_path: Path, journal: Mapping[str, object]) -> RepairedMedia | None:
        """Fix `media_path` in place; None when it holds no media."""
        suffix = media_path.suffix.lower()
        if suffix == ".wav":
            if sidecar_path(media_path).exists():  # unmixed: assemble the channels that reached the disk
                UnmixedWavWriter.recover(media_path)
            return fix_wav(media_path) if media_path.exists() else None
        if suffix == ".mp3":
            return cut_mp3(media_path)
        if suffix == ".mp4":
            pid = journal.get("worker_pid")
            if isinstance(pid, int):
                _wait_for_worker(pid, self.worker_wait_s)
            return cut_mp4(media_path)
        raise ValueError(f"no repair for {media_path.name}")
