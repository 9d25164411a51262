"""Finishing the chunks a crash left open, from their journals and the media that reached the disk.

Why: a chunk can last hours; after a `kill -9` its spool file holds everything written
up to a second before the crash, and its journal (`core.chunker`) says what the chunk
is: index, document id, start time, participants, pauses, the metadata so far. On
start-up, each journal whose chunk is not in the chunk index is finished here: the
media file is repaired by the `ChunkRepairPort` (wav header, mp3 frame boundary,
unmixed channels assembled, fragmented mp4 cut after its last complete fragment), the
metadata gets the true duration of what survived (an open pause ends where the media
ended) and is written beside it. The chunk's end reason is `ServerRestarted`; the
caller indexes and uploads it, then removes the journal. A chunk's newest journal may be
half written (the process died writing it): the newest one that reads whole is used
(`core.journal_files`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from callrec.core.chunker import FinishedChunk
from callrec.core.journal_files import forget_journals, journals_by_chunk, newest_readable
from callrec.core.log import get_logger
from callrec.core.metadata import milliseconds, write_json_atomically
from callrec.core.model import OUTPUT_SAMPLE_RATE, ChunkEndReason, PauseInterval, RecordedParticipant
from callrec.core.ports import ChunkRepairPort

__all__ = ["forget_journal", "recover_chunks"]

log = get_logger(__name__)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _finish_from_journal(journal: dict[str, Any], spool_dir: Path, repair: ChunkRepairPort,
                         bit_rate: Callable[[int], int] | None) -> FinishedChunk | None:
    media = spool_dir / str(journal["media_file"])
    repaired = repair.repair(media, journal)
    if repaired is None or repaired.samples <= 0:
        return None
    document: dict[str, Any] = journal["document"]
    # Where the media ended on the call timeline: exact when pauses are kept as silence (the
    # file covers the call 1:1), else the last position the journal saw (at most a second old).
    end_position = int(journal["position"])
    if not journal["skip_pauses"]:
        end_position = int(journal["start_position"]) + repaired.samples
    intervals: list[PauseInterval] = []
    pauses = []
    for pause in journal["pauses"]:
        start_pos = int(pause["start_pos"])
        end_pos = pause["end_pos"] if pause["end_pos"] is not None else max(start_pos, end_position)
        ms = milliseconds(int(end_pos) - start_pos, OUTPUT_SAMPLE_RATE)
        pauses.append({"startTime": pause["start_time"], "duration": ms})
        intervals.append(PauseInterval(_parse_time(pause["start_time"]), timedelta(milliseconds=ms)))
    duration = milliseconds(repaired.samples, OUTPUT_SAMPLE_RATE)
    document["chunkDuration"] = duration
    document["pauseResumeIntervals"] = pauses
    audio = document["recordingInfo"]["audioConfiguration"]
    audio["channels"] = repaired.channels
    if bit_rate is not None:
        audio["bitRate"] = bit_rate(repaired.channels)
    participants = tuple(RecordedParticipant(**p) for p in journal["participants"])
    metadata = media.with_name(media.stem + "-metadata.json")
    write_json_atomically(metadata, document)
    return FinishedChunk(
        index=int(journal["index"]),
        end_reason=ChunkEndReason.SERVER_RESTARTED,
        media_path=media,
        metadata_path=metadata,
        document_id=str(document["chunkDocumentId"]),
        start_time=_parse_time(str(document["chunkStartTime"])),
        duration_ms=round(duration),
        participants=participants,
        content_type=str(journal["content_type"]),
        samples=repaired.samples,
        channels=repaired.channels,
        size_bytes=media.stat().st_size,
        pause_intervals=tuple(intervals),
    )


def recover_chunks(
    spool_dir: Path,
    indexed: Collection[int],
    repair: ChunkRepairPort,
    bit_rate: Callable[[int], int] | None = None,
) -> list[FinishedChunk]:
    """Finish every open chunk of one recording's spool that the index does not hold (blocking).

    Journals of indexed chunks (the crash came between indexing and cleaning up) and of
    chunks that hold no media are removed. Returns the finished chunks in index order;
    their journals stay until the caller has indexed them.
    """
    finished: list[FinishedChunk] = []
    for paths in journals_by_chunk(spool_dir).values():
        found = newest_readable(paths)
        if found is None:
            log.warning("unreadable chunk journals left as they are", paths=[str(p) for p in paths])
            continue
        journal, path = found
        media = spool_dir / str(journal["media_file"])
        if int(journal["index"]) in indexed:
            forget_journals(media)
            continue
        chunk = _finish_from_journal(journal, spool_dir, repair, bit_rate)
        if chunk is None:
            log.info("crashed chunk held no media", path=str(path))
            forget_journals(media)
            continue
        log.info("crashed chunk recovered", recording_id=str(journal["recording_id"]), index=chunk.index,
                 duration_ms=chunk.duration_ms)
        finished.append(chunk)
    return sorted(finished, key=lambda c: c.index)


def forget_journal(chunk: FinishedChunk) -> None:
    """The recovered chunk is indexed: its journals are no longer needed."""
    forget_journals(chunk.media_path)
