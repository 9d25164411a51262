"""The event log as a Redis Stream (cluster mode): every node appends to one stream and follows it.

Why a Stream: `SubscribeEvents` on any node must return the events of the whole cluster in one order,
resumable on any node with `after_sequence` (SPEC §8). One Redis stream gives every node that order,
and its entry ids can carry the sequence numbers themselves.

Keys (both under the hash tag `{<key_prefix>}`, so that the append script's two keys share one slot
should the Redis be a cluster):

- `{callrec}:events`: the stream. Entry id `<sequence>-0`; fields `id`, `event_type`, `subject`,
  `server_call_id`, `recording_id`, `event_time` (ISO 8601), `payload` (JSON), `json` (the ACS
  rendering, byte for byte) and `created_at` (epoch seconds, Redis's clock: one clock for every node,
  which retention compares against).
- `{callrec}:event_sequence`: the newest sequence ever appended. Kept apart from the stream because
  trimming empties the stream but must never let a number be handed out again.

One global, dense order: `append` runs one Lua script that takes the next sequence, `XADD`s the entry
with that explicit id and `INCR`s the counter. A script runs atomically, so appends from every node
get 1, 2, 3, ... with no gap and no reuse. The `XADD` comes before the `INCR` because Redis does not
undo a script's earlier writes when a later command fails: a refused `XADD` (out of memory) then
leaves nothing behind.

Delivery: one task per instance follows the stream (`XREAD BLOCK` from the last id it handed out) and
hands every entry, in stream order, to this instance's subscriptions, its own appends included: what a
subscriber sees is the stream's order, never the order in which this node's appends returned. The
handover of `log.py` holds with "delivered" in place of "committed": a subscription's queue starts
after the last sequence the task delivered (`_queue_from`), and its backlog is read with `XRANGE` in
pages up to there, filtered in Python. The backlog's entries are dense (trimming removes only a
prefix), so a first entry other than `after + 1` means the backlog was trimmed before it was read:
OUT_OF_RANGE, as with SQLite.

Outages: an `append` (or a sequence query, a prune, a backlog read) while Redis does not answer
raises UNAVAILABLE naming the URL (never its password). Appends are not retried: a reply lost after
the script ran would hide a committed event, and a retry would publish it twice under two numbers.
The following task retries with capped backoff, logs once per outage (and once when it is back), and
resumes from its last id, so its subscribers miss nothing and see nothing twice.

Durability: "a published sequence number is never reused" holds only if Redis keeps every
acknowledged write: `appendonly yes` and `appendfsync always`. With `appendfsync everysec` a crash of
the Redis host can forget up to a second of appended events, and without the AOF a restart forgets
them all (and resets the counter); their numbers would then be given to other events, and a
subscriber resuming with `after_sequence` would skip those or see different events under numbers it
already had. `start()` reads both settings (`CONFIG GET`; ignored when CONFIG is refused, as on many
managed services) and logs a warning naming each one that is weaker. Needs Redis >= 6.2 (`XTRIM
MINID`, exclusive `XRANGE` bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callrec.core.errors import CallrecError, ErrorCode
from callrec.events.log import EventLogBase, EventLogPort, pruned_error, stored_event
from callrec.events.model import EventFilter, NewEvent, StoredEvent
from callrec.logs import get_logger
from callrec.security.redact import redact_text, redact_url

__all__ = ["RedisEventLog"]

log = get_logger("events.redis")

T = TypeVar("T")
Entry = tuple[str, dict[str, str]]
"""A stream entry as read with `decode_responses`: its id and its fields."""

PAGE_SIZE = 500
"""Most entries one backlog or prune `XRANGE` returns (~0.5 MB)."""
TAIL_BATCH = 1000
"""Most entries the following task takes per `XREAD` (then handed out one per step of the event loop)."""
TAIL_BLOCK_MS = 1000
"""How long one `XREAD` waits for new entries before it is issued again."""
COMMAND_TIMEOUT_S = 5.0
"""Connect and reply timeout of every command but the blocking `XREAD`."""
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
"""Retry interval of the following task during an outage: doubles from the first to the second, so a
Redis that is back is noticed within two seconds."""

_OUTAGE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)
"""Errors that mean "Redis is not reachable (or not writable) now", not "this request is wrong".
`BusyLoadingError` (Redis reading its AOF after a restart) is a `ConnectionError`."""

_APPEND_SCRIPT = """
local sequence = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
local now = redis.call('TIME')
local created_at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
redis.call('XADD', KEYS[1], string.format('%d-0', sequence), 'created_at', created_at, unpack(ARGV))
redis.call('INCR', KEYS[2])
return sequence
"""
"""Next sequence, entry and counter in one atomic step (see the module docstring for the order)."""


class RedisEventLog(EventLogBase):
    """An event log on a Redis Stream shared by every node of a cluster (see the module docstring).

    `await start()` before the first `subscribe`, `await close()` at shutdown.
    """

    def __init__(
        self,
        url: str,
        retention: timedelta,
        on_publish: Callable[[StoredEvent], None] | None = None,
        *,
        max_subscribers: int = 1000,
        max_queue: int = 10_000,
        key_prefix: str = "callrec",
    ) -> None:
        super().__init__(on_publish, max_subscribers, max_queue)
        self.retention = retention
        self.url = redact_url(url)
        """The Redis URL without its password: for messages and logs."""
        self._secrets = [urlsplit(url).password]
        self._stream_key = f"{{{key_prefix}}}:events"
        self._counter_key = f"{{{key_prefix}}}:event_sequence"
        # No retries inside redis-py: an append must not run twice (see the module docstring), and the
        # following task has its own backoff.
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        # The blocking XREAD holds its connection for up to TAIL_BLOCK_MS: a client of its own, so it
        # never waits for (or makes wait) a pooled command, with a timeout longer than the block.
        self._tail_redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=TAIL_BLOCK_MS / 1000 + COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._append_script = self._redis.register_script(_APPEND_SCRIPT)
        self._dispatched = 0
        self._tail_task: asyncio.Task[None] | None = None

    @property
    def dispatched_sequence(self) -> int:
        """The newest sequence this instance has handed to its subscriptions (0 before `start`)."""
        return self._dispatched

    async def start(self) -> None:
        """Check Redis's durability settings and start following the stream from its current end.

        Raises UNAVAILABLE when Redis does not answer: a node that cannot reach its event log should
        not start serving as if it could.
        """
        if self._tail_task is not None:
            return
        self._dispatched = await self.last_sequence()
        await self._check_durability()
        self._tail_task = asyncio.create_task(self._follow_stream(), name=f"event log tail ({self.url})")

    async def close(self) -> None:
        """Stop following the stream and close the connections (open subscriptions get nothing more)."""
        task, self._tail_task = self._tail_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()
        await self._tail_redis.aclose()

    async def append(self, event: NewEvent) -> StoredEvent:
        """Append the event with the next global sequence; subscribers get it from the following task."""
        fields = [
            "id", event.id,
            "event_type", event.event_type.value,
            "subject", event.subject,
            "server_call_id", event.server_call_id,
            "recording_id", event.recording_id,
            "event_time", event.event_time.isoformat(),
            "payload", json.dumps(event.payload, ensure_ascii=False),
            "json", event.json,
        ]  # fmt: skip
        sequence = int(
            await self._io(
                "could not append the event",
                self._append_script(keys=[self._stream_key, self._counter_key], args=fields),
            )
        )
        stored = StoredEvent(sequence, event)
        if self._on_publish:
            self._on_publish(stored)
        return stored

    async def last_sequence(self) -> int:
        """Sequence of the newest event ever appended by any node (0 when none)."""
        value = await self._io("could not read the event sequence", self._redis.get(self._counter_key))
        return int(value or 0)

    async def oldest_sequence(self) -> int:
        """Sequence of the oldest retained event (last + 1 when the stream is empty).

        The first entry and the counter are read in one MULTI, so an append between the two reads
        cannot make an empty stream look like it starts after that append.
        """

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrange(self._stream_key, "-", "+", count=1)
                pipe.get(self._counter_key)
                return list(await pipe.execute())

        first, last = await self._io("could not read the oldest event", read())
        return _sequence_of(first[0][0]) if first else int(last or 0) + 1

    async def prune(self, now: float | None = None) -> int:
        """Trim entries created longer ago than the retention; return how many. The counter stays.

        The stream is in creation order (one clock, Redis's), so the expired entries are a prefix:
        scan from the oldest to the first one to keep, and trim exactly (`XTRIM MINID`, not `~`) before it.
        An append racing with the trim gets an id above the cut, so it is never trimmed by mistake.
        """
        cutoff = (now if now is not None else time.time()) - self.retention.total_seconds()
        keep_from: int | None = None
        last_expired: int | None = None
        start = "-"
        while keep_from is None:
            entries = await self._xrange("could not prune the event log", start, "+")
            for entry_id, fields in entries:
                if float(fields.get("created_at", 0)) >= cutoff:
                    keep_from = _sequence_of(entry_id)
                    break
                last_expired = _sequence_of(entry_id)
            if len(entries) < PAGE_SIZE:
                break
            start = f"({entries[-1][0]}"
        if last_expired is None:
            return 0
        cut = keep_from if keep_from is not None else last_expired + 1
        trimmed = await self._io(
            "could not prune the event log",
            self._redis.xtrim(self._stream_key, minid=f"{cut}-0", approximate=False),
        )
        return int(trimmed)

    def _queue_from(self) -> int:
        """The last sequence the following task delivered: it delivers every later one, in order."""
        if self._tail_task is None:
            raise RuntimeError("RedisEventLog: await start() before subscribing")
        return self._dispatched

    async def _read_page(self, after: int, upto: int, flt: EventFilter) -> tuple[list[StoredEvent], int]:
        """Up to `PAGE_SIZE` entries in (after, upto], those that match, and the cursor to continue from.

        Every entry up to `upto` was delivered, so it exists unless it was trimmed; trimming removes a
        prefix, so the page starts exactly at `after + 1` or the backlog was pruned before it was read.
        """
        if after >= upto:
            return [], upto
        entries = await self._xrange("could not read the event backlog", f"{after + 1}-0", f"{upto}-0")
        if not entries or _sequence_of(entries[0][0]) != after + 1:
            raise pruned_error(after)
        page = [_stored(entry_id, fields) for entry_id, fields in entries]
        cursor = page[-1].sequence if len(page) == PAGE_SIZE else upto
        return [stored for stored in page if flt.matches(stored.event)], cursor

    async def _follow_stream(self) -> None:
        """Hand every entry after `_dispatched` to the subscriptions, in order, until cancelled.

        Survives outages: it retries with capped backoff, logs once when Redis is lost and once when
        it is back, and reads on from the last entry it handed out.
        """
        backoff = BACKOFF_MIN_S
        lost_at: float | None = None
        while True:
            try:
                reply = await self._tail_redis.xread(
                    {self._stream_key: f"{self._dispatched}-0"}, count=TAIL_BATCH, block=TAIL_BLOCK_MS
                )
                if lost_at is not None:
                    await self._back_after_outage(time.monotonic() - lost_at)
                    lost_at, backoff = None, BACKOFF_MIN_S
                for entry_id, fields in _xread_entries(reply):
                    self._dispatch(_stored(entry_id, fields))
                    # One entry per step of the loop, as SQLite appends arrive: a subscriber between two
                    # events (writing the last one) is not cut off by a batch of 2 × max_queue at once.
                    await asyncio.sleep(0)
            except Exception as exc:  # any failure: retry; an outage is logged once, not per attempt
                if lost_at is None:
                    lost_at = time.monotonic()
                    if isinstance(exc, _OUTAGE):
                        log.warning("event log lost Redis; following it again when it is back", url=self.url,
                                    error=self._redact(exc), after_sequence=self._dispatched)
                    else:
                        log.exception("event log could not follow the Redis stream; retrying", url=self.url,
                                      after_sequence=self._dispatched)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _dispatch(self, stored: StoredEvent) -> None:
        """Deliver one entry; a gap means entries were trimmed (or lost) before this node read them."""
        if stored.sequence != self._dispatched + 1:
            log.error("event log skipped events trimmed before this node read them; subscribers here miss them",
                      url=self.url, first_missing=self._dispatched + 1, next_sequence=stored.sequence)
        self._dispatched = stored.sequence
        self._deliver(stored)

    async def _back_after_outage(self, down_s: float) -> None:
        """Log the reconnection, and loudly if Redis came back without the events it had acknowledged."""
        log.info("event log reconnected to Redis", url=self.url, down_s=round(down_s, 3),
                 after_sequence=self._dispatched)
        try:
            counter = await self.last_sequence()
        except CallrecError:
            return  # gone again: the next XREAD notices
        if counter < self._dispatched:
            log.error("Redis lost acknowledged events (restarted without appendonly/appendfsync always?): "
                      "their sequence numbers will be given to new events", url=self.url,
                      redis_sequence=counter, delivered_sequence=self._dispatched)

    async def _check_durability(self) -> None:
        """Warn, naming the setting, when Redis may lose acknowledged appends (see the module docstring)."""
        try:
            config = await self._redis.config_get("append*")
        except RedisError as exc:
            log.info("could not read Redis's persistence settings (CONFIG refused); durability unchecked",
                     url=self.url, error=self._redact(exc))
            return
        for setting, required in (("appendonly", "yes"), ("appendfsync", "always")):
            value = config.get(setting)
            if value is not None and value != required:
                log.warning(
                    f"Redis {setting} is {value!r}, not {required!r}: a Redis crash or restart can lose "
                    "acknowledged events and reuse their sequence numbers",
                    url=self.url, setting=setting, value=value, required=required,
                )

    async def _xrange(self, doing: str, start: str, end: str) -> list[Entry]:
        """Up to `PAGE_SIZE` entries of the stream from `start` to `end` (`XRANGE` bounds)."""
        reply = await self._io(doing, self._redis.xrange(self._stream_key, start, end, count=PAGE_SIZE))
        return _entries(reply)

    async def _io(self, doing: str, op: Awaitable[T]) -> T:
        """Await a Redis command; an outage becomes UNAVAILABLE naming the URL (without its password)."""
        try:
            return await op
        except _OUTAGE as exc:
            raise CallrecError(
                f"event log unavailable: {doing}: Redis at {self.url} is unreachable ({self._redact(exc)}); "
                "try again when it is back",
                ErrorCode.UNAVAILABLE,
            ) from exc

    def _redact(self, exc: BaseException) -> str:
        return redact_text(str(exc) or type(exc).__name__, self._secrets)


if TYPE_CHECKING:
    _PORT: type[EventLogPort] = RedisEventLog  # mypy checks here that the class implements the port


def _sequence_of(entry_id: str) -> int:
    """The sequence an entry id `<sequence>-0` carries."""
    return int(entry_id.partition("-")[0])


def _entries(raw: Any) -> list[Entry]:
    """`XRANGE`'s entries, typed (redis-py types them loosely: bytes or str, fields or None)."""
    return [(str(entry_id), dict(fields or {})) for entry_id, fields in raw or []]


def _xread_entries(reply: Any) -> list[Entry]:
    """The entries of `XREAD`'s reply for the one stream it reads: pairs in RESP2, a mapping in RESP3."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _stream, entries in reply)
    return [entry for entries in streams for entry in _entries(entries)]


def _stored(entry_id: str, fields: dict[str, str]) -> StoredEvent:
    return stored_event(_sequence_of(entry_id), fields)
