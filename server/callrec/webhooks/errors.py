"""Errors the webhook package raises to its callers, each naming the gRPC status it maps to.

Why not `callrec.core.errors`: callers (the gRPC layer, the CLI, config loading) catch these as the
built-in `ValueError` / `LookupError` families, like `callrec.storage.address_policy` does; the `code`
attribute is the `ErrorCode` name the API layer maps once.
"""

from __future__ import annotations

from callrec.storage.address_policy import DestinationRefused


class InvalidWebhook(ValueError):
    """A URL, secret, schema or filter is malformed (INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class WebhookRefused(DestinationRefused):
    """The address policy refuses an endpoint's destination (PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


class ValidationHandshakeFailed(InvalidWebhook):
    """An Event Grid endpoint did not answer the subscription validation handshake (INVALID_ARGUMENT)."""


class EndpointManagedByConfig(ValueError):
    """An endpoint from the TOML file cannot be removed through the API (PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


class EndpointNotFound(LookupError):
    """No endpoint has this id (NOT_FOUND)."""

    code = "NOT_FOUND"


class EventNotFound(EndpointNotFound):
    """The event to redeliver is unknown to the endpoint or no longer in the event log (NOT_FOUND)."""
