"""Standard Webhooks signatures: what callrec sends verifies with the reference library, secrets are checked."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from callrec.webhooks.errors import InvalidWebhook
from callrec.webhooks.signing import check_secret, generate_secret, secret_key, sign, signed_headers

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the example of SPEC §9


def test_signature_matches_the_standard_webhooks_reference_implementation() -> None:
    body = '[{"id":"e1","data":{"x":"ü"}}]'
    timestamp = 1_700_000_000
    ours = sign(SPEC_SECRET, "e1", timestamp, body)
    theirs = Webhook(SPEC_SECRET).sign("e1", datetime.fromtimestamp(timestamp, UTC), body)
    assert ours == theirs
    assert ours.startswith("v1,")


def test_signed_headers_verify_with_the_reference_library() -> None:
    secret = generate_secret()
    body = '[{"id":"abc"}]'
    now = int(datetime.now(UTC).timestamp())
    headers = signed_headers(secret, "abc", now, body)
    assert headers["webhook-id"] == "abc" and headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers) == [{"id": "abc"}]
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)  # another secret
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + " ", headers)  # another body


def test_the_key_is_the_base64_decoding_of_the_part_after_the_prefix() -> None:
    assert secret_key(SPEC_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert sign(secret_key(SPEC_SECRET), "m", 1, "b") == sign(SPEC_SECRET, "m", 1, "b")


def test_generated_secrets_are_random_32_byte_keys() -> None:
    a, b = generate_secret(), generate_secret()
    assert a != b and a.startswith("whsec_")
    assert len(secret_key(a)) == 32
    assert check_secret(a) == a


def test_unpadded_base64_is_accepted_like_the_reference_library_does() -> None:
    key = base64.b64encode(b"k" * 25).decode().rstrip("=")
    assert secret_key("whsec_" + key) == b"k" * 25


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with `whsec_`"),
        ("whsec_", "decodes to 0 bytes"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "decodes to 65 bytes"),
    ],
)
def test_bad_secrets_are_refused_with_a_message_that_does_not_repeat_them(secret: str, says: str) -> None:
    with pytest.raises(InvalidWebhook) as err:
        check_secret(secret)
    assert says in str(err.value)
    if len(secret) > 8:
        assert secret not in str(err.value)
