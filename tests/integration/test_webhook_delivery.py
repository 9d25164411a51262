"""Webhook delivery end to end: a real event log, a real HTTP receiver on 127.0.0.1, fake time for the schedule.

The receiver (aiohttp) verifies every request's signature with the `standardwebhooks` reference library,
records what it got and answers as each test scripts it (200, 500, 429 + Retry-After, 410, 400, slow,
302, the Event Grid handshake). The retry schedule runs on `callrec.testing.FakeTime` started on a whole
second with jitter off, so retry times are exact; only the attempt timeout runs in real time (0.3 s).
Traffic goes to 127.0.0.1 only: the SSRF tests that use other names inject resolvers and are refused
before any connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from callrec.core.clock import SystemTime
from callrec.core.ports import TimeSource
from callrec.events import acs
from callrec.events.log import EventLog
from callrec.events.model import EventType, NewEvent, StoredEvent
from callrec.state.db import Database
from callrec.testing import FakeTime
from callrec.webhooks.config import WebhooksConfig, WebhookSettings, WebhooksPolicy
from callrec.webhooks.delivery import WebhookDispatcher
from callrec.webhooks.errors import (
    EndpointManagedByConfig,
    EndpointNotFound,
    EventNotFound,
    InvalidWebhook,
    ValidationHandshakeFailed,
    WebhookRefused,
)
from callrec.webhooks.signing import generate_secret
from callrec.webhooks.store import DeliveryAttempt, WebhookStore

SECRET = generate_secret()
STATE = EventType.RECORDING_STATE_CHANGED.value
FILES = EventType.RECORDING_FILE_STATUS_UPDATED.value
FAILED = EventType.RECORDING_FAILED.value
SCHEMA_OF = {STATE: "recording-state-changed", FILES: "recording-file-status-updated"}  # StartRecordingFailed: none
TIMEOUT_S = 0.3
DAY_S = 24 * 3600
NO_JITTER = lambda: 0.5  # noqa: E731


# ------------------------------------------------------------------------------------------- events
def state_changed(call: str = "call-A", active: bool = True) -> NewEvent:
    return acs.recording_state_changed(
        recording_id=str(uuid.uuid4()), server_call_id=call, call_id=f"corr-{call}", call_connection_id="conn-1",
        active=active, start_time=datetime.now(UTC), operation_context="ctx-é",
    )


def files_ready(call: str = "call-A") -> NewEvent:
    recording = str(uuid.uuid4())
    base = f"https://storage.example.com/rec/{recording}/0"
    return acs.recording_file_status_updated(
        topic="/subscriptions/s/resourceGroups/g/providers/Microsoft.Communication/communicationServices/callrec",
        recording_id=recording, server_call_id=call, call_id=f"corr-{call}",
        chunks=[{"documentId": f"{recording}-0", "index": 0, "endReason": "SessionEnded",
                 "metadataLocation": f"{base}/metadata", "contentLocation": f"{base}/content",
                 "deleteLocation": f"{base}/delete"}],
        start_time=datetime.now(UTC), duration_ms=61_000, session_end_reason="CallEnded",
        content_type="audio", channel_type="mixed", format="wav",
    )


def failed(call: str = "call-A") -> NewEvent:
    return acs.recording_failed(recording_id=str(uuid.uuid4()), server_call_id=call, call_id=f"corr-{call}",
                                call_connection_id="conn-1", code=8500, message="storage unreachable")


# ----------------------------------------------------------------------------------------- receiver
@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def timestamp(self) -> int:
        return int(self.headers["webhook-timestamp"])

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on 127.0.0.1: verifies signatures, records requests, answers from a script per path.

    `clock`: with fake time, `webhook-timestamp` must be the fake now (the reference library's own
    check compares with the real clock, so then only the signature is checked with it).
    """

    def __init__(self, clock: FakeTime | None = None) -> None:
        self.clock = clock
        self.received: dict[str, list[Received]] = defaultdict(list)
        self.scripts: dict[str, deque[Reply | Callable[[], Reply]]] = defaultdict(deque)
        self.defaults: dict[str, Reply] = {}
        self.handshakes: dict[str, Reply] = {}
        self.problems: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply | Callable[[], Reply]) -> None:
        self.scripts[path].extend(replies)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _verify(self, body: str, headers: dict[str, str]) -> None:
        webhook = Webhook(SECRET)
        if self.clock is None:
            webhook.verify(body, headers)  # signature, and a timestamp within 5 min of the real clock
            return
        stamp = int(headers["webhook-timestamp"])
        assert stamp == int(self.clock.now().timestamp()), (stamp, self.clock.now())
        expected = webhook.sign(headers["webhook-id"], datetime.fromtimestamp(stamp, UTC), body)
        assert expected in headers["webhook-signature"].split(" ")

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        headers = dict(request.headers)
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            assert request.method == "POST" and lowered.get("content-type") == "application/json"
            self._verify(body, headers)
        except Exception as exc:
            self.problems.append(f"{request.path}: {exc!r}")
            return web.Response(status=401)
        self.received[request.path].append(Received(request.path, lowered, body))
        if lowered.get("aeg-event-type") == "SubscriptionValidation":
            scripted = self.handshakes.get(request.path)
            if scripted is not None:
                return web.Response(status=scripted.status, text=scripted.body)
            code = json.loads(body)[0]["data"]["validationCode"]
            return web.json_response({"validationResponse": code})
        queue = self.scripts[request.path]
        item = queue.popleft() if queue else self.defaults.get(request.path, Reply())
        reply = item() if callable(item) else item
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def clock() -> FakeTime:
    """Fake time from now, on a whole second: retry times are exact (no float rounding)."""
    return FakeTime(start=datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def receiver(clock: FakeTime) -> AsyncIterator[Receiver]:
    r = await Receiver(clock).start()
    yield r
    await r.stop()
    assert not r.problems, r.problems


@pytest.fixture
def event_log(tmp_path: Path) -> Iterator[EventLog]:
    db = Database(tmp_path / "events.sqlite3")
    yield EventLog(db, retention=timedelta(hours=24))
    db.close()


Make = Callable[..., WebhookDispatcher]


@pytest.fixture
async def make_dispatcher(tmp_path: Path, event_log: EventLog, clock: FakeTime) -> AsyncIterator[Make]:
    """make(**kwargs) -> a dispatcher over the test's event log and `webhooks.sqlite3` (reopened per call)."""
    made: list[tuple[WebhookDispatcher, WebhookStore]] = []

    def make(*, policy: WebhooksPolicy | None = None, endpoints: tuple[WebhookSettings, ...] = (),
             clock_: TimeSource | None = None, **kwargs: Any) -> WebhookDispatcher:
        policy = policy or WebhooksPolicy(allow_private=True, attempt_timeout_s=TIMEOUT_S)
        store = WebhookStore(tmp_path / "webhooks.sqlite3", max_attempts_kept=policy.max_attempts_kept)
        kwargs.setdefault("rand", NO_JITTER)
        dispatcher = WebhookDispatcher(event_log, store, config=WebhooksConfig(endpoints, policy),
                                       clock=clock_ or clock, **kwargs)
        made.append((dispatcher, store))
        return dispatcher

    yield make
    for dispatcher, store in made:
        await dispatcher.close()
        await store.close()


async def wait_until(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 3.0) -> None:
    """Poll `check` (real time) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def attempts(dispatcher: WebhookDispatcher, endpoint_id: str, count: int) -> list[DeliveryAttempt]:
    """The endpoint's attempts, oldest first, once there are `count` of them."""
    found: list[DeliveryAttempt] = []

    async def enough() -> bool:
        nonlocal found
        found = list(reversed(await dispatcher.deliveries(endpoint_id, 1000)))
        return len(found) >= count

    await wait_until(enough, f"{count} attempts at {endpoint_id}")
    return found


async def next_retry_in(dispatcher: WebhookDispatcher, endpoint_id: str, clock: FakeTime) -> float:
    cursor = await dispatcher.cursor(endpoint_id)
    assert cursor.next_attempt_at is not None
    return cursor.next_attempt_at - clock.now().timestamp()


# --------------------------------------------------------------------------------------------- tests
async def test_every_event_arrives_signed_once_as_its_stored_acs_json(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver, validate_json: Callable[[str, object], None]
) -> None:
    receiver.clock = None  # real time: the reference library checks the timestamp against the real clock too
    dispatcher = make_dispatcher(clock_=SystemTime())
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/all"), SECRET)
    events = (state_changed(), files_ready(), failed(), state_changed(active=False))
    stored = [await event_log.append(e) for e in events]

    await wait_until(lambda: len(receiver.received["/all"]) == 4, "4 deliveries")
    got = receiver.received["/all"]
    for request, event in zip(got, stored, strict=True):
        assert request.body == "[" + event.event.json + "]"  # byte for byte, never re-rendered
        assert request.id == event.event.id
        assert "aeg-event-type" not in request.headers
        (doc,) = request.doc
        kind = doc.get("eventType") or doc.get("type")
        assert kind == event.event.event_type.value
        if kind in SCHEMA_OF:
            validate_json(SCHEMA_OF[kind], doc)
    done = await attempts(dispatcher, endpoint.id, 4)
    assert [(a.sequence, a.attempt, a.status) for a in done] == [(s.sequence, 1, 200) for s in stored]
    assert (await dispatcher.cursor(endpoint.id)).delivered_sequence == stored[-1].sequence
    await asyncio.sleep(0.05)
    assert len(receiver.received["/all"]) == 4  # once per 2xx
    assert await dispatcher.dead_letters(endpoint.id) == []


async def test_filters_pick_event_types_and_a_call(make_dispatcher: Make, event_log: EventLog,
                                                   receiver: Receiver) -> None:
    dispatcher = make_dispatcher()
    await dispatcher.start()
    await dispatcher.add_endpoint(receiver.url("/files"), SECRET, event_types=[FILES])
    await dispatcher.add_endpoint(receiver.url("/b"), SECRET, server_call_id="call-B")
    events = [state_changed("call-A"), files_ready("call-A"), state_changed("call-B"), files_ready("call-B")]
    for e in events:
        await event_log.append(e)
    await wait_until(lambda: len(receiver.received["/files"]) == 2 and len(receiver.received["/b"]) == 2,
                     "filtered deliveries")
    assert [r.id for r in receiver.received["/files"]] == [events[1].id, events[3].id]
    assert [r.id for r in receiver.received["/b"]] == [events[2].id, events[3].id]


async def test_new_endpoints_get_new_events_only(make_dispatcher: Make, event_log: EventLog,
                                                 receiver: Receiver) -> None:
    await event_log.append(state_changed())
    dispatcher = make_dispatcher()
    await dispatcher.start()
    await dispatcher.add_endpoint(receiver.url("/new"), SECRET)
    later = await event_log.append(state_changed())
    await wait_until(lambda: len(receiver.received["/new"]) == 1, "one delivery")
    await asyncio.sleep(0.05)
    assert [r.id for r in receiver.received["/new"]] == [later.event.id]


async def test_retries_follow_the_schedule_with_a_stable_webhook_id(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver, clock: FakeTime
) -> None:
    receiver.script("/flaky", Reply(500), Reply(502), Reply(404), Reply(500))
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/flaky"), SECRET)
    event = await event_log.append(files_ready())

    for n, delay in enumerate((10, 30, 60, 300), start=1):
        await attempts(dispatcher, endpoint.id, n)
        assert await next_retry_in(dispatcher, endpoint.id, clock) == delay
        await clock.advance(delay)
    done = await attempts(dispatcher, endpoint.id, 5)

    got = receiver.received["/flaky"]
    assert [r.id for r in got] == [event.event.id] * 5  # the same webhook-id on every retry
    start = got[0].timestamp
    assert [r.timestamp - start for r in got] == [0, 10, 40, 100, 400]  # each attempt signed at its own time
    assert len({r.headers["webhook-signature"] for r in got}) == 5
    assert [(a.attempt, a.status) for a in done] == [(1, 500), (2, 502), (3, 404), (4, 500), (5, 200)]
    cursor = await dispatcher.cursor(endpoint.id)
    assert cursor.delivered_sequence == event.sequence and cursor.pending_sequence is None


async def test_retry_after_is_honoured_and_capped_at_the_24_hour_window(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver, clock: FakeTime
) -> None:
    in_five_minutes = lambda: Reply(503, {"Retry-After": format_datetime(clock.now() + timedelta(minutes=5),  # noqa: E731
                                                                          usegmt=True)})
    receiver.script("/busy", Reply(429, {"Retry-After": "120"}), in_five_minutes, Reply(429, {"Retry-After": "0"}),
                    Reply(429, {"Retry-After": "999999"}), Reply(500))
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/busy"), SECRET)
    event = await event_log.append(state_changed())
    await event_log.append(state_changed())

    waited = []
    for n in range(1, 5):
        await attempts(dispatcher, endpoint.id, n)
        waited.append(await next_retry_in(dispatcher, endpoint.id, clock))
        await clock.advance(waited[-1])
    assert waited == [120, 300, 1, DAY_S - 421]  # the last: what was left of the 24 h
    await attempts(dispatcher, endpoint.id, 5)
    await wait_until(lambda: len(receiver.received["/busy"]) == 6, "the next event")
    (letter,) = await dispatcher.dead_letters(endpoint.id)
    assert (letter.event_id, letter.attempts, letter.status) == (event.event.id, 5, 500)
    assert "24 h" in letter.reason


async def test_rejected_events_are_dead_lettered_without_retry(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    receiver.script("/strict", Reply(400, body="bad request"), Reply(413))
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/strict"), SECRET)
    events = [await event_log.append(e) for e in (state_changed(), files_ready(), failed())]

    await wait_until(lambda: len(receiver.received["/strict"]) == 3, "three requests")
    letters = list(reversed(await dispatcher.dead_letters(endpoint.id)))
    assert [(d.event_id, d.event_type, d.status, d.attempts) for d in letters] == [
        (events[0].event.id, STATE, 400, 1), (events[1].event.id, FILES, 413, 1)
    ]
    assert "not retried" in letters[0].reason
    assert (await dispatcher.cursor(endpoint.id)).delivered_sequence == events[2].sequence
    await asyncio.sleep(0.05)
    assert len(receiver.received["/strict"]) == 3  # no retry


async def test_gone_disables_the_endpoint_until_it_is_enabled(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    receiver.script("/gone", Reply(410))
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/gone"), SECRET)
    first = await event_log.append(state_changed())

    async def disabled() -> bool:
        return not (await dispatcher.get_endpoint(endpoint.id)).enabled

    await wait_until(disabled, "the endpoint disabled")
    current = await dispatcher.get_endpoint(endpoint.id)
    assert "410" in current.disabled_reason
    second = await event_log.append(state_changed())
    await asyncio.sleep(0.1)
    assert len(receiver.received["/gone"]) == 1 and not dispatcher.running(endpoint.id)
    cursor = await dispatcher.cursor(endpoint.id)
    assert cursor.delivered_sequence == first.sequence - 1 and cursor.pending_event_id == first.event.id

    enabled = await dispatcher.enable(endpoint.id)
    assert enabled.enabled and enabled.disabled_reason == ""
    await wait_until(lambda: len(receiver.received["/gone"]) == 3, "both events")
    assert [r.id for r in receiver.received["/gone"]] == [first.event.id, first.event.id, second.event.id]


async def test_an_event_failing_for_24_hours_is_dead_lettered_and_the_cursor_moves_on(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver, clock: FakeTime
) -> None:
    receiver.defaults["/down"] = Reply(500)
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/down"), SECRET)
    doomed = await event_log.append(files_ready())
    for n in itertools.count(1):
        await attempts(dispatcher, endpoint.id, n)
        if await dispatcher.dead_letters(endpoint.id):
            break
        await clock.advance(await next_retry_in(dispatcher, endpoint.id, clock))
    got = receiver.received["/down"]
    offsets = [r.timestamp - got[0].timestamp for r in got]
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert gaps[:7] == [10, 30, 60, 300, 600, 1800, 3600] and set(gaps[7:-1]) == {3600}
    assert offsets[-1] == DAY_S and len(got) == 31
    (letter,) = await dispatcher.dead_letters(endpoint.id)
    assert (letter.event_id, letter.attempts) == (doomed.event.id, 31)

    receiver.defaults["/down"] = Reply(200)
    after = await event_log.append(state_changed())
    await wait_until(lambda: receiver.received["/down"][-1].id == after.event.id, "the next event")
    assert (await dispatcher.cursor(endpoint.id)).delivered_sequence == after.sequence


async def test_a_slow_endpoint_does_not_delay_another(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    receiver.script("/slow", Reply(delay_s=1.0))
    timeout_s = 0.5  # the margin: the fast endpoint's three deliveries take ~20 ms
    dispatcher = make_dispatcher(policy=WebhooksPolicy(allow_private=True, attempt_timeout_s=timeout_s))
    await dispatcher.start()
    slow = await dispatcher.add_endpoint(receiver.url("/slow"), SECRET)
    await dispatcher.add_endpoint(receiver.url("/fast"), SECRET)
    for _ in range(3):
        await event_log.append(state_changed())

    await wait_until(lambda: len(receiver.received["/fast"]) == 3, "the fast endpoint's deliveries")
    assert await dispatcher.deliveries(slow.id) == []  # its first attempt is still waiting
    (timed_out,) = await attempts(dispatcher, slow.id, 1)
    assert timed_out.status is None and timed_out.error == f"timed out after {timeout_s:g} s"
    assert timeout_s * 1000 * 0.9 <= timed_out.duration_ms < 1000


async def test_redirects_are_not_followed(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver, clock: FakeTime
) -> None:
    receiver.script("/moved", Reply(302, {"Location": receiver.url("/elsewhere")}))
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/moved"), SECRET)
    await event_log.append(state_changed())
    (first,) = await attempts(dispatcher, endpoint.id, 1)
    assert first.status == 302 and "not followed" in first.error
    assert "/elsewhere" not in receiver.received
    await clock.advance(await next_retry_in(dispatcher, endpoint.id, clock))
    assert [a.status for a in await attempts(dispatcher, endpoint.id, 2)] == [302, 200]
    assert "/elsewhere" not in receiver.received


async def test_a_restart_resumes_with_the_same_webhook_id_attempt_count_and_window(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver, clock: FakeTime
) -> None:
    receiver.script("/resume", Reply(500), Reply(500))
    first = make_dispatcher()
    await first.start()
    endpoint = await first.add_endpoint(receiver.url("/resume"), SECRET)
    event = await event_log.append(state_changed())
    await attempts(first, endpoint.id, 1)
    await clock.advance(10)
    await attempts(first, endpoint.id, 2)
    before = await first.cursor(endpoint.id)
    assert (before.attempts, before.pending_event_id) == (2, event.event.id)
    await first.close()  # mid-retry: 30 s to wait

    later = FakeTime(start=clock.now() + timedelta(seconds=5))  # a new process, 5 s later
    receiver.clock = later
    second = make_dispatcher(clock_=later)
    await second.start()
    await asyncio.sleep(0.05)
    assert len(receiver.received["/resume"]) == 2  # still waiting for the stored retry time
    assert (await second.cursor(endpoint.id)) == before
    await later.advance(25)
    done = await attempts(second, endpoint.id, 3)
    assert [(a.attempt, a.status) for a in done] == [(1, 500), (2, 500), (3, 200)]
    assert [r.id for r in receiver.received["/resume"]] == [event.event.id] * 3
    assert receiver.received["/resume"][2].timestamp - receiver.received["/resume"][0].timestamp == 40
    assert (await second.cursor(endpoint.id)).delivered_sequence == event.sequence


async def test_events_pruned_before_delivery_become_a_dead_letter_naming_the_range(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    dispatcher = make_dispatcher()
    endpoint = await dispatcher.add_endpoint(receiver.url("/late"), SECRET, after_sequence=0)  # before start
    for _ in range(3):
        await event_log.append(state_changed())
    assert await event_log.prune(now=time.time() + 2 * DAY_S) == 3
    kept = await event_log.append(state_changed())
    await dispatcher.start()
    await wait_until(lambda: len(receiver.received["/late"]) == 1, "the retained event")
    assert receiver.received["/late"][0].id == kept.event.id
    (letter,) = await dispatcher.dead_letters(endpoint.id)
    assert (letter.first_sequence, letter.last_sequence, letter.event_id) == (1, 3, "")
    assert "events 1 to 3 were pruned" in letter.reason


async def test_redeliver_sends_one_event_again_without_moving_the_cursor(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    receiver.script("/again", Reply(400))
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/again"), SECRET)
    rejected: StoredEvent = await event_log.append(state_changed())
    delivered = await event_log.append(files_ready())
    await attempts(dispatcher, endpoint.id, 2)

    again = await dispatcher.redeliver(endpoint.id, rejected.event.id)
    assert (again.attempt, again.status, again.redelivery, again.sequence) == (2, 200, True, rejected.sequence)
    await dispatcher.redeliver(endpoint.id, delivered.event.id)
    got = receiver.received["/again"]
    assert [r.id for r in got] == [rejected.event.id, delivered.event.id, rejected.event.id, delivered.event.id]
    assert got[2].body == got[0].body
    assert (await dispatcher.cursor(endpoint.id)).delivered_sequence == delivered.sequence

    with pytest.raises(EventNotFound, match="never sent"):
        await dispatcher.redeliver(endpoint.id, "no-such-event")
    with pytest.raises(EndpointNotFound):
        await dispatcher.redeliver("wh_unknown", rejected.event.id)
    await event_log.prune(now=time.time() + 2 * DAY_S)
    with pytest.raises(EventNotFound, match="pruned"):
        await dispatcher.redeliver(endpoint.id, rejected.event.id)


async def test_event_grid_endpoints_pass_the_validation_handshake_first(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    dispatcher = make_dispatcher(topic="/subscriptions/s/providers/Microsoft.Communication/communicationServices/x")
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/eg"), SECRET, schema="eventgrid")
    assert (endpoint.schema, endpoint.validated) == ("eventgrid", True)
    (handshake,) = receiver.received["/eg"]
    assert handshake.headers["aeg-event-type"] == "SubscriptionValidation"
    (doc,) = handshake.doc
    assert doc["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert doc["id"] == handshake.id and doc["topic"].endswith("communicationServices/x") and doc["subject"] == ""
    assert doc["data"]["validationUrl"] is None and len(doc["data"]["validationCode"]) >= 16
    assert (doc["metadataVersion"], doc["dataVersion"]) == ("1", "2") and doc["eventTime"].endswith("Z")

    event = await event_log.append(files_ready())
    await wait_until(lambda: len(receiver.received["/eg"]) == 2, "the delivery")
    delivery = receiver.received["/eg"][1]
    assert delivery.headers["aeg-event-type"] == "Notification" and delivery.id == event.event.id


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Reply(200, body='{"validationResponse": "wrong"}'),
         "got HTTP 200 with body '{\"validationResponse\": \"wrong\"}'"),
        (Reply(404, body="no such function"), "got HTTP 404 with body 'no such function'"),
    ],
)
async def test_a_failed_handshake_refuses_the_endpoint(
    make_dispatcher: Make, receiver: Receiver, reply: Reply, says: str
) -> None:
    receiver.handshakes["/bad-eg"] = reply
    dispatcher = make_dispatcher()
    await dispatcher.start()
    with pytest.raises(ValidationHandshakeFailed) as err:
        await dispatcher.add_endpoint(receiver.url("/bad-eg"), SECRET, schema="eventgrid")
    assert isinstance(err.value, ValueError)
    assert receiver.url("/bad-eg") in str(err.value) and says in str(err.value)
    assert await dispatcher.list_endpoints() == []


async def test_configured_endpoints_are_upserted_and_cannot_be_removed_through_the_api(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    settings = WebhookSettings(receiver.url("/cfg"), SECRET, (STATE,))
    policy = WebhooksPolicy(allow_private=True, attempt_timeout_s=TIMEOUT_S)
    dispatcher = make_dispatcher(policy=policy, endpoints=(settings,))
    await dispatcher.start()
    (endpoint,) = await dispatcher.list_endpoints()
    assert (endpoint.source, endpoint.url, endpoint.event_types) == ("config", settings.url, (STATE,))
    with pytest.raises(EndpointManagedByConfig, match=r"\[\[webhooks\]\]"):
        await dispatcher.remove_endpoint(endpoint.id)
    event = await event_log.append(state_changed())
    await wait_until(lambda: len(receiver.received["/cfg"]) == 1, "the delivery")
    assert receiver.received["/cfg"][0].id == event.event.id
    await dispatcher.close()

    again = make_dispatcher(policy=policy, endpoints=(settings,))  # a restart with the same file: same endpoint
    await again.start()
    assert [e.id for e in await again.list_endpoints()] == [endpoint.id]
    await again.close()
    emptied = make_dispatcher(policy=policy)  # the entry was removed from the file
    await emptied.start()
    assert await emptied.list_endpoints() == []


async def test_a_configured_event_grid_endpoint_that_fails_its_handshake_is_disabled_until_enabled(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    receiver.handshakes["/cfg-eg"] = Reply(404, body="not yet deployed")
    settings = WebhookSettings(receiver.url("/cfg-eg"), SECRET, schema="eventgrid")
    dispatcher = make_dispatcher(endpoints=(settings,), policy=WebhooksPolicy(allow_private=True))
    await dispatcher.start()  # does not wait for receivers: the handshake runs in the endpoint's task
    (endpoint,) = await dispatcher.list_endpoints()

    async def disabled() -> bool:
        return not (await dispatcher.get_endpoint(endpoint.id)).enabled

    await wait_until(disabled, "the endpoint disabled")
    current = await dispatcher.get_endpoint(endpoint.id)
    assert not current.validated and "not yet deployed" in current.disabled_reason
    event = await event_log.append(state_changed())

    with pytest.raises(ValidationHandshakeFailed):  # still failing: stays disabled
        await dispatcher.enable(endpoint.id)
    del receiver.handshakes["/cfg-eg"]
    enabled = await dispatcher.enable(endpoint.id)
    assert enabled.enabled and enabled.validated
    await wait_until(lambda: receiver.received["/cfg-eg"][-1].id == event.event.id, "the delivery")
    kinds = [r.headers["aeg-event-type"] for r in receiver.received["/cfg-eg"]]
    assert kinds == ["SubscriptionValidation"] * 3 + ["Notification"]


async def test_api_endpoints_can_be_removed(make_dispatcher: Make, event_log: EventLog, receiver: Receiver) -> None:
    dispatcher = make_dispatcher()
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(receiver.url("/tmp"))  # secret generated
    assert endpoint.secret.startswith("whsec_") and endpoint.secret != SECRET
    with pytest.raises(InvalidWebhook, match="exists already"):
        await dispatcher.add_endpoint(receiver.url("/tmp"), SECRET)
    assert dispatcher.running(endpoint.id)
    await dispatcher.remove_endpoint(endpoint.id)
    assert not dispatcher.running(endpoint.id) and await dispatcher.list_endpoints() == []
    with pytest.raises(EndpointNotFound):
        await dispatcher.remove_endpoint(endpoint.id)
    with pytest.raises(EndpointNotFound):
        await dispatcher.deliveries(endpoint.id)


async def test_private_addresses_need_allow_private(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    strict = make_dispatcher(policy=WebhooksPolicy(allow_private=False, attempt_timeout_s=TIMEOUT_S))
    await strict.start()
    with pytest.raises(WebhookRefused, match="plain http://"):
        await strict.add_endpoint(receiver.url("/private"), SECRET)
    with pytest.raises(WebhookRefused, match="loopback"):
        await strict.add_endpoint(f"https://127.0.0.1:{receiver.port}/private", SECRET)
    with pytest.raises(WebhookRefused, match="loopback"):
        await strict.add_endpoint(f"https://[::ffff:127.0.0.1]:{receiver.port}/private", SECRET)
    assert await strict.list_endpoints() == []
    await strict.close()

    relaxed = make_dispatcher(policy=WebhooksPolicy(allow_private=True, attempt_timeout_s=TIMEOUT_S))
    await relaxed.start()
    await relaxed.add_endpoint(receiver.url("/private"), SECRET)
    await event_log.append(state_changed())
    await wait_until(lambda: len(receiver.received["/private"]) == 1, "the delivery")
    assert not any(path != "/private" for path in receiver.received)


async def test_a_name_rebound_to_loopback_after_the_check_is_refused_at_connection_time(
    make_dispatcher: Make, event_log: EventLog, receiver: Receiver
) -> None:
    answers: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        """Public when the endpoint is added, then loopback (where the receiver listens)."""
        answers.append(host)
        return ["93.184.215.14"] if len(answers) == 1 else ["127.0.0.1"]

    dispatcher = make_dispatcher(policy=WebhooksPolicy(allow_private=False, attempt_timeout_s=TIMEOUT_S),
                                 resolve=rebinding)
    await dispatcher.start()
    endpoint = await dispatcher.add_endpoint(f"https://hooks.example.com:{receiver.port}/rebind", SECRET)
    await event_log.append(state_changed())
    (refused,) = await attempts(dispatcher, endpoint.id, 1)
    assert refused.status is None and refused.error.startswith("refused:") and "loopback" in refused.error
    assert answers == ["hooks.example.com", "hooks.example.com"]
    assert receiver.received == {}
