"""Crash recovery of open chunks, in-process: the spool is copied while a recording is being
written (what a `kill -9` leaves on disk), then finished by `recover_chunks` + `SpoolRepair`
and decoded. The tone changes pitch every second, so each second can be told apart."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from callrec.core.audio_recording import AudioRecording
from callrec.core.call_media import TICK_SAMPLES, MixTick
from callrec.core.chunk_recovery import forget_journal, recover_chunks
from callrec.core.chunker import FinishedChunk
from callrec.core.journal_files import JOURNAL_GLOB, journal_path, write_journal
from callrec.core.model import ChannelType, ChunkEndReason, ContentType, Format, PauseMode, RecordingOptions
from callrec.media.writers import writer_factory_for
from callrec.media.writers.repair import SpoolRepair, cut_mp3, cut_mp4, fix_wav, mp3_frame_length
from callrec.state.db import Database
from callrec.testing import EPOCH, decode_file, dominant_frequencies, tone

RATE = 16_000


def pitch(second: int) -> float:
    return 400.0 + 100.0 * (second % 12)


def stepped_tone(seconds: float) -> np.ndarray:
    return np.concatenate([tone(pitch(s), 1.0, RATE) for s in range(int(np.ceil(seconds)))])[: round(seconds * RATE)]


def tick(index: int, pcm: np.ndarray, speaking: bool = True) -> MixTick:
    block = pcm[index * TICK_SAMPLES : (index + 1) * TICK_SAMPLES]
    return MixTick(index=index, start_us=index * 20_000, time=EPOCH + timedelta(milliseconds=20 * index),
                   mixed=block, participants={"a": block}, speaking={"a": speaking},
                   names={"a": "Alice"})


async def snapshot_mid_recording(tmp: Path, options: RecordingOptions, seconds: float, **kw: object
                                 ) -> tuple[Path, list[FinishedChunk], AudioRecording]:
    """Write `seconds` of the stepped tone, let the queued jobs run, copy the spool: the crash image."""
    pcm = stepped_tone(seconds + 1)
    done: list[FinishedChunk] = []
    rec = AudioRecording("rec-1", "call-1", options, tmp / "live", "res-1", writer_factory_for(options),
                         done.append, batch_ms=100, **kw)  # type: ignore[arg-type]  # test-only keywords
    for k in range(round(seconds * 50)):
        rec.on_tick(tick(k, pcm))
        if k % 5 == 0:
            await asyncio.sleep(0)
    for _ in range(500):  # the writer jobs in flight reach the disk (a crash would lose only these)
        if rec.pending_jobs == 0:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    image = tmp / "image"
    shutil.copytree(tmp / "live", image)
    return image, done, rec


def seconds_heard(audio: np.ndarray) -> list[float]:
    """The pitch of each whole second of audio."""
    return [dominant_frequencies(audio[s * RATE + 800 : (s + 1) * RATE - 800])[0] for s in range(len(audio) // RATE)]


@pytest.mark.parametrize("fmt,channel_type", [(Format.WAV, ChannelType.MIXED), (Format.MP3, ChannelType.MIXED),
                                              (Format.WAV, ChannelType.UNMIXED)])
async def test_an_open_chunk_is_finished_from_its_spool_losing_under_a_second(
        tmp_path: Path, fmt: Format, channel_type: ChannelType) -> None:
    options = RecordingOptions(content_type=ContentType.AUDIO, channel_type=channel_type, format=fmt)
    image, done, rec = await snapshot_mid_recording(tmp_path, options, 4.5)
    await rec.finish()  # the live one ends normally; the image is what a crash leaves
    assert done[0].end_reason is ChunkEndReason.SESSION_ENDED
    assert len(list(image.glob(JOURNAL_GLOB))) == 1  # the crash image: one open chunk, its newest journal only
    (chunk,) = recover_chunks(image, set(), SpoolRepair())
    assert chunk.end_reason is ChunkEndReason.SERVER_RESTARTED and chunk.index == 0
    audio = decode_file(chunk.media_path).channel(0)
    assert 3.5 * RATE <= len(audio) <= 4.5 * RATE + 1105, len(audio) / RATE  # at most a second lost
    assert seconds_heard(audio)[:3] == [pitch(0), pitch(1), pitch(2)]
    metadata = json.loads(chunk.metadata_path.read_text())
    assert metadata["chunkDuration"] == pytest.approx(chunk.samples / 16, abs=1)
    assert metadata["chunkDocumentId"] == chunk.document_id
    assert [p["participantId"] for p in metadata["participants"]] == ["a"]
    assert metadata["recordingInfo"]["audioConfiguration"]["channels"] == 1


async def test_recovery_continues_chunk_indexes_and_skips_indexed_chunks(tmp_path: Path) -> None:
    options = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV,
                               chunk_max_duration=timedelta(seconds=1))
    image, done, rec = await snapshot_mid_recording(tmp_path, options, 3.5)
    assert [c.index for c in done] == [0, 1, 2]
    await rec.finish()
    assert not list((tmp_path / "live").glob(JOURNAL_GLOB))  # announced: every journal removed
    (chunk,) = recover_chunks(image, {0, 1, 2}, SpoolRepair())
    assert chunk.index == 3
    assert seconds_heard(decode_file(chunk.media_path).channel(0)) in ([], [pitch(3)])


async def recovered_with_an_open_pause(tmp: Path, mode: PauseMode, ticks: int) -> FinishedChunk:
    """A recording paused at 2 s, crashed (its spool copied) after `ticks` ticks, and recovered."""
    options = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV,
                               pause_mode=mode)
    pcm = stepped_tone(4)
    rec = AudioRecording("rec-1", "call-1", options, tmp / "live", "res-1", writer_factory_for(options),
                         lambda c: None, batch_ms=100)
    rec.pause(EPOCH + timedelta(seconds=2))
    for k in range(ticks):
        rec.on_tick(tick(k, pcm))
        if k % 5 == 0:
            await asyncio.sleep(0)
    while rec.pending_jobs:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    shutil.copytree(tmp / "live", tmp / "image")
    await rec.finish()
    (chunk,) = recover_chunks(tmp / "image", set(), SpoolRepair())
    return chunk


async def test_an_open_pause_ends_where_the_media_ended(tmp_path: Path) -> None:
    chunk = await recovered_with_an_open_pause(tmp_path, PauseMode.SILENCE, 150)
    (pause,) = json.loads(chunk.metadata_path.read_text())["pauseResumeIntervals"]
    assert pause["startTime"] == "2024-05-14T09:00:02.000000Z"
    assert 500 <= pause["duration"] <= 1000  # from 2 s to where the media ended (3 s, less the batch)


async def test_a_pause_that_skips_media_open_at_the_crash_is_in_the_recovered_metadata(tmp_path: Path) -> None:
    """SKIP mode: while paused nothing is written, so only the journal can say how long the pause has lasted:
    it is rewritten once a second while such a pause is open (and at once when it starts)."""
    chunk = await recovered_with_an_open_pause(tmp_path, PauseMode.SKIP, 175)
    assert chunk.samples == 2 * RATE  # the media before the pause, all of it
    (pause,) = json.loads(chunk.metadata_path.read_text())["pauseResumeIntervals"]
    assert pause["startTime"] == "2024-05-14T09:00:02.000000Z"
    assert pause["duration"] == 1020  # to the last journal (at 3.02 s): the crash came at 3.5 s


def test_a_steady_recording_rewrites_its_journal_only_when_something_changes() -> None:
    """Nothing in a journal moves with time but an open pause that skips media: a recording whose
    participants and pauses do not change writes its journal when its chunk opens and when someone is first
    heard, not once a second. While a pause that skips media is open, once a second."""
    import callrec.core.chunker as chunker_module

    written: list[tuple[str, int]] = []

    def counting(path: Path, document: dict[str, object], previous: Path | None) -> None:
        written.append((path.name, int(document["position"])))  # type: ignore[call-overload]
        write_journal(path, document, previous)

    options = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV,
                               pause_mode=PauseMode.SKIP)
    pcm = stepped_tone(16)

    async def record(tmp: Path) -> None:
        rec = AudioRecording("rec-1", "call-1", options, tmp, "res-1", writer_factory_for(options),
                             lambda c: None, batch_ms=100)
        rec.pause(EPOCH + timedelta(seconds=10))
        for k in range(750):  # 15 s: 10 s recorded, then 5 s of a pause that skips media
            rec.on_tick(tick(k, pcm))
            if k % 5 == 0:
                await asyncio.sleep(0)
        await rec.finish()

    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as tmp:
        patch.setattr(chunker_module, "write_journal", counting)
        asyncio.run(record(Path(tmp)))
    seconds = [position / RATE for _, position in written]
    assert seconds[:2] == [0.0, 0.02]  # the chunk opened; "a" first heard (on the first tick)
    assert seconds[2:] == [10.02, 11.02, 12.02, 13.02, 14.02], seconds  # the pause began; then once a second
    assert len({name for name, _ in written}) == len(written)  # each a file of its own


def test_fix_wav_and_cut_mp4_refuse_files_without_media(tmp_path: Path) -> None:
    empty = tmp_path / "x.wav"
    empty.write_bytes(b"RIFF")
    assert fix_wav(empty) is None
    junk = tmp_path / "x.mp4"
    junk.write_bytes(b"\0\0\0\x10ftypisom" + b"\0" * 8)
    assert cut_mp4(junk) is None


async def test_an_mp3_killed_before_its_first_audio_frame_has_no_media_and_a_short_one_keeps_its_frames(
        tmp_path: Path) -> None:
    """A kill right after a chunk began leaves only the encoder's Xing/Info header frame (seen in the 20-kill
    test): no media, not a crash of the recovery. A cut too short for ffmpeg to probe still counts its frames."""
    options = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.MP3)
    image, _, rec = await snapshot_mid_recording(tmp_path, options, 1.5)
    await rec.finish()
    (spooled,) = image.glob("*.mp3")
    data = spooled.read_bytes()
    first = mp3_frame_length(data[:4])
    assert first is not None and (b"Info" in data[:first] or b"Xing" in data[:first])
    header_only = tmp_path / "header-only.mp3"
    header_only.write_bytes(data[:first])
    assert cut_mp3(header_only) is None
    second = mp3_frame_length(data[first:first + 4])
    assert second is not None
    one_frame = tmp_path / "one-frame.mp3"
    one_frame.write_bytes(data[: first + second + 7])  # the header, one audio frame, part of the next
    repaired = cut_mp3(one_frame)
    assert repaired is not None and repaired.samples in (576, 1152), repaired
    assert one_frame.stat().st_size <= first + second


def test_the_state_database_commits_durably(tmp_path: Path) -> None:
    """SPEC §5: what was acknowledged (a StartRecording, a published event) survives a power cut."""
    db = Database(tmp_path / "state.db")
    assert db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journals_are_written_compact_and_metadata_indented(tmp_path: Path) -> None:
    """A journal (rewritten while its chunk is open) is one compact line written afresh, the one it
    replaces removed after; a chunk's metadata, which people read, is indented. Both read back as what was
    written, names outside ASCII included, and leave no `.part` behind."""
    from callrec.core.metadata import write_json_atomically

    document = {"participants": [{"participantId": "8:acs:1", "displayName": "Zoë Ångström"}], "chunkIndex": 3}
    media = tmp_path / "r-0.wav"
    first, second, metadata = journal_path(media, 1), journal_path(media, 2), tmp_path / "r-0-metadata.json"
    write_journal(first, {"chunkIndex": 3}, None)
    write_journal(second, document, first)
    write_json_atomically(metadata, document)
    journal_text, metadata_text = second.read_text(encoding="utf-8"), metadata.read_text(encoding="utf-8")
    assert journal_text == ('{"participants":[{"participantId":"8:acs:1","displayName":"Zoë Ångström"}],'
                            '"chunkIndex":3}\n')
    assert metadata_text.startswith('{\n  "participants": [\n    {\n      "participantId"')
    assert metadata_text.endswith("}\n")
    assert json.loads(journal_text) == json.loads(metadata_text) == document
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r-0-metadata.json", "r-0.journal-2.json"]


async def test_a_half_written_newest_journal_falls_back_to_the_one_before_and_old_names_still_recover(
        tmp_path: Path) -> None:
    """What a kill -9 in the middle of a journal's write leaves: the newest journal cut short beside the one
    before it (removed only after its successor was whole). Recovery uses the newest that reads whole, and
    removes them all once the chunk is indexed. A journal of the earlier naming (`.journal.json`, renamed
    over) recovers too."""
    options = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV)
    image, _, rec = await snapshot_mid_recording(tmp_path, options, 3.5)
    await rec.finish()
    (whole,) = list(image.glob(JOURNAL_GLOB))
    seq = int(whole.name.rsplit("-", 1)[1].removesuffix(".json"))
    torn = whole.with_name(whole.name.replace(f"-{seq}.json", f"-{seq + 1}.json"))
    text = whole.read_text(encoding="utf-8")
    torn.write_text(text[: len(text) // 2], encoding="utf-8")
    legacy_copy = tmp_path / "legacy"
    shutil.copytree(image, legacy_copy)

    (chunk,) = recover_chunks(image, set(), SpoolRepair())
    assert chunk.index == 0 and chunk.end_reason is ChunkEndReason.SERVER_RESTARTED
    assert seconds_heard(decode_file(chunk.media_path).channel(0))[:2] == [pitch(0), pitch(1)]
    assert sorted(p.name for p in image.glob(JOURNAL_GLOB)) == sorted([whole.name, torn.name])  # until indexed
    forget_journal(chunk)
    assert not list(image.glob(JOURNAL_GLOB))

    torn_copy = legacy_copy / torn.name
    torn_copy.unlink()
    (legacy_copy / whole.name).rename(legacy_copy / whole.name.replace(f".journal-{seq}.json", ".journal.json"))
    (old,) = recover_chunks(legacy_copy, set(), SpoolRepair())
    assert old.index == 0 and old.samples == chunk.samples
    forget_journal(old)
    assert not list(legacy_copy.glob(JOURNAL_GLOB))
