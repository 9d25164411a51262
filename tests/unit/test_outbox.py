"""The upload outbox on fake time: backoff schedule, spool kept until stored, permanent failure, restart.

A real SQLite database, an in-test store and `callrec.testing.FakeTime`: every wait is fake, so a
half-minute backoff schedule runs in milliseconds and is measured exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callrec.state.db import Database
from callrec.state.uploads import SqliteUploadRows, Upload
from callrec.storage.base import PermissionDenied, StorageError, StoredObject, Transient
from callrec.storage.outbox import DONE, FAILED, PENDING, PRESSURE_RELEASE_S, Outbox, UploadFailed
from callrec.testing import FakeTime

TARGET = "vault|local|file:///srv/vault"
"""`name|kind|url`, as the server's resolver spells a target; errors name it by `vault`."""


class FakeStore:
    """Implements what the outbox calls (`put_file`): fails `failures` times with `error`, then stores.

    Every attempt checks the spool file is still there (the outbox deletes it only once the store
    confirmed) and records the fake time it was made at. With `gate`, an attempt waits for it before
    confirming.
    """

    kind = "local"

    def __init__(self, time: FakeTime, failures: int = 0, error: StorageError | None = None) -> None:
        self.time = time
        self.failures = failures
        self.error = error or Transient("connection refused")
        self.gate: asyncio.Event | None = None
        self.attempts: list[tuple[str, float]] = []
        self.stored: dict[str, bytes] = {}

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        spooled = Path(path)
        assert spooled.exists(), f"spool file {spooled} is gone before the store confirmed"
        self.attempts.append((key, self.time.monotonic()))
        if self.gate is not None:
            await self.gate.wait()
        if len(self.attempts) <= self.failures:
            raise self.error
        data = spooled.read_bytes()
        self.stored[key] = data
        return StoredObject(
            key=key,
            size=len(data),
            checksum=f"sha256:{hashlib.sha256(data).hexdigest()}",
            location=f"file://localhost/srv/vault/{key}",
            content_type=content_type,
            verified_by="fake:sha256",
        )

    def times(self) -> list[float]:
        return [t for _, t in self.attempts]


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "state.sqlite3")


def make_outbox(db: Database, store: FakeStore, fake: FakeTime, **options: object) -> Outbox:
    return Outbox(db, lambda _target: store, clock=fake.monotonic, sleep=fake.sleep, **options)  # type: ignore[arg-type]


def spool(tmp_path: Path, name: str, content: bytes = b"RIFF....WAVE") -> Path:
    path = tmp_path / "spool" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@contextlib.asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[None]:
    """The outbox worker, cancelled on exit (as the server's shutdown does)."""
    task = asyncio.create_task(outbox.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def tick(fake: FakeTime, seconds: float = 0.0) -> None:
    """Move fake time forward, then let the worker settle (start its attempts and its next sleep).

    The settling matters: a sleep's deadline counts from when the sleeping task first runs, a few
    loop turns after the worker decided to sleep; time must not move on before that.
    """
    await fake.advance(seconds)
    for _ in range(20):
        await asyncio.sleep(0)


async def advance(fake: FakeTime, seconds: float, step: float = 0.5) -> None:
    """Move fake time forward in steps shorter than any backoff here, settling after each."""
    for _ in range(round(seconds / step)):
        await tick(fake, step)


async def wait_group(outbox: Outbox, group_id: str):
    # the group is settled by the time this is called: the timeout only turns a bug into a failure
    return await asyncio.wait_for(outbox.wait_group(group_id), 1.0)


@pytest.mark.parametrize("jitter", [1.0, 0.8, 1.2])
async def test_transient_failures_back_off_exponentially_up_to_the_cap(tmp_path, db, fake, jitter):
    store = FakeStore(fake, failures=6)
    outbox = make_outbox(db, store, fake, backoff_base_s=1.0, backoff_max_s=8.0, jitter=lambda: jitter)
    path = spool(tmp_path, "0.wav")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", path, "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert len(store.attempts) == 1
        await advance(fake, 40)
        (upload,) = await wait_group(outbox, "rec1")

    times = store.times()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([d * jitter for d in (1, 2, 4, 8, 8, 8)])  # 2**n s, capped at 8 s
    assert times[0] == pytest.approx(1000.0), "the first attempt is immediate"
    assert (upload.state, upload.attempts, upload.last_error) == (DONE, 7, "")
    assert store.stored == {"rec1/0.wav": b"RIFF....WAVE"}
    assert not path.exists(), "the spool copy goes once the store confirmed"


async def test_default_jitter_spreads_retries_within_20_percent(tmp_path, db, fake):
    store = FakeStore(fake, failures=4)
    outbox = Outbox(db, lambda _t: store, backoff_base_s=1.0, backoff_max_s=4.0, clock=fake.monotonic, sleep=fake.sleep)
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", spool(tmp_path, "0.wav"), "audio/wav")
    async with running(outbox):
        await tick(fake)
        await advance(fake, 20)
        (upload,) = await wait_group(outbox, "rec1")
    times = store.times()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 4 and upload.state == DONE
    for gap, nominal in zip(gaps, (1, 2, 4, 4), strict=True):
        assert 0.8 * nominal - 1e-6 <= gap <= 1.2 * nominal + 1e-6, (gaps, nominal)


async def test_backoff_waits_fake_time_only(tmp_path, db, fake):
    """Nothing is retried before its backoff passed on the (fake) clock, however the loop turns."""
    store = FakeStore(fake, failures=3)
    outbox = make_outbox(db, store, fake, backoff_base_s=2.0, backoff_max_s=30.0, jitter=lambda: 1.0)
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", spool(tmp_path, "0.wav"), "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert len(store.attempts) == 1, "no retry while fake time stands still"
        await advance(fake, 1.5)
        assert len(store.attempts) == 1
        await advance(fake, 0.5)  # 2 s after the first failure
        assert len(store.attempts) == 2
        (pending,) = await outbox.group("rec1")
        assert (pending.state, pending.attempts, pending.last_error) == (PENDING, 2, "connection refused")


async def test_spool_file_is_deleted_only_after_the_store_confirmed(tmp_path, db, fake):
    store = FakeStore(fake)
    store.gate = asyncio.Event()
    outbox = make_outbox(db, store, fake)
    path = spool(tmp_path, "0.wav")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", path, "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert len(store.attempts) == 1, "the upload is under way"
        await advance(fake, 10)
        assert path.exists() and (await outbox.group("rec1"))[0].state == PENDING, "not confirmed yet: kept"
        store.gate.set()
        (upload,) = await wait_group(outbox, "rec1")
    assert not path.exists()
    assert (upload.state, upload.location, upload.size) == (DONE, "file://localhost/srv/vault/rec1/0.wav", 12)
    assert upload.checksum == f"sha256:{hashlib.sha256(b'RIFF....WAVE').hexdigest()}"
    assert await outbox.counts() == {PENDING: 0, DONE: 1, FAILED: 0}


async def test_permanent_failure_fails_the_group_and_keeps_the_spool(tmp_path, db, fake):
    denied = PermissionDenied("403 Forbidden: SignatureDoesNotMatch")
    store = FakeStore(fake, failures=1_000, error=denied)
    outbox = make_outbox(db, store, fake)
    media, metadata = spool(tmp_path, "0.wav"), spool(tmp_path, "0-metadata.json", b"{}")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", media, "audio/wav")
    await outbox.enqueue("rec1", TARGET, "rec1/0-metadata.json", metadata, "application/json")
    async with running(outbox):
        await tick(fake)
        with pytest.raises(UploadFailed) as failed:
            await wait_group(outbox, "rec1")
        await advance(fake, 120)
    assert len(store.attempts) == 2, "no retries after a permanent failure"
    message = str(failed.value)
    assert "'vault'" in message, message  # the target, by name
    assert "403 Forbidden: SignatureDoesNotMatch" in message, message  # the cause
    assert str(media) in message, message  # where the kept file is
    uploads = await outbox.group("rec1")
    assert [(u.state, u.attempts, u.last_error) for u in uploads] == [(FAILED, 1, str(denied))] * 2
    assert media.exists() and metadata.exists(), "the spool keeps what could not be stored"
    assert await outbox.counts() == {PENDING: 0, DONE: 0, FAILED: 2}


async def test_pending_uploads_survive_a_restart_and_complete(tmp_path, fake):
    path = tmp_path / "state.sqlite3"
    files = [spool(tmp_path, "0.wav"), spool(tmp_path, "0-metadata.json", b"{}")]
    down = FakeStore(fake, failures=1_000)
    first_db = Database(path)
    first = make_outbox(first_db, down, fake, backoff_base_s=10.0, backoff_max_s=60.0, jitter=lambda: 1.0)
    await first.enqueue("rec1", TARGET, "rec1/0.wav", files[0], "audio/wav")
    await first.enqueue("rec1", TARGET, "rec1/0-metadata.json", files[1], "application/json")
    async with running(first):
        await tick(fake)
        await advance(fake, 10)
    assert [u.state for u in await first.group("rec1")] == [PENDING, PENDING]
    # the media was retried once the 10 s backoff passed; its metadata waits for it (never stored first)
    assert [u.attempts for u in await first.group("rec1")] == [2, 0]
    first_db.close()  # the process is gone; the database and the spool stay

    up = FakeStore(fake)
    second = make_outbox(Database(path), up, fake, backoff_base_s=10.0, backoff_max_s=60.0, jitter=lambda: 1.0)
    async with running(second):
        await tick(fake)  # due at once after a restart: no waiting out the old 20 s backoff
        uploads = await wait_group(second, "rec1")
    assert [(u.key, u.state) for u in uploads] == [("rec1/0.wav", DONE), ("rec1/0-metadata.json", DONE)]
    assert [u.attempts for u in uploads] == [3, 1]
    assert [key for key, _ in up.attempts] == ["rec1/0.wav", "rec1/0-metadata.json"], "each once, media first"
    assert up.stored == {"rec1/0.wav": b"RIFF....WAVE", "rec1/0-metadata.json": b"{}"}
    assert not any(f.exists() for f in files)


# ------------------------------------------------------------------ one target cannot hold the others hostage
GOOD = "good|local|file:///srv/good"
BLACK_HOLE = "hole|s3|http://127.0.0.1:9/never"


class BlackHoleStore:
    """A store whose `put_file` never returns (a connection that accepts and never answers), until
    `fixed`; it honours cancellation, as asyncio code does."""

    kind = "s3"

    def __init__(self, time: FakeTime, after: FakeStore | None = None) -> None:
        self.time = time
        self.attempts: list[tuple[str, float]] = []
        self.cancelled = 0
        self.after = after
        self.fixed = False

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        self.attempts.append((key, self.time.monotonic()))
        if self.fixed and self.after is not None:
            return await self.after.put_file(key, path, content_type)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")

    def times(self) -> list[float]:
        return [t for _, t in self.attempts]


def two_targets(db: Database, fake: FakeTime, good: object, hole: object, **options: object) -> Outbox:
    stores = {GOOD: good, BLACK_HOLE: hole}
    return Outbox(db, stores.__getitem__, clock=fake.monotonic, sleep=fake.sleep, jitter=lambda: 1.0,  # type: ignore[arg-type]
                  **options)  # type: ignore[arg-type]


async def test_a_black_holed_target_fills_only_its_own_slots(tmp_path, db, fake):
    good, hole = FakeStore(fake), BlackHoleStore(fake)
    outbox = two_targets(db, fake, good, hole, concurrency=2, attempt_timeout_s=300.0)
    for i in range(4):  # the dead target's files come first in the queue
        await outbox.enqueue("rec-hole", BLACK_HOLE, f"hole/{i}.wav", spool(tmp_path, f"hole-{i}.wav"), "audio/wav")
    good_files = [spool(tmp_path, f"good-{i}.wav") for i in range(4)]
    for i, path in enumerate(good_files):
        await outbox.enqueue("rec-good", GOOD, f"good/{i}.wav", path, "audio/wav")
    async with running(outbox):
        await tick(fake)
        uploads = await wait_group(outbox, "rec-good")  # no fake time passed: stored at once
        assert [u.state for u in uploads] == [DONE] * 4 and fake.monotonic() == 1000.0
        assert sorted(good.stored) == [f"good/{i}.wav" for i in range(4)]
        assert not any(p.exists() for p in good_files)
        assert len(hole.attempts) == 2, "the dead target has its 2 slots busy, no more"
        await advance(fake, 60)
        assert len(hole.attempts) == 2, "still hanging: no new attempt before the timeout"
        await outbox.enqueue("rec-good", GOOD, "good/late.wav", spool(tmp_path, "late.wav"), "audio/wav")
        await tick(fake)
        assert "good/late.wav" in good.stored, "a file queued later is not stuck behind the dead target"
    assert [u.state for u in await outbox.group("rec-hole")] == [PENDING] * 4


async def test_an_attempt_that_times_out_is_cancelled_and_retried(tmp_path, db, fake):
    good = FakeStore(fake)
    hole = BlackHoleStore(fake, after=good)
    outbox = two_targets(db, fake, good, hole, concurrency=1, attempt_timeout_s=10.0, backoff_base_s=2.0)
    path = spool(tmp_path, "0.wav")
    await outbox.enqueue("rec1", BLACK_HOLE, "rec1/0.wav", path, "audio/wav")
    async with running(outbox):
        await tick(fake)
        await advance(fake, 9.5)
        assert (len(hole.attempts), hole.cancelled) == (1, 0)
        await advance(fake, 1.0)  # 10 s (and a 12-byte file's allowance of 1 s per MiB): abandoned
        assert hole.cancelled == 1
        (upload,) = await outbox.group("rec1")
        assert (upload.state, upload.attempts) == (PENDING, 1)
        assert upload.last_error == "upload attempt timed out after 10 s"
        assert path.exists()
        hole.fixed = True  # e.g. the network path is back
        await advance(fake, 2)  # the backoff after the first failed attempt
        (upload,) = await wait_group(outbox, "rec1")
    assert hole.times() == pytest.approx([1000.0, 1012.0], abs=1e-3), "timed out at 1010, retried 2 s later"
    assert (upload.state, upload.attempts, upload.last_error) == (DONE, 2, "")
    assert not path.exists()


async def test_an_upload_not_stored_by_the_deadline_fails_with_the_reason(tmp_path, db, fake):
    store = FakeStore(fake, failures=1_000)  # connection refused, forever
    outbox = make_outbox(db, store, fake, backoff_base_s=1.0, backoff_max_s=8.0, jitter=lambda: 1.0, deadline_s=60.0)
    media, metadata = spool(tmp_path, "0.wav"), spool(tmp_path, "0-metadata.json", b"{}")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", media, "audio/wav")
    async with running(outbox):
        await tick(fake)
        waiting = asyncio.create_task(outbox.wait_group("rec1"))
        await advance(fake, 30)
        await outbox.enqueue("rec1", TARGET, "rec1/0-metadata.json", metadata, "application/json")  # queued at 1030
        await advance(fake, 29.5)
        assert not waiting.done() and {u.state for u in await outbox.group("rec1")} == {PENDING}
        await advance(fake, 1.0)  # 1060: the first file's deadline
        first, second = await outbox.group("rec1")
        assert (first.state, second.state) == (FAILED, PENDING), "each file has its own deadline"
        await advance(fake, 30)
        with pytest.raises(UploadFailed) as failed:
            await asyncio.wait_for(waiting, 1.0)
    first, second = await outbox.group("rec1")
    assert first.last_error == (
        "not stored within the upload deadline of 1 min (storage target 'vault|local|file:///srv/vault'); "
        "last error: connection refused"
    )
    assert second.state == FAILED and second.failed_at == pytest.approx(1090.0, abs=1.0)
    assert first.failed_at == pytest.approx(1060.0, abs=1.0)
    message = str(failed.value)
    assert "'vault'" in message and "upload deadline of 1 min" in message and str(media) in message, message
    assert "callrec uploads retry rec1" in message, message
    assert media.exists() and metadata.exists(), "the spool keeps the files"
    attempts = len(store.attempts)
    await tick(fake, 120)
    assert len(store.attempts) == attempts, "no attempts after the deadline"


async def test_a_black_holed_upload_fails_at_its_deadline_too(tmp_path, db, fake):
    hole = BlackHoleStore(fake)
    outbox = two_targets(db, fake, FakeStore(fake), hole, attempt_timeout_s=30.0, deadline_s=60.0)
    await outbox.enqueue("rec1", BLACK_HOLE, "rec1/0.wav", spool(tmp_path, "0.wav"), "audio/wav")
    async with running(outbox):
        await tick(fake)
        await advance(fake, 65)
        (upload,) = await outbox.group("rec1")
    assert hole.times() == pytest.approx([1000.0, 1031.0], abs=1e-3), "timed out at 1030, retried after 1 s"
    assert upload.state == FAILED and upload.attempts == 2
    assert upload.last_error == (
        "not stored within the upload deadline of 1 min (storage target 'hole|s3|http://127.0.0.1:9/never'); "
        "last error: upload attempt timed out after 30 s"
    )


async def test_retry_requeues_failed_uploads_which_are_then_stored(tmp_path, db, fake):
    store = FakeStore(fake, failures=2, error=PermissionDenied("403 Forbidden: InvalidAccessKeyId"))
    outbox = make_outbox(db, store, fake, deadline_s=60.0)
    media, metadata = spool(tmp_path, "0.wav"), spool(tmp_path, "0-metadata.json", b"{}")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", media, "audio/wav")
    await outbox.enqueue("rec1", TARGET, "rec1/0-metadata.json", metadata, "application/json")
    async with running(outbox):
        await tick(fake)
        with pytest.raises(UploadFailed):
            await wait_group(outbox, "rec1")
        await tick(fake, 100)  # after the first deadline: a retry gets a new one
        result = await outbox.retry_failed("rec1")
        assert [(u.key, u.state, u.attempts, u.queued_at) for u in result.retried] == [
            ("rec1/0.wav", PENDING, 0, 1100.0), ("rec1/0-metadata.json", PENDING, 0, 1100.0)]
        assert result.missing == []
        assert all(u.created_at == 1000.0 for u in result.retried), "the first enqueue time stays"
        await tick(fake)
        uploads = await wait_group(outbox, "rec1")
    assert [(u.state, u.attempts) for u in uploads] == [(DONE, 1), (DONE, 1)]
    assert store.stored == {"rec1/0.wav": b"RIFF....WAVE", "rec1/0-metadata.json": b"{}"}
    assert not media.exists() and not metadata.exists()
    assert (await outbox.retry_failed("rec1")).retried == [], "nothing left to retry"


async def test_a_failed_upload_whose_spool_file_is_gone_cannot_be_retried(tmp_path, db, fake):
    store = FakeStore(fake, failures=2, error=PermissionDenied("403 Forbidden"))
    outbox = make_outbox(db, store, fake)
    media, metadata = spool(tmp_path, "0.wav"), spool(tmp_path, "0-metadata.json", b"{}")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", media, "audio/wav")
    await outbox.enqueue("rec1", TARGET, "rec1/0-metadata.json", metadata, "application/json")
    async with running(outbox):
        await tick(fake)
        with pytest.raises(UploadFailed):
            await wait_group(outbox, "rec1")
        media.unlink()  # someone cleaned the spool by hand
        result = await outbox.retry_failed("rec1")
        assert [u.key for u in result.retried] == ["rec1/0-metadata.json"]
        (missing,) = result.missing
        assert (missing.key, missing.state) == ("rec1/0.wav", FAILED)
        assert missing.last_error == f"spool file {media} is missing: this upload cannot be retried"
        await tick(fake)
        with pytest.raises(UploadFailed):
            await wait_group(outbox, "rec1")
    assert [u.state for u in await outbox.group("rec1")] == [FAILED, DONE]


async def test_listing_pages_newest_first_with_filters(tmp_path, db, fake):
    store = FakeStore(fake, failures=1, error=PermissionDenied("403"))
    outbox = make_outbox(db, store, fake)
    for i in range(5):
        await outbox.enqueue(f"rec{i % 2}", TARGET, f"k{i}", spool(tmp_path, f"{i}.wav"), "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert await outbox.wait_stored("rec1") is None
        assert "403" in (await outbox.wait_stored("rec0") or "")
    page, token = await outbox.list_page(page_size=2)
    assert [u.key for u in page] == ["k4", "k3"] and token
    page, token = await outbox.list_page(page_size=2, page_token=token)
    assert [u.key for u in page] == ["k2", "k1"] and token
    page, token = await outbox.list_page(page_size=2, page_token=token)
    assert [u.key for u in page] == ["k0"] and token == ""
    assert [u.key for u in (await outbox.list_page(state=FAILED))[0]] == ["k0"], "the first attempt was refused"
    assert [u.key for u in (await outbox.list_page(state=DONE, group_id="rec0"))[0]] == ["k4", "k2"]
    for bad in ("nonsense", "c2VxOjE"):  # not base64 of ours; another list's token ("seq:1")
        with pytest.raises(ValueError):
            await outbox.list_page(page_token=bad)


# ------------------------------------------------------------------------------------------------ pruning
async def test_pruning_forgets_old_uploads_and_failed_leftovers_but_never_a_pending_file(tmp_path, db, fake):
    spool_dir = tmp_path / "spool"
    store = FakeStore(fake, failures=1_000, error=PermissionDenied("403"))
    outbox = make_outbox(db, store, fake)

    def file(group: str, name: str) -> Path:
        path = spool_dir / group / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return path

    old_failed = file("rec-failed", "0.wav")
    await outbox.enqueue("rec-failed", TARGET, "f/0", old_failed, "audio/wav")
    async with running(outbox):
        await tick(fake)  # fails at 1000
        await advance(fake, 100)
        new_failed = file("rec-failed2", "0.wav")
        await outbox.enqueue("rec-failed2", TARGET, "f2/0", new_failed, "audio/wav")
        await tick(fake)  # fails at 1100
        store.failures = 0
        old_done = file("rec-done", "0.wav")
        await outbox.enqueue("rec-done", TARGET, "d/0", old_done, "audio/wav")
        await tick(fake)  # stored at 1100
        store.gate = asyncio.Event()  # the store hangs: these stay pending
        pending = file("rec-pending", "0.wav")
        await outbox.enqueue("rec-pending", TARGET, "p/0", pending, "audio/wav")
        shared = file("rec-pending", "1.wav")
        await outbox.enqueue("rec-pending", TARGET, "p/1", shared, "audio/wav")
        await tick(fake)
        # an old failed upload of the same file as a pending one (re-enqueued by hand, say)
        db.conn.execute(
            "INSERT INTO uploads (group_id, target, key, path, content_type, state, next_attempt_at, created_at,"
            " queued_at, failed_at) VALUES ('rec-x', ?, 'x', ?, 'audio/wav', 'failed', 0, 0, 0, 0)",
            (TARGET, str(shared)),
        )
        counts = await outbox.counts()
        result = await outbox.prune(done_before=1101.0, failed_before=1050.0)
        assert (result.done_rows, result.failed_rows, result.failed_files) == (1, 2, 1)
        assert not old_failed.exists(), "an old failed upload's spool file goes with its row"
        assert new_failed.exists() and pending.exists() and shared.exists(), "never a file still needed"
        assert await outbox.counts() == {PENDING: counts[PENDING], DONE: counts[DONE] - 1, FAILED: counts[FAILED] - 2}
        assert [u.key for u in (await outbox.list_page())[0]] == ["p/1", "p/0", "f2/0"]

        (spool_dir / "rec-unknown").mkdir()
        (spool_dir / "rec-unknown" / "leftover.raw").write_bytes(b"x")
        removed = await outbox.prune_spool(spool_dir, lambda group: group != "rec-unknown")  # "finished" but unknown
        assert removed == 2  # rec-done (stored, forgotten) and rec-failed (its failed upload pruned)
        assert sorted(p.name for p in spool_dir.iterdir()) == ["rec-failed2", "rec-pending", "rec-unknown"]
        assert await outbox.prune_spool(spool_dir, lambda group: True) == 1, "only rec-unknown: the others hold files"
        assert pending.exists() and shared.exists() and new_failed.exists()
        store.gate.set()
        await tick(fake)
        await wait_group(outbox, "rec-pending")
    assert await outbox.prune_spool(spool_dir, lambda group: group == "rec-pending") == 1


class CountingStore(FakeStore):
    """A FakeStore that holds every attempt at its gate and counts how many are in flight at most."""

    def __init__(self, time: FakeTime) -> None:
        super().__init__(time)
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.most = 0

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await super().put_file(key, path, content_type)
        finally:
            self.in_flight -= 1


async def test_uploads_yield_to_media_under_pressure(tmp_path, db, fake):
    """While the calls' media falls behind, each target gets one attempt at a time (never none:
    uploads go on); when it recovers, the full concurrency is back."""
    store = CountingStore(fake)
    pressure = {"on": True}
    outbox = make_outbox(db, store, fake, concurrency=3, under_pressure=lambda: pressure["on"])
    for i in range(12):
        await outbox.enqueue("rec1", "local", f"rec1/{i}.wav", spool(tmp_path, f"{i}.wav"), "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert (store.in_flight, store.most) == (1, 1), "under pressure: one attempt per target"
        store.gate.set()  # attempts complete at once from here on
        await tick(fake)
        store.gate.clear()
        done = sum(u.state == DONE for u in await outbox.group("rec1"))
        assert 1 <= done <= 8 and store.most == 1, "one after the other, still progressing"
        pressure["on"] = False
        await tick(fake, 1.0)
        assert store.in_flight == 1, "one upload at a time until the media has been calm a while"
        await advance(fake, PRESSURE_RELEASE_S)
        assert store.in_flight == 3, "pressure gone: the configured concurrency again"
        store.gate.set()
        uploads = await wait_group(outbox, "rec1")
    assert [u.state for u in uploads] == [DONE] * 12


async def test_recordings_finishing_together_each_wait_for_their_own_group(tmp_path, db, fake):
    """A burst of calls ending at once: each finishing recording waits for its group's uploads. An upload that
    ends wakes only its own group's waiters; it used to wake every waiter, each of which queried its group again
    on the loop (N recordings: N x N queries; 160 recordings of 1:1 calls took 4.5 s to finish)."""
    groups = [f"rec{n}" for n in range(40)]
    store = FakeStore(fake)
    outbox = make_outbox(db, store, fake, concurrency=1)  # one upload ending at a time, as a busy target does
    for group in groups:
        for name in ("0.wav", "0-metadata.json"):
            await outbox.enqueue(group, TARGET, f"{group}/{name}", spool(tmp_path, f"{group}-{name}"), "audio/wav")
    queried: list[str] = []
    read_group = outbox.rows.group

    async def counted(group_id: str, *, own: bool):
        queried.append(group_id)
        return await read_group(group_id, own=own)

    outbox.rows.group = counted  # type: ignore[method-assign]
    waiting = [asyncio.create_task(outbox.wait_group(group)) for group in groups]
    await tick(fake)
    assert sorted(queried) == sorted(groups), "each waiter looked at its group once"
    async with running(outbox):
        finished = await asyncio.wait_for(asyncio.gather(*waiting), 5.0)
    assert [[u.state for u in uploads] for uploads in finished] == [[DONE, DONE]] * len(groups)
    # once at the start, then once per upload of its own that ended (2 files): 3 a group, whatever the burst
    assert len(queried) <= 3 * len(groups), f"{len(queried)} queries for {len(groups)} groups"
    assert not outbox._waiters, "no waiter left behind"


async def test_the_pending_gauge_follows_each_enqueue_and_each_stored_file(tmp_path, db, fake):
    """`on_pending` gets this node's pending count after every change (the `callrec_uploads_pending` gauge),
    from an index range: the count of every state read every row kept (2 ms at 50 000 done rows, per upload)."""
    reported: list[int] = []
    store = FakeStore(fake)
    outbox = make_outbox(db, store, fake, on_pending=reported.append, concurrency=1)
    for name in ("0.wav", "0-metadata.json"):
        await outbox.enqueue("rec1", TARGET, f"rec1/{name}", spool(tmp_path, name), "audio/wav")
    assert reported == [1, 2]
    async with running(outbox):
        await wait_group(outbox, "rec1")
    assert reported[-1] == 0 and 1 in reported[2:], reported


class RoundTripRows(SqliteUploadRows):
    """The rows as PostgreSQL gives them (cluster mode): a read's answer comes back after a round trip, during
    which the event loop runs other tasks. With `hold` set, the reads named in `held_reads` wait for it after
    reading."""

    def __init__(self, db: Database, *held_reads: str) -> None:
        super().__init__(db)
        self.held_reads = set(held_reads)
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()

    async def _answer(self, read: str, rows: list[Upload]) -> list[Upload]:
        if self.hold is not None and read in self.held_reads:
            self.held.set()
            await self.hold.wait()
        return rows

    async def due(self, now: float, target: str, limit: int) -> list[Upload]:
        return await self._answer("due", await super().due(now, target, limit))

    async def queued_before(self, at: float) -> list[Upload]:
        return await self._answer("queued_before", await super().queued_before(at))


class KeyCountingStore(FakeStore):
    """Counts every `put_file` per key, the ones that find their spool file gone included."""

    def __init__(self, time: FakeTime) -> None:
        super().__init__(time)
        self.calls: Counter[str] = Counter()

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        self.calls[key] += 1
        if not Path(path).exists():
            raise FileNotFoundError(path)  # as the real stores do
        return await super().put_file(key, path, content_type)


async def test_a_file_stored_while_the_due_uploads_are_read_is_not_attempted_again(tmp_path, db, fake):
    """Cluster mode's race (seen in `make bench` row 8c): the worker read the due uploads while an attempt
    finished; the read still said pending, the attempt had left the in-flight set, and the stored (and unlinked)
    file was attempted again, found missing, and failed its recording."""
    rows = RoundTripRows(db, "due")
    store = KeyCountingStore(fake)
    store.gate = asyncio.Event()
    outbox = make_outbox(rows, store, fake)
    first = spool(tmp_path, "0.wav")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", first, "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert store.calls["rec1/0.wav"] == 1, "under way, waiting for the store"
        rows.hold = asyncio.Event()
        await outbox.enqueue("rec2", TARGET, "rec2/0.wav", spool(tmp_path, "1.wav"), "audio/wav")  # wakes the worker
        await asyncio.wait_for(rows.held.wait(), 1.0)  # it read both rows as pending; the answer is on its way
        store.gate.set()  # meanwhile the first file is stored, unlinked and out of the in-flight set
        for _ in range(20):
            await asyncio.sleep(0)
        assert not first.exists() and (await outbox.group("rec1"))[0].state == DONE
        rows.hold.set()
        await advance(fake, 5)
        (upload,) = await wait_group(outbox, "rec1")
        (other,) = await wait_group(outbox, "rec2")
    assert store.calls == {"rec1/0.wav": 1, "rec2/0.wav": 1}, "each file attempted once"
    assert (upload.state, upload.last_error, other.state) == (DONE, "", DONE)


async def test_a_file_stored_while_overdue_uploads_are_read_does_not_fail_at_the_deadline(tmp_path, db, fake):
    """The same race at the deadline: an upload stored while the overdue ones were read was failed after it
    was stored."""
    rows = RoundTripRows(db, "queued_before")
    store = KeyCountingStore(fake)
    store.gate = asyncio.Event()
    outbox = make_outbox(rows, store, fake, deadline_s=60.0)
    path = spool(tmp_path, "0.wav")
    await outbox.enqueue("rec1", TARGET, "rec1/0.wav", path, "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert store.calls["rec1/0.wav"] == 1
        await advance(fake, 59.5)
        rows.hold = asyncio.Event()
        await tick(fake, 1.0)  # the deadline: the worker reads the overdue uploads, the attempt still in flight
        await asyncio.wait_for(rows.held.wait(), 1.0)
        store.gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        rows.hold.set()
        await advance(fake, 5)
        (upload,) = await wait_group(outbox, "rec1")
    assert (upload.state, upload.last_error) == (DONE, ""), "stored, and so not failed by the deadline"
    assert store.calls == {"rec1/0.wav": 1}
