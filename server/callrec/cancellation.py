"""Honouring a task's cancellation that a library swallowed.

On Python 3.11, `asyncio.wait_for` returns the inner result instead of raising `CancelledError` when
the outer task is cancelled in the same turn of the loop as the inner future completes (CPython
gh-86296; 3.12 rewrote `wait_for` on `asyncio.timeout`). psycopg_pool waits for a free connection
with `wait_for`, so a cancel that lands as a connection is handed over is lost: the cancelled loop
goes on with its next statement, and whoever awaits it (a shutdown, a test's teardown) waits for
ever. Seen: an outbox whose `run()` was cancelled polled PostgreSQL until the test timed out.

A task keeps counting the cancels asked of it (`Task.cancelling()`) until it takes one back with
`uncancel()`, so a long-running loop that checks at the top of every turn stops one turn late
instead of never.
"""

from __future__ import annotations

import asyncio

__all__ = ["honour_cancellation"]


def honour_cancellation() -> None:
    """Raise `CancelledError` if the current task was asked to stop and nothing took the request back."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
