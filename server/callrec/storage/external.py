"""Bring-your-own-storage under the operator's policy: TOML `[storage.external]` (SPEC §5).

A StartRecording request may name `external_storage {kind, container_url}`: a bucket or container of the
client's own. Without a policy that is a server-side request forgery primitive (the server uploads, with
its own credentials, to any host the client names), so it is off unless the operator says where it may go:

```toml
[storage.external]
# Azure container URLs (the client's URL carries its own SAS) may point here:
allow = ["*.blob.core.windows.net", "azurite.internal:10000/devstoreaccount1"]

# S3 buckets a client may name; each entry carries the credentials used for that bucket.
[[storage.external.s3]]
endpoint_url = "https://minio.example.com:9000"   # omit for AWS
bucket = "customer-a"
region = "us-east-1"                                # optional
access_key_id = "..."
secret_access_key = "..."
# session_token = "..."                             # optional
# or, instead of the keys: credentials_from = "archive"  (a [storage.targets.NAME] of kind s3 with keys)
```

Rules, and why:
- Neither `allow` nor an S3 entry: every `external_storage` is refused (PERMISSION_DENIED, naming
  `[storage.external] allow`).
- Azure: the URL's host, port and leading path segments must match an `allow` entry (syntax in
  `address_policy`), and the URL must carry a SAS (`sig=`): the store authenticates with that SAS only,
  never with an account key or a token credential of the server's. The host's addresses must be public
  unless an exact entry lists it (`address_policy.check_destination`), checked at StartRecording and on
  every connection the upload opens (DNS rebinding); redirects are not followed.
- S3: the bucket must match an `[[storage.external.s3]]` entry (`s3://bucket/prefix`, or the entry's
  endpoint URL in path style `https://host:port/bucket/prefix`, or an AWS URL for entries without
  `endpoint_url`). The store uses that entry's endpoint and keys and nothing else: never the server's
  environment, profile, instance role or a configured target's chain, so the server's own AWS identity
  is never attached to a request for a client-chosen bucket. `allow` strings alone do not enable S3
  (the server would have no credentials of the bucket owner to use). The endpoint is the operator's, so
  it is trusted like a configured target's (no address check).
- The client chooses only the prefix inside an allowed bucket or container.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from callrec.security.redact import redact_url
from callrec.storage.address_policy import (
    DEFAULT_PORTS,
    SETTING,
    AllowEntry,
    DestinationRefused,
    PolicyResolver,
    Resolve,
    UnresolvableHost,
    check_destination,
    find_allowed,
    is_listed,
    normalize_host,
    parse_allow_list,
    parse_ip,
    system_resolve,
)
from callrec.storage.base import Store

S3_SETTING = "[[storage.external.s3]]"
LABEL = "external_storage"
DNS_TIMEOUT_S = 10.0
"""Longest a StartRecording waits for the destination's host to resolve."""

DISABLED = (
    f"{LABEL} is not allowed on this server: bring-your-own-storage is off until the operator lists where "
    f"it may go in the config file's `{SETTING}` (hosts of Azure container URLs with a SAS) or "
    f"`{S3_SETTING}` entries (S3 buckets, each with its own credentials)"
)

_GRANT_FIELDS = {
    "bucket",
    "endpoint_url",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "credentials_from",
}
_AWS_VIRTUAL = re.compile(r"^(?P<bucket>.+)\.s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")
_AWS_PATH = re.compile(r"^s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")
_NOT_REGIONS = ("external-1", "dualstack")


def _endpoint_key(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an endpoint URL, default ports filled in: what two endpoints compare by."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, normalize_host(parts.hostname or ""), parts.port or DEFAULT_PORTS.get(scheme, 0)


@dataclass(frozen=True)
class S3Grant:
    """One `[[storage.external.s3]]` entry: a bucket clients may name and the keys used for it."""

    number: int
    bucket: str
    endpoint_url: str | None
    region: str | None
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """The entry for messages (no keys)."""
        where = f"at {self.endpoint_url}" if self.endpoint_url else "on AWS"
        return f"{S3_SETTING} entry #{self.number} (bucket {self.bucket!r} {where})"


def _grant(number: int, table: object, targets: Mapping[str, Mapping[str, Any]]) -> S3Grant:
    label = f"{S3_SETTING} entry #{number}"
    if not isinstance(table, Mapping):
        raise ValueError(f"{label}: must be a table of fields, got {type(table).__name__}")
    unknown = sorted(set(table) - _GRANT_FIELDS)
    if unknown:
        raise ValueError(
            f"{label}: unknown field(s) {', '.join(map(repr, unknown))} (valid: {', '.join(sorted(_GRANT_FIELDS))})"
        )

    def text(name: str) -> str | None:
        value = table.get(name)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ValueError(f"{label}: field {name!r} must be a string, got {type(value).__name__}")
        return value

    bucket = text("bucket")
    if not bucket:
        raise ValueError(f"{label}: missing required field 'bucket'")
    endpoint_url = text("endpoint_url")
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
            raise ValueError(f"{label}: field 'endpoint_url' must be an http(s) URL without query or user, "
                             f"got {redact_url(endpoint_url)!r}")
        endpoint_url = endpoint_url.rstrip("/")
    key_id, secret, token = text("access_key_id"), text("secret_access_key"), text("session_token")
    source = text("credentials_from")
    if source is not None:
        if key_id or secret or token:
            raise ValueError(f"{label}: give 'credentials_from' or the keys, not both")
        target = targets.get(source)
        if target is None:
            raise ValueError(f"{label}: credentials_from = {source!r} names no [storage.targets.{source}]")
        if target.get("kind") != "s3" or not target.get("access_key_id") or not target.get("secret_access_key"):
            raise ValueError(
                f"{label}: credentials_from = {source!r} must name an s3 target with explicit 'access_key_id' "
                "and 'secret_access_key' (the server's environment or profile credentials are never used "
                "for client-chosen storage)"
            )
        key_id, secret = str(target["access_key_id"]), str(target["secret_access_key"])
        token = str(target["session_token"]) if target.get("session_token") else None
    if not key_id or not secret:
        raise ValueError(
            f"{label}: give 'access_key_id' and 'secret_access_key' (or 'credentials_from'): an external "
            "bucket is never written with the server's own AWS credentials"
        )
    return S3Grant(number, bucket, endpoint_url, text("region"), key_id, secret, token)


@dataclass(frozen=True)
class ExternalDestination:
    """A client's container URL the policy allows: where it goes and how to build its store."""

    kind: str
    shown: str
    """The URL without query or user-info, for messages."""
    host: str
    port: int
    default_port: int | None
    check_addresses: bool
    """False for S3 entries (the operator's own endpoint) and hosts an exact allow entry lists."""
    build: Callable[[Mapping[str, Any]], Store] = field(repr=False, compare=False)


class ExternalPolicy:
    """The parsed `[storage.external]` table: which external destinations clients may use."""

    def __init__(
        self,
        allow: Sequence[AllowEntry] = (),
        s3: Sequence[S3Grant] = (),
        *,
        resolve: Resolve = system_resolve,
        dns_timeout_s: float = DNS_TIMEOUT_S,
    ) -> None:
        self.allow = tuple(allow)
        self.s3 = tuple(s3)
        self.resolve = resolve
        self.dns_timeout_s = dns_timeout_s

    @classmethod
    def from_config(
        cls, table: Mapping[str, Any] | None, targets: Mapping[str, Mapping[str, Any]] | None = None, **kwargs: Any
    ) -> ExternalPolicy:
        """Parse `[storage.external]`; `targets` are the `[storage.targets]` tables (for `credentials_from`)."""
        table = table or {}
        if not isinstance(table, Mapping):
            raise ValueError(f"[storage.external] must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - {"allow", "s3"})
        if unknown:
            raise ValueError(f"[storage.external]: unknown field(s) {', '.join(map(repr, unknown))} (valid: allow, s3)")
        allow = parse_allow_list(table.get("allow"))
        raw_grants = table.get("s3") or []
        if isinstance(raw_grants, Mapping):
            raw_grants = [raw_grants]
        if not isinstance(raw_grants, list):
            raise ValueError(f"{S3_SETTING} must be an array of tables")
        grants = [_grant(i, g, targets or {}) for i, g in enumerate(raw_grants, 1)]
        seen: dict[tuple[object, str], S3Grant] = {}
        for grant in grants:
            key = (_endpoint_key(grant.endpoint_url) if grant.endpoint_url else None, grant.bucket)
            if key in seen:
                raise ValueError(f"{grant.describe()} repeats {seen[key].describe()}")
            seen[key] = grant
        return cls(allow, grants, **kwargs)

    @property
    def enabled(self) -> bool:
        """Whether any external destination can be allowed at all."""
        return bool(self.allow or self.s3)

    # ----------------------------------------------------------------------------------- checking
    def plan(self, kind: str, container_url: str) -> ExternalDestination:
        """Check a destination against the allow list (no DNS) and say how to build its store.

        Raises `DestinationRefused` when the policy refuses it, `ValueError` when the URL is malformed.
        IP-literal hosts get their address check here too (aiohttp never resolves them later).
        """
        if not self.enabled:
            raise DestinationRefused(DISABLED)
        normalized = (kind or "").strip().lower()
        if not container_url or not isinstance(container_url, str):
            raise ValueError(f"{LABEL}: missing required field 'container_url'")
        if normalized.endswith("azure_blob"):
            destination = self._plan_azure(container_url)
        elif normalized.endswith("s3"):
            destination = self._plan_s3(container_url)
        else:
            raise ValueError(f"{LABEL}: field 'kind' must be S3 or AZURE_BLOB, got {kind!r}")
        if destination.check_addresses and parse_ip(destination.host) is not None:
            self._check_sync(destination)
        return destination

    def _check_sync(self, destination: ExternalDestination, resolve: Resolve | None = None) -> None:
        try:
            check_destination(destination.host, destination.port, self.allow, resolve=resolve or self.resolve,
                              default_port=destination.default_port)
        except (DestinationRefused, UnresolvableHost) as exc:
            raise type(exc)(f"{LABEL} {destination.shown}: {exc}") from None

    async def check(self, kind: str, container_url: str) -> ExternalDestination:
        """`plan`, then resolve the host and apply the address policy (StartRecording's full check)."""
        destination = self.plan(kind, container_url)
        if destination.check_addresses and parse_ip(destination.host) is None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self._check_sync, destination), self.dns_timeout_s)
            except TimeoutError:
                raise TimeoutError(f"{LABEL} {destination.shown}: resolving {destination.host!r} timed out") \
                    from None
        return destination

    # --------------------------------------------------------------------------------------- URLs
    @staticmethod
    def _split(url: str, schemes: tuple[str, ...]) -> SplitResult:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            raise ValueError(f"{LABEL}: container_url {redact_url(url)!r} is not a valid URL") from None
        if parts.scheme.lower() not in schemes or not parts.netloc:
            raise ValueError(
                f"{LABEL}: container_url must be a {' or '.join(s + '://' for s in schemes)} URL, "
                f"got {redact_url(url)!r}"
            )
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError(f"{LABEL}: container_url must not carry a user or password")
        if not parts.netloc.isascii() or any(c in parts.netloc for c in "%\\"):
            # what the allow list matched must be exactly what the HTTP client connects to: no IDNA or
            # percent-decoding differences between the two parsers
            raise ValueError(f"{LABEL}: container_url's host must be plain ASCII (punycode for IDNs)")
        if parts.fragment:
            raise ValueError(f"{LABEL}: container_url must not have a fragment (#...)")
        return parts

    @staticmethod
    def _segments(path: str) -> list[str]:
        return [unquote(p) for p in path.split("/") if p]

    def _plan_azure(self, url: str) -> ExternalDestination:
        from callrec.storage.azure_blob import AzureBlobStore

        parts = self._split(url, ("http", "https"))
        scheme = parts.scheme.lower()
        host = normalize_host(parts.hostname or "")
        default_port = DEFAULT_PORTS[scheme]
        port = parts.port or default_port
        segments = self._segments(parts.path)
        shown = redact_url(url)
        entry = find_allowed(self.allow, host, port, default_port, segments)
        if entry is None:
            raise DestinationRefused(
                f"{LABEL}: {shown} is not allowed: its host, port and container are not listed in `{SETTING}` "
                "(ask the operator to add them)"
            )
        if "sig" not in parse_qs(parts.query):
            raise ValueError(
                f"{LABEL}: the Azure container_url needs a SAS as its query string (with its `sig` signature) "
                "granting read, write, delete and list on the container; the server never uses its own Azure "
                "credentials for it"
            )
        account_path = ""
        if parse_ip(host) is not None or host == "localhost":  # emulator, path style: /account/container/...
            if not segments:
                raise ValueError(f"{LABEL}: container_url {shown!r} names no account (expected /account/container)")
            account_path, segments = "/" + segments[0], segments[1:]
        if not segments:
            raise ValueError(f"{LABEL}: container_url {shown!r} names no container")
        container, prefix = segments[0], "/".join(segments[1:])
        netloc = parts.netloc
        sas = parts.query
        allow = self.allow
        resolve = self.resolve

        def build(options: Mapping[str, Any]) -> Store:
            return AzureBlobStore(
                container,
                prefix=prefix,
                account_url=f"{scheme}://{netloc}{account_path}",
                sas_token=sas,
                resolver=PolicyResolver(allow, default_port, resolve=resolve),
                permit_redirects=False,
                **options,
            )

        listed = is_listed(self.allow, host, port, default_port)
        return ExternalDestination("azure_blob", shown, host, port, default_port, not listed, build)

    def _plan_s3(self, url: str) -> ExternalDestination:
        from callrec.storage.s3 import S3Store

        parts = self._split(url, ("s3", "http", "https"))
        shown = redact_url(url)
        if parts.query:
            raise ValueError(
                f"{LABEL}: an S3 container_url takes no query string (the credentials come from the operator's "
                f"{S3_SETTING} entry for the bucket), got {shown!r}"
            )
        scheme = parts.scheme.lower()
        segments = self._segments(parts.path)
        host = normalize_host(parts.hostname or "")
        region: str | None = None
        if scheme == "s3":
            bucket, prefix_parts = parts.netloc, segments
            grants = [g for g in self.s3 if g.bucket == bucket]
        elif match := _AWS_VIRTUAL.match(host):
            bucket, region, prefix_parts = match["bucket"], match["region"], segments
            grants = [g for g in self.s3 if g.endpoint_url is None and g.bucket == bucket]
        else:
            if not segments:
                raise ValueError(f"{LABEL}: container_url {shown!r} names no bucket (expected .../bucket/prefix)")
            bucket, prefix_parts = segments[0], segments[1:]
            if match := _AWS_PATH.match(host):
                region = match["region"]
                grants = [g for g in self.s3 if g.endpoint_url is None and g.bucket == bucket]
            else:
                key = _endpoint_key(url)
                grants = [
                    g for g in self.s3 if g.endpoint_url and _endpoint_key(g.endpoint_url) == key and g.bucket == bucket
                ]
        if not bucket:
            raise ValueError(f"{LABEL}: container_url {shown!r} names no bucket")
        if not grants:
            raise DestinationRefused(
                f"{LABEL}: S3 {shown} is not allowed: no {S3_SETTING} entry names this bucket at this endpoint "
                f"(`{SETTING}` alone does not enable S3: the server never sends its own AWS credentials to a "
                "client-chosen bucket, so each external bucket needs an entry with its own keys)"
            )
        if len(grants) > 1:
            raise ValueError(
                f"{LABEL}: s3://{bucket} is ambiguous (several {S3_SETTING} entries name bucket {bucket!r}); "
                "give the endpoint's URL instead, e.g. https://host:port/bucket/prefix"
            )
        grant = grants[0]
        if region in _NOT_REGIONS:
            region = None
        prefix = "/".join(prefix_parts)

        def build(options: Mapping[str, Any]) -> Store:
            return S3Store(
                grant.bucket,
                prefix=prefix,
                region=grant.region or region,
                endpoint_url=grant.endpoint_url,
                access_key_id=grant.access_key_id,
                secret_access_key=grant.secret_access_key,
                session_token=grant.session_token,
                use_default_credentials=False,
                **options,
            )

        endpoint = urlsplit(grant.endpoint_url) if grant.endpoint_url else None
        endpoint_host = normalize_host(endpoint.hostname or "") if endpoint else f"{grant.bucket}.s3.amazonaws.com"
        endpoint_port = (endpoint.port or DEFAULT_PORTS[endpoint.scheme]) if endpoint else 443
        return ExternalDestination("s3", shown, endpoint_host, endpoint_port, None, False, build)
