"""The upload outbox on both of its backends: SQLite (one server) and PostgreSQL (cluster mode, a real
server started by the fixture). The same `Outbox` runs over each; the PostgreSQL-only tests cover what
a shared table adds: every node's uploads are listed everywhere, and each node attempts, counts and
prunes only its own (the files are in its spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from callrec.state.db import Database
from callrec.state.pg_uploads import PgUploadRows
from callrec.state.postgres import PostgresDatabase
from callrec.state.uploads import DONE, FAILED, PENDING, SqliteUploadRows
from callrec.storage.base import StorageError, StoredObject
from callrec.storage.outbox import Outbox, UploadFailed

TARGET = "local"


class Refused(StorageError):
    retryable = False


class Store:
    """Stores what it is given, or refuses keys in `refuse` for good; records every attempt."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.attempts: list[str] = []
        self.stored: dict[str, bytes] = {}

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        self.attempts.append(key)
        if key in self.refuse:
            raise Refused(f"{key}: access denied")
        data = Path(path).read_bytes()
        self.stored[key] = data
        return StoredObject(key=key, size=len(data), checksum=f"sha256:{hashlib.sha256(data).hexdigest()}",
                            location=f"file://localhost/vault/{key}", content_type=content_type, verified_by="test")


@pytest.fixture(params=["sqlite", "postgres"])
async def rows_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    """`factory(node_id)` -> the upload rows of that node, on the backend of this run."""
    if request.param == "sqlite":
        db = Database(tmp_path / "state.sqlite3")
        try:
            yield lambda node_id: SqliteUploadRows(db)
        finally:
            db.close()
        return
    pg = PostgresDatabase(request.getfixturevalue("postgres_url"))
    await pg.open()
    try:
        yield lambda node_id: PgUploadRows(pg, node_id)
    finally:
        await pg.close()


@contextlib.asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[None]:
    task = asyncio.create_task(outbox.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def spool(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "spool" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"content of {name}".encode())
    return path


async def test_files_are_stored_listed_in_pages_retried_and_pruned(rows_factory, tmp_path: Path) -> None:
    store = Store()
    outbox = Outbox(rows_factory("node-a"), lambda target: store, backoff_base_s=0.01)
    store.refuse.add("rec1/1.wav")
    paths = [spool(tmp_path, f"rec1/{i}.wav") for i in range(3)]
    ids = [await outbox.enqueue("rec1", TARGET, f"rec1/{i}.wav", p, "audio/wav") for i, p in enumerate(paths)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert await outbox.queued_keys("rec1") == {"rec1/0.wav", "rec1/1.wav", "rec1/2.wav"}
    assert await outbox.counts() == {PENDING: 3, DONE: 0, FAILED: 0}
    assert await outbox.rows.pending() == 3

    async with running(outbox):
        with pytest.raises(UploadFailed, match=r"rec1/1.wav: access denied.*callrec uploads retry rec1"):
            await asyncio.wait_for(outbox.wait_group("rec1"), 10)
        uploads = await outbox.group("rec1")
        assert [u.state for u in uploads] == [DONE, FAILED, DONE]
        assert uploads[0].location == "file://localhost/vault/rec1/0.wav" and uploads[0].size == len(b"content of "
                                                                                                   b"rec1/0.wav")
        assert not paths[0].exists() and paths[1].exists(), "the spool keeps only what was not stored"

        first, token = await outbox.list_page(page_size=2)
        rest, last = await outbox.list_page(page_size=2, page_token=token)
        assert [u.key for u in first + rest] == ["rec1/2.wav", "rec1/1.wav", "rec1/0.wav"] and last == ""
        (failed,), _ = await outbox.list_page(state=FAILED, group_id="rec1")
        assert failed.key == "rec1/1.wav" and "access denied" in failed.last_error

        store.refuse.clear()
        result = await outbox.retry_failed("rec1")
        assert [u.key for u in result.retried] == ["rec1/1.wav"] and result.missing == []
        assert [u.state for u in await asyncio.wait_for(outbox.wait_group("rec1"), 10)] == [DONE] * 3
    assert store.stored["rec1/1.wav"] == b"content of rec1/1.wav"
    assert store.attempts.count("rec1/1.wav") == 2

    pruned = await outbox.prune(done_before=1e12, failed_before=0)
    assert (pruned.done_rows, pruned.failed_rows) == (3, 0)
    assert await outbox.group("rec1") == [] and await outbox.counts() == {PENDING: 0, DONE: 0, FAILED: 0}


async def test_a_nodes_uploads_are_listed_everywhere_and_attempted_only_by_that_node(
    postgres_url: str, tmp_path: Path
) -> None:
    pg = PostgresDatabase(postgres_url)
    await pg.open()
    try:
        store_a, store_b = Store(), Store()
        node_a = Outbox(PgUploadRows(pg, "node-a"), lambda target: store_a)
        node_b = Outbox(PgUploadRows(pg, "node-b"), lambda target: store_b)
        # the recording moved from node-b (now dead, its chunk 0 still pending) to node-a (chunk 3)
        await node_b.enqueue("rec1", TARGET, "rec1/0.wav", spool(tmp_path, "b/rec1-0.wav"), "audio/wav")
        await node_a.enqueue("rec1", TARGET, "rec1/3.wav", spool(tmp_path, "a/rec1-3.wav"), "audio/wav")
        async with running(node_a):
            stored = await asyncio.wait_for(node_a.wait_group("rec1"), 10)
            assert [u.key for u in stored] == ["rec1/3.wav"], "node-a waits for its own files only"
            assert store_a.attempts == ["rec1/3.wav"], "node-b's file is not in node-a's spool: never attempted"
            assert [(u.key, u.state) for u in await node_a.group("rec1")] == [("rec1/0.wav", PENDING),
                                                                              ("rec1/3.wav", DONE)]
            assert await node_a.counts() == {PENDING: 0, DONE: 1, FAILED: 0}
            assert await node_b.counts() == {PENDING: 1, DONE: 0, FAILED: 0}
            assert (await node_a.rows.pending(), await node_b.rows.pending()) == (0, 1), "each node's own"
            assert await node_a.retry_failed("rec1") == await node_b.retry_failed("rec1")  # nothing failed
            pruned = await node_a.prune(done_before=1e12, failed_before=1e12)
            assert pruned.done_rows == 1 and len(await node_a.group("rec1")) == 1, "node-b's row stays"
        async with running(node_b):  # node-b is back: its pending upload completes
            assert [u.state for u in await asyncio.wait_for(node_b.wait_group("rec1"), 10)] == [DONE]
        assert store_b.attempts == ["rec1/0.wav"]
        (listed,), _ = await node_a.list_page(group_id="rec1")
        assert listed.key == "rec1/0.wav" and listed.state == DONE, "node-a lists node-b's upload"
    finally:
        await pg.close()


async def test_a_retry_is_sent_to_the_live_node_whose_spool_holds_the_failed_files(
    postgres_url: str, tmp_path: Path
) -> None:
    """After a takeover the recording node and the node holding a failed upload differ: the retry goes to the
    latter, and to nobody while it is down."""
    from callrec.state.pg_nodes import PgNodeRegistry

    pg = PostgresDatabase(postgres_url)
    await pg.open()
    try:
        store = Store()
        store.refuse.add("rec1/0.wav")
        node_b = Outbox(PgUploadRows(pg, "node-b"), lambda target: store)
        await node_b.enqueue("rec1", TARGET, "rec1/0.wav", spool(tmp_path, "b/rec1-0.wav"), "audio/wav")
        async with running(node_b):
            with pytest.raises(UploadFailed):
                await asyncio.wait_for(node_b.wait_group("rec1"), 10)
        a = PgNodeRegistry(pg, "node-a", "127.0.0.1:1", lease_s=30)
        b = PgNodeRegistry(pg, "node-b", "127.0.0.1:2", lease_s=30)
        await a.register()
        await b.register()
        holder = await a.node_with_failed_uploads("rec1")
        assert holder is not None and (holder.node_id, holder.advertise) == ("node-b", "127.0.0.1:2")
        assert await b.node_with_failed_uploads("rec1") is None, "never itself"
        await b.stop()  # its lease ends
        assert await a.node_with_failed_uploads("rec1") is None, "a dead node is not sent anything"
    finally:
        await pg.close()


async def test_a_chunks_metadata_is_attempted_only_after_the_media_queued_before_it(rows_factory) -> None:
    """After an outage every file is due at once; the small metadata JSON must not be stored before the
    media it announces (a reader that finds it would find no media), nor wait on another recording."""
    rows = rows_factory("node-a")
    media = await rows.insert("rec1", TARGET, "rec1/0.wav", "/spool/0.wav", "audio/wav", 1.0)
    meta = await rows.insert("rec1", TARGET, "rec1/0.json", "/spool/0.json", "application/json", 1.0)
    other_meta = await rows.insert("rec2", TARGET, "rec2/0.json", "/spool/r2.json", "application/json", 1.0)
    media_1 = await rows.insert("rec1", TARGET, "rec1/1.wav", "/spool/1.wav", "audio/wav", 1.0)

    assert [u.id for u in await rows.due(5.0, TARGET, 10)] == [media, other_meta, media_1]
    assert [u.id for u in await rows.earliest(TARGET, 10)] == [media, other_meta, media_1]
    await rows.mark_done(media, "loc", 1, "sha256:x", 2.0)
    # chunk 1's media came after the metadata of chunk 0: it does not hold that back
    assert [u.id for u in await rows.due(5.0, TARGET, 10)] == [meta, other_meta, media_1]

    meta_1 = await rows.insert("rec1", TARGET, "rec1/1.json", "/spool/1.json", "application/json", 1.0)
    assert meta_1 not in [u.id for u in await rows.due(5.0, TARGET, 10)]
    await rows.mark_failed(media_1, True, "access denied", 3.0)  # failed for good: the metadata goes anyway
    assert meta_1 in [u.id for u in await rows.due(5.0, TARGET, 10)]
    assert await rows.due_targets(5.0) == [TARGET]


class SlowMediaStore(Store):
    """Media takes a while to store, metadata none: what lets a JSON overtake its media."""

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        if not key.endswith(".json"):
            await asyncio.sleep(0.05)
        return await super().put_file(key, path, content_type)


async def test_after_an_outage_the_outbox_stores_each_metadata_file_after_its_media(rows_factory, tmp_path) -> None:
    store = SlowMediaStore()
    outbox = Outbox(rows_factory("node-a"), lambda target: store, concurrency=4)
    for rec in ("rec1", "rec2"):
        for i in range(3):
            await outbox.enqueue(rec, TARGET, f"{rec}/{i}.wav", spool(tmp_path, f"{rec}/{i}.wav"), "audio/wav")
            await outbox.enqueue(rec, TARGET, f"{rec}/{i}.json", spool(tmp_path, f"{rec}/{i}.json"),
                                 "application/json")
    async with running(outbox):
        for rec in ("rec1", "rec2"):
            await asyncio.wait_for(outbox.wait_group(rec), 10)
    stored = list(store.stored)  # in the order the store finished them
    assert len(stored) == 12
    for rec in ("rec1", "rec2"):
        for i in range(3):
            assert stored.index(f"{rec}/{i}.wav") < stored.index(f"{rec}/{i}.json"), stored
