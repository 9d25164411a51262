"""Webhooks through the real server: a `[[webhooks]]` endpoint in the TOML file receives a recorded call's
events, signed (verified with the `standardwebhooks` package by the receiver), across a `kill -9` of the
server in the middle of a retry; the admin RPCs and the CLI manage endpoints. The receiver is an aiohttp
server on 127.0.0.1 (`test_webhook_delivery.Receiver`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from callrec.v1 import webhooks_pb2
from callrec_client import AsyncCallrecClient, CallrecError
from tests.harness import ROOT
from tests.integration.test_storage_e2e import stream_call
from tests.integration.test_webhook_delivery import SCHEMA_OF, SECRET, Received, Receiver, Reply

STATE = "Microsoft.Communication.RecordingStateChanged"
FILES = "Microsoft.Communication.RecordingFileStatusUpdated"


def kind(received: Received) -> str:
    """The event type of a delivered body: Event Grid's `eventType` (RecordingFileStatusUpdated), or the
    CloudEvent `type` of Call Automation's recording state events, as ACS sends each."""
    (event,) = received.doc
    return event.get("eventType") or event["type"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "callrec_client.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)


async def until(predicate, timeout: float = 30.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def write_config(path: Path, receiver: Receiver) -> Path:
    path.write_text(f"""
[[webhooks]]
url = "{receiver.url('/hook')}"
secret = "{SECRET}"

[webhooks_policy]
allow_private = true   # the receiver is on 127.0.0.1
attempt_timeout_s = 5
""")
    return path


@pytest.mark.slow  # ~20 s, three server starts (make test-slow)
async def test_a_calls_events_reach_a_configured_webhook_signed_and_once_across_a_kill_9(
    make_server, tmp_path: Path, validate_json
) -> None:
    receiver = await Receiver().start()
    try:
        # the receiver is "down" (429, retry after 2 s) until the server has been killed and restarted
        receiver.defaults["/hook"] = Reply(429, {"Retry-After": "2"})
        config = write_config(tmp_path / "callrec.toml", receiver)
        server = make_server("--config", str(config))
        recording = await stream_call(server.target)
        got = receiver.received["/hook"]
        await until(lambda: len(got) >= 2, what="the first event, refused twice")
        server.kill()  # kill -9 while the first event waits for its third attempt
        refused = list(got)
        assert {r.id for r in refused} == {refused[0].id}, "one event at a time, in order"
        assert refused[1].timestamp - refused[0].timestamp >= 1, "Retry-After: 2 honoured"
        # back up, but the second event's 200 comes slowly: the server is killed again with that POST in flight
        receiver.defaults["/hook"] = Reply(200)
        receiver.script("/hook", Reply(200), Reply(200, delay_s=3.0))
        second = make_server("--config", str(config), data_dir=server.data_dir)
        await until(lambda: len(got) >= len(refused) + 2, what="the second event, answered slowly")
        second.kill()  # kill -9 between the POST and the commit of its 2xx
        in_flight = got[-1]
        restarted = make_server("--config", str(config), data_dir=server.data_dir)
        await until(lambda: len([r for r in got if kind(r) == FILES]) >= 1, what="every event")
        await asyncio.sleep(0.5)  # nothing more may come
        delivered = got[len(refused):]
        types = [kind(r) for r in delivered]
        # started, stopped (twice: at least once, its 2xx never committed), the files; in order
        assert types == [STATE, STATE, STATE, FILES], types
        assert delivered[0].id == refused[0].id, "the retried event keeps its webhook-id across the restart"
        assert delivered[0].timestamp >= refused[-1].timestamp + 1, "the stored Retry-After still holds"
        assert delivered[1].id == delivered[2].id == in_flight.id, "re-sent with the same webhook-id"
        assert len({r.id for r in delivered}) == 3
        for r in delivered:
            (event,) = r.doc
            assert r.id == event["id"] and event["subject"].endswith(recording.recording_id)
            validate_json(SCHEMA_OF[kind(r)], event)
        assert {r.headers["content-type"] for r in got} == {"application/json"}
        assert not receiver.problems, receiver.problems  # every signature verified by standardwebhooks

        # what the operator sees: the endpoint from the file, every attempt, the count going on after the kill
        listed = await asyncio.to_thread(cli, "webhooks", "list", "-s", restarted.target, "--json")
        assert listed.returncode == 0, listed.stderr
        (endpoint,) = [json.loads(line) for line in listed.stdout.splitlines()]
        assert endpoint["source"] == "config" and endpoint["enabled"] and "secret" not in json.dumps(endpoint)
        shown = await asyncio.to_thread(cli, "webhooks", "deliveries", endpoint["webhook_id"], "-s",
                                        restarted.target, "--json")
        assert shown.returncode == 0, shown.stderr
        attempts = json.loads(shown.stdout)["attempts"]
        first = sorted((a for a in attempts if a["event_id"] == refused[0].id), key=lambda a: a["attempt"])
        assert [a.get("status_code") for a in first] == [429] * len(refused) + [200], first
        second_event = [a for a in attempts if a["event_id"] == in_flight.id]
        assert [a.get("status_code") for a in second_event] == [200], "the killed attempt left no record"
        assert [a["attempt"] for a in first] == list(range(1, len(refused) + 2))
        removal = await asyncio.to_thread(cli, "webhooks", "remove", endpoint["webhook_id"], "-s", restarted.target)
        assert removal.returncode != 0 and "config" in removal.stderr, removal.stderr
    finally:
        await receiver.stop()


async def test_endpoints_added_through_the_api_are_checked_delivered_and_removed(
    make_server, tmp_path: Path
) -> None:
    receiver = await Receiver().start()
    try:
        strict = make_server(data_dir=tmp_path / "strict")  # default policy: https and public addresses only
        async with AsyncCallrecClient(strict.target) as client:
            with pytest.raises(CallrecError) as refused:
                await client.add_webhook(receiver.url("/api"), SECRET)
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "allow_private" in refused.value.details, refused.value.details
            with pytest.raises(CallrecError) as too_long:
                await client.add_webhook("https://example.com/" + "a" * 2100, SECRET)
            assert too_long.value.code == grpc.StatusCode.INVALID_ARGUMENT and "2048" in too_long.value.details

        config = write_config(tmp_path / "callrec.toml", receiver)
        server = make_server("--config", str(config), data_dir=tmp_path / "open")
        async with AsyncCallrecClient(server.target) as client:
            generated = await client.add_webhook(receiver.url("/generated"))
            assert generated.secret.startswith("whsec_") and generated.webhook.source == "api", "made, shown once"
            listed = await client.webhook_admin("ListWebhooks", webhooks_pb2.ListWebhooksRequest())
            assert generated.secret not in str(listed) and len(listed.webhooks) == 2
            await client.webhook_admin("RemoveWebhook",
                                       webhooks_pb2.RemoveWebhookRequest(webhook_id=generated.webhook.webhook_id))
            added = await client.add_webhook(receiver.url("/api"), SECRET, event_types=[FILES])
            assert added.secret == "", "a secret the caller gave is not echoed"
            await stream_call(server.target)
            api: list[Received] = receiver.received["/api"]
            await until(lambda: len(api) >= 1)
            await asyncio.sleep(0.3)
            assert [kind(r) for r in api] == [FILES], "only the filtered type"
            webhook_id = added.webhook.webhook_id
            again = await client.webhook_admin(
                "RedeliverWebhookEvent", webhooks_pb2.RedeliverWebhookEventRequest(webhook_id=webhook_id,
                                                                                   event_id=api[0].id))
            assert again.attempt.status_code == 200 and again.attempt.redelivery
            assert len(api) == 2 and api[1].id == api[0].id
            await client.webhook_admin("RemoveWebhook", webhooks_pb2.RemoveWebhookRequest(webhook_id=webhook_id))
            listed = await client.webhook_admin("ListWebhooks", webhooks_pb2.ListWebhooksRequest())
            assert [w.source for w in listed.webhooks] == ["config"]
            with pytest.raises(CallrecError) as gone:
                await client.webhook_admin("RemoveWebhook", webhooks_pb2.RemoveWebhookRequest(webhook_id=webhook_id))
            assert gone.value.code == grpc.StatusCode.NOT_FOUND
        assert not receiver.problems, receiver.problems
    finally:
        await receiver.stop()
