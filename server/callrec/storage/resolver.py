"""Maps target strings (stored with each upload) to Store objects.

A target string is a configured target's name ("local", "archive"), or
"external|<kind>|<container_url>" for bring-your-own-storage, so an upload queued
before a restart can be resumed with the same store.

Secrets at rest: an Azure container URL keeps its SAS in the target string, because the SAS is the only
credential for that container: without it an upload pending at a restart could not be resumed, nor a
stored chunk be downloaded or deleted. It stays in the state database (data directory) only; every
human-facing form goes through `describe_target`, which drops it. S3 target strings carry no secret
(an external bucket's keys are in the operator's `[[storage.external.s3]]` entry).

External targets are checked against the operator's policy (`storage.external.ExternalPolicy`) every
time they are resolved, so before each upload too, not only at StartRecording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callrec.security.redact import redact_url
from callrec.storage.base import Store
from callrec.storage.external import ExternalDestination, ExternalPolicy

EXTERNAL = "external"


def external_target(kind: str, container_url: str) -> str:
    """The target string of a bring-your-own-storage container."""
    return f"{EXTERNAL}|{kind}|{container_url}"


def describe_target(target: str) -> str:
    """A target string for humans (no credentials: no query string, user-info or fragment)."""
    if target.startswith(f"{EXTERNAL}|"):
        parts = target.split("|", 2)
        if len(parts) == 3:
            return f"external {parts[1]} {redact_url(parts[2])}"
        return "external (malformed target)"
    return redact_url(target) if "://" in target or "?" in target else target  # a name, unless it is junk


class StoreResolver:
    """Named stores from the config plus lazily built external ones (allowed by `external`, else refused)."""

    def __init__(
        self,
        named: Mapping[str, Store],
        default: str,
        external_options: Mapping[str, Any] | None = None,
        *,
        external: ExternalPolicy | None = None,
    ):
        self.named = dict(named)
        self.default = default
        self.external_options = dict(external_options or {})
        self.external = external or ExternalPolicy()  # none given: bring-your-own-storage is off
        self._external: dict[str, Store] = {}

    def __call__(self, target: str) -> Store:
        """The store of a target string; ValueError when it cannot be built or the policy refuses it.

        An external target is re-checked against the policy on every call (`ExternalPolicy.plan`: the
        allow list, and the address of an IP-literal host); a host name's addresses are checked on
        every connection its store opens.
        """
        if target in self.named:
            return self.named[target]
        if target.startswith(f"{EXTERNAL}|") and target.count("|") >= 2:
            _, kind, url = target.split("|", 2)
            destination = self.external.plan(kind, url)
            store = self._external.get(target)
            if store is None:
                store = destination.build(self.external_options)
                self._external[target] = store
            return store
        raise ValueError(
            f"storage target {describe_target(target)!r} is not configured (have: {', '.join(sorted(self.named))})"
        )

    async def check_external(self, kind: str, container_url: str) -> ExternalDestination:
        """StartRecording's check of an `external_storage`: the allow list, then DNS and the address policy.

        Raises `address_policy.DestinationRefused` (refused by policy), `ValueError` (malformed) or
        `TimeoutError` (the host did not resolve in time). Builds no store and sends nothing.
        """
        return await self.external.check(kind, container_url)

    # -- core's StorageTargetsPort ---------------------------------------------------------------
    def external_target(self, kind: str, container_url: str) -> str:
        """The target string of a bring-your-own-storage container."""
        return external_target(kind, container_url)

    def check(self, target: str) -> None:
        """ValueError when the target cannot be used (not configured, refused, or a bad external container)."""
        self(target)

    def location(self, target: str, key: str) -> str:
        """The store's location of an object (what events announce)."""
        return self(target).location(key)

    def describe(self, target: str) -> str:
        """The target for humans (no credentials)."""
        return describe_target(target)

    def stores(self) -> list[Store]:
        """Every store built so far."""
        return [*self.named.values(), *self._external.values()]

    async def close(self) -> None:
        """Close every store."""
        for store in self.stores():
            await store.close()
