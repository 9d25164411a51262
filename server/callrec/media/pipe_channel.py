"""Framed pickles between the event loop and a worker process, over two pipes (`LoopPipe`).

Used by the audio writer process (`media.writer_pool`); the decode pool shares the wire format
(`HEADER`, `take_messages`). Why the loop's reader and writer callbacks and non-blocking pipes,
not a thread: a thread reading the answers would need the GIL for each of them, and a blocking
write would stall every call when the worker falls behind. Messages queued in one turn of the
loop go out in one write.

Wire format, both ways: a 4-byte little-endian length, then a pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pickle
import struct
import subprocess
from collections.abc import Callable
from subprocess import Popen
from typing import Any

from callrec.runtime_priority import normal_priority

__all__ = [
    "HEADER", "READ_SIZE", "LoopPipe", "append_frame", "serve_commands", "take_messages", "widen_pipe", "write_all",
]

HEADER = struct.Struct("<I")
#: Bytes one read of a pipe takes at most, into a buffer made once (a fresh 1 MiB per read was an
#: mmap and munmap per read: measured, a tenth of the loop's overhead of the decode pool).
READ_SIZE = 1 << 20


def append_frame(buffer: bytearray, message: object) -> None:
    """Append one message as it goes down a pipe: length, then pickle (no copy of the pickle made for it:
    the decode pool does this for every call's tick)."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    buffer += HEADER.pack(len(body))
    buffer += body


def take_messages(buffer: bytearray) -> list[Any]:
    """Unpickle and remove the complete messages at the front of `buffer`; a message cut by a read
    stays for the next."""
    messages: list[Any] = []
    offset = 0
    with memoryview(buffer) as view:
        while len(buffer) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, offset)
            start = offset + HEADER.size
            if len(buffer) - start < size:
                break
            messages.append(pickle.loads(view[start:start + size]))
            offset = start + size
    del buffer[:offset]
    return messages


def widen_pipe(fd: int) -> None:
    """Let the pipe hold `READ_SIZE` bytes (Linux; elsewhere, or above the system's limit, it stays as it is).

    A busy server's batch is hundreds of kilobytes; through a default 64 KiB pipe the worker stopped at
    every 64 KiB until the loop came round to read.
    """
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, READ_SIZE)


def serve_commands(commands: int, results: int, answer: Callable[[Any], object | None]) -> None:
    """The worker's side: `answer` each message until the parent closes the command pipe.

    Everything one read brings (the loop sends what it queued in one turn in one write) is run, then
    answered in one write: the loop wakes once per batch, not once per message. A message cut by the read
    waits for the next read. `answer` returns the message to send back, or None.
    """
    normal_priority()  # as `child_process.child_connections`: a worker never inherits real-time priority
    scratch = bytearray(READ_SIZE)
    pending = bytearray()
    while True:
        n = os.readv(commands, [scratch])
        if n == 0:
            return
        pending += memoryview(scratch)[:n]
        answers = bytearray()
        for message in take_messages(pending):
            reply = answer(message)
            if reply is not None:
                append_frame(answers, reply)
        if answers:
            write_all(results, answers)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """A blocking write of everything (the worker's side)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)  # not inside the slice: compiled, a bytearray or memoryview slice evaluates
        view = view[written:]  # its bounds twice (see `callrec.compiled`)


class LoopPipe:
    """A worker process (`python -m module <command fd> <result fd>`) and the loop's side of its pipes.

    `on_message(message)` runs on the loop for each message the worker sends; `on_exit(code)` once,
    when its result pipe closes (it exited, or was killed). `send` never blocks: what the pipe does
    not take waits in `queued_bytes` until the worker reads.
    """

    def __init__(self, module: str, on_message: Callable[[Any], None], on_exit: Callable[[int | None], None]) -> None:
        from callrec.child_process import start_child

        child = start_child(module)
        # The Connection objects only carried the descriptors: keep them, drop the wrappers.
        self._commands, self._results = os.dup(child.commands.fileno()), os.dup(child.events.fileno())
        child.commands.close()
        child.events.close()
        for fd in (self._commands, self._results):
            os.set_blocking(fd, False)
            widen_pipe(fd)
        self.process: Popen[bytes] = child.process
        self._on_message = on_message
        self._on_exit = on_exit
        self._outgoing = bytearray()
        self._incoming = bytearray()
        self._scratch = bytearray(READ_SIZE)
        self._flush_scheduled = False
        self._sending = True  # until `finish` closed the command pipe
        self.alive = True
        self._exited = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._results, self._on_readable)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    @property
    def queued_bytes(self) -> int:
        """Bytes sent but not yet taken by the pipe: how far the worker is behind."""
        return len(self._outgoing)

    def send(self, message: object) -> None:
        """Queue a message; everything queued in this turn of the loop goes out in one write."""
        if not self._sending:
            raise OSError("the worker's command pipe is closed")
        if not self._outgoing and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        append_frame(self._outgoing, message)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._sending:
            return
        try:
            while self._outgoing:
                written = os.write(self._commands, self._outgoing)
                del self._outgoing[:written]
        except BlockingIOError:
            self._loop.add_writer(self._commands, self._flush)
            return
        except OSError:  # the worker is gone: its result pipe's end says so (`on_exit`)
            self._stop_sending()
            return
        self._loop.remove_writer(self._commands)

    def _on_readable(self) -> None:
        try:
            n = os.readv(self._results, [self._scratch])
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            self._ended()
            return
        self._incoming += memoryview(self._scratch)[:n]
        for message in take_messages(self._incoming):
            self._on_message(message)

    def _stop_sending(self) -> None:
        if self._sending:
            self._sending = False
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self._commands)
            with contextlib.suppress(OSError):
                os.close(self._commands)

    def _ended(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._stop_sending()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._results)
        with contextlib.suppress(OSError):
            os.close(self._results)
        self._exited.set()
        self._on_exit(self._exit_code())

    def _exit_code(self) -> int | None:
        """The worker's exit status: its result pipe closes as it dies, a moment before it can be reaped."""
        try:
            return self.process.wait(timeout=0.1)
        except subprocess.TimeoutExpired:  # it closed the pipe and lives on: `finish` or `kill` ends it
            return None

    async def finish(self, timeout: float = 10.0) -> None:
        """Send what is queued, close the command pipe and wait for the worker to answer the rest and
        exit (killed after `timeout` s)."""
        if self._sending and self._outgoing:
            deadline = self._loop.time() + timeout
            while self._outgoing and self.alive and self._loop.time() < deadline:
                self._flush()
                await asyncio.sleep(0.005)
        self._stop_sending()
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self._exited.wait()
        await asyncio.to_thread(self.process.wait)

    def kill(self) -> None:
        """Kill the worker at once (its end still comes through `on_exit`)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
