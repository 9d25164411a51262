"""Fixtures for integration tests: real S3 (moto) and Azure Blob (Azurite) servers and stores on them.

Session fixtures start each server once, on first use only (a test run that needs neither starts
neither). Per-test fixtures hand out a fresh prefix in a shared bucket/container, so tests never see
each other's objects:

- `moto_server` -> `MotoServer` (`endpoint_url`, `region`, `access_key_id`, `secret_access_key`,
  `client()`, `target(bucket, prefix, **extra)`); bucket `callrec-test` exists.
- `azurite_server` -> `AzuriteServer` (`account_url`, `connection_string`, `account_key`,
  `target(container, prefix, **extra)`); container `callrec-test` exists.
- `s3_target_config` / `azure_target_config` -> a storage target mapping (TOML shape, SPEC §5) with a
  unique prefix, for `callrec.storage.targets.store_from_config` or a server's config file.
- `s3_store` / `azure_store` -> a ready `S3Store` / `AzureBlobStore` on that config, closed afterwards.
- `postgres_server` -> `PostgresServer` (Debian's PostgreSQL in a temporary directory, loopback; `url`,
  `reset()`, `kill()`, `start()`), for the whole session; `postgres_url` resets its database first.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from callrec.storage.azure_blob import AzureBlobStore
from callrec.storage.s3 import S3Store
from callrec.storage.targets import store_from_config
from tests.integration.storage_servers import TEST_BUCKET, TEST_CONTAINER, AzuriteServer, MotoServer
from tests.postgres_service import PostgresServer


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's S3 server (IAM auth enforced) with bucket `callrec-test`, for the whole session."""
    server = MotoServer().start()
    try:
        server.create_bucket(TEST_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    """Azurite's blob service with container `callrec-test`, for the whole session."""
    server = AzuriteServer().start()
    try:
        server.create_container(TEST_CONTAINER)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on loopback for the whole session (started on first use)."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of an empty `callrec` database (dropped and created again for this test)."""
    postgres_server.reset()
    return postgres_server.url


def _unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_target_config(moto_server: MotoServer) -> dict[str, Any]:
    """An S3 storage target on the moto server, under a prefix of this test's own."""
    return moto_server.target(prefix=_unique_prefix())


@pytest.fixture
def azure_target_config(azurite_server: AzuriteServer) -> dict[str, Any]:
    """An Azure Blob storage target on Azurite, under a prefix of this test's own."""
    return azurite_server.target(prefix=_unique_prefix())


@pytest.fixture
async def s3_store(s3_target_config: dict[str, Any]) -> AsyncIterator[S3Store]:
    """A ready `S3Store` on moto (closed after the test)."""
    store = store_from_config("s3-test", s3_target_config)
    assert isinstance(store, S3Store)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def azure_store(azure_target_config: dict[str, Any]) -> AsyncIterator[AzureBlobStore]:
    """A ready `AzureBlobStore` on Azurite (closed after the test)."""
    store = store_from_config("azure-test", azure_target_config)
    assert isinstance(store, AzureBlobStore)
    try:
        yield store
    finally:
        await store.close()
