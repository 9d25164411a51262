"""`LocalStore`: objects as files under a directory, the embedded default store.

Why these choices:
- Atomic writes: content goes to a hidden `.<name>.<random>.part` beside the target, is fsynced, checked
  against the source's SHA-256, then `os.replace`d over the target and the directory fsynced. A crash
  leaves either the old object or the new one, never half a file; stray `.part` files are swept.
- Idempotent puts: when the target already holds the same bytes (size and SHA-256), nothing is written,
  so the outbox can retry after a crash without churning the disk.
- The content type lives in the `user.mime_type` extended attribute (the freedesktop convention) when
  the filesystem supports it, else it is guessed from the extension on `head`.
- Retention (`sweep_expired`) goes by modification time, which `os.replace` carries over from the
  `.part` file, i.e. the time the object was stored. The clock is injectable so tests need not sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, ClassVar
from urllib.parse import quote, unquote, urlsplit

from callrec.storage.base import (
    DEFAULT_CONTENT_TYPE,
    PIECE_SIZE,
    ChecksumMismatch,
    ObjectInfo,
    ObjectNotFound,
    PermissionDenied,
    StorageError,
    StoredObject,
    Transient,
    check_key,
    check_location,
    file_digests,
    resolve_range,
)

_XATTR = "user.mime_type"
_PART_SUFFIX = ".part"
_COPY_BLOCK = 4 * 1024 * 1024


@contextlib.contextmanager
def _mapped_os_errors(what: str) -> Iterator[None]:
    """Turn `OSError`s into the store's typed errors; `what` names the object for the message."""
    try:
        yield
    except StorageError:
        raise
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ObjectNotFound(f"{what}: no such object") from exc
    except PermissionError as exc:
        raise PermissionDenied(f"{what}: {exc.strerror}") from exc
    except IsADirectoryError as exc:
        raise ObjectNotFound(f"{what}: is a directory, not an object") from exc
    except OSError as exc:
        # Disk full, I/O errors, too many open files: the outbox retries these later.
        raise Transient(f"{what}: {exc.strerror or exc}") from exc


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_PART_SUFFIX)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_content_type(path: Path) -> str:
    try:
        return os.getxattr(path, _XATTR).decode()
    except OSError:
        return mimetypes.guess_type(path.name, strict=False)[0] or DEFAULT_CONTENT_TYPE


def _sha256_of(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest.digest()


class LocalStore:
    """Objects stored as files under `root` (created if missing).

    `retention` is the configured keep time of this store (`None`: keep forever); the server calls
    `sweep_expired(store.retention)` periodically. `now` returns epoch seconds (tests pass a fake).
    """

    kind: ClassVar[str] = "local"

    def __init__(
        self,
        root: Path | str,
        *,
        retention: timedelta | None = timedelta(hours=24),
        now: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.retention = retention
        self._now = now

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -------------------------------------------------------------------------------------- paths
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def location(self, key: str) -> str:
        """`file://localhost/<absolute path>`, percent-encoded so it never holds whitespace."""
        return check_location("file://localhost" + quote(str(self._path(key))))

    def key_for(self, location: str) -> str | None:
        """The key of a `file://localhost/...` (or `file:///...`) location under this store's root."""
        try:
            parts = urlsplit(location)
        except ValueError:
            return None
        if parts.scheme.lower() != "file" or parts.netloc.lower() not in ("", "localhost"):
            return None
        if parts.query or parts.fragment:
            return None
        root = str(self.root).rstrip("/") + "/"
        path = unquote(parts.path)
        if not path.startswith(root):
            return None
        try:
            return check_key(path[len(root) :])
        except ValueError:
            return None

    # ---------------------------------------------------------------------------------------- put
    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        """Copy the file into the store atomically; skip the copy when the same bytes are already there."""
        target = self._path(key)
        source = Path(path)
        digests = await file_digests(source)
        with _mapped_os_errors(f"local store {self.root}: put {key!r}"):
            uploaded = await asyncio.to_thread(
                self._put_sync, source, target, content_type, digests.size, digests.sha256
            )
        return StoredObject(
            key=key,
            size=digests.size,
            checksum=digests.checksum,
            location=self.location(key),
            content_type=content_type,
            verified_by="local:sha256",
            parts=1,
            uploaded=uploaded,
        )

    def _put_sync(self, source: Path, target: Path, content_type: str, size: int, sha256: bytes) -> bool:
        if self._same_content(target, size, sha256):
            if _read_content_type(target) != content_type:
                with contextlib.suppress(OSError):
                    os.setxattr(target, _XATTR, content_type.encode())
            return False
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{_PART_SUFFIX}")
        try:
            with source.open("rb") as src, self._create(temp) as dst:
                while block := src.read(_COPY_BLOCK):
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            with contextlib.suppress(OSError):  # no user xattrs here: head guesses from the extension
                os.setxattr(temp, _XATTR, content_type.encode())
            written = _sha256_of(temp)
            if written != sha256 or temp.stat().st_size != size:
                raise ChecksumMismatch(
                    f"local store {self.root}: {target.name}: wrote sha256 {written.hex()}, "
                    f"the source file hashed to {sha256.hex()} (did it change during the upload?)"
                )
            os.replace(temp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        _fsync_dir(target.parent)
        return True

    @staticmethod
    def _create(temp: Path) -> BinaryIO:
        # A concurrent delete or sweep may remove the (empty) directory between mkdir and open: retry.
        for attempt in range(3):
            temp.parent.mkdir(parents=True, exist_ok=True)
            try:
                return temp.open("xb")
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _same_content(target: Path, size: int, sha256: bytes) -> bool:
        try:
            if not target.is_file() or target.stat().st_size != size:
                return False
            return _sha256_of(target) == sha256
        except FileNotFoundError:
            return False

    # --------------------------------------------------------------------------------------- read
    async def open_range(self, key: str, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        """Read `[offset, offset+length)` in ≤ 1 MiB pieces, each read in a worker thread."""
        target = self._path(key)
        what = f"local store {self.root}: read {key!r}"
        with _mapped_os_errors(what):
            f: BinaryIO = await asyncio.to_thread(target.open, "rb")
        try:
            with _mapped_os_errors(what):
                size = os.fstat(f.fileno()).st_size
                start, end = resolve_range(size, offset, length)
                await asyncio.to_thread(f.seek, start)
            position = start
            while position < end:
                with _mapped_os_errors(what):
                    piece = await asyncio.to_thread(f.read, min(PIECE_SIZE, end - position))
                if not piece:
                    raise Transient(f"{what}: file shrank while reading (at byte {position} of {end})")
                position += len(piece)
                yield piece
        finally:
            f.close()

    async def head(self, key: str) -> ObjectInfo | None:
        """Size, content type and modification time of the file, or None."""
        target = self._path(key)
        with _mapped_os_errors(f"local store {self.root}: head {key!r}"):
            return await asyncio.to_thread(self._head_sync, key, target)

    @staticmethod
    def _head_sync(key: str, target: Path) -> ObjectInfo | None:
        try:
            st = target.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not target.is_file():
            return None
        return ObjectInfo(
            key=key,
            size=st.st_size,
            content_type=_read_content_type(target),
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    # ------------------------------------------------------------------------------------- delete
    async def delete(self, key: str) -> None:
        """Remove the file (ObjectNotFound when absent) and any directories it leaves empty."""
        target = self._path(key)
        with _mapped_os_errors(f"local store {self.root}: delete {key!r}"):
            await asyncio.to_thread(self._delete_sync, target)

    def _delete_sync(self, target: Path) -> None:
        if target.is_dir():
            raise ObjectNotFound(f"local store {self.root}: {target} is a directory, not an object")
        target.unlink()
        self._prune_empty_dirs(target.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # not empty: stop climbing
                return
            directory = directory.parent

    # --------------------------------------------------------------------------------------- list
    def _list_sync(self, prefix: str) -> list[str]:
        base = self.root
        if "/" in prefix:
            directory = prefix.rsplit("/", 1)[0]
            try:
                base = self._path(directory)
            except ValueError:
                return []
        keys: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in files:
                if _is_temp(name):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Keys starting with `prefix`, sorted; temporary `.part` files are never listed."""
        with _mapped_os_errors(f"local store {self.root}: list {prefix!r}"):
            keys = await asyncio.to_thread(self._list_sync, prefix)
        for key in keys:
            yield key

    # ---------------------------------------------------------------------------------- retention
    async def sweep_expired(self, older_than: timedelta) -> int:
        """Delete objects (and stale `.part` files) stored more than `older_than` ago; count objects.

        Why by mtime: it is the time the object was stored, survives restarts, and needs no index.
        Directories left empty are removed too, so the tree does not fill with empty call folders.
        """
        cutoff = self._now() - older_than.total_seconds()
        with _mapped_os_errors(f"local store {self.root}: sweep"):
            return await asyncio.to_thread(self._sweep_sync, cutoff)

    def _sweep_sync(self, cutoff: float) -> int:
        deleted = 0
        for dirpath, _dirs, files in os.walk(self.root, topdown=False):
            directory = Path(dirpath)
            for name in files:
                path = directory / name
                try:
                    if path.stat().st_mtime >= cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                if not _is_temp(name):
                    deleted += 1
            if directory != self.root:
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only succeeds when empty
        return deleted

    async def close(self) -> None:
        """Nothing to release: files are opened per call."""
