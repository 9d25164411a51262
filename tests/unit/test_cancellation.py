"""`honour_cancellation`: a loop stops even when a library swallowed the cancel asked of its task.

The case that hung a test's teardown (an outbox polling PostgreSQL after `cancel()`): on Python 3.11,
`asyncio.wait_for` returns the inner result when the outer task is cancelled in the same turn as the
inner future completes, and psycopg_pool waits for its connections that way. Reproduced here without a
database: the cancel lands while `wait_for` waits on a future whose result is already scheduled.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import pytest

from callrec.cancellation import honour_cancellation


def polling_loop(check: bool) -> tuple[Callable[[], object], list[int]]:
    """A loop like `Outbox.run`: each turn waits, through `wait_for`, on something that is about to finish."""
    turns = [0]

    async def run() -> str:
        loop = asyncio.get_running_loop()
        while turns[0] < 1000:
            if check:
                honour_cancellation()
            turns[0] += 1
            answer = loop.create_future()
            loop.call_soon(answer.set_result, None)  # ready in the same turn as the cancel below
            await asyncio.wait_for(answer, 5)
        return "ran on"

    return run, turns


async def cancel_during_the_first_wait(run: Callable[[], object]) -> asyncio.Task[str]:
    task: asyncio.Task[str] = asyncio.create_task(run())  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the task is inside wait_for; the answer's result is queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    return task


async def test_a_loop_that_checks_stops_one_turn_after_a_swallowed_cancel() -> None:
    run, turns = polling_loop(check=True)
    task = await cancel_during_the_first_wait(run)
    assert task.cancelled()
    assert turns[0] <= 2  # the cancel was honoured at the top of the next turn at the latest


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's wait_for does not swallow the cancel")
async def test_without_the_check_the_cancel_is_lost_on_python_3_11() -> None:
    """The control: the same loop without the check runs on, as the outbox did (so the test above can fail)."""
    run, turns = polling_loop(check=False)
    task: asyncio.Task[str] = asyncio.create_task(run())  # type: ignore[arg-type]
    await asyncio.sleep(0)
    task.cancel()
    assert await asyncio.wait_for(task, 5) == "ran on"
    assert turns[0] == 1000 and task.cancelling() == 1  # asked to stop, never stopped


async def test_nothing_happens_without_a_cancel_or_after_one_was_taken_back() -> None:
    honour_cancellation()  # the test's own task: not cancelled

    async def takes_it_back() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # a deliberate "cancelled, but go on" (as an upload attempt that timed out does)
        honour_cancellation()
        return "went on"

    task = asyncio.create_task(takes_it_back())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "went on"
