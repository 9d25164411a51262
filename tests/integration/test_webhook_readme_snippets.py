"""The README's signature-verification snippets (Python and Node) work: they accept a delivery signed by
the `standardwebhooks` reference library (and by callrec's own signer), and refuse a changed body, a
wrong secret and a stale timestamp."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from callrec.webhooks.signing import generate_secret, signed_headers
from tests.harness import ROOT

SECRET = generate_secret()
BODY = json.dumps([{"id": "evt-1", "eventType": "Microsoft.Communication.RecordingFileStatusUpdated",
                    "data": {"recordingChunkInfo": []}}])


def snippet(name: str) -> str:
    """The code block after `<!-- snippet: name -->` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- snippet: {name} -->\s*```\w+\n(.*?)```", text, re.S)
    assert found, f"README has no snippet {name}"
    return found.group(1)


def reference_headers(secret: str, msg_id: str, at: int, body: str) -> dict[str, str]:
    """Headers as the Standard Webhooks reference library signs them."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, UTC), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(at), "webhook-signature": signature}


def cases() -> list[tuple[str, dict[str, str], str, bool]]:
    now = int(time.time())
    return [
        ("reference", reference_headers(SECRET, "evt-1", now, BODY), BODY, True),
        ("callrec", signed_headers(SECRET, "evt-1", now, BODY), BODY, True),
        ("changed body", reference_headers(SECRET, "evt-1", now, BODY), BODY.replace("evt-1", "evt-2"), False),
        ("wrong secret", reference_headers(generate_secret(), "evt-1", now, BODY), BODY, False),
        ("stale", reference_headers(SECRET, "evt-1", now - 3600, BODY), BODY, False),
    ]


def test_the_python_snippet_verifies_deliveries() -> None:
    scope: dict[str, Any] = {}
    exec(snippet("webhook-verify-python"), scope)
    for name, headers, body, valid in cases():
        if valid:
            assert scope["verified_events"](SECRET, headers, body.encode())[0]["id"] == "evt-1", name
        else:
            with pytest.raises(Exception, match=r"(?i)signature|timestamp"):
                scope["verified_events"](SECRET, headers, body.encode())


def test_the_node_snippet_verifies_deliveries() -> None:
    driver = snippet("webhook-verify-node") + """
const cases = JSON.parse(process.argv[1]);  // node -e: argv[1] is the first argument
const out = cases.map(([secret, headers, body]) => {
  try { return verifiedEvents(secret, headers, body)[0].id; } catch (e) { return "refused: " + e.message; }
});
console.log(JSON.stringify(out));
"""
    todo = cases()
    proc = subprocess.run(["node", "-e", driver, json.dumps([[SECRET, h, b] for _, h, b, _ in todo])],
                          capture_output=True, text=True, timeout=30, check=True)
    results = json.loads(proc.stdout)
    for (name, _, _, valid), result in zip(todo, results, strict=True):
        assert (result == "evt-1") if valid else result.startswith("refused"), (name, result)
