"""The durable event log: dense sequences, retention that never reuses numbers, filtered follow."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from callrec.events import acs
from callrec.events.log import EventLog
from callrec.events.model import EventFilter
from callrec.state.db import Database


def event(recording_id: str = "r1", call: str = "c1"):
    return acs.recording_state_changed(recording_id=recording_id, server_call_id=call, call_id=call,
                                       call_connection_id="conn", active=True, start_time=datetime.now(UTC))


async def test_sequences_retention_and_follow(tmp_path):
    log = EventLog(Database(tmp_path / "db.sqlite3"), retention=timedelta(hours=24))
    for i in range(5):
        stored = await log.append(event(f"r{i % 2}"))
    assert stored.sequence == 5 and log.oldest_sequence() == 1
    assert log.prune(now=time.time() + 23 * 3600) == 0
    assert log.prune(now=time.time() + 25 * 3600) == 5  # older than 24 h: gone
    assert log.oldest_sequence() == 6 and log.last_sequence() == 5
    assert (await log.append(event())).sequence == 6  # numbers are never reused

    got = []

    async def follow() -> None:
        async for stored in log.follow(0, EventFilter(recording_id="r7")):
            got.append(stored.sequence)
            if len(got) == 2:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await log.append(event("r7"))
    await log.append(event("r8"))
    await log.append(event("r7"))
    await asyncio.wait_for(task, 2)
    assert got == [7, 9]
