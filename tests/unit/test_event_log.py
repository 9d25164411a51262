"""The durable event log: dense sequences, retention that never reuses numbers, filtered follow."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from callrec.core.errors import OutOfRange, ResourceExhausted
from callrec.events import acs
from callrec.events import log as event_log
from callrec.events.log import EventLog
from callrec.events.model import EventFilter, EventType
from callrec.state.db import Database


def state_changed(recording_id: str = "r1", call: str = "c1"):
    return acs.recording_state_changed(recording_id=recording_id, server_call_id=call, call_id=call,
                                       call_connection_id="conn", active=True, start_time=datetime.now(UTC))


async def test_sequences_retention_and_follow(tmp_path):
    log = EventLog(Database(tmp_path / "db.sqlite3"), retention=timedelta(hours=24))
    for i in range(5):
        stored = await log.append(state_changed(f"r{i % 2}"))
    assert stored.sequence == 5 and await log.oldest_sequence() == 1
    assert await log.prune(now=time.time() + 23 * 3600) == 0
    assert await log.prune(now=time.time() + 25 * 3600) == 5  # older than 24 h: gone
    assert await log.oldest_sequence() == 6 and await log.last_sequence() == 5
    assert (await log.append(state_changed())).sequence == 6  # numbers are never reused

    got = []

    async def follow() -> None:
        async for stored in log.follow(await log.oldest_sequence() - 1, EventFilter(recording_id="r7")):
            got.append(stored.sequence)
            if len(got) == 2:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await log.append(state_changed("r7"))
    await log.append(state_changed("r8"))
    await log.append(state_changed("r7"))
    await asyncio.wait_for(task, 2)
    assert got == [7, 9]


def file_status(recording_id: str = "r1", call: str = "c1"):
    return acs.recording_file_status_updated(
        topic="/t", recording_id=recording_id, server_call_id=call, call_id=call, chunks=[],
        start_time=datetime.now(UTC), duration_ms=1000, session_end_reason="StoppedByRequest",
        content_type="audio", channel_type="mixed", format="wav")


def new_log(tmp_path, **limits) -> EventLog:
    db = Database(tmp_path / "db.sqlite3")
    db.conn.execute("PRAGMA synchronous=OFF")  # hundreds of appends per test: no fsync each
    return EventLog(db, retention=timedelta(hours=24), **limits)


async def take(sub, count: int) -> list[int]:
    """The sequences of the next `count` events of a subscription."""
    out = []
    for _ in range(count):
        stored = await asyncio.wait_for(sub.next(), 5)
        sub.delivered = stored.sequence
        out.append(stored.sequence)
    return out


STATE, FILES = EventType.RECORDING_STATE_CHANGED.value, EventType.RECORDING_FILE_STATUS_UPDATED.value
FAILED = EventType.RECORDING_FAILED.value


def filter_id(flt: EventFilter) -> str:
    """A test id that is the same in every process: a set's repr follows the process's hash seed, and the two
    processes of `make test` (pytest-xdist) must collect the same ids."""
    types = ",".join(sorted(t.rsplit(".", 1)[-1] for t in flt.event_types)) or "any"
    return f"types={types};call={flt.server_call_id or 'any'};recording={flt.recording_id or 'any'}"


@pytest.mark.parametrize("flt", [
    EventFilter(),
    EventFilter(recording_id="r3"),
    EventFilter(server_call_id="c1"),
    EventFilter(frozenset({FILES})),
    EventFilter(frozenset({STATE, FILES})),
    EventFilter(frozenset({FILES, FAILED})),
    EventFilter(frozenset({FILES}), server_call_id="c2"),
    EventFilter(frozenset({STATE}), server_call_id="c0", recording_id="r3"),
], ids=lambda flt: filter_id(flt))
async def test_sql_filters_and_paging_give_exactly_what_the_filter_matches(tmp_path, monkeypatch, flt) -> None:
    # small pages and scan spans, so that every path of the paging (full pages, merged types, spans
    # with no match) runs many times over a few hundred events
    monkeypatch.setattr(event_log, "PAGE_SIZE", 7)
    monkeypatch.setattr(event_log, "SCAN_SPAN", 50)
    log = new_log(tmp_path)
    appended = []
    for i in range(400):
        make = file_status if i % 5 == 0 else state_changed
        appended.append(await log.append(make(f"r{i % 7}", f"c{i % 3}")))
    expected = [s.sequence for s in appended if flt.matches(s.event)]
    with log.subscribe(await log.oldest_sequence() - 1, flt) as sub:
        assert await take(sub, len(expected)) == expected
        # then live, without a gap or a repeat
        more = [await log.append((file_status if i % 5 == 0 else state_changed)(f"r{i % 7}", f"c{i % 3}"))
                for i in range(400, 440)]
        live = [s.sequence for s in more if flt.matches(s.event)]
        assert await take(sub, len(live)) == live
    await log.close()


async def test_each_filter_reads_a_range_of_its_index_without_sorting(tmp_path) -> None:
    log = new_log(tmp_path)
    plans = {}
    for name, flt, index in [
        ("recording", EventFilter(recording_id="r"), "events_recording"),
        ("call", EventFilter(server_call_id="c"), "events_call"),
        ("type", EventFilter(frozenset({FILES})), "events_type"),
        ("call and types", EventFilter(frozenset({FILES, STATE}), server_call_id="c"), "events_call"),
        ("recording and call", EventFilter(recording_id="r", server_call_id="c"), "events_recording"),
    ]:
        sql, params = event_log.page_query(flt)
        plan = " | ".join(row[3] for row in log.db.conn.execute("EXPLAIN QUERY PLAN " + sql, [0, 10, *params]))
        plans[name] = plan
        assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan
    await log.close()


async def test_events_appended_during_the_backlog_follow_it_without_gap_or_repeat(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(event_log, "PAGE_SIZE", 5)
    log = new_log(tmp_path)
    for i in range(100):
        await log.append(state_changed(f"r{i}"))
    got: list[int] = []
    with log.subscribe(40, EventFilter()) as sub:
        while len(got) < 160:  # 60 from the backlog, then 100 appended one per event read
            got += await take(sub, 1)
            if len(got) <= 100:
                await log.append(state_changed())
    assert got == list(range(41, 201))
    await log.close()


async def test_a_subscriber_that_takes_nothing_overflows_with_its_resume_point(tmp_path) -> None:
    log = new_log(tmp_path, max_queue=10)
    await log.append(state_changed())
    sub = log.subscribe(0, EventFilter())
    assert await take(sub, 1) == [1]  # then it stops reading
    published = 1
    while log.subscriber_count():
        await log.append(state_changed())
        published += 1
        assert sub.queued <= 10
    # once the queue filled it was dropped (the subscriber had been reading); the second time, it ended
    assert published == 1 + 10 + 1 + 10 + 1
    with pytest.raises(ResourceExhausted, match=r"max_subscriber_queue.*after_sequence=1 "):
        await sub.next()
    assert sub.queued == 0
    # resuming from the named point gets the rest
    with log.subscribe(1, EventFilter()) as again:
        assert await take(again, published - 1) == list(range(2, published + 1))
    await log.close()


async def test_a_subscriber_waiting_for_events_never_overflows_on_a_burst(tmp_path) -> None:
    log = new_log(tmp_path, max_queue=3)
    with log.subscribe(0, EventFilter()) as sub:
        waiting = asyncio.ensure_future(sub.next())
        await asyncio.sleep(0.01)
        for _ in range(50):  # one burst, no await that lets the subscriber run
            await log.append(state_changed())
        assert sub.queued <= 3
        first = await waiting
        assert [first.sequence, *await take(sub, 49)] == list(range(1, 51))
    await log.close()


async def test_subscribers_are_capped(tmp_path) -> None:
    log = new_log(tmp_path, max_subscribers=2)
    first = log.subscribe(0, EventFilter())
    log.subscribe(0, EventFilter())
    with pytest.raises(ResourceExhausted, match="max_event_subscribers"):
        log.subscribe(0, EventFilter())
    first.close()
    log.subscribe(0, EventFilter())
    assert log.subscriber_count() == 2
    await log.close()


async def test_a_backlog_pruned_before_it_was_read_is_out_of_range(tmp_path) -> None:
    log = new_log(tmp_path)
    for _ in range(5):
        await log.append(state_changed())
    with log.subscribe(0, EventFilter(recording_id="r1")) as sub:
        await log.prune(now=time.time() + 25 * 3600)
        await log.append(state_changed())
        with pytest.raises(OutOfRange, match="pruned"):
            await sub.next()
    await log.close()


def test_the_filter_indexes_exist(tmp_path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    names = {row[0] for row in db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"events_type", "events_call", "events_recording"} <= names
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] >= 5
