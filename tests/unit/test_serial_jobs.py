"""SerialJobs: one recording's writer jobs run in order, in a writer thread, and come back to the loop
only for a `then`, an error or a `join()`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from callrec.core.serial_jobs import RecordingMediaError, SerialJobs, writer_executor


class Recorder:
    """A recording's side of SerialJobs: its errors and its failed flag."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.log: list[str] = []

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.log.append(f"on_error {exc}")

    def jobs(self, max_pending: int = 1000) -> SerialJobs:
        return SerialJobs(None, max_pending, self.fail, lambda: bool(self.errors), {"recording_id": "r"})


def step(rec: Recorder, name: str, delay: float = 0.0) -> Callable[[], str]:
    def run() -> str:
        if delay:
            time.sleep(delay)
        rec.log.append(f"run {name} on {threading.current_thread().name}")
        return name

    return run


async def test_jobs_run_in_order_off_the_loop_and_join_waits_for_all() -> None:
    rec = Recorder()
    jobs = rec.jobs()
    for i in range(50):
        jobs.submit(step(rec, str(i), delay=0.001 if i % 10 == 0 else 0.0))
    assert jobs.pending > 0  # queued, not run on the loop
    await jobs.join()
    assert [line.split()[1] for line in rec.log] == [str(i) for i in range(50)]
    assert all("recording-writer" in line for line in rec.log)
    assert jobs.pending == 0


async def test_a_then_and_what_it_awaits_finish_before_the_next_job() -> None:
    rec = Recorder()
    jobs = rec.jobs()
    loop_thread = threading.current_thread()
    seen: list[tuple[str, bool]] = []

    async def then_slow(result: Any) -> None:
        seen.append((f"then {result} begins", threading.current_thread() is loop_thread))
        await asyncio.sleep(0.05)
        rec.log.append(f"then {result} done")

    def then_sync(result: Any) -> None:
        seen.append((f"then {result}", threading.current_thread() is loop_thread))
        rec.log.append(f"then {result}")

    jobs.submit(step(rec, "a"), then_slow)
    jobs.submit(step(rec, "b"), then_sync)
    jobs.submit(step(rec, "c"))
    await jobs.join()
    order = [line if line.startswith("then") else line.split(" on ")[0] for line in rec.log]
    assert order == ["run a", "then a done", "run b", "then b", "run c"]
    assert all(on_loop for _, on_loop in seen)  # `then` runs on the event loop's thread


async def test_an_error_reaches_on_error_before_the_next_job_which_is_then_skipped() -> None:
    rec = Recorder()
    jobs = rec.jobs()

    def broken() -> None:
        raise OSError(28, "No space left on device")

    jobs.submit(step(rec, "a"))
    jobs.submit(broken)
    jobs.submit(step(rec, "skipped"))
    await jobs.join()
    assert rec.log[0].startswith("run a on ") and rec.log[1:] == ["on_error [Errno 28] No space left on device"]
    assert isinstance(rec.errors[0], OSError)
    # The queue still drains after the failure: later joins return.
    jobs.submit(step(rec, "after"))
    await asyncio.wait_for(jobs.join(), 5)
    assert len(rec.log) == 2


async def test_a_then_that_raises_fails_the_recording_and_the_queue_drains() -> None:
    rec = Recorder()
    jobs = rec.jobs()

    async def then_broken(result: Any) -> None:
        raise ValueError(f"announce of {result} failed")

    jobs.submit(step(rec, "a"), then_broken)
    jobs.submit(step(rec, "b"))
    await asyncio.wait_for(jobs.join(), 5)
    assert [str(e) for e in rec.errors] == ["announce of a failed"]
    assert [line.split(" on ")[0] for line in rec.log] == ["run a", "on_error announce of a failed"]


async def test_too_many_jobs_behind_fails_the_recording_with_the_count() -> None:
    rec = Recorder()
    jobs = rec.jobs(max_pending=3)
    gate = threading.Event()
    jobs.submit(lambda: gate.wait(5))  # the writer is stuck (a slow disk)
    for i in range(4):
        jobs.submit(step(rec, str(i)))
    assert len(rec.errors) == 1 and isinstance(rec.errors[0], RecordingMediaError)
    assert "writer is 3 jobs behind; giving up" in str(rec.errors[0])
    gate.set()
    await asyncio.wait_for(jobs.join(), 5)


async def test_two_recordings_write_at_the_same_time_and_each_keeps_its_order() -> None:
    first, second = Recorder(), Recorder()
    a, b = first.jobs(), second.jobs()
    both_inside = threading.Barrier(2, timeout=5)

    def meet() -> None:
        both_inside.wait()  # passes only if the two recordings' jobs run in two threads at once

    a.submit(meet)
    b.submit(meet)
    for i in range(20):
        a.submit(step(first, str(i)))
        b.submit(step(second, str(i)))
    await asyncio.wait_for(asyncio.gather(a.join(), b.join()), 10)
    assert [line.split()[1] for line in first.log] == [str(i) for i in range(20)]
    assert [line.split()[1] for line in second.log] == [str(i) for i in range(20)]


async def test_jobs_without_then_do_not_wake_the_loop() -> None:
    """The point of the design: a media batch costs the loop a deque append, not a round trip."""
    rec = Recorder()
    jobs = rec.jobs()
    loop = asyncio.get_running_loop()
    posted: list[Any] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        posted.append(callback)
        return original(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]  # count the writer's posts to the loop
    try:
        for i in range(100):
            jobs.submit(step(rec, str(i)))
            if i % 10 == 0:
                await asyncio.sleep(0.002)  # let the thread go idle now and then: each restart is one submit
        await jobs.join()
    finally:
        del loop.call_soon_threadsafe
    assert len(rec.log) == 100
    assert len(posted) == 1  # the join's answer only


def test_the_writer_threads_are_shared_and_named() -> None:
    assert writer_executor() is writer_executor()
    name = writer_executor().submit(lambda: threading.current_thread().name).result(5)
    assert name.startswith("recording-writer")


@pytest.mark.parametrize("then_kind", ["sync", "async"])
async def test_then_gets_the_jobs_result(then_kind: str) -> None:
    rec = Recorder()
    jobs = rec.jobs()
    got: list[Any] = []

    if then_kind == "sync":
        def then(result: Any) -> None:
            got.append(result)
    else:
        async def then(result: Any) -> None:  # type: ignore[misc]  # the same name, the async variant
            got.append(result)

    jobs.submit(lambda: {"size": 42}, then)
    await jobs.join()
    assert got == [{"size": 42}]


async def test_a_job_that_raises_a_base_exception_fails_the_recording_and_the_queue_still_drains() -> None:
    rec = Recorder()
    jobs = rec.jobs()

    def interrupted() -> None:
        raise KeyboardInterrupt("stop")

    jobs.submit(interrupted)
    jobs.submit(step(rec, "skipped"))
    await asyncio.wait_for(jobs.join(), 5)
    assert [type(e) for e in rec.errors] == [KeyboardInterrupt]
    assert rec.log == ["on_error stop"]


async def test_a_then_cancelled_at_shutdown_does_not_hold_the_queue() -> None:
    rec = Recorder()
    jobs = rec.jobs()
    started = asyncio.Event()

    async def then_forever(result: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    jobs.submit(step(rec, "a"), then_forever)
    jobs.submit(step(rec, "b"))
    await asyncio.wait_for(started.wait(), 5)
    for task in list(jobs._then_tasks):  # what the loop's shutdown does to pending tasks
        task.cancel()
    await asyncio.wait_for(jobs.join(), 5)
    assert [line.split(" on ")[0] for line in rec.log] == ["run a", "run b"]
    assert rec.errors == []
