"""JWT bearer tokens: verified by the server, created by `callrec token create`. No gRPC here.

Keys come from the `[auth]` section of the config file: HS256 secrets by key id (`hs256_keys`,
several at once so a new key can be rolled out before the old one is dropped) and RS256 / ES256
public keys from a JWKS file (`jwks_file`, for tokens minted by an identity provider). The
token header's `kid` picks the key, and the key alone fixes the algorithm: a token never
chooses how it is checked, so neither `alg: none` nor an HS256 token "signed" with a public RSA
key (the classic algorithm confusion) can pass.

Claims: `role` (admin | controller | gateway), optional `calls` (the server_call_ids the token is
limited to), `exp` required (a leaked token must run out), `nbf` honoured, and 30 s of leeway for
clock skew between the host that minted the token and this server.

Every error message says what is wrong and what to do, and never contains the token or a key:
messages go back to clients and into logs.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

LEEWAY_S = 30.0
"""Clock skew tolerated on `exp` and `nbf` (SPEC §5)."""
MIN_HS256_SECRET_BYTES = 32
"""RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits)."""
JWKS_ALGORITHMS = ("RS256", "ES256")
"""Public-key algorithms accepted from the JWKS file."""
_MAX_SHOWN = 64
"""Longest header value (kid, alg) quoted back in a message: they come from the client."""


class Role(enum.StrEnum):
    """What a token may do (the policy in `security/policy.py` maps roles to services)."""

    ADMIN = "admin"
    """Everything, UploadService included; never limited to calls."""
    CONTROLLER = "controller"
    """An application back end: RecordingService, EventService, ContentService."""
    GATEWAY = "gateway"
    """A media gateway: MediaService only."""


class TokenError(Exception):
    """No token, or one that is not valid (UNAUTHENTICATED); the message is safe to send back."""


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says about its bearer."""

    role: Role
    calls: frozenset[str] | None
    """The server_call_ids the token is limited to; None: every call."""
    subject: str
    """`sub`, for logs (who the token was made for); may be empty."""
    key_id: str
    """The `kid` that verified it."""
    expires_at: datetime

    @property
    def call_limited(self) -> bool:
        """True when call-scoped RPCs must name one of `calls` (admin tokens never are)."""
        return self.role is not Role.ADMIN and self.calls is not None

    def allows_call(self, server_call_id: str) -> bool:
        """May this token act on the call `server_call_id`?"""
        return not self.call_limited or server_call_id in (self.calls or ())


@dataclass(frozen=True)
class VerificationKey:
    """One key the server accepts: its id, the one algorithm it verifies, the key material."""

    kid: str
    algorithm: str
    key: Any = field(repr=False)
    """bytes (an HS256 secret) or a public key object of `cryptography`; never printed."""


def _show(value: object) -> str:
    """A client-supplied header value, quoted and cut short, for an error message."""
    text = str(value)
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "…")


def _when(timestamp: object) -> str:
    """A NumericDate claim as ISO 8601 UTC (or as given when it is not a number)."""
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return _show(timestamp)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def hs256_keys(secrets_by_kid: Mapping[str, str], source: str = "[auth] hs256_keys") -> dict[str, VerificationKey]:
    """HS256 verification keys from `{kid: secret}`; ValueError naming a short or empty one."""
    keys = {}
    for kid, secret in secrets_by_kid.items():
        if not kid:
            raise ValueError(f"{source}: a key id (kid) must not be empty")
        if not isinstance(secret, str):
            raise ValueError(f"{source}.{kid} must be a string secret")
        if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
            raise ValueError(
                f"{source}.{kid} is {len(secret.encode())} bytes; HS256 secrets need at least "
                f"{MIN_HS256_SECRET_BYTES} (make one with: "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        keys[kid] = VerificationKey(kid, "HS256", secret.encode())
    return keys


def load_jwks(path: Path) -> dict[str, VerificationKey]:
    """RS256 / ES256 public keys from a JWKS file (`{"keys": [{kty, kid, ...}]}`), by kid.

    Refuses private keys (the server needs public keys only; a private key in a config
    directory is a leak waiting to happen), keys without `kid`, and other algorithms.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"[auth] jwks_file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"[auth] jwks_file {path} is not a readable JSON file: {exc}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"[auth] jwks_file {path} must be a JWK set: {{\"keys\": [ ... ]}} with at least one key")
    keys: dict[str, VerificationKey] = {}
    for number, entry in enumerate(entries, 1):
        where = f"[auth] jwks_file {path}, key {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a JSON object")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where} has no \"kid\": tokens pick their key by kid")
        if "d" in entry:
            raise ValueError(f"{where} (kid {kid!r}) is a private key; give the server public keys only")
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            raise ValueError(f"{where} (kid {kid!r}) is not a usable key: {exc}") from None
        if jwk.algorithm_name not in JWKS_ALGORITHMS:
            raise ValueError(f"{where} (kid {kid!r}) is for {jwk.algorithm_name}; "
                             f"jwks_file keys must be {' or '.join(JWKS_ALGORITHMS)}")
        if kid in keys:
            raise ValueError(f"{where}: kid {kid!r} appears twice")
        keys[kid] = VerificationKey(kid, jwk.algorithm_name, jwk.key)
    return keys


class TokenVerifier:
    """Checks bearer tokens against the configured keys; `verify` returns the claims or raises TokenError."""

    def __init__(self, keys: Mapping[str, VerificationKey], leeway_s: float = LEEWAY_S) -> None:
        if not keys:
            raise ValueError("[auth] has no keys: set hs256_keys = { kid = \"secret\" } and/or jwks_file")
        self.keys = dict(keys)
        self.leeway_s = leeway_s

    @classmethod
    def from_config(cls, hs256: Mapping[str, str], jwks_file: Path | None) -> TokenVerifier:
        """The keys of an `[auth]` section; ValueError when one is unusable or a kid is defined twice."""
        keys = hs256_keys(hs256)
        if jwks_file is not None:
            public = load_jwks(jwks_file)
            clash = sorted(set(keys) & set(public))
            if clash:
                raise ValueError(f"[auth]: kid {', '.join(clash)} is both in hs256_keys and in the jwks_file; "
                                 "every kid must name one key")
            keys.update(public)
        return cls(keys)

    @property
    def kids(self) -> list[str]:
        """The key ids this server knows, sorted (named in 'unknown kid' messages)."""
        return sorted(self.keys)

    def verify(self, token: str) -> TokenClaims:
        """The claims of a valid token; TokenError saying what is wrong (never quoting the token)."""
        try:
            return self._verify(token)
        except TokenError as exc:
            message = str(exc)
            if any(len(part) >= 8 and part in message for part in token.split(".")):
                raise TokenError("the bearer token is not valid") from None  # a library message quoted it
            raise
        except Exception as exc:  # a malformed key or signature the library did not wrap: still just invalid
            raise TokenError(f"the token could not be verified ({type(exc).__name__})") from None

    def _verify(self, token: str) -> TokenClaims:
        if not token:
            raise TokenError("empty bearer token: send 'authorization: Bearer <jwt>'")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("the bearer token is not a JWT (expected header.payload.signature in base64url)") from None
        kid = header.get("kid")
        known = ", ".join(self.kids)
        if not isinstance(kid, str) or not kid:
            raise TokenError(f"the token has no 'kid' header; the server knows {known} "
                             "(`callrec token create --kid KID` sets it)")
        key = self.keys.get(kid)
        if key is None:
            raise TokenError(f"unknown kid {_show(kid)}; the server knows {known}")
        alg = header.get("alg")
        if alg != key.algorithm:
            raise TokenError(f"the token is signed with {_show(alg)} but key {kid!r} is {key.algorithm}")
        try:
            payload = jwt.decode(
                token, key.key, algorithms=[key.algorithm], leeway=self.leeway_s,
                # audience and issuer are not part of callrec's contract: keys are callrec's own
                options={"require": ["exp"], "verify_aud": False, "verify_iss": False},
            )
        except jwt.ExpiredSignatureError:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
            raise TokenError(f"token expired at {_when(exp)} (server time {_now()}, {self.leeway_s:g} s leeway); "
                             "create a new one with `callrec token create`") from None
        except jwt.ImmatureSignatureError:
            claims = jwt.decode(token, options={"verify_signature": False})
            start = claims.get("nbf", claims.get("iat"))
            raise TokenError(f"token not valid before {_when(start)} (server time {_now()}, "
                             f"{self.leeway_s:g} s leeway); check the clocks") from None
        except jwt.InvalidSignatureError:
            raise TokenError(f"token signature does not verify with key {kid!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"the token has no {exc.claim!r} claim; callrec tokens must expire") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is not valid: {exc}") from None
        return _claims(payload, kid)


def _claims(payload: Mapping[str, Any], kid: str) -> TokenClaims:
    """The callrec claims of a verified payload; TokenError when they are missing or malformed."""
    role = payload.get("role")
    if role not in {r.value for r in Role}:
        roles = ", ".join(r.value for r in Role)
        raise TokenError(f"the token's 'role' claim is {_show(role) if role is not None else 'missing'}; "
                         f"it must be one of {roles}")
    calls = payload.get("calls")
    if calls is not None and (
        not isinstance(calls, list) or not calls or not all(isinstance(c, str) and c for c in calls)
    ):
        raise TokenError("the token's 'calls' claim must be a non-empty list of server_call_ids "
                         "(leave it out for a token valid for every call)")
    subject = payload.get("sub", "")
    return TokenClaims(
        role=Role(role),
        calls=frozenset(calls) if calls is not None else None,
        subject=subject if isinstance(subject, str) else str(subject),
        key_id=kid,
        expires_at=datetime.fromtimestamp(payload["exp"], UTC),
    )


_TTL_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """A lifetime like "90s", "15m", "1h", "7d" or "1h30m"; ValueError with the accepted forms."""
    compact = text.strip().lower().replace(" ", "")
    parts = _TTL_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"ttl must be a duration like 90s, 15m, 1h, 7d or 1h30m; got {text!r}")
    seconds = sum(float(n) * _TTL_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"ttl must be longer than 0; got {text!r}")
    return timedelta(seconds=seconds)


def create_token(
    secret: str,
    kid: str,
    role: Role | str,
    ttl: timedelta,
    calls: Iterable[str] = (),
    subject: str = "",
    now: datetime | None = None,
) -> str:
    """An HS256 JWT for callrec: header `kid`, claims role, exp, iat, nbf, jti, and calls/sub when given.

    Admin tokens are never call-limited, so `calls` with role admin is a ValueError rather than
    a token that looks narrower than it is.
    """
    role = Role(role)
    call_list = [c for c in calls if c]
    if role is Role.ADMIN and call_list:
        raise ValueError("admin tokens are not limited to calls; use --role controller or gateway with --call")
    if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
        raise ValueError(f"the HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes")
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    claims: dict[str, Any] = {
        "role": role.value,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
        "jti": secrets.token_hex(8),
    }
    if call_list:
        claims["calls"] = call_list
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})
