"""The TOML side of webhooks (SPEC §9): the `[[webhooks]]` list and the `[webhooks_policy]` table.

Plain dicts in (what `tomllib` returns), frozen dataclasses out; errors name the entry index and the
key (`[[webhooks]][1].secret: ...`) so the operator finds the line. Kept apart from `callrec.config`
so that module can import this one without a cycle.

```toml
[[webhooks]]
url = "https://example.com/callrec"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
event_types = ["Microsoft.Communication.RecordingFileStatusUpdated"]   # empty or absent: all
server_call_id = ""          # only this call's events; empty: every call
schema = "callrec"           # or "eventgrid" (aeg-event-type headers and the validation handshake)

[webhooks_policy]
allow_private = false        # true: http:// and loopback/private addresses are allowed
attempt_timeout_s = 30
max_attempts_kept = 1000
```
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from callrec.events.model import EventType
from callrec.security.redact import redact_url
from callrec.webhooks.destination import check_url
from callrec.webhooks.errors import InvalidWebhook
from callrec.webhooks.signing import check_secret

SCHEMAS = ("callrec", "eventgrid")
"""`callrec`: the event's ACS JSON in an array of one. `eventgrid`: the same body, plus Event Grid's
`aeg-event-type` header and its subscription validation handshake when the endpoint is added."""

_ENTRY_KEYS = frozenset({"url", "secret", "event_types", "server_call_id", "schema"})
_POLICY_KEYS = frozenset({"allow_private", "attempt_timeout_s", "max_attempts_kept"})


class WebhookConfigError(ValueError):
    """A `[[webhooks]]` entry or the `[webhooks_policy]` table is malformed; the message names the key."""

    code = "INVALID_ARGUMENT"


@dataclass(frozen=True)
class WebhooksPolicy:
    """`[webhooks_policy]`: how every endpoint is called."""

    allow_private: bool = False
    """Allow plain `http://` and loopback, private and link-local addresses (a receiver on this host or
    network). Off: `https://` to public addresses only, checked when added and on every connection."""
    attempt_timeout_s: float = 30.0
    """Longest one attempt may take (connect, send, response); a timeout is a failed attempt, retried."""
    max_attempts_kept: int = 1000
    """Delivery attempts kept per endpoint for `callrec webhooks deliveries` (older ones are dropped)."""


@dataclass(frozen=True)
class WebhookSettings:
    """One `[[webhooks]]` entry: an endpoint the operator configured (it cannot be removed by the API)."""

    url: str
    """Where events are POSTed."""
    secret: str = field(repr=False)
    """Standard Webhooks secret (`whsec_` + base64 key); never printed."""
    event_types: tuple[str, ...] = ()
    """ACS event types to deliver; empty: all."""
    server_call_id: str = ""
    """Only this call's events; empty: every call."""
    schema: str = "callrec"
    """`callrec` or `eventgrid` (see `SCHEMAS`)."""


@dataclass(frozen=True)
class WebhooksConfig:
    """Every webhook setting of the TOML file."""

    endpoints: tuple[WebhookSettings, ...] = ()
    policy: WebhooksPolicy = WebhooksPolicy()


def check_event_types(values: Iterable[object]) -> tuple[str, ...]:
    """The event types, each a known ACS type, without duplicates; `InvalidWebhook` names an unknown one."""
    known = {t.value for t in EventType}
    found: list[str] = []
    for value in values:
        if not isinstance(value, str) or value not in known:
            raise InvalidWebhook(f"unknown event type {value!r}; known types: {', '.join(sorted(known))}")
        if value not in found:
            found.append(value)
    return tuple(found)


def check_schema(value: object) -> str:
    """`value` if it names a body schema; `InvalidWebhook` otherwise."""
    if value not in SCHEMAS:
        raise InvalidWebhook(f"unknown webhook schema {value!r}; use one of {', '.join(SCHEMAS)}")
    return str(value)


def parse_policy(table: object) -> WebhooksPolicy:
    """`[webhooks_policy]` (absent: the defaults)."""
    if table is None:
        return WebhooksPolicy()
    where = "[webhooks_policy]"
    if not isinstance(table, Mapping):
        raise WebhookConfigError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - _POLICY_KEYS)
    if unknown:
        raise WebhookConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_POLICY_KEYS))}")
    allow = table.get("allow_private", False)
    if not isinstance(allow, bool):
        raise WebhookConfigError(f"{where}.allow_private must be true or false, got {allow!r}")
    timeout = table.get("attempt_timeout_s", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise WebhookConfigError(f"{where}.attempt_timeout_s must be a number of seconds > 0, got {timeout!r}")
    kept = table.get("max_attempts_kept", 1000)
    if isinstance(kept, bool) or not isinstance(kept, int) or kept < 1:
        raise WebhookConfigError(f"{where}.max_attempts_kept must be an integer >= 1, got {kept!r}")
    return WebhooksPolicy(allow_private=allow, attempt_timeout_s=float(timeout), max_attempts_kept=kept)


def parse_entry(entry: object, index: int, policy: WebhooksPolicy) -> WebhookSettings:
    """One `[[webhooks]]` table; errors name `[[webhooks]][index].key`."""
    where = f"[[webhooks]][{index}]"
    if not isinstance(entry, Mapping):
        raise WebhookConfigError(f"{where} must be a table, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise WebhookConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_ENTRY_KEYS))}")
    for key in ("url", "secret"):
        if key not in entry:
            raise WebhookConfigError(f"{where}.{key} is required")

    def field_value(key: str, check: Any, value: object) -> Any:
        try:
            return check(value)
        except ValueError as exc:  # InvalidWebhook, WebhookRefused
            raise WebhookConfigError(f"{where}.{key}: {exc}") from None

    url = entry["url"]
    if not isinstance(url, str):
        raise WebhookConfigError(f"{where}.url must be a string, got {type(url).__name__}")
    field_value("url", lambda u: check_url(u, allow_private=policy.allow_private), url)
    secret = entry["secret"]
    if not isinstance(secret, str):
        raise WebhookConfigError(f"{where}.secret must be a string (whsec_...)")
    secret = field_value("secret", check_secret, secret)
    types = entry.get("event_types", [])
    if not isinstance(types, list | tuple):
        raise WebhookConfigError(f"{where}.event_types must be a list of strings, got {type(types).__name__}")
    event_types = field_value("event_types", check_event_types, types)
    call = entry.get("server_call_id", "")
    if not isinstance(call, str):
        raise WebhookConfigError(f"{where}.server_call_id must be a string, got {type(call).__name__}")
    schema = field_value("schema", check_schema, entry.get("schema", "callrec"))
    return WebhookSettings(url.strip(), secret, event_types, call.strip(), schema)


def parse_entries(entries: object, policy: WebhooksPolicy) -> tuple[WebhookSettings, ...]:
    """`[[webhooks]]` (absent: none); two entries for one URL are an error (the URL identifies an endpoint)."""
    if entries is None:
        return ()
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise WebhookConfigError(f"[[webhooks]] must be a list of tables, got {type(entries).__name__}")
    parsed: list[WebhookSettings] = []
    for index, entry in enumerate(entries):
        settings = parse_entry(entry, index, policy)
        for other_index, other in enumerate(parsed):
            if other.url == settings.url:
                raise WebhookConfigError(
                    f"[[webhooks]][{index}].url: {redact_url(settings.url)!r} is already configured by "
                    f"[[webhooks]][{other_index}]"
                )
        parsed.append(settings)
    return tuple(parsed)


def parse_webhooks(doc: Mapping[str, Any]) -> WebhooksConfig:
    """The webhook settings of a whole TOML document (its other keys are ignored)."""
    policy = parse_policy(doc.get("webhooks_policy"))
    return WebhooksConfig(parse_entries(doc.get("webhooks"), policy), policy)
