"""Standard Webhooks signing (https://www.standardwebhooks.com): `whsec_` secrets and `v1,` signatures.

A receiver verifies a delivery with any Standard Webhooks library (`standardwebhooks` on PyPI, Svix's
SDKs): `webhook-signature` is `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")),
where `key` is the base64 decoding of the secret's part after `whsec_`. The spec asks for keys of 24 to
64 bytes; `generate_secret` makes 32 (256 bits, SHA-256's block of security).

Secrets never appear in error messages or logs: errors say what is wrong with the shape only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from callrec.webhooks.errors import InvalidWebhook

PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
GENERATED_KEY_BYTES = 32

_HINT = (
    f"a webhook secret is `{PREFIX}` followed by the base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes "
    "(32 base64 characters for 24 bytes); leave it out and `callrec webhooks add` makes one"
)


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_` secret encodes; `InvalidWebhook` (naming the problem, not the secret) otherwise."""
    if not isinstance(secret, str) or not secret.startswith(PREFIX):
        raise InvalidWebhook(f"the webhook secret does not start with `{PREFIX}`: {_HINT}")
    encoded = secret[len(PREFIX) :].strip()
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidWebhook(f"the webhook secret's part after `{PREFIX}` is not valid base64: {_HINT}") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidWebhook(f"the webhook secret decodes to {len(key)} bytes: {_HINT}")
    return key


def check_secret(secret: str) -> str:
    """`secret` (stripped) if it is a valid `whsec_` secret; `InvalidWebhook` otherwise."""
    secret_key(secret)
    return secret.strip()


def generate_secret(nbytes: int = GENERATED_KEY_BYTES) -> str:
    """A new random secret, `whsec_` + base64 of `nbytes` bytes from the OS's CSPRNG."""
    if not MIN_KEY_BYTES <= nbytes <= MAX_KEY_BYTES:
        raise ValueError(f"a webhook secret has {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {nbytes}")
    return PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value for one attempt: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.

    `secret` is a `whsec_` string or its decoded key; `timestamp` the attempt's unix seconds.
    """
    key = secret if isinstance(secret, bytes) else secret_key(secret)
    digest = hmac.new(key, f"{msg_id}.{int(timestamp)}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str | bytes, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (plus the JSON content type)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }
