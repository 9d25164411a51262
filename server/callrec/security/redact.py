"""Keep credentials out of what clients and operators see: error messages, events, `callrec uploads list`
output and log lines.

Why a separate pass over text: store errors are built from SDK messages, URLs and exception strings this
code does not control (an Azure error may quote the request URL with its SAS; a signed S3 URL carries
`X-Amz-Credential`). Every message that leaves the storage layer goes through `redact_text`, which
removes URL query strings, user-info in URLs, SAS and AWS signature parameters, connection-string keys
and AWS access key ids; `redact_url` is the same for one URL that should stay recognisable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

REDACTED = "<redacted>"

_URL_QUERY = re.compile(r"(?P<url>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)\?(?P<query>[^\s#'\"<>]*)")
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@'\"<>]+@")
_SECRET_PARAMS = re.compile(
    r"(?i)\b(?P<name>sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|accountkey|"
    r"sharedaccesssignature|sharedaccesskey|aws_secret_access_key|aws_session_token|secret_access_key|"
    r"session_token|sas_token)(?P<sep>\s*[=:]\s*)(?P<value>[^\s&;,'\"<>]+)"
)
_AWS_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}(?![A-Z0-9])")


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without credentials: URL queries and user-info, secret parameters, AWS key ids, `secrets`.

    `secrets` are values the caller knows to be secret (a SAS token, a key); each is removed in its
    literal, percent-encoded and percent-decoded forms.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            for form in {secret, quote(secret, safe=""), unquote(secret)}:
                if form:
                    text = text.replace(form, REDACTED)
    text = _URL_QUERY.sub(lambda m: f"{m['url']}?{REDACTED}", text)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    text = _SECRET_PARAMS.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)
    return _AWS_KEY_ID.sub(REDACTED, text)


def redact_url(url: str) -> str:
    """A URL for humans: scheme, host, port and path; no user-info, query (SAS) or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redact_text(url.split("?", 1)[0].split("#", 1)[0])
    if not parts.scheme or not parts.netloc:
        return redact_text(url.split("?", 1)[0].split("#", 1)[0])
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return redact_text(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
