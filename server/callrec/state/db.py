"""SQLite (WAL) connection with numbered migrations.

One connection, used from the event loop's thread: every statement is a local,
sub-millisecond write, so a thread hop would cost more than it saves. The exception
is reading that can take long (an event subscriber's backlog over a large log):
that uses a `reader()` connection of its own on a worker thread; WAL lets it read
committed data while the loop's connection writes, and it never sees a transaction
the loop has not committed yet (sharing the one connection across threads would).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path


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
        """Close the connection (checkpointing the WAL)."""
        self.conn.close()
