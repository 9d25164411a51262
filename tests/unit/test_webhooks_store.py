"""The durable webhook state: endpoints, cursors, attempts (the newest N kept), dead letters."""

from __future__ import annotations

import sqlite3
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from callrec.webhooks.config import WebhookSettings
from callrec.webhooks.errors import EndpointNotFound, InvalidWebhook
from callrec.webhooks.store import (
    DeadLetter,
    DeliveryAttempt,
    EndpointCursor,
    WebhookEndpoint,
    WebhookStore,
    new_endpoint_id,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def endpoint(url: str = "https://example.com/h", **changes: Any) -> WebhookEndpoint:
    return replace(WebhookEndpoint(id=new_endpoint_id(), url=url, secret=SECRET, created_at=1.0), **changes)


def attempt(ep: WebhookEndpoint, n: int, *, event_id: str = "e1", sequence: int = 1) -> DeliveryAttempt:
    return DeliveryAttempt(ep.id, event_id, sequence, n, 100.0 + n, 500, "", 1.5)


def test_endpoint_ids_are_short_and_opaque() -> None:
    ids = {new_endpoint_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("wh_") and len(i) == 15 for i in ids)


async def test_an_endpoint_and_its_cursor_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.sqlite3"
    store = WebhookStore(path)
    ep = endpoint(event_types=("Microsoft.Communication.RecordingStateChanged",), server_call_id="c1")
    await store.insert_endpoint(ep, after_sequence=7)
    pending = EndpointCursor(ep.id, 7, pending_sequence=9, pending_event_id="e9", attempts=2,
                             first_attempt_at=10.0, next_attempt_at=40.0)
    await store.record(attempt=attempt(ep, 2, event_id="e9", sequence=9), cursor=pending)
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds secrets

    store = WebhookStore(path)
    assert await store.get_endpoint(ep.id) == ep
    assert await store.cursor(ep.id) == pending
    assert ep.event_filter.server_call_id == "c1"
    assert SECRET not in repr(ep)
    await store.close()


async def test_a_url_is_added_once(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "w.sqlite3")
    await store.insert_endpoint(endpoint(), 0)
    with pytest.raises(InvalidWebhook, match="exists already"):
        await store.insert_endpoint(endpoint(), 0)
    await store.close()


async def test_unknown_ids_are_not_found(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "w.sqlite3")
    for call in (store.get_endpoint, store.cursor, store.delete_endpoint):
        with pytest.raises(EndpointNotFound, match="wh_nope"):
            await call("wh_nope")
    with pytest.raises(LookupError):
        await store.set_enabled("wh_nope", True)
    await store.close()


async def test_only_the_newest_attempts_are_kept_per_endpoint(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "w.sqlite3", max_attempts_kept=3)
    a, b = endpoint("https://a.example/"), endpoint("https://b.example/")
    await store.insert_endpoint(a, 0)
    await store.insert_endpoint(b, 0)
    for n in range(1, 6):
        await store.record(attempt=attempt(a, n))
    await store.record(attempt=attempt(b, 1))
    assert [x.attempt for x in await store.deliveries(a.id, 10)] == [5, 4, 3]
    assert [x.attempt for x in await store.deliveries(a.id, 2)] == [5, 4]
    assert [x.attempt for x in await store.deliveries(b.id, 10)] == [1]
    assert await store.last_attempt_number(a.id, "e1") == 5
    await store.close()


async def test_settling_writes_the_attempt_the_dead_letter_and_the_cursor_together(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "w.sqlite3")
    ep = endpoint()
    await store.insert_endpoint(ep, 0)
    letter = DeadLetter(ep.id, "e1", "Microsoft.Communication.RecordingStateChanged", 1, 1, 1, 400, "HTTP 400", 5.0)
    await store.record(attempt=attempt(ep, 1), cursor=EndpointCursor(ep.id, 1), dead_letter=letter)
    assert await store.dead_letters(ep.id, 10) == [letter]
    assert await store.cursor(ep.id) == EndpointCursor(ep.id, 1)
    assert await store.find_sequence(ep.id, "e1") == 1
    assert await store.find_sequence(ep.id, "other") is None

    orphan = DeadLetter("wh_unknown", "e2", "", 2, 2, 1, 400, "HTTP 400", 6.0)
    with pytest.raises(sqlite3.IntegrityError):  # one write of the three fails: none of them is kept
        await store.record(attempt=attempt(ep, 1, event_id="e2", sequence=2), cursor=EndpointCursor(ep.id, 2),
                           dead_letter=orphan)
    assert len(await store.deliveries(ep.id, 10)) == 1
    assert await store.cursor(ep.id) == EndpointCursor(ep.id, 1)
    await store.delete_endpoint(ep.id)
    assert await store.list_endpoints() == []
    assert await store.deliveries(ep.id, 10) == [] and await store.dead_letters(ep.id, 10) == []
    await store.close()


async def test_enabling_clears_the_reason_and_starts_a_fresh_window(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "w.sqlite3")
    ep = endpoint()
    await store.insert_endpoint(ep, 3)
    await store.record(cursor=EndpointCursor(ep.id, 3, 4, "e4", attempts=5, first_attempt_at=1.0, next_attempt_at=9.0))
    disabled = await store.set_enabled(ep.id, False, "HTTP 410 (Gone)")
    assert not disabled.enabled and disabled.disabled_reason == "HTTP 410 (Gone)"
    enabled = await store.set_enabled(ep.id, True)
    assert enabled.enabled and enabled.disabled_reason == ""
    assert await store.cursor(ep.id) == EndpointCursor(ep.id, 3, 4, "e4")
    await store.close()


async def test_config_endpoints_are_upserted_by_url_and_dropped_when_no_longer_listed(tmp_path: Path) -> None:
    store = WebhookStore(tmp_path / "w.sqlite3")
    api = endpoint("https://shared.example/")
    await store.insert_endpoint(api, 2)
    other_secret = "whsec_" + "A" * 32
    first = await store.sync_config(
        [
            WebhookSettings("https://shared.example/", other_secret, (), "", "callrec"),
            WebhookSettings("https://eg.example/", SECRET, (), "", "eventgrid"),
        ],
        after_sequence=10,
        now=50.0,
    )
    by_url = {e.url: e for e in first}
    shared, eg = by_url["https://shared.example/"], by_url["https://eg.example/"]
    assert shared.id == api.id and shared.source == "config" and shared.secret == other_secret
    assert (await store.cursor(api.id)).delivered_sequence == 2  # the operator took it over: cursor kept
    assert eg.source == "config" and not eg.validated  # its handshake is still to be done
    assert (await store.cursor(eg.id)).delivered_sequence == 10

    await store.set_validated(eg.id)
    second = await store.sync_config([WebhookSettings("https://eg.example/", SECRET, (), "", "eventgrid")], 20, 60.0)
    assert [(e.id, e.validated) for e in second] == [(eg.id, True)]
    assert [e.id for e in await store.list_endpoints()] == [eg.id]
    await store.close()
