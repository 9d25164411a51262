"""Opus decoding in worker processes (`--decode-workers`): the same PCM as on the loop, and nothing
lost when a worker dies or hangs.

Real worker processes (`callrec.media.decode_worker`), real libopus; the server-level test records
a call through a real server and kills the worker with SIGKILL in the middle of it.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from callrec.core.model import AudioEncoding, AudioFormat, DecodeError
from callrec.media import decode_pool as pool_module
from callrec.media.decode import AudioDecoder
from callrec.media.decode_pool import DecodePool
from callrec.testing import dominant_frequencies, interleave, tone_frames
from tests.harness import child_processes
from tests.integration.audio_recording import Speaker, frames_of, record_call

OPUS = AudioFormat(AudioEncoding.OPUS, 48_000, 1)
TONES = {"alice": 300.0, "bob": 500.0, "carol": 700.0}


def packets(frequency: float, seconds: float = 1.0) -> list[bytes]:
    return tone_frames(frequency, seconds, OPUS)


async def decode_through(pool: DecodePool, decoders: list[AudioDecoder], streams: list[list[bytes]],
                         ticks: range) -> list[list[np.ndarray | DecodeError]]:
    """One request per tick, like CallMedia: every participant's packet of that tick."""
    out: list[list[np.ndarray | DecodeError]] = [[] for _ in decoders]
    for tick in ticks:
        results = await pool.decode([(d, s[tick]) for d, s in zip(decoders, streams, strict=True)])
        for row, result in enumerate(results):
            out[row].append(result)
    return out


async def test_the_pool_decodes_exactly_what_the_loop_would() -> None:
    streams = [packets(f) for f in TONES.values()]
    pool = DecodePool(1)
    try:
        remote = [AudioDecoder(OPUS) for _ in streams]
        assert all(pool.handles(d) for d in remote)
        assert not pool.handles(AudioDecoder(AudioFormat(AudioEncoding.PCMU, 8000, 1)))  # a table lookup: here
        got = await decode_through(pool, remote, streams, range(50))
        assert len(pool.pids) == 1 and pool.inline_fallbacks == 0
    finally:
        await pool.close()
    local = [AudioDecoder(OPUS) for _ in streams]
    for row, stream in enumerate(streams):
        expected = np.concatenate([local[row].decode(p) for p in stream])
        assert np.array_equal(np.concatenate(got[row]), expected)  # same libopus, same state: bit-exact
        assert abs(dominant_frequencies(expected[1600:], 16_000)[0] - list(TONES.values())[row]) < 5


async def test_calls_ticking_together_share_a_write_and_each_gets_its_own_pcm() -> None:
    """Several calls' requests in one turn of the loop go out in one write; the worker decodes all that one
    read brought and answers them in one write. Each call must still get its own participants' PCM, bit-exact."""
    calls = [[packets(f + 40 * c) for f in TONES.values()] for c in range(4)]
    pool = DecodePool(1)
    try:
        remote = [[AudioDecoder(OPUS) for _ in streams] for streams in calls]
        got: list[list[list[np.ndarray | DecodeError]]] = [[[] for _ in streams] for streams in calls]
        for tick in range(50):
            answers = await asyncio.gather(*(
                pool.decode([(d, s[tick]) for d, s in zip(decoders, streams, strict=True)])
                for decoders, streams in zip(remote, calls, strict=True)
            ))
            for c, results in enumerate(answers):
                for row, result in enumerate(results):
                    got[c][row].append(result)
        assert len(pool.pids) == 1 and pool.inline_fallbacks == 0
        worker = pool._slots[0]
        assert worker is not None
        for fd in (worker.commands, worker.results):  # a busy tick's answers fit: no stop every 64 KiB
            assert fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) == pool_module.READ_SIZE
    finally:
        await pool.close()
    for c, streams in enumerate(calls):
        for row, stream in enumerate(streams):
            local = AudioDecoder(OPUS)
            expected = np.concatenate([local.decode(p) for p in stream])
            assert np.array_equal(np.concatenate(got[c][row]), expected)


def test_the_worker_answers_requests_split_across_reads_and_packed_in_one() -> None:
    """The worker's side alone, over pipes: three requests and a `forget`, written so that one read holds
    two requests and the next the rest of a request cut in its header; answers come in order, bit-exact."""
    import pickle
    import threading

    from callrec.media.decode_pool import HEADER
    from callrec.media.decode_worker import serve

    stream = packets(440.0, 0.2)
    requests = [("decode", 1, 16_000, [(7, stream[0]), (8, stream[0])]),
                ("decode", 2, 16_000, [(7, stream[1]), (7, stream[2])]),
                ("forget", [8]),
                ("decode", 3, 16_000, [(7, stream[3]), (8, b"\xff\xff")])]
    wire = b"".join(HEADER.pack(len(body)) + body
                    for body in (pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL) for m in requests))
    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()
    worker = threading.Thread(target=serve, args=(cmd_r, res_w), daemon=True)
    worker.start()
    cut = len(wire) - 3  # inside the last request: its end comes with a later read
    os.write(cmd_w, wire[:cut])
    os.write(cmd_w, wire[cut:])
    os.close(cmd_w)
    worker.join(10)
    assert not worker.is_alive()
    os.close(res_w)
    answers_wire = b""
    while chunk := os.read(res_r, 1 << 16):
        answers_wire += chunk
    os.close(res_r)
    answers = []
    offset = 0
    while offset < len(answers_wire):
        (size,) = HEADER.unpack_from(answers_wire, offset)
        answers.append(pickle.loads(answers_wire[offset + HEADER.size:offset + HEADER.size + size]))
        offset += HEADER.size + size
    assert [a[0] for a in answers] == [1, 2, 3]  # `forget` has no answer
    local = {7: AudioDecoder(OPUS), 8: AudioDecoder(OPUS)}
    expected = [[local[7].decode(stream[0]), local[8].decode(stream[0])],
                [local[7].decode(stream[1]), local[7].decode(stream[2])],
                [local[7].decode(stream[3])]]
    for (_, lengths, _errors, data), want in zip(answers, expected, strict=True):
        pcm = np.frombuffer(data, dtype=np.float32)
        assert sum(lengths) == len(pcm) == sum(len(w) for w in want)
        assert np.array_equal(pcm, np.concatenate(want))
    assert answers[2][1] == [320, 0] and list(answers[2][2]) == [1]  # a fresh decoder 8 refused garbage
    assert answers[0][2] == {} and answers[1][2] == {}


async def test_a_refused_packet_is_that_packets_error_and_the_decoder_goes_on() -> None:
    stream = packets(500.0, 0.2)
    pool = DecodePool(1)
    try:
        decoder = AudioDecoder(OPUS)
        results = await pool.decode([(decoder, stream[0]), (decoder, bytes([0x7B, 0x00])), (decoder, stream[1])])
    finally:
        await pool.close()
    assert [type(r) for r in results] == [np.ndarray, DecodeError, np.ndarray]
    assert "Opus decoder rejected the packet" in str(results[1])
    assert len(results[0]) == len(results[2]) == 320


async def test_a_killed_worker_loses_nothing_and_is_replaced() -> None:
    streams = [packets(f) for f in TONES.values()]
    pool = DecodePool(1)
    try:
        decoders = [AudioDecoder(OPUS) for _ in streams]
        before = await decode_through(pool, decoders, streams, range(0, 20))
        (first_pid,) = pool.pids
        os.kill(first_pid, signal.SIGKILL)
        await asyncio.sleep(0.2)  # the loop sees the pipe close
        during = await decode_through(pool, decoders, streams, range(20, 21))
        after = await decode_through(pool, decoders, streams, range(21, 50))
        (second_pid,) = pool.pids
    finally:
        await pool.close()
    assert second_pid != first_pid and pool.restarts == 1
    for row in range(len(streams)):
        pcm = before[row] + during[row] + after[row]
        assert all(isinstance(p, np.ndarray) and len(p) == 320 for p in pcm)  # every packet decoded
        tone = np.concatenate(pcm[25:])  # on the new worker, decoder state started afresh
        assert abs(dominant_frequencies(tone, 16_000)[0] - list(TONES.values())[row]) < 5


async def test_a_hung_worker_is_killed_and_its_packets_decoded_here(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = packets(500.0, 0.2)
    pool = DecodePool(1)
    try:
        decoder = AudioDecoder(OPUS)
        await pool.decode([(decoder, stream[0])])  # the worker starts, with the normal timeout (a busy CI box)
        (pid,) = pool.pids
        monkeypatch.setattr(pool_module, "REQUEST_TIMEOUT_S", 0.3)
        os.kill(pid, signal.SIGSTOP)
        results = await pool.decode([(decoder, stream[1]), (decoder, stream[2])])
        assert [len(r) for r in results] == [320, 320]  # type: ignore[arg-type]
        assert pool.inline_fallbacks == 2 and pool.pids == []
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        await pool.close()


async def test_a_collected_decoder_is_forgotten_by_its_worker() -> None:
    pool = DecodePool(1)
    try:
        decoder = AudioDecoder(OPUS)
        await pool.decode([(decoder, packets(500.0, 0.1)[0])])
        assert len(pool._pinned) == 1
        del decoder
        gc.collect()
        assert pool._pinned == {}
        worker = pool._slots[0]
        assert worker is not None and len(worker.forgotten) == 1  # goes out with the next request
        other = AudioDecoder(OPUS)
        await pool.decode([(other, packets(300.0, 0.1)[0])])
        assert worker.forgotten == []
    finally:
        await pool.close()


async def test_a_recorded_opus_call_survives_its_decode_worker_being_killed(make_server, tmp_path: Path) -> None:
    """Through a real server: the worker is SIGKILLed mid-call; every second of every tone is recorded."""
    server = make_server("--clock", "media", "--decode-workers", "1")
    people = [Speaker(pid, f, audio_format=OPUS, seconds=4.0) for pid, f in TONES.items()]
    frames = interleave(frames_of(people))
    killed: list[int] = []

    def workers() -> list[int]:
        return child_processes(server.proc.pid, "callrec.media.decode_worker")

    async def kill_midway(frames_sent: int) -> None:
        if frames_sent == len(frames) // 2:
            for _ in range(100):  # the media clock ticks (and decodes) a little behind the frames sent
                if workers():
                    break
                await asyncio.sleep(0.02)
            (pid,) = workers()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    rec = await record_call(server.target, people, tmp_path, frames=frames, on_frame=kill_midway)
    assert len(killed) == 1
    audio = rec.decoded()
    assert abs(audio.duration_s - 4.0) <= 0.04
    mixed = audio.channel(0).astype(np.float64)
    for second in range(4):  # no second without all three tones: nothing was dropped at the kill
        window = mixed[second * 16_000 + 1600:(second + 1) * 16_000 - 1600]
        found = {round(f / 10) * 10 for f in dominant_frequencies(window, 16_000, count=3)}
        assert found == {300, 500, 700}, (second, found)
    level = [np.sqrt(np.mean(mixed[i:i + 1600] ** 2)) for i in range(1600, len(mixed) - 3200, 1600)]
    assert min(level) > 0.3 * max(level)  # no silent 100 ms anywhere
    stats = rec.recording.media_stats
    assert stats.frames_received == len(frames) and stats.gap_fill_ms == 0
    assert workers() and workers() != killed  # a new worker took over
