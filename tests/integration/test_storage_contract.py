"""One contract for every `Store` (fsspec `tests/abstract` style): the same tests run on each backend.

Backends: `local` (a temp directory), `s3` (moto's server, IAM auth on), `azure_blob` (Azurite). A
backend-specific fact appears only in `Backend` (how to build a store with wrong credentials or on a
dead port, and how the store itself counts an object's parts); the tests never branch on the kind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from callrec.storage import azure_blob, local, s3
from callrec.storage.base import (
    LOCATION_PATTERN,
    PIECE_SIZE,
    ChecksumMismatch,
    FileDigests,
    ObjectNotFound,
    PermissionDenied,
    RangeNotSatisfiable,
    Store,
    Transient,
)
from callrec.storage.targets import store_from_config
from tests.integration.storage_servers import AZURITE_KEY, TEST_CONTAINER, AzuriteServer, MotoServer, free_port

MIB = 1024 * 1024
SMALL = 2 * MIB + 12_345  # more than two read pieces, less than one upload part
LARGE = 30 * MIB + 4_321  # four 8 MiB parts/blocks, the last one short


@dataclass
class Backend:
    """How to exercise one backend through the contract."""

    kind: str
    config: dict[str, Any]
    module: Any
    bad_credentials: dict[str, Any] | None
    unreachable: dict[str, Any] | None
    count_parts: Callable[[Store, str], Awaitable[int]] | None = None

    def build(self, config: dict[str, Any] | None = None) -> Store:
        return store_from_config(f"{self.kind}-contract", config or self.config)


def _local_backend(tmp_path: Path) -> Backend:
    return Backend("local", {"kind": "local", "path": str(tmp_path / "store")}, local, None, None)


def _s3_backend(server: MotoServer) -> Backend:
    prefix = f"contract-{uuid.uuid4().hex[:10]}"

    async def count_parts(store: Store, key: str) -> int:
        # A multipart object's ETag ends in -<number of parts>.
        assert isinstance(store, s3.S3Store)
        etag = server.client().head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")["ETag"]
        return int(etag.strip('"').rpartition("-")[2]) if "-" in etag else 1

    return Backend(
        "s3",
        server.target(prefix=prefix),
        s3,
        bad_credentials=server.target(prefix=prefix, secret_access_key="not-the-secret", max_attempts=1),
        unreachable={
            **server.target(prefix=prefix),
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "max_attempts": 1,
            "connect_timeout": 1,
        },
        count_parts=count_parts,
    )


def _azure_backend(server: AzuriteServer) -> Backend:
    prefix = f"contract-{uuid.uuid4().hex[:10]}"
    wrong_key = server.connection_string.replace(AZURITE_KEY, "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")
    dead = server.connection_string.replace(f":{server.port}/", f":{free_port()}/")

    async def count_parts(store: Store, key: str) -> int:
        assert isinstance(store, azure_blob.AzureBlobStore)
        blob = store._container.get_blob_client(f"{store.prefix}/{key}")
        committed, _uncommitted = await blob.get_block_list("committed")
        return max(1, len(committed))

    return Backend(
        "azure_blob",
        server.target(prefix=prefix),
        azure_blob,
        bad_credentials=server.target(prefix=prefix, connection_string=wrong_key, max_attempts=1),
        unreachable=server.target(prefix=prefix, connection_string=dead, max_attempts=1, connection_timeout=1),
        count_parts=count_parts,
    )


@pytest.fixture(params=["local", "s3", "azure_blob"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each contract test runs once per backend; servers start only when a backend needs them."""
    if request.param == "local":
        return _local_backend(tmp_path)
    if request.param == "s3":
        return _s3_backend(request.getfixturevalue("moto_server"))
    return _azure_backend(request.getfixturevalue("azurite_server"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    built = backend.build()
    assert isinstance(built, Store)
    try:
        yield built
    finally:
        await built.close()


def write(path: Path, size: int, seed: int = 0) -> bytes:
    """A file of `size` pseudo-random bytes (cheap, incompressible, different per seed)."""
    data = (hashlib.sha256(f"{seed}".encode()).digest() * (size // 32 + 1))[:size]
    if size > 64:
        data = os.urandom(64) + data[64:]
    path.write_bytes(data)
    return data


async def read_all(store: Store, key: str, offset: int = 0, length: int = 0) -> bytes:
    pieces = [piece async for piece in store.open_range(key, offset, length)]
    assert all(0 < len(p) <= PIECE_SIZE for p in pieces), [len(p) for p in pieces]
    return b"".join(pieces)


# ------------------------------------------------------------------------------------------- tests
async def test_put_head_and_read_back(store: Store, tmp_path: Path) -> None:
    data = write(tmp_path / "a.wav", SMALL)
    stored = await store.put_file("20250101/call-1/abcd1234-u1/0-audio.wav", tmp_path / "a.wav", "audio/wav")

    assert stored.key == "20250101/call-1/abcd1234-u1/0-audio.wav"
    assert stored.size == SMALL
    assert stored.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert stored.uploaded and stored.parts == 1
    assert stored.location == store.location(stored.key)
    info = await store.head(stored.key)
    assert info is not None
    assert (info.size, info.content_type) == (SMALL, "audio/wav")
    assert await read_all(store, stored.key) == data
    assert await store.head("20250101/call-1/abcd1234-u1/1-audio.wav") is None


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 0), (0, 1), (1, 0), (1000, 5000), (PIECE_SIZE - 1, PIECE_SIZE + 2), (SMALL - 1, 1), (SMALL, 0)],
)
async def test_ranged_reads_are_byte_exact(store: Store, tmp_path: Path, offset: int, length: int) -> None:
    data = write(tmp_path / "r.bin", SMALL)
    await store.put_file("r/r.bin", tmp_path / "r.bin", "application/octet-stream")
    expected = data[offset:] if length == 0 else data[offset : offset + length]
    assert await read_all(store, "r/r.bin", offset, length) == expected


@pytest.mark.parametrize(("offset", "length"), [(SMALL + 1, 0), (SMALL - 10, 11), (SMALL, 1), (-1, 0), (0, -5)])
async def test_range_past_the_end_is_out_of_range(store: Store, tmp_path: Path, offset: int, length: int) -> None:
    write(tmp_path / "r.bin", SMALL)
    await store.put_file("r/r.bin", tmp_path / "r.bin", "application/octet-stream")
    with pytest.raises(RangeNotSatisfiable):
        await read_all(store, "r/r.bin", offset, length)


async def test_reading_a_missing_object_is_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        await read_all(store, "no/such/object.wav")


async def test_large_file_goes_up_in_parts_and_reads_back_equal(backend: Backend, store: Store, tmp_path: Path) -> None:
    data = write(tmp_path / "big.mp4", LARGE)
    stored = await store.put_file("big/0-video.mp4", tmp_path / "big.mp4", "video/mp4")

    assert stored.size == LARGE
    if backend.count_parts is not None:
        assert stored.parts == 4
        assert await backend.count_parts(store, "big/0-video.mp4") == 4
    digest = hashlib.sha256()
    async for piece in store.open_range("big/0-video.mp4"):
        assert len(piece) <= PIECE_SIZE
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert stored.checksum == f"sha256:{digest.hexdigest()}"


async def test_delete_then_not_found(store: Store, tmp_path: Path) -> None:
    write(tmp_path / "m.json", 100)
    await store.put_file("d/0-metadata.json", tmp_path / "m.json", "application/json")
    await store.delete("d/0-metadata.json")

    assert await store.head("d/0-metadata.json") is None
    with pytest.raises(ObjectNotFound):
        await store.delete("d/0-metadata.json")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "d/0-metadata.json")


@pytest.mark.parametrize("key", ["20250101/c/abcd-u/0-audio.wav", "with space/ü and ü/a+b%20c.json", "x"])
async def test_location_and_key_for_round_trip(backend: Backend, store: Store, key: str) -> None:
    location = store.location(key)
    assert LOCATION_PATTERN.match(location), location
    assert store.key_for(location) == key

    other = backend.build(
        {**backend.config, "prefix": "another-prefix"}
        if backend.kind != "local"
        else {**backend.config, "path": backend.config["path"] + "-other"}
    )
    try:
        assert other.key_for(location) is None
        assert store.key_for(other.location(key)) is None
    finally:
        await other.close()
    for foreign in (
        "s3://elsewhere/a/b.wav",
        "https://acct.blob.core.windows.net/c/a.wav",
        "file://localhost/etc/passwd",
        "not a url",
        "",
    ):
        assert store.key_for(foreign) is None


async def test_stored_location_names_the_object(store: Store, tmp_path: Path) -> None:
    write(tmp_path / "l.wav", 10)
    stored = await store.put_file("loc/l.wav", tmp_path / "l.wav", "audio/wav")
    key = store.key_for(stored.location)
    assert key == "loc/l.wav"
    assert await read_all(store, key) == (tmp_path / "l.wav").read_bytes()


async def test_put_is_idempotent(store: Store, tmp_path: Path) -> None:
    data = write(tmp_path / "i.wav", 50_000, seed=1)
    first = await store.put_file("i/0-audio.wav", tmp_path / "i.wav", "audio/wav")
    again = await store.put_file("i/0-audio.wav", tmp_path / "i.wav", "audio/wav")

    assert not again.uploaded
    assert (again.size, again.checksum, again.location) == (first.size, first.checksum, first.location)
    assert await read_all(store, "i/0-audio.wav") == data

    changed = write(tmp_path / "i.wav", 40_000, seed=2)
    replaced = await store.put_file("i/0-audio.wav", tmp_path / "i.wav", "audio/wav")
    assert replaced.uploaded and replaced.size == 40_000
    assert await read_all(store, "i/0-audio.wav") == changed


async def test_list_by_prefix(store: Store, tmp_path: Path) -> None:
    write(tmp_path / "f", 10)
    keys = ["day/call-a/r1/0-audio.wav", "day/call-a/r1/0-metadata.json", "day/call-b/r2/0-audio.wav"]
    for key in reversed(keys):
        await store.put_file(key, tmp_path / "f", "application/octet-stream")

    assert [k async for k in store.list("day/call-a/")] == keys[:2]
    assert [k async for k in store.list("day/call-")] == keys
    assert [k async for k in store.list("nothing-here/")] == []


async def test_empty_file(store: Store, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    stored = await store.put_file("e/empty.json", tmp_path / "empty", "application/json")
    assert stored.size == 0
    assert await read_all(store, "e/empty.json") == b""
    with pytest.raises(RangeNotSatisfiable):
        await read_all(store, "e/empty.json", 1, 0)


async def test_wrong_credentials_are_permission_denied(backend: Backend, tmp_path: Path) -> None:
    if backend.bad_credentials is None:
        pytest.skip(f"{backend.kind} has no credentials")
    write(tmp_path / "p.wav", 100)
    bad = backend.build(backend.bad_credentials)
    try:
        with pytest.raises(PermissionDenied):
            await bad.put_file("p/p.wav", tmp_path / "p.wav", "audio/wav")
        with pytest.raises(PermissionDenied):
            await bad.head("p/p.wav")
    finally:
        await bad.close()


async def test_local_permission_error_is_permission_denied(backend: Backend, tmp_path: Path) -> None:
    if backend.kind != "local":
        pytest.skip("file permissions are a local-store matter")
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    store = backend.build()
    write(tmp_path / "p.wav", 100)
    root = Path(backend.config["path"])
    (root / "ro").mkdir(parents=True)
    (root / "ro").chmod(0o500)
    try:
        with pytest.raises(PermissionDenied):
            await store.put_file("ro/p.wav", tmp_path / "p.wav", "audio/wav")
    finally:
        (root / "ro").chmod(0o700)


async def test_server_down_is_transient(backend: Backend, tmp_path: Path) -> None:
    if backend.unreachable is None:
        pytest.skip(f"{backend.kind} has no server")
    write(tmp_path / "t.wav", 100)
    down = backend.build(backend.unreachable)
    try:
        with pytest.raises(Transient) as raised:
            await down.put_file("t/t.wav", tmp_path / "t.wav", "audio/wav")
        assert raised.value.retryable
        with pytest.raises(Transient):
            await down.head("t/t.wav")
        with pytest.raises(Transient):
            await read_all(down, "t/t.wav")
    finally:
        await down.close()


async def test_checksum_mismatch_removes_the_object(
    backend: Backend, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that holds other bytes than the file (here: the file's hash is wrong) must not keep them."""
    original = backend.module.file_digests

    async def corrupted(path: Path, **kwargs: Any) -> FileDigests:
        real = await original(path, **kwargs)
        flip = bytes([real.sha256[0] ^ 1]) + real.sha256[1:]
        md5 = bytes([real.md5[0] ^ 1]) + real.md5[1:] if real.md5 else None
        return FileDigests(real.size, flip, md5, real.part_size, tuple(bytes(32) for _ in real.part_sha256))

    monkeypatch.setattr(backend.module, "file_digests", corrupted)
    write(tmp_path / "c.wav", 5000)
    with pytest.raises(ChecksumMismatch):
        await store.put_file("c/c.wav", tmp_path / "c.wav", "audio/wav")
    assert await store.head("c/c.wav") is None


async def test_keys_that_could_escape_are_refused(store: Store) -> None:
    for key in ["../x", "/abs", "a//b", "a/./b", "a/", "", "a\\b", "a\nb"]:
        with pytest.raises(ValueError):
            store.location(key)


async def test_concurrent_puts_and_reads(store: Store, tmp_path: Path) -> None:
    files = {f"conc/{i}-audio.wav": write(tmp_path / f"{i}.wav", 100_000 + i, seed=i) for i in range(6)}
    await asyncio.gather(*(store.put_file(k, tmp_path / f"{i}.wav", "audio/wav") for i, k in enumerate(files)))
    contents = await asyncio.gather(*(read_all(store, k) for k in files))
    assert contents == list(files.values())


# ------------------------------------------------------------------------- backend-specific extras
async def test_s3_without_checksum_support_verifies_through_the_md5_etag(
    s3_target_config: dict[str, Any], tmp_path: Path
) -> None:
    """`checksum = "none"` is for old S3-compatible services: the MD5 ETag (multipart form too) is checked."""
    store = store_from_config("legacy-s3", {**s3_target_config, "checksum": "none"})
    try:
        for name, size in (("small", 1000), ("large", 17 * MIB)):
            data = write(tmp_path / name, size)
            stored = await store.put_file(f"legacy/{name}", tmp_path / name, "audio/wav")
            assert stored.verified_by == "s3:ETag-MD5"
            assert await read_all(store, f"legacy/{name}") == data
            again = await store.put_file(f"legacy/{name}", tmp_path / name, "audio/wav")
            assert not again.uploaded
    finally:
        await store.close()


async def test_azure_account_url_with_account_key_or_sas(azurite_server: AzuriteServer, tmp_path: Path) -> None:
    """The other credential forms of a target: `account_url` + `credential` (key) and + `sas_token`."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        azurite_server.account,
        TEST_CONTAINER,
        account_key=azurite_server.account_key,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    data = write(tmp_path / "k.wav", 3000)
    base = {"kind": "azure_blob", "account_url": azurite_server.account_url, "container": TEST_CONTAINER}
    for auth in ({"credential": azurite_server.account_key}, {"sas_token": "?" + sas}):
        store = store_from_config("azure-auth", {**base, **auth, "prefix": f"auth-{uuid.uuid4().hex[:8]}"})
        try:
            stored = await store.put_file("k.wav", tmp_path / "k.wav", "audio/wav")
            assert "sig=" not in stored.location
            assert await read_all(store, "k.wav") == data
            assert [k async for k in store.list()] == ["k.wav"]
            await store.delete("k.wav")
        finally:
            await store.close()
