"""Audio recordings' writers in their own process (`--audio-writer-process`, `media.writer_pool`).

Real writer processes (`callrec.media.writer_worker`), real libmp3lame and wav files, decoded with PyAV:
what was queued is what the file holds; a failing writer, a killed process and a stalled one fail their
recordings with the reason and nothing else; a kill -9 of the server leaves what it had handed over on
disk; the server's own writer process exits with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from callrec.core.journal_files import JOURNAL_GLOB, journal_path
from callrec.core.serial_jobs import RecordingMediaError
from callrec.media.writer_pool import AudioWriterPool
from callrec.media.writers.mp3 import Mp3WriterFactory
from callrec.media.writers.unmixed_wav import UnmixedWavWriterFactory
from callrec.media.writers.wav import WavWriterFactory
from callrec.testing import dominant_frequencies, interleave, tone
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient
from callrec_client.gateway import GatewayConnection
from tests.harness import child_processes, unique
from tests.integration.audio_recording import Speaker, frames_of, record_call
from tests.integration.test_recording_service import wait_state

BATCH = 1600  # 0.1 s at 16 kHz: what an audio recording queues at a time


def decoded(path: Path) -> tuple[np.ndarray, int]:
    """All samples of the file's audio stream (channels, samples) as float, and the rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        rate = stream.rate
    planes = [f if f.ndim == 2 else f[None, :] for f in frames]
    data = np.concatenate(planes, axis=1).astype(np.float64)
    if data.dtype.kind == "f" and np.abs(data).max() <= 1.0:
        data *= 32768.0
    return data, rate


class Errors(list[BaseException]):
    """An `on_error` that keeps what it heard."""

    def __call__(self, exc: BaseException) -> None:
        self.append(exc)


async def write_in_batches(pool: AudioWriterPool, key: int, samples: np.ndarray) -> None:
    for start in range(0, len(samples), BATCH):
        pool.write(key, [samples[start:start + BATCH]])
        await asyncio.sleep(0)  # as the loop would: batches of several turns


async def test_mp3_and_wav_hold_exactly_what_was_queued(tmp_path: Path) -> None:
    pool = AudioWriterPool()
    errors = Errors()
    try:
        samples = tone(440.0, 3.0)  # int16, mono, 48 000 samples
        wav_key = pool.open(WavWriterFactory(), tmp_path / "a.wav", errors)
        mp3_key = pool.open(Mp3WriterFactory(), tmp_path / "a.mp3", errors)
        assert pool.pid is not None and pool.pid != os.getpid()
        await write_in_batches(pool, wav_key, samples)
        await write_in_batches(pool, mp3_key, samples)
        wav_path, mp3_path = await asyncio.gather(pool.close(wav_key), pool.close(mp3_key))
        # woken by every pipe write of the loop, it must not preempt the loop (`writer_worker.batch_scheduling`)
        assert os.sched_getscheduler(pool.pid) == os.SCHED_BATCH
    finally:
        await pool.close_all()
    assert errors == []
    assert (wav_path, mp3_path) == (tmp_path / "a.wav", tmp_path / "a.mp3")
    with wave.open(str(wav_path)) as wav:  # bit-exact: every sample queued, in order
        assert (wav.getframerate(), wav.getnchannels()) == (16_000, 1)
        written = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert np.array_equal(written, samples)
    mp3, rate = decoded(mp3_path)
    assert rate == 16_000
    assert abs(mp3.shape[1] / rate - 3.0) < 0.08  # LAME's padding, no more
    middle = mp3[0, rate:2 * rate]
    assert abs(dominant_frequencies(middle, rate)[0] - 440.0) < 5.0
    assert 0.2 < np.sqrt(np.mean(middle ** 2)) / 32768 / (0.3 / np.sqrt(2)) < 1.2


async def test_unmixed_float_blocks_become_int16_channels_there(tmp_path: Path) -> None:
    """An unmixed recording queues float32 blocks whose width grows; the process converts and assembles them."""
    pool = AudioWriterPool()
    errors = Errors()
    low = tone(300.0, 1.0).astype(np.float32) / 32768
    high = tone(900.0, 1.0).astype(np.float32) / 32768
    try:
        key = pool.open(UnmixedWavWriterFactory(), tmp_path / "u.wav", errors)
        pool.write(key, [low[:8000, None]])  # half a second of one channel, then a second channel joins
        pool.write(key, [np.stack([low[8000:], high[8000:]], axis=1)])
        path = await pool.close(key)
    finally:
        await pool.close_all()
    assert errors == []
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 2
        both = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert len(both) == 16_000
    assert abs(dominant_frequencies(both[:8000, 0])[0] - 300.0) < 5.0
    assert np.all(both[:8000, 1] == 0)  # the second channel starts silent
    assert abs(dominant_frequencies(both[8000:, 1])[0] - 900.0) < 5.0


async def test_a_writer_that_cannot_open_fails_its_recording_only(tmp_path: Path) -> None:
    pool = AudioWriterPool()
    bad, good = Errors(), Errors()
    try:
        missing = tmp_path / "no-such-dir" / "x.wav"
        bad_key = pool.open(WavWriterFactory(), missing, bad)
        good_key = pool.open(WavWriterFactory(), tmp_path / "ok.wav", good)
        pool.write(bad_key, [tone(440.0, 0.1)])
        pool.write(good_key, [tone(440.0, 0.1)])
        with pytest.raises(RecordingMediaError, match="no-such-dir"):
            await pool.close(bad_key)
        assert await pool.close(good_key) == tmp_path / "ok.wav"
    finally:
        await pool.close_all()
    assert len(bad) == 1 and "opening" in str(bad[0]) and str(missing) in str(bad[0])
    assert good == []


async def test_a_journal_is_written_there_behind_the_batches_before_it(tmp_path: Path) -> None:
    """A chunk's journal goes down the same pipe as its media (no thread of the server writes it), in order
    with the batches: each one is written afresh and then removes the one before, so the last one queued is
    what stays. A journal that cannot be written fails its writer's recording with the path, and that one
    only."""
    pool = AudioWriterPool()
    errors, other = Errors(), Errors()
    samples = tone(440.0, 1.0)
    try:
        key = pool.open(WavWriterFactory(), tmp_path / "a.wav", errors)
        previous = None
        for n, start in enumerate(range(0, len(samples), BATCH)):
            pool.write(key, [samples[start:start + BATCH]])
            journal = journal_path(tmp_path / "a.wav", n + 1)
            pool.journal(key, journal, {"samples": start + BATCH, "n": n}, previous)
            previous = journal
        path = await pool.close(key)
        bad = pool.open(WavWriterFactory(), tmp_path / "b.wav", other)
        pool.journal(bad, journal_path(tmp_path / "no-such-dir" / "b.wav", 1), {"samples": 0}, None)
        with pytest.raises(RecordingMediaError, match="no-such-dir"):
            await pool.close(bad)
    finally:
        await pool.close_all()
    assert errors == []
    assert [p.name for p in tmp_path.glob(JOURNAL_GLOB)] == ["a.journal-10.json"]  # the others removed
    assert json.loads((tmp_path / "a.journal-10.json").read_text()) == {"samples": len(samples), "n": 9}
    with wave.open(str(path)) as wav:
        assert wav.getnframes() == len(samples)
    assert len(other) == 1 and "journal" in str(other[0]) and "no-such-dir" in str(other[0])


async def test_a_killed_process_fails_the_recordings_it_held_and_the_next_one_gets_a_new_process(
        tmp_path: Path) -> None:
    pool = AudioWriterPool()
    errors = Errors()
    try:
        key = pool.open(WavWriterFactory(), tmp_path / "a.wav", errors)
        pool.write(key, [tone(440.0, 0.1)])
        await asyncio.sleep(0.2)
        first = pool.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.05)
        assert len(errors) == 1 and "killed by signal 9" in str(errors[0])
        with pytest.raises(RecordingMediaError, match="killed by signal 9"):
            await pool.close(key)
        pool.write(key, [tone(440.0, 0.1)])  # a failed writer's later batches go nowhere, quietly
        again = Errors()
        key2 = pool.open(WavWriterFactory(), tmp_path / "b.wav", again)
        pool.write(key2, [tone(440.0, 0.1)])
        assert await pool.close(key2) == tmp_path / "b.wav"
        assert pool.pid not in (None, first) and pool.restarts == 1 and again == []
    finally:
        await pool.close_all()


async def test_a_stalled_process_fails_the_writers_that_would_queue_past_the_bound(tmp_path: Path) -> None:
    pool = AudioWriterPool(max_queued_bytes=4 << 20)
    errors = Errors()
    key = pool.open(WavWriterFactory(), tmp_path / "a.wav", errors)
    await asyncio.sleep(0.2)
    pid = pool.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a disk that stopped answering, as the process sees it
    try:
        batch = np.zeros(BATCH * 10, dtype=np.int16)  # 32 KB a write
        for _ in range(400):  # 12.8 MB: the pipe takes ~1 MiB, the rest queues on the loop's side
            pool.write(key, [batch])
            await asyncio.sleep(0)
            if errors:
                break
        assert len(errors) == 1 and "MiB of media behind" in str(errors[0])
    finally:
        os.kill(pid, signal.SIGKILL)  # 12 MB of silence need not be written
        os.kill(pid, signal.SIGCONT)
        await pool.close_all()


KILLED_SERVER = textwrap.dedent("""
    import asyncio, os, signal, sys
    import numpy as np
    from pathlib import Path
    from callrec.media.writer_pool import AudioWriterPool
    from callrec.media.writers.wav import WavWriterFactory

    async def main():
        pool = AudioWriterPool()
        key = pool.open(WavWriterFactory(), Path(sys.argv[1]), print)
        for n in range(50):  # 5 s of media, sample values counting up
            pool.write(key, [np.arange(n * 1600, (n + 1) * 1600, dtype=np.int64).astype(np.int16)])
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the turn's write goes into the pipe
        print(pool.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the server dies with everything handed over unwritten

    asyncio.run(main())
""")


def test_what_the_server_handed_over_survives_its_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "open-chunk.wav"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILLED_SERVER, str(path)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout.split()[-1])
    for _ in range(200):  # the writer process drains the pipe, then exits on its own
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    else:
        pytest.fail("the writer process outlived its server")
    raw = path.read_bytes()[44:]  # the header is the crash's to repair (start-up recovery); the data is all there
    samples = np.frombuffer(raw, dtype="<i2")
    assert len(samples) == 50 * 1600
    assert np.array_equal(samples, np.arange(80_000, dtype=np.int64).astype(np.int16))


WRITER = "callrec.media.writer_worker"
TONES = {"alice": 300.0, "bob": 500.0, "carol": 700.0}


async def test_a_server_writes_mp3_through_its_writer_process_which_ends_with_it(make_server, tmp_path: Path) -> None:
    server = make_server("--clock", "media")
    people = [Speaker(pid, f, seconds=3.0) for pid, f in TONES.items()]
    frames = interleave(frames_of(people))
    seen: list[list[int]] = []

    async def look_midway(sent: int) -> None:
        if sent == len(frames) // 2:
            for _ in range(100):  # the media clock mixes (and writes) a little behind the frames sent
                if child_processes(server.proc.pid, WRITER):
                    break
                await asyncio.sleep(0.02)
            seen.append(child_processes(server.proc.pid, WRITER))

    rec = await record_call(server.target, people, tmp_path, frames=frames, on_frame=look_midway, format="mp3")
    assert len(seen) == 1 and len(seen[0]) == 1  # one writer process, a child of the server
    audio = rec.decoded()
    assert abs(audio.duration_s - 3.0) <= 0.08
    mixed = audio.channel(0).astype(np.float64)
    for second in range(3):
        window = mixed[second * 16_000 + 1600:(second + 1) * 16_000 - 1600]
        assert {round(f / 10) * 10 for f in dominant_frequencies(window, 16_000, count=3)} == {300, 500, 700}
    server.stop()
    assert not child_processes(server.proc.pid, WRITER)
    with pytest.raises(ProcessLookupError):
        os.kill(seen[0][0], 0)


async def test_a_killed_writer_process_fails_the_recording_with_the_reason(make_server) -> None:
    server = make_server("--clock", "media")
    people = [Speaker(pid, f, seconds=3.0) for pid, f in TONES.items()]
    frames = interleave(frames_of(people))
    call_id = unique("writer-killed")
    async with AsyncCallrecClient(server.target) as client, GatewayConnection(server.target, call_id) as gw:
        for s in people:
            await gw.join(s.participant_id, s.participant_id.title(), audio="pcm16le", sample_rate=16_000, channels=1)
        rec = await client.start_recording(call_id, content_type="audio", format="mp3")
        for sent, frame in enumerate(frames, 1):
            await gw.audio(frame.participant_id, frame.sequence, frame.timestamp_us, frame.data)
            if sent == len(frames) // 2:
                for _ in range(100):
                    if pids := child_processes(server.proc.pid, WRITER):
                        break
                    await asyncio.sleep(0.02)
                os.kill(pids[0], signal.SIGKILL)
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_FAILED, timeout=60)
    assert "audio writer process exited (killed by signal 9)" in done.error.message, done.error
