"""`S3Store`: any S3-compatible service (AWS, MinIO, Ceph RGW, moto...) through boto3 in worker threads.

Why boto3 in threads rather than aiobotocore: boto3's managed transfer (`upload_file`, s3transfer)
already does multipart uploads with parallel parts, per-part checksums, part-size adjustment for huge
files and abort-on-failure (no orphaned multipart uploads); aiobotocore has none of that, so we would
re-implement it, and it pins botocore to a narrow range that fights boto3's. Uploads are I/O bound and
botocore releases the GIL while sending, so threads cost nothing measurable (see
`bench/storage_throughput.py`). All blocking calls run on this store's own thread pool, so a burst of
uploads cannot starve `asyncio.to_thread` users elsewhere in the server.

Integrity: uploads carry `ChecksumAlgorithm=SHA256`, so S3 verifies every part on receipt, and after
the upload `HeadObject(ChecksumMode=ENABLED)` must report the SHA-256 of the file (single put) or the
SHA-256 of its part digests (multipart, computed locally over the same parts). Stores that report no
checksum are checked through an MD5-shaped ETag, else by size alone (`verified_by` says which).

Locations are `s3://bucket/key` (see `location`): stable when the endpoint's host name changes, and what
AWS tooling accepts. `key_for` also accepts the endpoint's path-style URL and AWS virtual-host URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit

import boto3
import botocore.exceptions
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.utils import ChunksizeAdjuster

from callrec.security.redact import redact_text
from callrec.storage.base import (
    DEFAULT_CONTENT_TYPE,
    DEFAULT_PART_SIZE,
    PIECE_SIZE,
    ChecksumMismatch,
    FileDigests,
    ObjectInfo,
    ObjectNotFound,
    PermissionDenied,
    RangeNotSatisfiable,
    StorageError,
    StoredObject,
    Transient,
    check_key,
    check_location,
    file_digests,
    join_prefix,
    normalize_prefix,
    resolve_range,
    strip_prefix,
)

T = TypeVar("T")

AddressingStyle = Literal["auto", "path", "virtual"]
"""botocore's `s3.addressing_style`: virtual-hosted (`bucket.host`), path (`host/bucket`) or its choice."""
ADDRESSING_STYLES: tuple[AddressingStyle, ...] = ("auto", "path", "virtual")

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "403",
    "401",
}
_TRANSIENT_CODES = {
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
}
_CHECKSUM_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"}
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


def map_s3_error(exc: BaseException, what: str) -> StorageError:
    """Translate a boto3/botocore exception into the store's typed error (`what` names the operation).

    The message is redacted (`redact_text`): it ends up in events, upload rows and logs.
    """
    if isinstance(exc, StorageError):
        return exc
    error = _map_s3_error(exc, what)
    return type(error)(redact_text(str(error)))


def _map_s3_error(exc: BaseException, what: str) -> StorageError:
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, botocore.exceptions.ClientError):
        exc = exc.__context__  # upload_file wraps the ClientError; the original carries the code
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what}: {code or status} {error.get('Message', '')}".rstrip()
        if code == "NoSuchBucket":
            return ObjectNotFound(f"{what}: the bucket does not exist")
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(message)
        if code in _DENIED_CODES or status in (401, 403):
            return PermissionDenied(message)
        if code == "InvalidRange" or status == 416:
            return RangeNotSatisfiable(message)
        if code in _CHECKSUM_CODES:
            return ChecksumMismatch(message)
        if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return Transient(message)
        return StorageError(message)
    if isinstance(
        exc,
        botocore.exceptions.NoCredentialsError
        | botocore.exceptions.PartialCredentialsError
        | botocore.exceptions.CredentialRetrievalError
        | botocore.exceptions.ProfileNotFound,
    ):
        return PermissionDenied(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.FlexibleChecksumError):
        return ChecksumMismatch(f"{what}: {exc}")
    if isinstance(exc, botocore.exceptions.HTTPClientError | botocore.exceptions.ConnectionError):
        return Transient(f"{what}: {exc}")
    if isinstance(exc, S3UploadFailedError):
        return Transient(f"{what}: {exc}")
    if isinstance(exc, TimeoutError | ConnectionError):
        return Transient(f"{what}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class S3Store:
    """Objects in one bucket under an optional prefix of an S3-compatible service.

    Credentials come from the standard AWS chain (env vars, shared config/profiles, instance roles)
    unless `access_key_id`/`secret_access_key` (and `session_token`) or `profile` are given.
    `endpoint_url` selects a non-AWS service (path-style addressing by default then).
    `checksum_algorithm=None` is for old S3-compatible services that reject checksum trailers; uploads
    are then verified through the MD5 ETag. `max_attempts` counts botocore's own retries; the
    server's outbox retries `Transient` failures on top, with longer backoff.

    `use_default_credentials=False` is for bring-your-own-storage (`storage.external`): the explicit
    keys are then required and nothing else is consulted (no environment, profile, instance role, nor an
    endpoint from the environment or config files), so the server's own AWS identity can never be
    attached to requests for a bucket that is not one of its configured targets.
    """

    kind: ClassVar[str] = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 4,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        addressing_style: AddressingStyle | None = None,
        checksum_algorithm: str | None = "SHA256",
        use_default_credentials: bool = True,
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket")
        if not use_default_credentials and (not access_key_id or not secret_access_key or profile):
            raise ValueError("S3Store without the default credential chain needs explicit keys (and no profile)")
        if part_size < 5 * 1024 * 1024:
            raise ValueError(f"S3 part_size must be at least 5 MiB, got {part_size}")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        self.region = region
        self.part_size = part_size
        self.checksum_algorithm = checksum_algorithm.upper() if checksum_algorithm else None
        self.use_default_credentials = use_default_credentials
        self._session_args = {
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "aws_session_token": session_token,
            "profile_name": profile,
            "region_name": region,
        }
        # an external store talks to exactly the endpoint it was given (or AWS), never one from the
        # environment (AWS_ENDPOINT_URL_S3) or a config file; botocore-stubs lack this option
        endpoint_options: dict[str, Any] = {"ignore_configured_endpoint_urls": not use_default_credentials}
        self._config = Config(
            **endpoint_options,
            region_name=region,
            retries={"mode": "standard", "max_attempts": max(1, max_attempts)},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, 2 * max_concurrency + 4),
            s3={"addressing_style": addressing_style or ("path" if endpoint_url else "auto")},
            request_checksum_calculation="when_supported" if checksum_algorithm else "when_required",
            response_checksum_validation="when_supported" if checksum_algorithm else "when_required",
        )
        self._transfer = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=max_concurrency,
            use_threads=True,
        )
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency + 4, thread_name_prefix="s3store")
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.location_prefix()!r}, endpoint_url={self.endpoint_url!r})"

    # ------------------------------------------------------------------------------------- plumbing
    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def _make_client(self) -> Any:
        # Building a session loads botocore's service model (~100 ms): done in a thread, once.
        args = self._session_args  # empty values are left to the AWS chain, as if not given
        session = boto3.session.Session(
            aws_access_key_id=args["aws_access_key_id"] or None,
            aws_secret_access_key=args["aws_secret_access_key"] or None,
            aws_session_token=args["aws_session_token"] or None,
            profile_name=args["profile_name"] or None,
            region_name=args["region_name"] or None,
        )
        if self.use_default_credentials:
            return session.client("s3", endpoint_url=self.endpoint_url, config=self._config)
        # explicit keys on the client itself: botocore then never looks at its credential chain
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=self._config,
            aws_access_key_id=args["aws_access_key_id"],
            aws_secret_access_key=args["aws_secret_access_key"],
            aws_session_token=args["aws_session_token"] or None,
        )

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    try:
                        self._client = await self._run(self._make_client)
                    except Exception as exc:
                        raise map_s3_error(exc, f"{self}: create client") from exc
        return self._client

    async def _call(self, what: str, method: str, **params: Any) -> Any:
        client = await self._s3()
        try:
            return await self._run(getattr(client, method), **params)
        except Exception as exc:
            raise map_s3_error(exc, f"{self}: {what}") from exc

    def _name(self, key: str) -> str:
        return join_prefix(self.prefix, check_key(key))

    # ------------------------------------------------------------------------------------ locations
    def location_prefix(self) -> str:
        """`s3://bucket[/prefix]`: where this store's objects live."""
        return f"s3://{self.bucket}/{quote(self.prefix)}".rstrip("/")

    def location(self, key: str) -> str:
        """`s3://bucket/<prefix>/<key>`, percent-encoded; independent of the endpoint URL on purpose."""
        return check_location(f"s3://{self.bucket}/{quote(self._name(key))}")

    def key_for(self, location: str) -> str | None:
        """The key named by `s3://bucket/...`, the endpoint's path-style URL, or an AWS virtual-host URL."""
        try:
            parts = urlsplit(location)
        except ValueError:
            return None
        scheme, host, path = parts.scheme.lower(), parts.netloc.lower(), parts.path
        name: str | None = None
        if scheme == "s3":
            if parts.netloc == self.bucket:
                name = path[1:]
        elif scheme in ("http", "https"):
            if self.endpoint_url:
                endpoint = urlsplit(self.endpoint_url)
                base = endpoint.path.rstrip("/") + f"/{self.bucket}/"
                if (scheme, host) == (endpoint.scheme.lower(), endpoint.netloc.lower()) and path.startswith(base):
                    name = path[len(base) :]
            elif re.fullmatch(rf"{re.escape(self.bucket)}\.s3([.-][a-z0-9-]+)?\.amazonaws\.com", host):
                name = path[1:]
        if not name:
            return None
        key = strip_prefix(self.prefix, unquote(name))
        if key is None:
            return None
        try:
            return check_key(key)
        except ValueError:
            return None

    # ------------------------------------------------------------------------------------------ put
    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        """Upload (multipart above `part_size`), verify the reported checksum, skip when already there."""
        name = self._name(key)
        source = Path(path)
        size = (await asyncio.to_thread(source.stat)).st_size
        part_size = ChunksizeAdjuster().adjust_chunksize(self.part_size, size)
        multipart = size >= self.part_size
        digests = await file_digests(
            source,
            part_size=part_size if multipart else None,
            md5=self.checksum_algorithm is None,
            part_md5=self.checksum_algorithm is None,
        )
        parts = math.ceil(size / part_size) if multipart else 1
        what = f"{self}: put {key!r}"

        existing = await self._head_raw(name, what)
        if existing is not None:
            verified_by = await self._verify(existing, digests, source, size_only_ok=False)
            if verified_by is not None:
                return self._stored(key, digests, content_type, verified_by, parts, uploaded=False)

        extra: dict[str, Any] = {
            "ContentType": content_type or DEFAULT_CONTENT_TYPE,
            "Metadata": {"sha256": digests.sha256.hex()},
        }
        if self.checksum_algorithm:
            extra["ChecksumAlgorithm"] = self.checksum_algorithm
        client = await self._s3()
        try:
            await self._run(client.upload_file, str(source), self.bucket, name, ExtraArgs=extra, Config=self._transfer)
        except Exception as exc:
            raise map_s3_error(exc, what) from exc

        head = await self._head_raw(name, what)
        if head is None:
            raise Transient(f"{what}: the object is not visible after a successful upload")
        verified_by = await self._verify(head, digests, source, size_only_ok=True)
        if verified_by is None:
            with contextlib.suppress(StorageError):
                await self._call(f"remove bad upload {key!r}", "delete_object", Bucket=self.bucket, Key=name)
            raise ChecksumMismatch(
                f"{what}: the store reports size {head.get('ContentLength')}, "
                f"ChecksumSHA256 {head.get('ChecksumSHA256')}, ETag {head.get('ETag')}, which do not match "
                f"the local file ({digests.size} bytes, {digests.checksum}); the object was removed"
            )
        return self._stored(key, digests, content_type, verified_by, parts, uploaded=True)

    def _stored(
        self, key: str, digests: FileDigests, content_type: str, verified_by: str, parts: int, *, uploaded: bool
    ) -> StoredObject:
        return StoredObject(
            key=key,
            size=digests.size,
            checksum=digests.checksum,
            location=self.location(key),
            content_type=content_type,
            verified_by=verified_by,
            parts=parts,
            uploaded=uploaded,
        )

    async def _verify(
        self, head: dict[str, Any], digests: FileDigests, source: Path, *, size_only_ok: bool
    ) -> str | None:
        """What the store reported that matches the local file (`s3:...`), or None on a mismatch.

        `size_only_ok`: accept a store that reports no checksum at all (after our own upload) but not
        when deciding to skip an upload, where only a real checksum proves the bytes are ours.
        """
        if int(head.get("ContentLength", -1)) != digests.size:
            return None
        reported = head.get("ChecksumSHA256")
        if reported:
            value = reported.split("-", 1)[0]
            expected = {digests.sha256_b64}
            if digests.part_sha256:
                expected.add(digests.composite_sha256_b64())
            return "s3:ChecksumSHA256" if value in expected else None
        etag = str(head.get("ETag", "")).strip('"')
        if _MD5_ETAG.match(etag):
            if digests.md5 is None:  # the store ignored our checksum request: hash MD5 now
                digests = await file_digests(source, part_size=digests.part_size or None, md5=True, part_md5=True)
            expected = {digests.multipart_etag()} if digests.part_md5 else set()
            if digests.md5 is not None:
                expected.add(digests.md5.hex())
            return "s3:ETag-MD5" if etag in expected else None
        # An opaque ETag (e.g. SSE-KMS on a store without checksums): only the size could be checked.
        return "s3:size" if size_only_ok else None

    # ----------------------------------------------------------------------------------------- read
    async def _head_raw(self, name: str, what: str) -> dict[str, Any] | None:
        client = await self._s3()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if self.checksum_algorithm:
            params["ChecksumMode"] = "ENABLED"
        try:
            return await self._run(client.head_object, **params)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                return None
            raise map_s3_error(exc, what) from exc
        except Exception as exc:
            raise map_s3_error(exc, what) from exc

    async def head(self, key: str) -> ObjectInfo | None:
        """HeadObject: size, content type, last modified and user metadata, or None."""
        raw = await self._head_raw(self._name(key), f"{self}: head {key!r}")
        if raw is None:
            return None
        return ObjectInfo(
            key=key,
            size=int(raw["ContentLength"]),
            content_type=raw.get("ContentType") or DEFAULT_CONTENT_TYPE,
            last_modified=raw.get("LastModified"),
            metadata=dict(raw.get("Metadata") or {}),
        )

    async def open_range(self, key: str, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        """HEAD for the size, then one ranged GET streamed in ≤ 1 MiB pieces read in worker threads."""
        name = self._name(key)
        what = f"{self}: read {key!r}"
        head = await self._head_raw(name, what)
        if head is None:
            raise ObjectNotFound(f"{what}: no such object")
        start, end = resolve_range(int(head["ContentLength"]), offset, length)
        if start == end:
            return
        response = await self._call(
            f"read {key!r}", "get_object", Bucket=self.bucket, Key=name, Range=f"bytes={start}-{end - 1}"
        )
        body = response["Body"]
        try:
            position = start
            while position < end:
                try:
                    piece = await self._run(body.read, min(PIECE_SIZE, end - position))
                except Exception as exc:
                    raise map_s3_error(exc, what) from exc
                if not piece:
                    raise Transient(f"{what}: the stream ended at byte {position} of {end}")
                position += len(piece)
                yield piece
        finally:
            body.close()

    # --------------------------------------------------------------------------------- delete/list
    async def delete(self, key: str) -> None:
        """DeleteObject; S3 deletes are silent on missing keys, so HEAD first to report ObjectNotFound."""
        name = self._name(key)
        if await self._head_raw(name, f"{self}: delete {key!r}") is None:
            raise ObjectNotFound(f"{self}: delete {key!r}: no such object")
        await self._call(f"delete {key!r}", "delete_object", Bucket=self.bucket, Key=name)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """ListObjectsV2 pages under `<store prefix>/<prefix>`, yielding keys without the store prefix."""
        full = join_prefix(self.prefix, prefix) if self.prefix else prefix
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        while True:
            page = await self._call(f"list {prefix!r}", "list_objects_v2", **params)
            for item in page.get("Contents", []):
                key = strip_prefix(self.prefix, item["Key"])
                if key is not None:
                    yield key
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def close(self) -> None:
        """Close the HTTP pool and stop the worker threads (in-flight calls finish first)."""
        client, self._client = self._client, None
        if client is not None:
            await self._run(client.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
