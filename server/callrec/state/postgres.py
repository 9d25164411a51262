"""PostgreSQL for cluster mode (`--database-url postgresql://...`): a connection pool and migrations.

Why async (psycopg 3's `AsyncConnection` behind `psycopg_pool.AsyncConnectionPool`): every call's
mixer runs on the event loop, and a query to a database across the network, or one that waits out a
failover, must never hold that loop. The repositories (`state.pg_recordings`, `state.pg_chunks`)
take a connection per statement from the pool, or the one of the transaction their task opened
(`transaction()`, carried in a context variable, so a task's statements inside `async with
db.transaction()` commit together and other tasks' statements stay outside it).

Migrations (`state/pg_migrations/NNNN_*.sql`) run at start under an advisory lock inside one
transaction: nodes that start at once against an empty database migrate one after the other, and
each applies only the versions `schema_migrations` does not list yet.

Errors: a database that cannot be reached becomes UNAVAILABLE with the host, port and database
(never the password) and what to do; the server keeps recording what it already records.

No statement waits forever: every connection sets `statement_timeout` (a statement stuck behind
another node's lock, or on an overloaded database, becomes UNAVAILABLE, retried by the caller) and
`idle_in_transaction_session_timeout` (a node that stalls inside a transaction loses it, and its
locks, instead of holding every other node's statements behind them).
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from callrec.core.errors import CallrecError, ErrorCode
from callrec.logs import get_logger

__all__ = ["PostgresDatabase", "describe_url"]

log = get_logger(__name__)

MIGRATION_LOCK = 0x63616C6C726563  # "callrec": the advisory lock nodes take to migrate one at a time

Connection = AsyncConnection[DictRow]


def describe_url(url: str) -> str:
    """`host:port/dbname` of a PostgreSQL URL, for messages and logs (never the password)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _milliseconds(seconds: float) -> int:
    """A PostgreSQL timeout setting (milliseconds; 0 would mean none, so at least 1)."""
    return max(1, round(seconds * 1000))


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("callrec.state") / "pg_migrations"
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class PostgresDatabase:
    """The cluster's shared state database: `open()` it (connects, migrates), then use the repositories."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 5.0,
                 statement_timeout_s: float = 30.0, idle_in_transaction_timeout_s: float = 60.0) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"--database-url must be a postgresql:// URL; got {describe_url(url)!r}")
        self.url = url
        self.where = describe_url(url)
        self.timeout_s = timeout_s
        self.statement_timeout_s = statement_timeout_s
        self._session_settings = (
            ("statement_timeout", _milliseconds(statement_timeout_s)),
            ("idle_in_transaction_session_timeout", _milliseconds(idle_in_transaction_timeout_s)),
        )
        self._tx: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("callrec_pg_tx", default=None)
        self.pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, int(timeout_s))},
            connection_class=AsyncConnection[DictRow],
            configure=self._configure,
            name="callrec-state",
        )

    async def _configure(self, conn: Connection) -> None:
        """Session settings of every new connection (`SET` in autocommit: they last as long as it does)."""
        for name, value in self._session_settings:
            await conn.execute(f"SET {name} = {value}")

    async def open(self) -> None:
        """Connect (waiting at most the timeout) and apply missing migrations."""
        try:
            await self.pool.open(wait=True, timeout=self.timeout_s)
        except PoolTimeout as exc:
            await self.pool.close()
            raise self.unavailable(exc) from None
        await self._migrate()
        log.info("state database ready", database=self.where)

    async def close(self) -> None:
        """Close every connection of the pool."""
        await self.pool.close()

    def unavailable(self, exc: BaseException) -> CallrecError:
        """The UNAVAILABLE error for a database that cannot be reached right now."""
        return CallrecError(
            f"the state database ({self.where}) is unreachable: {str(exc).strip() or type(exc).__name__}; "
            "check that PostgreSQL runs and --database-url is right, then retry",
            ErrorCode.UNAVAILABLE,
        )

    def too_slow(self, exc: BaseException) -> CallrecError:
        """The UNAVAILABLE error for a statement the database cancelled at `statement_timeout`."""
        return CallrecError(
            f"the state database ({self.where}) did not finish a statement within {self.statement_timeout_s:g} s "
            f"({str(exc).strip() or type(exc).__name__}): another node may hold a lock it needs, or the database "
            "is overloaded; retry, and if it persists look for long transactions in pg_stat_activity",
            ErrorCode.UNAVAILABLE,
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """The task's open transaction's connection, else one from the pool (autocommit)."""
        current = self._tx.get()
        if current is not None:
            yield current
            return
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.errors.QueryCanceled as exc:
            raise self.too_slow(exc) from None
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise self.unavailable(exc) from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """BEGIN ... COMMIT on one connection; this task's statements inside use it (nested: joins)."""
        if self._tx.get() is not None:
            async with self.connection() as conn:
                yield conn
            return
        try:
            async with self.pool.connection() as conn, conn.transaction():
                token = self._tx.set(conn)
                try:
                    yield conn
                finally:
                    self._tx.reset(token)
        except psycopg.errors.QueryCanceled as exc:
            raise self.too_slow(exc) from None
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise self.unavailable(exc) from None

    async def _migrate(self) -> None:
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            applied = {int(row["version"]) for row in await cur.fetchall()}
            for version, name, script in _migrations():
                if version in applied:
                    continue
                for statement in script.split(";\n"):
                    if statement.strip() and not _only_comments(statement):
                        await conn.execute(statement.encode())
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                log.info("state database migrated", database=self.where, version=version, migration=name)


def _only_comments(statement: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in statement.splitlines())
