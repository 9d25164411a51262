"""`WebhookDispatcher`: every endpoint a durable cursor over the event log, one task per endpoint.

Why one task per endpoint: an endpoint that answers slowly (up to the attempt timeout, 30 s) or is down
for a day (the retry window) must not hold back the others, and within one endpoint events go out in
log order, one at a time, so a receiver sees them in sequence. Each task follows the log through a
subscription with the endpoint's filter (`EventLogPort.subscribe`), POSTs each event (body
`[<the event's ACS JSON>]`, Standard Webhooks signature, `webhook-id` = the event id) and moves the
cursor only when the event is settled: delivered (2xx) or dead-lettered (400/401/403/413, or still
failing 24 h after its first attempt). A 410 disables the endpoint and leaves the event at the cursor.

While an event waits for a retry (10 s ... hourly) the task closes its subscription, so a receiver
that is down for hours does not keep thousands of live events queued in memory; it resubscribes from
the cursor once the event is settled. Every attempt commits the retry state (attempt count, first
attempt time, next attempt time) with the attempt record, so a restart resumes the same schedule with
the same `webhook-id`. Events pruned from the log before an endpoint got them become a dead letter that
names the missing range; the cursor then continues from the oldest retained event.

Time: the schedule runs on an injected `TimeSource` (`callrec.testing.FakeTime` in tests) and stores
wall-clock (unix) times, which survive restarts. The per-attempt timeout is aiohttp's, in real time.

Network policy: `destination.check_url` before every attempt, `WebhookResolver` on every connection
(unless `[webhooks_policy] allow_private`), redirects never followed, no proxy from the environment, no
cookies, at most 64 KiB of a response read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from callrec.cancellation import honour_cancellation
from callrec.core.clock import SystemTime
from callrec.core.errors import OutOfRange, ResourceExhausted
from callrec.core.ports import TimeSource
from callrec.events.acs import acs_time
from callrec.events.log import EventLogPort
from callrec.events.model import EventFilter, StoredEvent
from callrec.logs import get_logger
from callrec.security.redact import redact_text, redact_url
from callrec.storage.address_policy import Resolve, find_refusal, system_resolve
from callrec.webhooks.config import WebhooksConfig, check_event_types, check_schema
from callrec.webhooks.destination import WebhookResolver, check_addresses, check_url
from callrec.webhooks.errors import (
    EndpointManagedByConfig,
    EndpointNotFound,
    EventNotFound,
    InvalidWebhook,
    ValidationHandshakeFailed,
)
from callrec.webhooks.schedule import DeliveryOutcome, decide
from callrec.webhooks.signing import check_secret, generate_secret, signed_headers
from callrec.webhooks.store import (
    SOURCE_API,
    SOURCE_CONFIG,
    DeadLetter,
    DeliveryAttempt,
    EndpointCursor,
    WebhookEndpoint,
    WebhookStorePort,
    new_endpoint_id,
)

__all__ = ["SessionFactory", "WebhookDispatcher", "default_session"]

log = get_logger("webhooks")

SessionFactory = Callable[[AbstractResolver | None], aiohttp.ClientSession]
"""Makes the dispatcher's HTTP session; given the policy's resolver (None with `allow_private`)."""

MAX_RESPONSE_BYTES = 64 * 1024
"""Most of a response body read (the handshake's JSON is ~100 bytes; the rest is never needed)."""
TASK_RESTART_S = 10.0
"""An endpoint task that failed unexpectedly (a database error) starts again after this long."""
USER_AGENT = "callrec-webhooks/1"
VALIDATION_EVENT_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"


def default_session(resolver: AbstractResolver | None) -> aiohttp.ClientSession:
    """An HTTP session for webhooks: the policy's resolver on every connection, nothing from the environment.

    `limit=0`: one connection per endpoint task at most, and a connection limit would let a hundred
    slow endpoints hold up the hundred-and-first. No DNS cache: each new connection is resolved (and
    checked) again. No proxy from the environment (the policy would check the proxy, not the receiver),
    no cookies (receivers cannot make deliveries stateful).
    """
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=0)
    return aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar())


@dataclass(frozen=True)
class _Response:
    """What one POST got: a status (None without a response), or an error."""

    at: datetime
    status: int | None
    error: str
    retry_after: str | None
    body: bytes
    duration_ms: float


class WebhookDispatcher:
    """Delivers the event log to every enabled endpoint; the API and the CLI manage endpoints through it.

    `start()` applies the TOML endpoints (`config.endpoints`, upserted by URL) and starts a task per
    enabled endpoint; `close()` cancels them (an attempt in flight is made again after a restart). The
    store belongs to the caller, who closes it after `close()`.
    """

    def __init__(
        self,
        event_log: EventLogPort,
        store: WebhookStorePort,
        *,
        config: WebhooksConfig | None = None,
        clock: TimeSource | None = None,
        session_factory: SessionFactory = default_session,
        resolve: Resolve = system_resolve,
        rand: Callable[[], float] = random.random,
        topic: str = "/callrec/webhooks",
    ) -> None:
        self._log = event_log
        self._store = store
        self._config = config or WebhooksConfig()
        self.policy = self._config.policy
        self._clock: TimeSource = clock or SystemTime()
        self._session_factory = session_factory
        self._resolve = resolve
        self._rand = rand
        self._topic = topic
        """Event Grid `topic` of the validation event (the server's resource id)."""
        self._timeout = aiohttp.ClientTimeout(total=self.policy.attempt_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._closed = False

    @property
    def store(self) -> WebhookStorePort:
        """The durable state (the owner closes it after `close()`)."""
        return self._store

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Apply the TOML endpoints and start a delivery task for every enabled endpoint."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("a closed WebhookDispatcher cannot start again; make a new one")
        configured = await self._store.sync_config(
            self._config.endpoints, await self._log.last_sequence(), self._now()
        )
        for endpoint in configured:
            log.info("webhook endpoint configured", endpoint_id=endpoint.id, url=endpoint.shown_url,
                     enabled=endpoint.enabled)
        self._started = True
        for endpoint in await self._store.list_endpoints():
            if endpoint.enabled:
                self._spawn(endpoint.id)

    async def close(self) -> None:
        """Stop every delivery task and close the HTTP session (idempotent)."""
        self._closed = True
        self._started = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def running(self, endpoint_id: str) -> bool:
        """Whether the endpoint's delivery task runs now."""
        task = self._tasks.get(endpoint_id)
        return task is not None and not task.done()

    # -- endpoint management -----------------------------------------------------------------------
    async def add_endpoint(
        self,
        url: str,
        secret: str | None = None,
        *,
        event_types: Iterable[str] = (),
        server_call_id: str = "",
        schema: str = "callrec",
        after_sequence: int | None = None,
    ) -> WebhookEndpoint:
        """Add an endpoint (source `api`) and start delivering to it; returns it with its secret.

        `secret`: a `whsec_` secret, or None to generate one (shown once, by the caller). The URL is
        checked against the address policy now (and on every connection later); an `eventgrid` endpoint
        must answer Event Grid's validation handshake first. Deliveries start with the events appended
        after `after_sequence` (default: the newest event now, i.e. new events only).

        Raises `InvalidWebhook` (URL, secret, schema, filter, a URL already added), `WebhookRefused`
        (address policy), `UnresolvableHost`, `ValidationHandshakeFailed`.
        """
        target = check_url(url, allow_private=self.policy.allow_private)
        secret = check_secret(secret) if secret else generate_secret()
        types = check_event_types(event_types)
        schema = check_schema(schema)
        if not isinstance(server_call_id, str):
            raise InvalidWebhook("server_call_id must be a string")
        if after_sequence is not None and after_sequence < 0:
            raise InvalidWebhook(f"after_sequence must be >= 0, got {after_sequence}")
        await asyncio.to_thread(
            check_addresses, target.host, target.port, allow_private=self.policy.allow_private, resolve=self._resolve
        )
        taken = await self._store.find_endpoint(target.url)
        if taken is not None:
            raise InvalidWebhook(f"an endpoint for {redact_url(target.url)!r} exists already (id {taken.id})")
        endpoint = WebhookEndpoint(
            id=new_endpoint_id(),
            url=target.url,
            secret=secret,
            event_types=types,
            server_call_id=server_call_id.strip(),
            schema=schema,
            source=SOURCE_API,
            created_at=self._now(),
        )
        if schema == "eventgrid":
            await self._handshake(endpoint)
        after = after_sequence if after_sequence is not None else await self._log.last_sequence()
        await self._store.insert_endpoint(endpoint, after)
        log.info("webhook endpoint added", endpoint_id=endpoint.id, url=endpoint.shown_url, schema=schema,
                 event_types=list(types), server_call_id=endpoint.server_call_id, after_sequence=after)
        if self._started:
            self._spawn(endpoint.id)
        return endpoint

    async def remove_endpoint(self, endpoint_id: str) -> None:
        """Stop delivering to an endpoint and forget it with its history (not for endpoints of the TOML file)."""
        endpoint = await self._store.get_endpoint(endpoint_id)
        if endpoint.source == SOURCE_CONFIG:
            raise EndpointManagedByConfig(
                f"webhook endpoint {endpoint_id} ({endpoint.shown_url}) comes from the configuration file's "
                "[[webhooks]] list; remove it there and restart the server"
            )
        await self._stop(endpoint_id)
        await self._store.delete_endpoint(endpoint_id)
        log.info("webhook endpoint removed", endpoint_id=endpoint_id, url=endpoint.shown_url)

    async def enable(self, endpoint_id: str) -> WebhookEndpoint:
        """Resume deliveries to a disabled endpoint, from its cursor, with a fresh 24 h window.

        An Event Grid endpoint that never passed its validation handshake must pass it now
        (`ValidationHandshakeFailed` otherwise).
        """
        endpoint = await self._store.get_endpoint(endpoint_id)
        if not endpoint.validated:
            await self._handshake(endpoint)
            await self._store.set_validated(endpoint_id)
        if not endpoint.enabled:
            endpoint = await self._store.set_enabled(endpoint_id, True)
            log.info("webhook endpoint enabled", endpoint_id=endpoint_id, url=endpoint.shown_url)
        if self._started and not self.running(endpoint_id):
            self._spawn(endpoint_id)
        return await self._store.get_endpoint(endpoint_id)

    async def list_endpoints(self) -> list[WebhookEndpoint]:
        """Every endpoint, oldest first (with secrets: the API layer must not show them)."""
        return await self._store.list_endpoints()

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        """One endpoint; `EndpointNotFound` if unknown."""
        return await self._store.get_endpoint(endpoint_id)

    async def cursor(self, endpoint_id: str) -> EndpointCursor:
        """How far an endpoint got, and the retry state of the event at its cursor."""
        await self._store.get_endpoint(endpoint_id)
        return await self._store.cursor(endpoint_id)

    async def deliveries(self, endpoint_id: str, limit: int = 100) -> list[DeliveryAttempt]:
        """The endpoint's newest attempts (at most `limit`, and at most `max_attempts_kept` are kept), newest first."""
        await self._store.get_endpoint(endpoint_id)
        return await self._store.deliveries(endpoint_id, _check_limit(limit))

    async def dead_letters(self, endpoint_id: str, limit: int = 100) -> list[DeadLetter]:
        """The endpoint's newest dead letters (at most `limit`), newest first."""
        await self._store.get_endpoint(endpoint_id)
        return await self._store.dead_letters(endpoint_id, _check_limit(limit))

    async def redeliver(self, endpoint_id: str, event_id: str) -> DeliveryAttempt:
        """POST one event to the endpoint again, now, once; recorded as an attempt, the cursor untouched.

        The event must be one the endpoint has seen (in its deliveries or dead letters) and still be in
        the event log (`EventNotFound` otherwise). Works on a disabled endpoint too: it is how an operator
        checks that a receiver is back before `enable`.
        """
        endpoint = await self._store.get_endpoint(endpoint_id)
        sequence = await self._store.find_sequence(endpoint_id, event_id)
        if sequence is None:
            raise EventNotFound(
                f"event {event_id!r} was never sent to webhook endpoint {endpoint_id}; redeliver sends again an "
                "event listed by `callrec webhooks deliveries` or its dead letters"
            )
        stored = await self._read_event(sequence, event_id)
        response = await self._send(endpoint, event_id, _body(stored), "Notification")
        attempt = DeliveryAttempt(
            endpoint_id=endpoint_id,
            event_id=event_id,
            sequence=sequence,
            attempt=await self._store.last_attempt_number(endpoint_id, event_id) + 1,
            at=response.at.timestamp(),
            status=response.status,
            error=response.error,
            duration_ms=response.duration_ms,
            redelivery=True,
        )
        await self._store.record(attempt=attempt)
        log.info("webhook event redelivered", endpoint_id=endpoint_id, url=endpoint.shown_url, event_id=event_id,
                 sequence=sequence, status=response.status, error=response.error)
        return attempt

    # -- the task of one endpoint ------------------------------------------------------------------
    def _spawn(self, endpoint_id: str) -> None:
        if self.running(endpoint_id):
            return
        task = asyncio.create_task(self._run(endpoint_id), name=f"webhook-{endpoint_id}")
        self._tasks[endpoint_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(endpoint_id) is done:
                del self._tasks[endpoint_id]

        task.add_done_callback(forget)

    async def _stop(self, endpoint_id: str) -> None:
        task = self._tasks.pop(endpoint_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, endpoint_id: str) -> None:
        """Follow the log for one endpoint until it is disabled or removed (or the dispatcher closes)."""
        while True:
            honour_cancellation()  # a cancel a library swallowed (callrec/cancellation.py)
            try:
                if await self._follow(endpoint_id):
                    return
            except asyncio.CancelledError:
                raise
            except EndpointNotFound:  # removed meanwhile
                return
            except Exception:
                log.exception("webhook delivery task failed; it starts again", endpoint_id=endpoint_id,
                              retry_in_s=TASK_RESTART_S)
                await self._clock.sleep(TASK_RESTART_S)

    async def _follow(self, endpoint_id: str) -> bool:
        """One subscription's worth of deliveries; True when the endpoint stopped (disabled), False to resubscribe."""
        endpoint = await self._store.get_endpoint(endpoint_id)
        if not endpoint.enabled:
            return True
        if not endpoint.validated:  # an eventgrid endpoint from the TOML file: its handshake comes first
            try:
                await self._handshake(endpoint)
            except ValidationHandshakeFailed as exc:
                await self._store.set_enabled(endpoint_id, False, str(exc))
                log.error("webhook endpoint disabled", endpoint_id=endpoint_id, url=endpoint.shown_url, reason=str(exc))
                return True
            await self._store.set_validated(endpoint_id)
        cursor = await self._store.cursor(endpoint_id)
        last = await self._log.last_sequence()
        if cursor.delivered_sequence > last:
            log.warning("webhook cursor is beyond the event log (was the log reset?); following from its end",
                        endpoint_id=endpoint_id, cursor=cursor.delivered_sequence, last_sequence=last)
            cursor = EndpointCursor(endpoint_id, last)
            await self._store.record(cursor=cursor)
        sub = self._log.subscribe(cursor.delivered_sequence, endpoint.event_filter)
        released = False

        def release() -> None:
            """Close the subscription while an event waits for its retry (no live events pile up meanwhile)."""
            nonlocal released
            released = True
            sub.close()

        try:
            while not released:
                try:
                    stored = await sub.next()
                except OutOfRange:
                    await self._dead_letter_pruned(endpoint, sub.delivered)
                    return False
                except ResourceExhausted:  # fell too far behind live events: read them from the log instead
                    return False
                if not await self._settle(endpoint, stored, release):
                    return True
                sub.delivered = stored.sequence
        finally:
            sub.close()
        return False

    async def _settle(self, endpoint: WebhookEndpoint, stored: StoredEvent, release: Callable[[], None]) -> bool:
        """Attempt an event until it is delivered or dead-lettered (True), or the endpoint is disabled (False)."""
        cursor = await self._store.cursor(endpoint.id)
        if cursor.pending_sequence != stored.sequence:
            cursor = replace(cursor.fresh(), pending_sequence=stored.sequence, pending_event_id=stored.event.id)
        event = stored.event
        body = _body(stored)
        while True:
            honour_cancellation()  # a cancel a library swallowed (callrec/cancellation.py)
            due = cursor.next_attempt_at
            if due is not None and due > self._now():
                release()
                while (wait := due - self._now()) > 0:
                    await self._clock.sleep(wait)
            response = await self._send(endpoint, event.id, body, "Notification")
            attempts = cursor.attempts + 1
            first = cursor.first_attempt_at if cursor.first_attempt_at is not None else response.at.timestamp()
            now = self._clock.now()
            decision = decide(
                status=response.status,
                error=response.error,
                attempts=attempts,
                first_attempt_at=datetime.fromtimestamp(first, UTC),
                now=now,
                retry_after=response.retry_after,
                rand=self._rand,
            )
            attempt = DeliveryAttempt(
                endpoint_id=endpoint.id,
                event_id=event.id,
                sequence=stored.sequence,
                attempt=attempts,
                at=response.at.timestamp(),
                status=response.status,
                error=response.error,
                duration_ms=response.duration_ms,
            )
            fields: dict[str, Any] = {
                "endpoint_id": endpoint.id,
                "url": endpoint.shown_url,
                "event_id": event.id,
                "sequence": stored.sequence,
                "attempt": attempts,
                "status": response.status,
                "error": response.error,
            }
            if decision.outcome is DeliveryOutcome.DELIVERED:
                await self._store.record(attempt=attempt, cursor=cursor.settled(stored.sequence))
                log.info("webhook delivered", **fields, duration_ms=round(response.duration_ms, 1))
                return True
            if decision.outcome is DeliveryOutcome.DEAD_LETTER:
                letter = DeadLetter(
                    endpoint_id=endpoint.id,
                    event_id=event.id,
                    event_type=event.event_type.value,
                    first_sequence=stored.sequence,
                    last_sequence=stored.sequence,
                    attempts=attempts,
                    status=response.status,
                    reason=decision.reason,
                    at=now.timestamp(),
                )
                await self._store.record(attempt=attempt, cursor=cursor.settled(stored.sequence), dead_letter=letter)
                log.warning("webhook event dead-lettered", **fields, reason=decision.reason)
                return True
            cursor = replace(cursor, attempts=attempts, first_attempt_at=first, next_attempt_at=None)
            if decision.outcome is DeliveryOutcome.DISABLE:
                await self._store.record(attempt=attempt, cursor=cursor)
                await self._store.set_enabled(endpoint.id, False, decision.reason)
                log.error("webhook endpoint disabled", **fields, reason=decision.reason)
                return False
            delay = decision.delay_s or 0.0
            cursor = replace(cursor, next_attempt_at=now.timestamp() + delay)
            await self._store.record(attempt=attempt, cursor=cursor)
            log.warning("webhook attempt failed; retrying", **fields, retry_in_s=round(delay, 1))

    async def _dead_letter_pruned(self, endpoint: WebhookEndpoint, after: int) -> None:
        """Events after `after` were pruned before this endpoint got them: record the range, skip to the oldest."""
        oldest = await self._log.oldest_sequence()
        first, last = after + 1, oldest - 1
        if last < first:
            return
        reason = (
            f"events {first} to {last} were pruned from the event log (older than its retention) before this "
            "endpoint got them; those among them that match its filter were not delivered"
        )
        letter = DeadLetter(endpoint.id, "", "", first, last, 0, None, reason, self._now())
        await self._store.record(cursor=EndpointCursor(endpoint.id, last), dead_letter=letter)
        log.error("webhook events pruned before delivery", endpoint_id=endpoint.id, url=endpoint.shown_url,
                  first_sequence=first, last_sequence=last)

    async def _read_event(self, sequence: int, event_id: str) -> StoredEvent:
        """The event at `sequence` from the log (`EventNotFound` if it was pruned)."""
        gone = EventNotFound(f"event {event_id!r} (sequence {sequence}) is no longer in the event log (pruned)")
        sub = self._log.subscribe(sequence - 1, EventFilter())
        try:
            stored = await asyncio.wait_for(sub.next(), timeout=30)
        except OutOfRange:
            raise gone from None
        finally:
            sub.close()
        if stored.sequence != sequence or stored.event.id != event_id:
            raise gone
        return stored

    # -- HTTP ----------------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the WebhookDispatcher is closed")
        if self._session is None:
            resolver = None if self.policy.allow_private else WebhookResolver(resolve=self._resolve)
            self._session = self._session_factory(resolver)
        return self._session

    async def _send(self, endpoint: WebhookEndpoint, msg_id: str, body: str, aeg_event_type: str) -> _Response:
        """One signed POST; never raises for what the network or the receiver does (it is in the result)."""
        at = self._clock.now()
        started = time.perf_counter()

        def result(status: int | None, error: str, retry_after: str | None = None, data: bytes = b"") -> _Response:
            return _Response(at, status, error, retry_after, data, (time.perf_counter() - started) * 1000)

        try:
            check_url(endpoint.url, allow_private=self.policy.allow_private)  # IP literals skip the resolver
        except ValueError as exc:
            return result(None, f"refused: {exc}")
        headers = signed_headers(endpoint.secret, msg_id, int(at.timestamp()), body)
        headers["user-agent"] = USER_AGENT
        if endpoint.schema == "eventgrid":
            headers["aeg-event-type"] = aeg_event_type
        try:
            async with self._http().post(
                endpoint.url, data=body.encode(), headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                data = await _read_limited(resp)
                error = ""
                if 300 <= resp.status < 400:
                    error = f"redirect to {redact_url(resp.headers.get('Location', ''))!r} not followed"
                return result(resp.status, error, resp.headers.get("Retry-After"), data)
        except TimeoutError:
            return result(None, f"timed out after {self.policy.attempt_timeout_s:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            refusal = find_refusal(exc)
            if refusal is not None:
                return result(None, f"refused: {refusal}")
            return result(None, redact_text(f"{type(exc).__name__}: {exc}"))

    async def _handshake(self, endpoint: WebhookEndpoint) -> None:
        """Event Grid's subscription validation: the receiver must echo a random code (SPEC §9)."""
        code = secrets.token_urlsafe(24)
        event_id = str(uuid.uuid4())
        doc = [
            {
                "id": event_id,
                "topic": self._topic,
                "subject": "",
                "data": {"validationCode": code, "validationUrl": None},
                "eventType": VALIDATION_EVENT_TYPE,
                "eventTime": acs_time(self._clock.now()),
                "metadataVersion": "1",
                "dataVersion": "2",
            }
        ]
        response = await self._send(
            endpoint, event_id, json.dumps(doc, separators=(",", ":")), "SubscriptionValidation"
        )
        answer: object = None
        with contextlib.suppress(ValueError):
            answer = json.loads(response.body.decode("utf-8", "replace"))
        if response.status == 200 and isinstance(answer, dict) and answer.get("validationResponse") == code:
            log.info("webhook endpoint passed the Event Grid validation handshake", endpoint_id=endpoint.id,
                     url=endpoint.shown_url)
            return
        if response.status is None:
            got = f"no response ({response.error})"
        else:
            excerpt = response.body[:200].decode("utf-8", "replace")
            got = f"HTTP {response.status} with body {excerpt!r}"
        raise ValidationHandshakeFailed(
            f"the Event Grid validation handshake with {endpoint.shown_url} failed: it must answer HTTP 200 with "
            f'{{"validationResponse": "{code}"}} (the data.validationCode it was sent), got {got}'
        )

    def _now(self) -> float:
        return self._clock.now().timestamp()


def _body(stored: StoredEvent) -> str:
    """The request body: the event's stored ACS JSON, byte for byte, in an array of one (never re-rendered)."""
    return "[" + stored.event.json + "]"


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    """At most `MAX_RESPONSE_BYTES` of the response body (a receiver cannot make us buffer more)."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE_BYTES:
        chunk = await resp.content.read(MAX_RESPONSE_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or limit < 1:
        raise InvalidWebhook(f"limit must be a positive integer, got {limit!r}")
    return limit
