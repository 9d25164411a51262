"""The upload outbox on fake time: backoff schedule, spool kept until stored, permanent failure, restart.

A real SQLite database, an in-test store and `callrec.testing.FakeTime`: every wait is fake, so a
half-minute backoff schedule runs in milliseconds and is measured exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callrec.state.db import Database
from callrec.storage.base import PermissionDenied, StorageError, StoredObject, Transient
from callrec.storage.outbox import DONE, FAILED, PENDING, Outbox, UploadFailed
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
    outbox.enqueue("rec1", TARGET, "rec1/0.wav", path, "audio/wav")
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
    outbox.enqueue("rec1", TARGET, "rec1/0.wav", spool(tmp_path, "0.wav"), "audio/wav")
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
    outbox.enqueue("rec1", TARGET, "rec1/0.wav", spool(tmp_path, "0.wav"), "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert len(store.attempts) == 1, "no retry while fake time stands still"
        await advance(fake, 1.5)
        assert len(store.attempts) == 1
        await advance(fake, 0.5)  # 2 s after the first failure
        assert len(store.attempts) == 2
        (pending,) = outbox.group("rec1")
        assert (pending.state, pending.attempts, pending.last_error) == (PENDING, 2, "connection refused")


async def test_spool_file_is_deleted_only_after_the_store_confirmed(tmp_path, db, fake):
    store = FakeStore(fake)
    store.gate = asyncio.Event()
    outbox = make_outbox(db, store, fake)
    path = spool(tmp_path, "0.wav")
    outbox.enqueue("rec1", TARGET, "rec1/0.wav", path, "audio/wav")
    async with running(outbox):
        await tick(fake)
        assert len(store.attempts) == 1, "the upload is under way"
        await advance(fake, 10)
        assert path.exists() and outbox.group("rec1")[0].state == PENDING, "not confirmed yet: kept"
        store.gate.set()
        (upload,) = await wait_group(outbox, "rec1")
    assert not path.exists()
    assert (upload.state, upload.location, upload.size) == (DONE, "file://localhost/srv/vault/rec1/0.wav", 12)
    assert upload.checksum == f"sha256:{hashlib.sha256(b'RIFF....WAVE').hexdigest()}"
    assert outbox.counts() == {PENDING: 0, DONE: 1, FAILED: 0}


async def test_permanent_failure_fails_the_group_and_keeps_the_spool(tmp_path, db, fake):
    denied = PermissionDenied("403 Forbidden: SignatureDoesNotMatch")
    store = FakeStore(fake, failures=1_000, error=denied)
    outbox = make_outbox(db, store, fake)
    media, metadata = spool(tmp_path, "0.wav"), spool(tmp_path, "0-metadata.json", b"{}")
    outbox.enqueue("rec1", TARGET, "rec1/0.wav", media, "audio/wav")
    outbox.enqueue("rec1", TARGET, "rec1/0-metadata.json", metadata, "application/json")
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
    uploads = outbox.group("rec1")
    assert [(u.state, u.attempts, u.last_error) for u in uploads] == [(FAILED, 1, str(denied))] * 2
    assert media.exists() and metadata.exists(), "the spool keeps what could not be stored"
    assert outbox.counts() == {PENDING: 0, DONE: 0, FAILED: 2}


async def test_pending_uploads_survive_a_restart_and_complete(tmp_path, fake):
    path = tmp_path / "state.sqlite3"
    files = [spool(tmp_path, "0.wav"), spool(tmp_path, "0-metadata.json", b"{}")]
    down = FakeStore(fake, failures=1_000)
    first = make_outbox(Database(path), down, fake, backoff_base_s=10.0, backoff_max_s=60.0, jitter=lambda: 1.0)
    first.enqueue("rec1", TARGET, "rec1/0.wav", files[0], "audio/wav")
    first.enqueue("rec1", TARGET, "rec1/0-metadata.json", files[1], "application/json")
    async with running(first):
        await tick(fake)
        await advance(fake, 10)
    assert [u.state for u in first.group("rec1")] == [PENDING, PENDING]
    assert [u.attempts for u in first.group("rec1")] == [2, 2], "retried once the 10 s backoff passed"
    first.db.close()  # the process is gone; the database and the spool stay

    up = FakeStore(fake)
    second = make_outbox(Database(path), up, fake, backoff_base_s=10.0, backoff_max_s=60.0, jitter=lambda: 1.0)
    async with running(second):
        await tick(fake)  # due at once after a restart: no waiting out the old 20 s backoff
        uploads = await wait_group(second, "rec1")
    assert [(u.key, u.state) for u in uploads] == [("rec1/0.wav", DONE), ("rec1/0-metadata.json", DONE)]
    assert [u.attempts for u in uploads] == [3, 3]
    assert sorted(key for key, _ in up.attempts) == ["rec1/0-metadata.json", "rec1/0.wav"], "each stored once"
    assert up.stored == {"rec1/0.wav": b"RIFF....WAVE", "rec1/0-metadata.json": b"{}"}
    assert not any(f.exists() for f in files)
