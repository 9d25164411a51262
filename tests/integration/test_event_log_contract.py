"""One contract for both event log backends: SQLite (`EventLog`) and a Redis Stream (`RedisEventLog`).

The same tests run on each through `EventLogPort`; a backend-specific fact lives only in `Backend`
(how to open a log, and how to wait until a log has offered every appended event to its subscribers:
at once with SQLite, after the stream follower's next read with Redis). Then come the tests that only
a shared Redis can have: two nodes appending to one log, resuming on the other node, and a `kill -9`
of redis-server. Every test compares what subscribers receive with what was appended, field by field
(`StoredEvent` equality: sequence, id, type, subject, ids, time, payload and the ACS JSON).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from callrec.core.errors import CallrecError, ErrorCode, OutOfRange, ResourceExhausted
from callrec.events import acs, redis_log
from callrec.events import log as event_log
from callrec.events.log import EventLog, EventLogPort, EventSubscription
from callrec.events.model import EventFilter, EventType, NewEvent, StoredEvent
from callrec.events.redis_log import RedisEventLog
from callrec.state.db import Database
from tests.redis_service import RedisServer, free_port, start_redis

RETENTION = timedelta(hours=24)
STATE = EventType.RECORDING_STATE_CHANGED.value
FILES = EventType.RECORDING_FILE_STATUS_UPDATED.value
FAILED = EventType.RECORDING_FAILED.value
T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def make_event(i: int, node: str = "n") -> NewEvent:
    """Event number `i`: a mix of the three types, seven recordings and three calls, with a payload
    that differs per event (and non-ASCII text), so that content is checked, not only counts."""
    recording, call = f"r{i % 7}", f"c{i % 3}"
    context = f"ctx-{node}-{i}-é✓"
    now = T0 + timedelta(seconds=i)
    if i % 5 == 0:
        return acs.recording_file_status_updated(
            topic="/t", recording_id=recording, server_call_id=call, call_id=f"corr-{call}",
            chunks=[{"documentId": f"doc-{node}-{i}", "index": 0, "endReason": "SessionEnded",
                     "metadataLocation": "m", "contentLocation": "c", "deleteLocation": "d"}],
            start_time=T0, duration_ms=1000 + i, session_end_reason="StoppedByRequest",
            content_type="audio", channel_type="mixed", format="wav", now=now)
    if i % 5 == 3:
        return acs.recording_failed(recording_id=recording, server_call_id=call, call_id=f"corr-{call}",
                                    call_connection_id=f"conn-{node}", code=14, message=f"failed {context}",
                                    operation_context=context, now=now)
    return acs.recording_state_changed(recording_id=recording, server_call_id=call, call_id=f"corr-{call}",
                                       call_connection_id=f"conn-{node}", active=i % 2 == 0, start_time=T0,
                                       operation_context=context, now=now)


async def take(sub: EventSubscription, count: int, timeout: float = 10) -> list[StoredEvent]:
    """The next `count` events of a subscription, marked delivered as a transport would."""
    out = []
    for _ in range(count):
        stored = await asyncio.wait_for(sub.next(), timeout)
        sub.delivered = stored.sequence
        out.append(stored)
    return out


async def nothing_more(sub: EventSubscription) -> None:
    """No further event is waiting (call after `Backend.settle`)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.next(), 0.2)


def seqs(events: list[StoredEvent]) -> list[int]:
    return [s.sequence for s in events]


async def settle_redis(log: EventLogPort, timeout: float = 10) -> None:
    """Until the log's stream follower has handed out every appended event."""
    assert isinstance(log, RedisEventLog)
    last = await log.last_sequence()
    deadline = time.monotonic() + timeout
    while log.dispatched_sequence < last:
        assert time.monotonic() < deadline, f"follower stuck at {log.dispatched_sequence} of {last}"
        await asyncio.sleep(0.005)


async def settle_nothing(log: EventLogPort) -> None:
    """SQLite offers an event to subscribers in the step that commits it: nothing to wait for."""


@dataclass
class Backend:
    """How to exercise one backend through the contract."""

    kind: str
    open: Callable[..., Awaitable[EventLogPort]]
    """open(**limits): a started log (a second call on Redis: another node on the same log)."""
    settle: Callable[[EventLogPort], Awaitable[None]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh durable redis-server for one test (~30 ms to start); fails if it is not installed."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


async def open_redis(server: RedisServer, max_subscribers: int = 1000, max_queue: int = 10_000) -> RedisEventLog:
    """A started log on `server` (each call: one more node of the same cluster)."""
    log = RedisEventLog(server.url, RETENTION, max_subscribers=max_subscribers, max_queue=max_queue)
    await log.start()
    return log


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    opened: list[EventLogPort] = []
    databases: list[Database] = []
    if request.param == "sqlite":
        db = Database(tmp_path / "events.sqlite3")
        db.conn.execute("PRAGMA synchronous=OFF")  # hundreds of appends per test: no fsync each
        databases.append(db)

        async def open_sqlite(max_subscribers: int = 1000, max_queue: int = 10_000) -> EventLogPort:
            log = EventLog(db, RETENTION, max_subscribers=max_subscribers, max_queue=max_queue)
            await log.start()
            opened.append(log)
            return log

        yield Backend("sqlite", open_sqlite, settle_nothing)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")

        async def open_on_redis(max_subscribers: int = 1000, max_queue: int = 10_000) -> EventLogPort:
            log = await open_redis(server, max_subscribers, max_queue)
            opened.append(log)
            return log

        yield Backend("redis", open_on_redis, settle_redis)
    for log in opened:
        await log.close()
    for db in databases:
        db.close()


# --- the contract: every backend -----------------------------------------------------------------


async def test_sequences_are_dense_from_one_and_events_come_back_unchanged(backend: Backend) -> None:
    log = await backend.open()
    assert (await log.last_sequence(), await log.oldest_sequence()) == (0, 1)  # empty
    events = [make_event(i) for i in range(12)]
    appended = [await log.append(e) for e in events]
    assert seqs(appended) == list(range(1, 13))
    assert [s.event for s in appended] == events
    assert (await log.last_sequence(), await log.oldest_sequence()) == (12, 1)
    with log.subscribe(0, EventFilter()) as sub:
        got = await take(sub, 12)
        assert got == appended  # every field, in order
        assert [s.event.json for s in got] == [e.json for e in events]  # the ACS JSON byte for byte
        assert {s.event.event_type.value for s in got} == {STATE, FILES, FAILED}
        await backend.settle(log)
        await nothing_more(sub)


async def test_subscribe_after_a_sequence_from_the_oldest_and_live_only(backend: Backend) -> None:
    log = await backend.open()
    appended = [await log.append(make_event(i)) for i in range(6)]
    await backend.settle(log)
    after_three = log.subscribe(3, EventFilter())
    from_oldest = log.subscribe(await log.oldest_sequence() - 1, EventFilter())
    live_only = log.subscribe(await log.last_sequence(), EventFilter())
    assert await take(after_three, 3) == appended[3:]
    assert await take(from_oldest, 6) == appended
    more = [await log.append(make_event(i)) for i in range(6, 9)]
    for sub in (after_three, from_oldest, live_only):
        assert await take(sub, 3) == more  # the live ones follow, nothing before them for live_only
    await backend.settle(log)
    for sub in (after_three, from_oldest, live_only):
        await nothing_more(sub)
        sub.close()
    assert log.subscriber_count() == 0


@pytest.mark.parametrize("flt", [
    EventFilter(frozenset({FILES})),
    EventFilter(frozenset({STATE, FAILED})),
    EventFilter(server_call_id="c1"),
    EventFilter(recording_id="r3"),
    EventFilter(frozenset({STATE}), server_call_id="c2", recording_id="r5"),
], ids=["type", "types", "call", "recording", "all-three"])
async def test_each_filter_gets_exactly_its_events_backlog_then_live(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, flt: EventFilter
) -> None:
    # small pages, so the backlog is read over many of them, some with no match at all
    monkeypatch.setattr(event_log, "PAGE_SIZE", 7)
    monkeypatch.setattr(event_log, "SCAN_SPAN", 30)
    monkeypatch.setattr(redis_log, "PAGE_SIZE", 7)
    log = await backend.open()
    backlog = [await log.append(make_event(i)) for i in range(105)]
    await backend.settle(log)
    with log.subscribe(0, flt) as sub:
        expected = [s for s in backlog if flt.matches(s.event)]
        assert expected and len(expected) < len(backlog)
        assert await take(sub, len(expected)) == expected
        live = [await log.append(make_event(i)) for i in range(105, 140)]
        expected_live = [s for s in live if flt.matches(s.event)]
        assert await take(sub, len(expected_live)) == expected_live
        await backend.settle(log)
        await nothing_more(sub)


async def test_backlog_to_live_handover_under_concurrent_appends(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscriptions opened at different points while another task appends, each read concurrently:
    each gets every matching event after its start exactly once, in order."""
    monkeypatch.setattr(event_log, "PAGE_SIZE", 5)
    monkeypatch.setattr(event_log, "SCAN_SPAN", 40)
    monkeypatch.setattr(redis_log, "PAGE_SIZE", 5)
    log = await backend.open()
    total = 240
    appended = [await log.append(make_event(i)) for i in range(60)]
    final = acs.recording_state_changed(recording_id="r-last", server_call_id="c1", call_id="corr-c1",
                                        call_connection_id="conn", active=False, start_time=T0)
    filters = [EventFilter(), EventFilter(server_call_id="c1"), EventFilter(frozenset({STATE}))]
    assert all(f.matches(final) for f in filters)  # every reader stops at the final event
    readers: list[tuple[int, EventFilter, asyncio.Task[list[StoredEvent]]]] = []

    async def read_to_the_end(sub: EventSubscription) -> list[StoredEvent]:
        got: list[StoredEvent] = []
        with sub:
            while not got or got[-1].sequence < total:
                got += await take(sub, 1)
                if len(got) % 3 == 0:
                    await asyncio.sleep(0)  # readers and the appender interleave
        return got

    async def open_reader(n: int) -> None:
        after = [0, await log.oldest_sequence() - 1, await log.last_sequence(), len(appended) // 2][n % 4]
        flt = filters[n % len(filters)]
        readers.append((after, flt, asyncio.create_task(read_to_the_end(log.subscribe(after, flt)))))

    for i in range(60, total):
        if i % 15 == 0:
            await open_reader(i // 15)
        appended.append(await log.append(make_event(i) if i < total - 1 else final))
        await asyncio.sleep(0)  # an SQLite append never yields by itself
    assert seqs(appended) == list(range(1, total + 1))
    assert len(readers) == 12
    for after, flt, task in readers:
        got = await asyncio.wait_for(task, 20)
        expected = [s for s in appended if s.sequence > after and flt.matches(s.event)]
        assert seqs(got) == seqs(expected), (after, flt)
        assert got == expected


async def test_a_subscriber_that_takes_nothing_overflows_with_its_resume_point(backend: Backend) -> None:
    log = await backend.open(max_queue=10)
    appended = [await log.append(make_event(0))]
    sub = log.subscribe(0, EventFilter())
    assert await take(sub, 1) == appended  # then it stops reading
    while log.subscriber_count() and len(appended) < 500:
        appended.append(await log.append(make_event(len(appended))))
        await asyncio.sleep(0)
        assert sub.queued <= 10
    assert log.subscriber_count() == 0, "never overflowed"
    with pytest.raises(ResourceExhausted, match=r"max_subscriber_queue.*after_sequence=1 ") as info:
        await sub.next()
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert sub.queued == 0 and sub.queue_peak <= 10
    # resuming from the named point gets the rest, once, in order, then live events
    with log.subscribe(1, EventFilter()) as again:
        assert await take(again, len(appended) - 1) == appended[1:]
        more = await log.append(make_event(len(appended)))
        assert await take(again, 1) == [more]


async def test_a_reader_slower_than_a_burst_reads_the_rest_from_the_log(backend: Backend) -> None:
    log = await backend.open(max_queue=5)
    sub = log.subscribe(await log.last_sequence(), EventFilter())
    got: list[StoredEvent] = []

    async def slow_reader() -> None:
        while len(got) < 160:
            got.extend(await take(sub, 1))
            await asyncio.sleep(0.001)  # slow, but reading

    reader = asyncio.create_task(slow_reader())
    await asyncio.sleep(0.01)  # the reader waits in next()
    appended: list[StoredEvent] = []
    for burst in range(20):  # bursts of 8 concurrent appends: more than the 5-event queue
        appended += await asyncio.gather(*(log.append(make_event(burst * 8 + i)) for i in range(8)))
        deadline = time.monotonic() + 10
        while len(got) < len(appended):  # it keeps up between bursts, however slow the machine is
            if reader.done():
                reader.result()  # its error, if it failed
            assert time.monotonic() < deadline, (len(got), len(appended))
            await asyncio.sleep(0.002)
    await asyncio.wait_for(reader, 20)
    appended.sort(key=lambda s: s.sequence)
    assert seqs(appended) == list(range(1, 161))
    assert got == appended
    assert sub.queue_peak <= 5
    sub.close()


async def test_prune_trims_by_age_never_reuses_numbers_and_a_trimmed_backlog_is_out_of_range(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_log, "PAGE_SIZE", 3)  # Redis's prune scans over several pages
    log = await backend.open()
    old = [await log.append(make_event(i)) for i in range(8)]
    await asyncio.sleep(0.05)
    middle = time.time()
    await asyncio.sleep(0.05)
    recent = [await log.append(make_event(i)) for i in range(8, 12)]
    await backend.settle(log)
    behind = log.subscribe(0, EventFilter(recording_id="r1"))  # its backlog is about to be pruned

    assert await log.prune(now=time.time() + 23 * 3600) == 0  # nothing is 24 h old yet
    assert await log.prune(now=middle + RETENTION.total_seconds()) == 8  # the eight older ones
    assert (await log.oldest_sequence(), await log.last_sequence()) == (9, 12)
    assert await log.prune(now=middle + RETENTION.total_seconds()) == 0  # idempotent
    with pytest.raises(OutOfRange, match="pruned") as info:
        await asyncio.wait_for(behind.next(), 5)
    assert info.value.code is ErrorCode.OUT_OF_RANGE
    behind.close()
    with log.subscribe(await log.oldest_sequence() - 1, EventFilter()) as kept:
        assert await take(kept, 4) == recent

    assert await log.prune(now=time.time() + 25 * 3600) == 4  # everything: the log is empty
    assert (await log.oldest_sequence(), await log.last_sequence()) == (13, 12)
    nxt = await log.append(make_event(12))
    assert nxt.sequence == 13  # numbers are never reused
    assert (await log.oldest_sequence(), await log.last_sequence()) == (13, 13)
    with log.subscribe(await log.oldest_sequence() - 1, EventFilter()) as fresh:
        assert await take(fresh, 1) == [nxt]
    assert old[0].sequence == 1


async def test_subscribers_are_capped(backend: Backend) -> None:
    log = await backend.open(max_subscribers=2)
    first = log.subscribe(0, EventFilter())
    log.subscribe(0, EventFilter())
    with pytest.raises(ResourceExhausted, match="max_event_subscribers"):
        log.subscribe(0, EventFilter())
    first.close()
    log.subscribe(0, EventFilter())
    assert log.subscriber_count() == 2


# --- Redis only: several nodes on one log, and outages ---------------------------------------------


async def test_two_nodes_appending_concurrently_share_one_dense_order(redis_server: RedisServer) -> None:
    node_a, node_b = await open_redis(redis_server), await open_redis(redis_server)
    try:
        sub_a = node_a.subscribe(0, EventFilter())
        sub_b = node_b.subscribe(0, EventFilter())
        call_b = node_b.subscribe(0, EventFilter(server_call_id="c1"))

        events_a, events_b = [make_event(i, "a") for i in range(100)], [make_event(i, "b") for i in range(100)]

        async def run(node: RedisEventLog, events: list[NewEvent]) -> list[StoredEvent]:
            return [await node.append(event) for event in events]

        from_a, from_b = await asyncio.gather(run(node_a, events_a), run(node_b, events_b))
        assert [s.event for s in from_a] == events_a and [s.event for s in from_b] == events_b
        everything = sorted(from_a + from_b, key=lambda s: s.sequence)
        assert seqs(everything) == list(range(1, 201))  # dense, no number twice
        assert seqs(from_a) == sorted(seqs(from_a)) and seqs(from_b) == sorted(seqs(from_b))
        assert seqs(from_a) != list(range(1, 101)) and seqs(from_a) != list(range(101, 201))  # interleaved

        got_a, got_b = await take(sub_a, 200), await take(sub_b, 200)
        assert got_a == everything and got_b == everything  # both nodes: every event of both, one order
        expected_call = [s for s in everything if s.event.server_call_id == "c1"]
        assert await take(call_b, len(expected_call)) == expected_call
        await settle_redis(node_a)
        await settle_redis(node_b)
        for sub in (sub_a, sub_b, call_b):
            await nothing_more(sub)
        assert await node_a.last_sequence() == await node_b.last_sequence() == 200

        # a subscriber of node A stops after 120 events and resumes on node B: no gap, no repeat
        with node_a.subscribe(0, EventFilter()) as first_half:
            assert await take(first_half, 120) == everything[:120]
            resume = first_half.delivered
        assert resume == 120
        with node_b.subscribe(resume, EventFilter()) as second_half:
            assert await take(second_half, 80) == everything[120:]
            later = [await node_a.append(make_event(i, "a")) for i in range(100, 105)]  # appended elsewhere
            assert seqs(later) == [201, 202, 203, 204, 205]
            assert await take(second_half, 5) == later
            await settle_redis(node_b)
            await nothing_more(second_half)
    finally:
        await node_a.close()
        await node_b.close()


async def test_redis_killed_and_restarted_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    password = "s3cret-redis-pw"
    server = start_redis(tmp_path / "redis", password=password)
    node = await open_redis(server)
    other: RedisEventLog | None = None
    try:
        live = node.subscribe(await node.last_sequence(), EventFilter())
        before = [await node.append(make_event(i)) for i in range(10)]
        assert await take(live, 10) == before

        with capture_logs() as logs:
            server.kill()
            for attempt in range(3):  # every append during the outage: UNAVAILABLE, clearly
                with pytest.raises(CallrecError) as info:
                    await node.append(make_event(100 + attempt))
                assert info.value.code is ErrorCode.UNAVAILABLE
                message = info.value.message
                assert "could not append the event" in message and f"redis://127.0.0.1:{server.port}/0" in message
                assert password not in message
                await asyncio.sleep(0.4)  # the follower retries several times meanwhile
            with pytest.raises(CallrecError) as info:
                await node.last_sequence()
            assert info.value.code is ErrorCode.UNAVAILABLE and password not in info.value.message

            server.restart()  # same port and directory: Redis replays its AOF
            # another node appends at once, while this node's follower may still be backing off
            other = await open_redis(server)
            assert await other.last_sequence() == 10  # every acknowledged append survived kill -9
            after = [await other.append(make_event(i, "b")) for i in range(10, 13)]
            after.append(await node.append(make_event(13)))
            assert seqs(after) == [11, 12, 13, 14]  # continues after the last acknowledged one
            assert await take(live, 4) == after  # resumed from its last id: nothing missed, nothing twice
            await settle_redis(node)
            await nothing_more(live)

        lost = [e for e in logs if e["event"].startswith("event log lost Redis")]
        back = [e for e in logs if e["event"] == "event log reconnected to Redis"]
        assert len(lost) == 1 and len(back) == 1, logs  # once per outage, not per attempt
        assert lost[0]["log_level"] == "warning" and lost[0]["after_sequence"] == 10
        assert password not in repr(logs)

        with node.subscribe(0, EventFilter()) as everything:
            assert await take(everything, 14) == before + after
        assert (await node.oldest_sequence(), await node.last_sequence()) == (1, 14)
    finally:
        await node.close()
        if other is not None:
            await other.close()
        server.stop()


async def test_start_warns_naming_a_weaker_durability_setting(redis_server: RedisServer) -> None:
    assert redis_server.command("CONFIG", "SET", "appendfsync", "everysec").startswith(b"+OK")
    with capture_logs() as logs:
        weak = await open_redis(redis_server)
    await weak.close()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert "appendfsync" in warnings[0]["event"] and "sequence numbers" in warnings[0]["event"]
    assert (warnings[0]["setting"], warnings[0]["value"], warnings[0]["required"]) == (
        "appendfsync", "everysec", "always")

    assert redis_server.command("CONFIG", "SET", "appendfsync", "always").startswith(b"+OK")
    with capture_logs() as logs:
        durable = await open_redis(redis_server)
    await durable.close()
    assert [e for e in logs if e["log_level"] == "warning"] == []


async def test_start_without_redis_is_unavailable_without_the_password() -> None:
    port = free_port()
    log = RedisEventLog(f"redis://:hunter2-pw@127.0.0.1:{port}/0", RETENTION)
    with pytest.raises(CallrecError) as info:
        await log.start()
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert f"redis://127.0.0.1:{port}/0" in info.value.message and "hunter2" not in info.value.message
    with pytest.raises(RuntimeError, match="start"):
        log.subscribe(0, EventFilter())
    await log.close()
