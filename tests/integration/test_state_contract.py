"""One contract suite for the state repositories, run against SQLite (the embedded default) and
PostgreSQL (cluster mode, a real server started by the fixture): recordings, idempotency keys and the
chunk index behave the same on both. PostgreSQL-only tests below cover what only a shared server has:
concurrent migration by several nodes, transactions that other tasks do not see, and an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from callrec.core.errors import CallrecError, ErrorCode
from callrec.core.model import (
    ChannelType,
    ChunkEndReason,
    ChunkInfo,
    ContentType,
    Format,
    MediaStats,
    PauseInterval,
    RecordedParticipant,
    RecordingError,
    RecordingOptions,
    RecordingState,
)
from callrec.core.ports import StoredChunk
from callrec.core.recording_state import Recording
from callrec.state.chunks import ChunkIndex
from callrec.state.db import Database
from callrec.state.pg_chunks import PgChunkIndex
from callrec.state.pg_recordings import PgRecordingRepository
from callrec.state.postgres import PostgresDatabase
from callrec.state.recordings import RecordingRepository
from tests.postgres_service import PostgresServer

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
WAV = RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.MIXED, format=Format.WAV)


@dataclass
class State:
    """The two repositories of one backend."""

    kind: str
    recordings: Any
    chunks: Any


@pytest.fixture(params=["sqlite", "postgres"])
async def state(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[State]:
    if request.param == "sqlite":
        db = Database(tmp_path / "state.sqlite3")
        try:
            yield State("sqlite", RecordingRepository(db), ChunkIndex(db))
        finally:
            db.close()
        return
    url = request.getfixturevalue("postgres_url")
    pg = PostgresDatabase(url)
    await pg.open()
    try:
        yield State("postgres", PgRecordingRepository(pg), PgChunkIndex(pg))
    finally:
        await pg.close()


def rich_recording(recording_id: str, call: str = "call-1", state: RecordingState = RecordingState.COMPLETED,
                   minute: int = 0) -> Recording:
    """A recording with every field set, so a round trip that loses one is caught."""
    start = T0 + timedelta(minutes=minute)
    stats = MediaStats(frames_received=1234, frames_late=3, gap_fill_ms=40)
    stats.reject("late", 3)
    stats.reject("duplicate", 2)
    return Recording(
        recording_id=recording_id,
        server_call_id=call,
        call_id=f"acs-{call}",
        call_connection_id=f"conn-{call}",
        options=RecordingOptions(content_type=ContentType.AUDIO, channel_type=ChannelType.UNMIXED, format=Format.WAV,
                                 audio_channel_participant_ordering=("alice", "bob"), destination="archive",
                                 request_id=f"req-{recording_id}"),
        state=state,
        start_time=start,
        pause_intervals=[PauseInterval(start + timedelta(seconds=5), timedelta(seconds=2)),
                         PauseInterval(start + timedelta(seconds=30))],
        participants=[RecordedParticipant("alice", "Alice Ångström", 0), RecordedParticipant("bob", "Bob", 1)],
        chunks=[ChunkInfo(f"doc-{recording_id}-0", 0, ChunkEndReason.SESSION_ENDED, "mem://m0", "mem://c0",
                          "mem://d0")],
        duration=timedelta(seconds=61, milliseconds=250),
        session_end_reason="StoppedByRequest",
        error=RecordingError(14, "storage target 'archive' unreachable") if state is RecordingState.FAILED else None,
        media_stats=stats,
        stop_time=start + timedelta(minutes=1),
    )


def chunk(recording_id: str, index: int, target: str = "local") -> StoredChunk:
    stem = f"{recording_id}/{index}"
    return StoredChunk(
        document_id=f"doc-{recording_id}-{index}", recording_id=recording_id, chunk_index=index,
        end_reason="ChunkMaximumTimeExceeded", target=target, media_key=f"{stem}.wav",
        metadata_key=f"{stem}-metadata.json", media_type="audio/wav", content_location=f"loc://{stem}.wav",
        metadata_location=f"loc://{stem}-metadata.json", delete_location=f"loc://{stem}-", samples=16_000 * (index + 1),
        participants='[{"participant_id": "alice", "display_name": "Alice", "channel": -1}]',
    )


# ---------------------------------------------------------------------------------------- recordings


async def test_a_saved_recording_comes_back_whole_and_updates_in_place(state: State) -> None:
    repo = state.recordings
    rec = rich_recording("rec-1", state=RecordingState.FAILED)
    await repo.save(rec)
    assert await repo.get("rec-1") == rec
    assert await repo.get("rec-unknown") is None
    rec.state = RecordingState.FAILED
    rec.duration = timedelta(seconds=99)
    await repo.save(rec)
    again = await repo.get("rec-1")
    assert again == rec and again.duration == timedelta(seconds=99)
    recs, token = await repo.list("", None, 10, "")
    assert [r.recording_id for r in recs] == ["rec-1"] and token == "", "an update is not a second row"


async def test_in_progress_lists_active_paused_and_stopping_in_start_order(state: State) -> None:
    repo = state.recordings
    for i, st in enumerate([RecordingState.ACTIVE, RecordingState.COMPLETED, RecordingState.INACTIVE,
                            RecordingState.FAILED, RecordingState.STOPPING]):
        await repo.save(rich_recording(f"rec-{i}", state=st, minute=i))
    assert [r.recording_id for r in await repo.in_progress()] == ["rec-0", "rec-2", "rec-4"]


async def test_list_pages_newest_first_with_filters_and_rejects_a_foreign_token(state: State) -> None:
    repo = state.recordings
    for i in range(7):
        await repo.save(rich_recording(f"rec-{i}", call=f"call-{i % 2}", minute=i,
                                       state=RecordingState.ACTIVE if i == 6 else RecordingState.COMPLETED))
    seen: list[str] = []
    token = ""
    while True:
        page, token = await repo.list("", None, 3, token)
        assert len(page) <= 3
        seen += [r.recording_id for r in page]
        if not token:
            break
    assert seen == [f"rec-{i}" for i in reversed(range(7))], "every recording once, newest first"
    page, token = await repo.list("call-1", None, 10, "")
    assert [r.recording_id for r in page] == ["rec-5", "rec-3", "rec-1"] and token == ""
    page, _ = await repo.list("call-0", RecordingState.ACTIVE, 10, "")
    assert [r.recording_id for r in page] == ["rec-6"]
    with pytest.raises(ValueError):
        await repo.list("", None, 3, "bm90LWEtdG9rZW4")


async def test_a_transaction_commits_a_recording_and_its_request_id_together_or_neither(state: State) -> None:
    repo = state.recordings
    with pytest.raises(RuntimeError):
        async with repo.transaction():
            await repo.save(rich_recording("rec-rolled-back"))
            await repo.remember_request("req-x", "rec-rolled-back")
            raise RuntimeError("the media could not start")
    assert await repo.get("rec-rolled-back") is None
    assert await repo.recall_request("req-x", timedelta(hours=1)) is None
    async with repo.transaction():
        await repo.save(rich_recording("rec-kept"))
        await repo.remember_request("req-y", "rec-kept")
    assert (await repo.get("rec-kept")) is not None
    assert await repo.recall_request("req-y", timedelta(hours=1)) == "rec-kept"


async def test_request_ids_are_recalled_within_their_window_and_forgotten_after(state: State) -> None:
    repo = state.recordings
    await repo.remember_request("req-1", "rec-1")
    await repo.remember_request("req-1", "rec-2")  # the same key again: the newest recording wins
    await repo.remember_request("req-2", "rec-3")
    assert await repo.recall_request("req-1", timedelta(hours=1)) == "rec-2"
    assert await repo.recall_request("req-2", timedelta(hours=1)) == "rec-3"
    assert await repo.recall_request("req-3", timedelta(hours=1)) is None
    await asyncio.sleep(0.05)
    assert await repo.recall_request("req-1", timedelta(milliseconds=10)) is None, "outside the window"
    assert await repo.forget_requests_before(timedelta(hours=1)) == 0
    assert await repo.forget_requests_before(timedelta(milliseconds=10)) == 2
    assert await repo.recall_request("req-2", timedelta(hours=1)) is None


# ---------------------------------------------------------------------------------------- chunks


async def test_chunks_are_listed_by_index_and_resolved_by_each_location(state: State) -> None:
    index = state.chunks
    for i in (2, 0, 1):
        await index.add(chunk("rec-1", i))
    await index.add(chunk("rec-2", 0))
    listed = await index.for_recording("rec-1")
    assert listed == [chunk("rec-1", i) for i in range(3)]
    assert await index.for_recording("rec-none") == []
    c = chunk("rec-1", 1)
    assert await index.by_location(c.content_location) == (c, "media")
    assert await index.by_location(c.metadata_location) == (c, "metadata")
    assert await index.by_location(c.delete_location) == (c, "delete")
    assert await index.by_location("loc://nothing") is None


async def test_a_reindexed_chunk_replaces_its_row(state: State) -> None:
    index = state.chunks
    await index.add(chunk("rec-1", 0))
    changed = StoredChunk(**{**chunk("rec-1", 0).__dict__, "end_reason": "ServerRestarted", "samples": 42})
    await index.add(changed)
    assert await index.for_recording("rec-1") == [changed]


async def test_deleted_chunks_stop_resolving_and_expire_per_target(state: State) -> None:
    index = state.chunks
    await index.add(chunk("rec-1", 0, "local"))
    await index.add(chunk("rec-1", 1, "local"))
    await index.add(chunk("rec-2", 0, "archive"))
    await asyncio.sleep(0.05)
    assert [c.document_id for c in await index.expired("local", 0.01)] == ["doc-rec-1-0", "doc-rec-1-1"]
    assert await index.expired("local", 3600) == []
    await index.mark_deleted("doc-rec-1-0")
    assert await index.by_location(chunk("rec-1", 0).content_location) is None
    assert [c.document_id for c in await index.expired("local", 0.01)] == ["doc-rec-1-1"]
    assert [c.document_id for c in await index.expired("archive", 0.01)] == ["doc-rec-2-0"]


# ---------------------------------------------------------------------------------------- PostgreSQL only


async def test_nodes_starting_at_once_migrate_an_empty_database_once(postgres_url: str) -> None:
    nodes = [PostgresDatabase(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(n.open() for n in nodes))
        async with nodes[0].connection() as conn:
            cur = await conn.execute("SELECT version, count(*) AS n FROM schema_migrations GROUP BY version")
            rows = await cur.fetchall()
        assert rows and all(r["n"] == 1 for r in rows), rows
        # and every node can use the schema
        await PgRecordingRepository(nodes[3]).save(rich_recording("rec-1"))
        assert await PgRecordingRepository(nodes[1]).get("rec-1") == rich_recording("rec-1")
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_a_transaction_is_invisible_to_other_tasks_until_it_commits(postgres_url: str) -> None:
    db = PostgresDatabase(postgres_url)
    await db.open()
    repo = PgRecordingRepository(db)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def writer() -> None:
        with pytest.raises(RuntimeError):
            async with repo.transaction():
                await repo.save(rich_recording("rec-tx"))
                inside.set()
                await release.wait()
                raise RuntimeError("rolled back")

    try:
        task = asyncio.create_task(writer())
        await inside.wait()
        assert await repo.get("rec-tx") is None, "another task does not see the open transaction"
        await repo.save(rich_recording("rec-other"))  # this task's statement is not part of it
        release.set()
        await task
        assert await repo.get("rec-tx") is None
        assert await repo.get("rec-other") == rich_recording("rec-other")
    finally:
        await db.close()


async def test_an_unreachable_database_is_unavailable_with_a_message_and_no_password(
    postgres_server: PostgresServer,
) -> None:
    postgres_server.reset()
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{postgres_server.port}/{postgres_server.database}"
    db = PostgresDatabase(url, timeout_s=2)
    await db.open()
    repo = PgRecordingRepository(db)
    await repo.save(rich_recording("rec-1"))
    postgres_server.kill()
    try:
        with pytest.raises(CallrecError) as caught:
            await repo.get("rec-1")
        assert caught.value.code is ErrorCode.UNAVAILABLE
        message = caught.value.message
        assert f"127.0.0.1:{postgres_server.port}/callrec" in message and "--database-url" in message
        assert "hunter2" not in message
    finally:
        postgres_server.start()
    for _ in range(50):  # the pool replaces its broken connections
        try:
            assert await repo.get("rec-1") == rich_recording("rec-1")
            break
        except CallrecError:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the repository did not recover after PostgreSQL came back")
    await db.close()


async def test_a_database_that_is_not_there_at_start_fails_fast_and_clearly() -> None:
    from tests.integration.storage_servers import free_port

    db = PostgresDatabase(f"postgresql://callrec:pw@127.0.0.1:{free_port()}/callrec", timeout_s=1)
    with pytest.raises(CallrecError) as caught:
        await db.open()
    assert caught.value.code is ErrorCode.UNAVAILABLE and "pw" not in caught.value.message.replace("postgresql", "")
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresDatabase("mysql://x")
    assert psycopg  # the driver the cluster mode needs is installed


async def test_a_statement_stuck_behind_another_nodes_lock_fails_at_the_statement_timeout(postgres_url: str) -> None:
    """No statement waits forever: one stuck behind a row lock that another node holds in an open
    transaction is cancelled by PostgreSQL at `statement_timeout` and becomes a retryable UNAVAILABLE
    that says what to look for; once the lock is gone the same call works."""
    db = PostgresDatabase(postgres_url, statement_timeout_s=1.0)
    await db.open()
    repo = PgRecordingRepository(db)
    await repo.save(rich_recording("rec-locked"))
    other_node = await psycopg.AsyncConnection.connect(postgres_url)
    try:
        await other_node.execute("BEGIN")
        await other_node.execute("SELECT 1 FROM recordings WHERE recording_id = 'rec-locked' FOR UPDATE")
        started = asyncio.get_running_loop().time()
        with pytest.raises(CallrecError) as caught:
            await asyncio.wait_for(repo.save(rich_recording("rec-locked")), 20)
        waited = asyncio.get_running_loop().time() - started
        assert caught.value.code is ErrorCode.UNAVAILABLE
        assert "did not finish a statement within 1 s" in caught.value.message
        assert "pg_stat_activity" in caught.value.message
        assert 0.9 <= waited < 10, waited
        async with db.connection() as conn:
            cur = await conn.execute("SHOW idle_in_transaction_session_timeout")
            assert (await cur.fetchone())["idle_in_transaction_session_timeout"] == "1min"
    finally:
        await other_node.execute("ROLLBACK")
        await other_node.close()
    await repo.save(rich_recording("rec-locked"))  # the lock is gone: the same write goes through
    assert await repo.get("rec-locked") == rich_recording("rec-locked")
    await db.close()
