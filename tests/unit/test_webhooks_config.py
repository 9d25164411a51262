"""The TOML side of webhooks: `[[webhooks]]` entries and `[webhooks_policy]`, errors naming entry and key."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from callrec.webhooks.config import (
    WebhookConfigError,
    WebhooksConfig,
    WebhookSettings,
    WebhooksPolicy,
    parse_webhooks,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FILE_STATUS = "Microsoft.Communication.RecordingFileStatusUpdated"


def test_the_spec_example_parses() -> None:
    doc = tomllib.loads(
        f"""
        [[webhooks]]
        url = "https://example.com/callrec"
        secret = "{SECRET}"
        event_types = ["{FILE_STATUS}"]

        [[webhooks]]
        url = "https://hooks.example.net/eg"
        secret = "{SECRET}"
        schema = "eventgrid"
        server_call_id = "call-1"
        """
    )
    config = parse_webhooks(doc)
    assert config.policy == WebhooksPolicy()
    assert config.endpoints == (
        WebhookSettings("https://example.com/callrec", SECRET, (FILE_STATUS,), "", "callrec"),
        WebhookSettings("https://hooks.example.net/eg", SECRET, (), "call-1", "eventgrid"),
    )
    assert SECRET not in repr(config)


def test_nothing_configured_means_no_endpoints_and_the_default_policy() -> None:
    assert parse_webhooks({}) == WebhooksConfig()
    policy = WebhooksPolicy()
    assert (policy.allow_private, policy.attempt_timeout_s, policy.max_attempts_kept) == (False, 30.0, 1000)


def test_the_policy_table() -> None:
    config = parse_webhooks(
        {"webhooks_policy": {"allow_private": True, "attempt_timeout_s": 5, "max_attempts_kept": 10}}
    )
    assert config.policy == WebhooksPolicy(allow_private=True, attempt_timeout_s=5.0, max_attempts_kept=10)


def test_plain_http_needs_allow_private() -> None:
    entry = {"url": "http://127.0.0.1:8080/hook", "secret": SECRET}
    with pytest.raises(WebhookConfigError, match=r"\[\[webhooks\]\]\[0\]\.url: .*allow_private"):
        parse_webhooks({"webhooks": [entry]})
    config = parse_webhooks({"webhooks": [entry], "webhooks_policy": {"allow_private": True}})
    assert config.endpoints[0].url == "http://127.0.0.1:8080/hook"


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"url": "https://example.com/h", "secret": SECRET}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([_entry(), _entry(url=None)], r"\[\[webhooks\]\]\[1\]\.url is required"),
        ([_entry(secret=None)], r"\[\[webhooks\]\]\[0\]\.secret is required"),
        ([_entry(secret="hunter2")], r"\[\[webhooks\]\]\[0\]\.secret: .*whsec_"),
        ([_entry(secret=7)], r"\[\[webhooks\]\]\[0\]\.secret must be a string"),
        ([_entry(url="ftp://example.com/")], r"\[\[webhooks\]\]\[0\]\.url: .*https://"),
        ([_entry(url="https://user:pw@example.com/")], r"\[\[webhooks\]\]\[0\]\.url: .*user name or password"),
        ([_entry(url="https://10.0.0.5/h")], r"\[\[webhooks\]\]\[0\]\.url: .*private address"),
        ([_entry(event_types=["Nope"])], r"\[\[webhooks\]\]\[0\]\.event_types: unknown event type 'Nope'"),
        ([_entry(event_types="x")], r"\[\[webhooks\]\]\[0\]\.event_types must be a list"),
        ([_entry(schema="cloudevents")], r"\[\[webhooks\]\]\[0\]\.schema: unknown webhook schema"),
        ([_entry(server_call_id=3)], r"\[\[webhooks\]\]\[0\]\.server_call_id must be a string"),
        ([_entry(retries=3)], r"\[\[webhooks\]\]\[0\]: unknown key 'retries'"),
        ([_entry(), _entry()], r"\[\[webhooks\]\]\[1\]\.url: .* already configured by \[\[webhooks\]\]\[0\]"),
        (["https://example.com"], r"\[\[webhooks\]\]\[0\] must be a table"),
        ({"url": "x"}, r"\[\[webhooks\]\] must be a list of tables"),
    ],
)
def test_entry_errors_name_the_entry_and_the_key(entries: object, message: str) -> None:
    with pytest.raises(WebhookConfigError, match=message) as err:
        parse_webhooks({"webhooks": entries})
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"allow_private": "yes"}, r"\[webhooks_policy\]\.allow_private must be true or false"),
        ({"attempt_timeout_s": 0}, r"\[webhooks_policy\]\.attempt_timeout_s must be a number"),
        ({"attempt_timeout_s": True}, r"\[webhooks_policy\]\.attempt_timeout_s must be a number"),
        ({"max_attempts_kept": 0}, r"\[webhooks_policy\]\.max_attempts_kept must be an integer >= 1"),
        ({"max_attempts_kept": 2.5}, r"\[webhooks_policy\]\.max_attempts_kept must be an integer >= 1"),
        ({"allow": True}, r"\[webhooks_policy\]: unknown key 'allow'"),
        ([], r"\[webhooks_policy\] must be a table"),
    ],
)
def test_policy_errors_name_the_key(policy: object, message: str) -> None:
    with pytest.raises(WebhookConfigError, match=message):
        parse_webhooks({"webhooks_policy": policy})


def test_config_errors_are_value_errors() -> None:
    assert issubclass(WebhookConfigError, ValueError)
