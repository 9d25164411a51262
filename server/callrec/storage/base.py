"""The storage interface: one small protocol, typed errors, and the helpers every backend shares.

Why a `Protocol` and not a base class: each backend (local disk, S3, Azure Blob) is written against its
own SDK and shares no state with the others; what they share is a contract (checked by one contract test
suite, `tests/integration/test_storage_contract.py`) and a handful of pure helpers below (key checks,
range arithmetic, local hashing). A base class would only invite the god-class that fsspec users suffer.

Keys are relative, `/`-separated object names (`20250101/call/abcd1234-u/0-audio.wav`); each store adds
its own configured prefix. Locations are the store's own absolute URL for an object (`file://localhost/...`,
`s3://bucket/...`, `https://acct.blob.core.windows.net/container/...`); `key_for` is the inverse, so a
location that arrived in an event can be routed back to the store that made it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

PIECE_SIZE = 1024 * 1024
"""Largest piece `open_range` yields: matches the ContentService's 1 MiB message limit."""

DEFAULT_PART_SIZE = 8 * 1024 * 1024
"""Files above this size go up in parts/blocks of this size (S3 multipart, Azure block upload)."""

DEFAULT_CONTENT_TYPE = "application/octet-stream"

LOCATION_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#]+[^\s]*$")
"""Every location a store returns matches this: an absolute URL with an authority and no whitespace."""


# --------------------------------------------------------------------------------------------- errors
class StorageError(Exception):
    """Base of every error a store raises; `code` names the gRPC status the API layer maps it to.

    `retryable` tells the upload outbox whether trying again later can succeed.
    """

    code: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False


class ObjectNotFound(StorageError):
    """The object (or the bucket/container holding it) does not exist."""

    code = "NOT_FOUND"


class PermissionDenied(StorageError):
    """The store refused the credentials (bad key, bad signature, expired SAS) or the operation."""

    code = "PERMISSION_DENIED"


class Transient(StorageError):
    """A failure that may go away by itself: connection refused, timeouts, 5xx, throttling, disk full."""

    code = "UNAVAILABLE"
    retryable = True


class ChecksumMismatch(StorageError):
    """The store reported different content than the local file; the bad object was removed."""

    code = "DATA_LOSS"
    retryable = True


class RangeNotSatisfiable(StorageError):
    """A read asked for bytes past the end of the object."""

    code = "OUT_OF_RANGE"


# ---------------------------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class StoredObject:
    """What `put_file` confirms once the store holds the object and its checksum was verified.

    `checksum` is always `sha256:<hex>` of the whole file, whatever the store itself can verify;
    `verified_by` says what the store reported that matched the local file (e.g. `s3:ChecksumSHA256`,
    `azure:Content-MD5`, `azure:block-md5+size`, `local:sha256`), so logs show how strong the check was.
    `parts` is the number of requests the content went up in (1 = single put).
    """

    key: str
    size: int
    checksum: str
    location: str
    content_type: str
    verified_by: str
    parts: int = 1
    uploaded: bool = True
    """False when an identical object was already stored and the upload was skipped (idempotent put)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What `head` reports about a stored object."""

    key: str
    size: int
    content_type: str
    last_modified: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ interface
@runtime_checkable
class Store(Protocol):
    """An object store holding recording chunks; every method is safe to call concurrently.

    Implementations: `LocalStore`, `S3Store`, `AzureBlobStore`. All raise only `StorageError`
    subclasses (plus `ValueError` for a malformed key), never their SDK's exceptions.
    """

    kind: ClassVar[str]
    """`local`, `s3` or `azure_blob`: the config `kind` that builds this store."""

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        """Store the file at `path` under `key`, verify the store's checksum against the file, return it.

        Idempotent: putting the same content again is a no-op that returns the same object; putting
        different content replaces it. Large files go up in parts. Raises `ChecksumMismatch` (after
        removing the bad object) when the store reports other content than the file holds.
        """
        ...

    def open_range(self, key: str, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        """Yield the bytes `[offset, offset + length)` in pieces of at most `PIECE_SIZE`.

        `length` 0 means to the end. Raises `ObjectNotFound`, or `RangeNotSatisfiable` when the range does not lie
        within the object (`offset == size` with `length` 0 is an empty read, not an error).
        """
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """Size and content type of the object, or None when there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; `ObjectNotFound` when it does not exist."""
        ...

    def location(self, key: str) -> str:
        """The store's own absolute URL for `key` (it need not exist); matches `LOCATION_PATTERN`."""
        ...

    def key_for(self, location: str) -> str | None:
        """The key a `location` of this store names, or None when the location is not this store's."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Keys that start with `prefix` (a plain string prefix, not a directory), in name order."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""
        ...


class FileUploader(Protocol):
    """What the upload outbox needs of a store: `put_file` (a `Store`, or the upload worker's proxy)."""

    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        """See `Store.put_file`."""
        ...


# ---------------------------------------------------------------------------------------------- keys
def check_key(key: str) -> str:
    """Validate an object key and return it; `ValueError` when it could escape or confuse a store.

    Why so strict: keys become file paths in `LocalStore`, so `..`, absolute paths, empty segments,
    backslashes and control characters are refused everywhere, keeping backends interchangeable.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if len(key.encode()) > 1024:
        raise ValueError(f"object key longer than 1024 bytes: {key[:80]!r}...")
    if key.startswith("/") or key.endswith("/"):
        raise ValueError(f"object key must not start or end with '/': {key!r}")
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in key):
        raise ValueError(f"object key contains a control character or backslash: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def normalize_prefix(prefix: str | None) -> str:
    """A store prefix without surrounding slashes ('' for none), checked like a key."""
    prefix = (prefix or "").strip("/")
    if prefix:
        check_key(prefix)
    return prefix


def join_prefix(prefix: str, key: str) -> str:
    """The full object name for `key` under a store's `prefix`."""
    return f"{prefix}/{key}" if prefix else key


def strip_prefix(prefix: str, name: str) -> str | None:
    """Inverse of `join_prefix`: the key, or None when `name` is not under `prefix`."""
    if not prefix:
        return name or None
    head = prefix + "/"
    return name[len(head) :] or None if name.startswith(head) else None


# --------------------------------------------------------------------------------------------- range
def resolve_range(size: int, offset: int, length: int) -> tuple[int, int]:
    """Turn a request `(offset, length)` into `(start, end_exclusive)` for an object of `size` bytes.

    Strict on purpose: a range that does not lie within the object is a caller bug (or a stale
    resume offset) and surfaces as `RangeNotSatisfiable` instead of a silently short read.
    """
    if offset < 0 or length < 0:
        raise RangeNotSatisfiable(f"offset and length must not be negative (offset={offset}, length={length})")
    if offset > size:
        raise RangeNotSatisfiable(f"offset {offset} is past the end of the object ({size} bytes)")
    end = size if length == 0 else offset + length
    if end > size:
        raise RangeNotSatisfiable(f"range {offset}+{length} goes past the end of the object ({size} bytes)")
    return offset, end


def split_pieces(data: bytes, piece_size: int = PIECE_SIZE) -> list[bytes]:
    """Cut a buffer into pieces of at most `piece_size` (memoryview slices copied once)."""
    if len(data) <= piece_size:
        return [data] if data else []
    view = memoryview(data)
    return [bytes(view[i : i + piece_size]) for i in range(0, len(data), piece_size)]


# -------------------------------------------------------------------------------------------- hashes
@dataclass(frozen=True, slots=True)
class FileDigests:
    """Hashes of a local file, computed in one pass before upload so the store's report can be checked.

    Only what a backend asks for is computed (hashing 200 MB costs ~0.2 s of CPU per algorithm).
    `part_sha256` / `part_md5` are per part of `part_size` bytes: S3 reports multipart objects as a
    checksum of part checksums, so the expected value can only be derived from the same parts.
    """

    size: int
    sha256: bytes
    md5: bytes | None = None
    part_size: int = 0
    part_sha256: tuple[bytes, ...] = ()
    part_md5: tuple[bytes, ...] = ()

    @property
    def checksum(self) -> str:
        """`sha256:<hex>`, the value `StoredObject.checksum` carries."""
        return f"sha256:{self.sha256.hex()}"

    @property
    def sha256_b64(self) -> str:
        """Base64 SHA-256, the form S3's `ChecksumSHA256` uses."""
        return base64.b64encode(self.sha256).decode()

    @property
    def md5_b64(self) -> str:
        """Base64 MD5 of the whole file, the form of a `Content-MD5` header."""
        assert self.md5 is not None, "MD5 was not computed"
        return base64.b64encode(self.md5).decode()

    def composite_sha256_b64(self) -> str:
        """S3's multipart `ChecksumSHA256`: SHA-256 over the concatenated part digests."""
        return base64.b64encode(hashlib.sha256(b"".join(self.part_sha256)).digest()).decode()

    def multipart_etag(self) -> str:
        """The ETag S3 gives a multipart object without KMS: MD5 of the part MD5s, then `-N`."""
        return f"{hashlib.md5(b''.join(self.part_md5)).hexdigest()}-{len(self.part_md5)}"


def _digest_file(path: Path, part_size: int | None, md5: bool, part_md5: bool, part_sha256: bool) -> FileDigests:
    read_size = part_size or PIECE_SIZE * 4
    whole_sha, whole_md5 = hashlib.sha256(), hashlib.md5() if md5 else None
    parts_sha: list[bytes] = []
    parts_md5: list[bytes] = []
    size = 0
    with path.open("rb") as f:
        while block := f.read(read_size):
            size += len(block)
            whole_sha.update(block)
            if whole_md5 is not None:
                whole_md5.update(block)
            if part_size and part_sha256:
                parts_sha.append(hashlib.sha256(block).digest())
            if part_size and part_md5:
                parts_md5.append(hashlib.md5(block).digest())
    return FileDigests(
        size=size,
        sha256=whole_sha.digest(),
        md5=whole_md5.digest() if whole_md5 is not None else None,
        part_size=part_size or 0,
        part_sha256=tuple(parts_sha),
        part_md5=tuple(parts_md5),
    )


async def file_digests(
    path: Path,
    *,
    part_size: int | None = None,
    md5: bool = False,
    part_md5: bool = False,
    part_sha256: bool = True,
) -> FileDigests:
    """Hash a file in a worker thread (hashlib releases the GIL), so the event loop keeps mixing audio.

    SHA-256 of the whole file always; whole-file MD5 when `md5`; per-part SHA-256 (unless
    `part_sha256` is false) and MD5 (when `part_md5`) when `part_size` is given. A missing file raises
    `FileNotFoundError`: that is the caller's problem (its spool file is gone), not the store's, so it
    is not a `StorageError`.
    """
    return await asyncio.to_thread(_digest_file, Path(path), part_size, md5, part_md5, part_sha256)


def check_location(location: str) -> str:
    """Assert a location matches `LOCATION_PATTERN` (a bug in the store otherwise) and return it."""
    if not LOCATION_PATTERN.match(location):
        raise AssertionError(f"store produced a malformed location: {location!r}")
    return location
