"""UploadAdmin (what UploadService does) in-process, on fake time: a real outbox on SQLite, the
recording registry on in-memory fakes. Listing validates its inputs; a retry re-queues a recording's
failed uploads, refuses what cannot be retried with a message saying why, and a FAILED recording
whose files all end up stored gets its chunks and one RecordingFileStatusUpdated (still FAILED)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from callrec.core.call_registry import CallRegistry
from callrec.core.errors import FailedPrecondition, InvalidArgument, NotFound
from callrec.core.limits import Limits
from callrec.core.model import RecordingError, RecordingState
from callrec.core.ports import StoredChunk
from callrec.core.recording_registry import NoMedia
from callrec.core.recording_state import Recording
from callrec.core.upload_admin import UploadAdmin, UploadState
from callrec.state.db import Database
from callrec.storage.base import PermissionDenied
from callrec.storage.outbox import Outbox
from callrec.testing import EPOCH, FakeTime
from tests.unit.test_control_plane import WAV, MemoryIndex, Targets, registry_with
from tests.unit.test_outbox import FakeStore, running, spool, tick

ERROR = "upload to storage target 'local' failed: 403 Forbidden"


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


class Setup:
    def __init__(self, tmp_path: Path, fake: FakeTime) -> None:
        self.tmp_path = tmp_path
        self.fake = fake
        self.store = FakeStore(fake, failures=1_000, error=PermissionDenied("403 Forbidden"))
        self.outbox = Outbox(Database(tmp_path / "state.sqlite3"), lambda _t: self.store,  # type: ignore[arg-type,return-value]
                             clock=fake.monotonic, sleep=fake.sleep, deadline_s=3600.0)
        calls = CallRegistry(10, Limits(max_participants_per_call=5), time=fake)
        self.registry, self.events = registry_with(NoMedia(), calls, fake)
        self.index = MemoryIndex()
        self.admin = UploadAdmin(self.outbox, self.registry, Targets(), self.index)

    async def failed_recording(self, recording_id: str = "rec1", chunks: int = 2) -> list[Path]:
        """A recording FAILED because its uploads were refused: chunks indexed, files queued."""
        rec = Recording(recording_id, "call-1", "call-1", "conn-1", WAV, RecordingState.FAILED, EPOCH,
                        session_end_reason="CallEnded", error=RecordingError(14, ERROR))
        await self.registry.repo.save(rec)
        files = []
        for i in range(chunks):
            await self.index.add(StoredChunk(f"doc-{i}", recording_id, i, "SessionEnded", "local", f"{i}.wav",
                                       f"{i}-metadata.json", "audio/wav", f"mem://local/{i}.wav",
                                       f"mem://local/{i}-metadata.json", f"mem://local/{i}-", samples=16_000 * (i + 1),
                                       participants='[{"participant_id": "alice", "display_name": "Alice", '
                                                    '"channel": -1}]'))
            for name in (f"{i}.wav", f"{i}-metadata.json"):
                path = spool(self.tmp_path, f"{recording_id}/{name}")
                await self.outbox.enqueue(recording_id, "local", name, path, "audio/wav")
                files.append(path)
        return files


async def test_retry_stores_the_files_and_publishes_file_status_once(tmp_path, fake):
    s = Setup(tmp_path, fake)
    files = await s.failed_recording()
    async with running(s.outbox):
        await tick(fake)
        assert {u.state for u in await s.outbox.group("rec1")} == {"failed"}
        s.store.failures = 0  # the credential is fixed
        result = await s.admin.retry("rec1")
        assert [(u.key, u.state, u.attempts) for u in result.retried] == [
            ("0.wav", UploadState.PENDING, 0), ("0-metadata.json", UploadState.PENDING, 0),
            ("1.wav", UploadState.PENDING, 0), ("1-metadata.json", UploadState.PENDING, 0)]
        assert all(u.deadline_at is not None and u.next_attempt_at is not None for u in result.retried)
        assert result.missing == []
        await tick(fake)
        await asyncio.wait_for(s.admin.idle(), 1.0)
    rec = await s.registry.get("rec1")
    assert rec.state is RecordingState.FAILED and rec.error == RecordingError(14, ERROR), "terminal, error kept"
    assert [c.index for c in rec.chunks] == [0, 1]
    assert rec.duration.total_seconds() == 3.0 and [p.participant_id for p in rec.participants] == ["alice"]
    assert s.events.seen == [("files", "rec1", [0, 1])], "one RecordingFileStatusUpdated"
    assert not any(f.exists() for f in files)
    assert {u.state for u in await s.outbox.group("rec1")} == {"done"}


async def test_retry_refuses_what_it_cannot_do_with_a_reason(tmp_path, fake):
    s = Setup(tmp_path, fake)
    with pytest.raises(InvalidArgument, match="recording_id is required"):
        await s.admin.retry("")
    with pytest.raises(InvalidArgument, match="recording_id is too long: at most 256 characters"):
        await s.admin.retry("r" * 300)
    with pytest.raises(NotFound, match="no recording with id 'nope'"):
        await s.admin.retry("nope")
    files = await s.failed_recording(chunks=1)
    async with running(s.outbox):
        await tick(fake)
        for f in files:
            f.unlink()
        with pytest.raises(FailedPrecondition, match="cannot be retried: their files are no longer in the spool"):
            await s.admin.retry("rec1")
        failed, _ = await s.admin.list_uploads(UploadState.FAILED, "rec1", 0, "")
        assert len(failed) == 2 and all("is missing: this upload cannot be retried" in u.last_error for u in failed)
    await s.registry.repo.save(Recording("rec2", "call-2", "call-2", "c", WAV, RecordingState.COMPLETED, EPOCH))
    with pytest.raises(FailedPrecondition, match=r"recording rec2 has no failed uploads to retry \(0 pending, 0 "
                                                 r"stored\); `callrec uploads list --recording rec2` shows them"):
        await s.admin.retry("rec2")
    assert s.events.seen == []


async def test_listing_validates_every_input(tmp_path, fake):
    s = Setup(tmp_path, fake)
    await s.failed_recording()
    uploads, token = await s.admin.list_uploads(None, "", 3, "")
    assert [u.key for u in uploads] == ["1-metadata.json", "1.wav", "0-metadata.json"] and token
    assert uploads[0].spool_path.endswith("rec1/1-metadata.json") and uploads[0].target == "local"
    assert [u.key for u in (await s.admin.list_uploads(None, "", 3, token))[0]] == ["0.wav"]
    assert await s.admin.list_uploads(UploadState.STORED, "", 0, "") == ([], "")
    assert await s.admin.list_uploads(None, "other", 0, "") == ([], "")
    for page_size in (1001, 5000):
        with pytest.raises(InvalidArgument, match="page_size must be between 1 and 1000"):
            await s.admin.list_uploads(None, "", page_size, "")
    for token in ("garbage!", "x" * 600):
        with pytest.raises(InvalidArgument, match="page_token is not valid"):
            await s.admin.list_uploads(None, "", 0, token)
    with pytest.raises(InvalidArgument, match="recording_id is too long"):
        await s.admin.list_uploads(None, "r" * 257, 0, "")


async def test_a_restart_resumes_watching_a_retried_recording(tmp_path, fake):
    s = Setup(tmp_path, fake)
    await s.failed_recording(chunks=1)
    async with running(s.outbox):
        await tick(fake)
        await tick(fake, 10)
    s.store.failures = 0
    await s.admin.retry("rec1")  # re-queued, then the server stops before the worker ran
    await s.admin.close()
    restarted = UploadAdmin(s.outbox, s.registry, Targets(), s.index)
    assert await restarted.resume() == 1
    await s.registry.repo.save(Recording("rec2", "call-2", "call-2", "c", WAV, RecordingState.COMPLETED, EPOCH))
    other = UploadAdmin(s.outbox, s.registry, Targets(), s.index)
    assert await other.resume() == 1, "only rec1 has retried uploads"
    await other.close()
    async with running(s.outbox):
        await tick(fake)
        await asyncio.wait_for(restarted.idle(), 1.0)
    assert s.events.seen == [("files", "rec1", [0])]
    assert await restarted.resume() == 0, "nothing pending any more"
