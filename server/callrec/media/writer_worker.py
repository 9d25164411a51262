"""Audio recordings' writers in a process of their own: `python -m callrec.media.writer_worker <cmd fd> <result fd>`.

The loop's side, the reasons and the guarantees are in `callrec.media.writer_pool`. Here each writer
(`media.writers`: mp3 through libmp3lame, wav, unmixed wav) is kept under the key the pool gave it,
and the commands run in the order they came:

* `("open", key, factory, path)`: `factory.open(path)`;
* `("write", key, pieces)`: one batch (`core.audio_recording.write_pieces`, as a writer thread runs it);
* `("journal", key, path, document, previous)`: the open chunk's journal (`core.chunker`), behind the batches
  before it: written to `path`, then the journal `previous` (or None) removed (`core.journal_files`);
* `("close", key)`: finish and fsync the file; answered `("closed", key, path)`.

A writer that fails (the disk, the encoder) is answered `("failed", key, message)` and dropped; its
later commands are ignored. The process never exits over one writer.

When the command pipe closes (the server stopped, or was killed), everything already in the pipe is
written first, then the process exits: media the server had handed over survives its kill -9, and
start-up recovery finishes the files left open (`core.chunk_recovery`). SIGINT and SIGTERM are ignored:
a Ctrl-C reaches the whole process group, and the server's drain still needs its writers.

The process runs under `SCHED_BATCH` (`batch_scheduling`): it is woken by every write of the loop into
its pipe, and a normal process woken on the loop's core preempted the loop thread inside that write. Its
batches can wait a few milliseconds (0.1 s of media each, nothing waits on them but the file); the
loop's next turn cannot: measured at 800 participants (80 recordings, about 100 pipe writes a second),
the loop's `os.write` into this pipe took 400-410 µs on average under the normal policy and 180-210 µs
under `SCHED_BATCH`, with the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from callrec.core.audio_recording import write_pieces
from callrec.core.journal_files import write_journal
from callrec.core.ports import AudioWriter
from callrec.media.pipe_channel import serve_commands


def serve(commands: int, results: int) -> None:
    """Run commands until the parent closes the command pipe; answers of one read go out in one write."""
    writers: dict[int, AudioWriter] = {}
    serve_commands(commands, results, lambda message: run_command(message, writers))


def run_command(message: tuple[Any, ...], writers: dict[int, AudioWriter]) -> tuple[Any, ...] | None:
    """Run one command; the answer to send, if it has one (a close, or a failure)."""
    kind, key = message[0], message[1]
    try:
        if kind == "open":
            factory, path = message[2], Path(message[3])
            writers[key] = factory.open(path)
            return None
        writer = writers.get(key)
        if writer is None:  # it failed before: the loop heard so then
            return ("failed", key, "the writer failed earlier") if kind == "close" else None
        if kind == "write":
            write_pieces(writer, message[2])
            return None
        if kind == "journal":
            write_journal(Path(message[2]), message[3], None if message[4] is None else Path(message[4]))
            return None
        if kind == "close":
            del writers[key]
            return ("closed", key, str(writer.close()))
        return ("failed", key, f"unknown command {kind!r}")
    except Exception as exc:  # one writer's failure is its recording's, never the process's
        writers.pop(key, None)
        what = f"opening {message[3]}" if kind == "open" else f"{kind} of writer {key}"
        return ("failed", key, f"{what} failed: {type(exc).__name__}: {exc}")


def batch_scheduling() -> None:
    """Put this process under `SCHED_BATCH` (see the module docstring): the same share of the CPU, without
    preempting the thread that woke it. Where the policy does not exist (not Linux) it stays as it is."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    batch_scheduling()
    serve(int(argv[1]), int(argv[2]))


if __name__ == "__main__":
    main(sys.argv)
