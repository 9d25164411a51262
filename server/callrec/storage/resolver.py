"""Maps target strings (stored with each upload) to Store objects.

A target string is a configured target's name ("local", "archive"), or
"external|<kind>|<container_url>" for bring-your-own-storage, so an upload queued
before a restart can be resumed with the same store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callrec.storage.base import Store
from callrec.storage.targets import store_from_external

EXTERNAL = "external"


def external_target(kind: str, container_url: str) -> str:
    """The target string of a bring-your-own-storage container."""
    return f"{EXTERNAL}|{kind}|{container_url}"


def describe_target(target: str) -> str:
    """A target string for humans (no credentials)."""
    if target.startswith(f"{EXTERNAL}|"):
        _, kind, url = target.split("|", 2)
        return f"external {kind} {url.split('?', 1)[0]}"
    return target


class StoreResolver:
    """Named stores from the config plus lazily built external ones."""

    def __init__(self, named: Mapping[str, Store], default: str, external_options: Mapping[str, Any] | None = None):
        self.named = dict(named)
        self.default = default
        self.external_options = dict(external_options or {})
        self._external: dict[str, Store] = {}

    def __call__(self, target: str) -> Store:
        """The store of a target string; ValueError when it cannot be built."""
        if target in self.named:
            return self.named[target]
        if target.startswith(f"{EXTERNAL}|"):
            store = self._external.get(target)
            if store is None:
                _, kind, url = target.split("|", 2)
                store = store_from_external(kind, url, **self.external_options)
                self._external[target] = store
            return store
        raise ValueError(f"storage target {target!r} is not configured (have: {', '.join(sorted(self.named))})")

    # -- core's StorageTargetsPort ---------------------------------------------------------------
    def external_target(self, kind: str, container_url: str) -> str:
        """The target string of a bring-your-own-storage container."""
        return external_target(kind, container_url)

    def check(self, target: str) -> None:
        """ValueError when the target cannot be used (not configured, or a bad external container)."""
        self(target)

    def location(self, target: str, key: str) -> str:
        """The store's location of an object (what events announce)."""
        return self(target).location(key)

    def describe(self, target: str) -> str:
        """The target for humans (no credentials)."""
        return describe_target(target)

    def stores(self) -> list[Store]:
        """Every store built so far (for resolving locations)."""
        return [*self.named.values(), *self._external.values()]

    async def close(self) -> None:
        """Close every store."""
        for store in self.stores():
            await store.close()
