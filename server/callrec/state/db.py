"""SQLite (WAL) connection with numbered migrations.

One connection, used from the event loop's thread: every statement is a local,
sub-millisecond write, so a thread hop would cost more than it saves. The exception
is reading that can take long (an event subscriber's backlog over a large log, a page
of a thousand uploads while a store outage has queued them): `read(fn)` runs it on the
reader thread, with a connection of its own; WAL lets it read committed data while the
loop's connection writes, and it never sees a transaction the loop has not committed
yet (sharing the one connection across threads would). Every call's mixer shares the
loop, so a 100 ms query there is 100 ms of late media in every call.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("callrec.state") / "migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text(encoding="utf-8")))
    return sorted(found)


class Database:
    """The server's state database; `transaction()` groups writes atomically."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk (WAL fsynced) when it returns, so what was acknowledged to a
        # client (a started recording, a published event and its sequence number) survives a
        # power cut. Commits are per control action, not per frame: the fsync costs little.
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._reader: ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None
        """Opened, used and closed on the reader thread only."""

    def _migrate(self) -> None:
        current = self.conn.execute("PRAGMA user_version").fetchone()[0]
        for version, script in _migrations():
            if version > current:
                with self.transaction():
                    for statement in script.split(";\n"):
                        if statement.strip():
                            self.conn.execute(statement)
                    self.conn.execute(f"PRAGMA user_version = {version}")

    def reader(self) -> sqlite3.Connection:
        """A read-only connection for the calling thread only (see the module docstring)."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=ON")
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)` on the reader thread, with its read-only connection (see the module docstring).

        Reads run one at a time, in order. `fn` may open its own transaction (`BEGIN` ... `COMMIT`)
        for a consistent snapshot across several statements.
        """
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-db-reader")
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._read_blocking, fn)

    def _read_blocking(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_conn is None:
            self._reader_conn = self.reader()
        return fn(self._reader_conn)

    def _close_reader_conn(self) -> None:
        if self._reader_conn is not None:
            self._reader_conn.close()
            self._reader_conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Stop the reader thread, close the connections (checkpointing the WAL)."""
        if self._reader is not None:
            self._reader.submit(self._close_reader_conn).result()
            self._reader.shutdown(wait=True)
            self._reader = None
        self.conn.close()
