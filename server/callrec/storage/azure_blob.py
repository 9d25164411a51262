"""`AzureBlobStore`: block blobs in one container (Azure Storage or Azurite) via `azure.storage.blob.aio`.

Why the official aio client: it is native asyncio (no threads) and speaks every credential form the
spec asks for (connection string, account URL + key or token credential, SAS).

Uploads: files up to `max_single_put_size` go up in one Put Blob; larger ones as blocks of
`max_block_size`, `max_concurrency` in flight, committed in order. The blocks are staged by this module
rather than by `upload_blob`, because the SDK reads the file and hashes every block on the event loop
(≈12 ms per 8 MiB block, measured: loop stalls of 60-110 ms during a 200 MB upload), and the event loop
also mixes audio. Here file reads run in worker threads and the MD5s come from the one hashing pass
made before the upload.

Integrity, as far as Azure allows (`validate_content`, on by default): every request carries a
transactional Content-MD5 from that pass, so the service refuses bytes that differ from what was hashed
(a file that changed meanwhile, a corrupted transfer). After the upload:
- single put: the service computed the blob's Content-MD5 itself; it must equal the file's MD5
  (`verified_by="azure:Content-MD5"`);
- blocks: Azure computes no whole-object hash for block blobs, so the blob's size must equal the file's
  and the file's MD5 is stored as the blob's Content-MD5 for readers (`verified_by="azure:block-md5+size"`).

Locations are the blob's URL without any SAS query (never leak credentials into events):
`https://acct.blob.core.windows.net/container/<prefix>/<key>`, or for Azurite
`http://127.0.0.1:10000/devstoreaccount1/container/<prefix>/<key>`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

from callrec.security.redact import redact_text
from callrec.storage.address_policy import AddressRefused, find_refusal
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
    split_pieces,
    strip_prefix,
)

_CHECKSUM_CODES = {"Md5Mismatch", "Crc64Mismatch", "InvalidMd5"}


def map_azure_error(exc: BaseException, what: str) -> StorageError:
    """Translate an azure-core / aiohttp exception into the store's typed error.

    A connection the address policy refused (`AddressRefused`, raised by `PolicyResolver` inside the
    SDK's connection attempt) is `PermissionDenied`, not a transient failure: retrying cannot help.
    The message is redacted (`redact_text`): SDK messages may quote the request URL with its SAS.
    """
    if isinstance(exc, StorageError):
        return exc
    refused = find_refusal(exc)
    if refused is not None:
        return PermissionDenied(redact_text(f"{what}: connection refused by the address policy: {refused}"))
    error = _map_azure_error(exc, what)
    return type(error)(redact_text(str(error)))


def _map_azure_error(exc: BaseException, what: str) -> StorageError:
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        raw = getattr(exc, "error_code", None)  # set by the storage SDK, often a StorageErrorCode enum
        code = str(getattr(raw, "value", raw) or "")
        message = f"{what}: {status} {code}".rstrip()
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            if code == "ContainerNotFound":
                return ObjectNotFound(f"{what}: the container does not exist")
            return ObjectNotFound(message)
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            return PermissionDenied(message)
        if status == 416 or code == "InvalidRange":
            return RangeNotSatisfiable(message)
        text = str(exc.message or "").lower()
        if code in _CHECKSUM_CODES or (status == 400 and "md5" in text and "match" in text):
            # Azure says Md5Mismatch; Azurite says InvalidOperation "Provided contentMD5 doesn't match".
            return ChecksumMismatch(f"{message}: the store received other bytes than were hashed")
        if status >= 500 or status in (408, 429):
            return Transient(message)
        return StorageError(f"{message}: {exc.message}")
    if isinstance(exc, ClientAuthenticationError):  # e.g. a token credential that could not get a token
        return PermissionDenied(f"{what}: {exc.message}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return Transient(f"{what}: {exc.message}")
    if isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError):
        return Transient(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, AzureError):
        return StorageError(f"{what}: {exc.message}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except (AzureError, aiohttp.ClientError, TimeoutError, ConnectionError, AddressRefused) as exc:
        raise map_azure_error(exc, what) from exc


class _PolicyTransport(AioHttpTransport):
    """The SDK's aiohttp transport on a session whose connector resolves through `resolver`.

    For bring-your-own-storage: every connection's host goes through the address policy
    (`address_policy.PolicyResolver`) and connects to the addresses it checked. The session ignores
    proxy settings from the environment (`trust_env=False`): with a proxy the policy would check the
    proxy, not the destination.
    """

    def __init__(self, resolver: AbstractResolver, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policy_resolver = resolver

    async def open(self) -> None:
        """Create the session (with the policy's connector) on first use, then the SDK's own opening."""
        session: aiohttp.ClientSession | None = getattr(self, "session", None)  # typed loosely by azure-core
        if session is None and not self._has_been_opened:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._policy_resolver),
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        await super().open()


class AzureBlobStore:
    """Block blobs under `prefix` in `container`.

    Give exactly one of `connection_string` or `account_url`; with `account_url`, authenticate with
    `credential` (account key string, `AzureNamedKeyCredential`, or an azure-identity token credential)
    or `sas_token`. `max_attempts` bounds the SDK's own retries (its default backoff starts at 15 s,
    far too slow when the outbox retries anyway).

    For bring-your-own-storage (`storage.external`): `resolver` makes every connection go through the
    address policy, and `permit_redirects=False` stops the SDK from following a redirect to a host
    nobody checked.
    """

    kind: ClassVar[str] = "azure_blob"

    def __init__(
        self,
        container: str,
        *,
        prefix: str = "",
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any = None,
        sas_token: str | None = None,
        max_block_size: int = DEFAULT_PART_SIZE,
        max_single_put_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 4,
        max_attempts: int = 3,
        connection_timeout: float = 5.0,
        read_timeout: float = 60.0,
        validate_content: bool = True,
        resolver: AbstractResolver | None = None,
        permit_redirects: bool = True,
    ) -> None:
        if not container:
            raise ValueError("AzureBlobStore needs a container")
        if bool(connection_string) == bool(account_url):
            raise ValueError("AzureBlobStore needs exactly one of connection_string or account_url")
        if credential is not None and sas_token:
            raise ValueError("AzureBlobStore takes a credential or a sas_token, not both")
        self.container = container
        self.prefix = normalize_prefix(prefix)
        self.max_block_size = max_block_size
        self.max_single_put_size = max_single_put_size
        self.max_concurrency = max_concurrency
        self.validate_content = validate_content
        options: dict[str, Any] = {
            "max_block_size": max_block_size,
            "max_single_put_size": max_single_put_size,
            "max_single_get_size": 4 * PIECE_SIZE,
            "max_chunk_get_size": 4 * PIECE_SIZE,
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=max(0, max_attempts - 1)),
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            "permit_redirects": permit_redirects,
        }
        if resolver is not None:
            options["transport"] = _PolicyTransport(
                resolver,
                connection_timeout=connection_timeout,
                read_timeout=read_timeout,
                connection_data_block_size=256 * 1024,  # the SDK's own default for the transports it makes
            )
        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
        else:
            auth = sas_token.lstrip("?") if sas_token else credential
            service = BlobServiceClient(str(account_url).rstrip("/"), credential=auth, **options)
        self._service = service
        self._container = service.get_container_client(container)
        url = urlsplit(self._container.url)
        # The SDK appends a SAS to its URLs: locations must never carry it.
        self._base = urlunsplit((url.scheme, url.netloc, url.path.rstrip("/"), "", ""))

    def __repr__(self) -> str:
        return f"AzureBlobStore({join_prefix(self._base, self.prefix) if self.prefix else self._base!r})"

    def _name(self, key: str) -> str:
        return join_prefix(self.prefix, check_key(key))

    # ------------------------------------------------------------------------------------ locations
    def location(self, key: str) -> str:
        """The blob URL without query: `<account endpoint>/<container>/<prefix>/<key>`."""
        return check_location(f"{self._base}/{quote(self._name(key))}")

    def key_for(self, location: str) -> str | None:
        """The key of a blob URL in this container (any SAS query on it is ignored)."""
        try:
            parts = urlsplit(location)
            base = urlsplit(self._base)
        except ValueError:
            return None
        if (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
            return None
        head = unquote(base.path) + "/"
        path = unquote(parts.path)
        if not path.startswith(head):
            return None
        key = strip_prefix(self.prefix, path[len(head) :])
        if key is None:
            return None
        try:
            return check_key(key)
        except ValueError:
            return None

    # ------------------------------------------------------------------------------------------ put
    async def put_file(self, key: str, path: Path | str, content_type: str) -> StoredObject:
        """Put Blob (small) or staged blocks (large), then check size and Content-MD5 against the file."""
        name = self._name(key)
        blob = self._container.get_blob_client(name)
        source = Path(path)
        block_size = self.max_block_size
        size = (await asyncio.to_thread(source.stat)).st_size
        single = size <= self.max_single_put_size
        digests = await file_digests(
            source, part_size=None if single else block_size, md5=True, part_md5=True, part_sha256=False
        )
        assert digests.md5 is not None
        parts = 1 if single else len(digests.part_md5)
        verified_by = "azure:Content-MD5" if single else "azure:block-md5+size"
        if not single and not self.validate_content:
            verified_by = "azure:size"
        what = f"{self}: put {key!r}"
        content_type = content_type or DEFAULT_CONTENT_TYPE

        existing = await self._properties(blob, what)
        if (
            existing is not None
            and existing.size == digests.size
            and bytes(existing.content_settings.content_md5 or b"") == digests.md5
        ):
            return self._stored(key, digests.size, digests.checksum, content_type, verified_by, parts, False)

        metadata = {"sha256": digests.sha256.hex()}
        with _mapped(what):
            if single:
                await self._put_single(blob, source, digests, content_type, metadata)
            else:
                await self._put_blocks(blob, source, digests, content_type, metadata)

        props = await self._properties(blob, what)
        if props is None:
            raise Transient(f"{what}: the blob is not visible after a successful upload")
        reported_md5 = bytes(props.content_settings.content_md5 or b"")
        if props.size != digests.size or reported_md5 != digests.md5:
            with contextlib.suppress(AzureError):
                await blob.delete_blob()
            raise ChecksumMismatch(
                f"{what}: the store reports {props.size} bytes with Content-MD5 {reported_md5.hex() or '-'}, "
                f"the local file has {digests.size} bytes with MD5 {digests.md5.hex()}; the blob was removed"
            )
        return self._stored(key, digests.size, digests.checksum, content_type, verified_by, parts, True)

    def _md5_header(self, md5: bytes) -> dict[str, str]:
        # A transactional Content-MD5 from the hash taken before the upload: the service checks the bytes
        # it received against it, so a file that changed since it was hashed is refused, not stored.
        return {"Content-MD5": base64.b64encode(md5).decode()} if self.validate_content else {}

    async def _put_single(
        self, blob: Any, source: Path, digests: FileDigests, content_type: str, metadata: dict[str, str]
    ) -> None:
        """One Put Blob; the service computes the blob's Content-MD5 itself (we set none)."""
        assert digests.md5 is not None
        data = await asyncio.to_thread(source.read_bytes)
        await blob.upload_blob(
            data,
            length=len(data),
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type),
            metadata=metadata,
            headers=self._md5_header(digests.md5),
        )

    async def _put_blocks(
        self, blob: Any, source: Path, digests: FileDigests, content_type: str, metadata: dict[str, str]
    ) -> None:
        """Stage blocks (`max_concurrency` in flight, each read in a thread), then commit them in order.

        Why not `upload_blob`: it hashes every block on the event loop (≈12 ms per 8 MiB block, which
        stalls the audio mixer); here the hashes come from the pass made before the upload. Block ids
        carry a random token, so two uploads of one blob never mix blocks; blocks of an upload that
        failed are never committed and Azure discards them after a week.
        """
        assert digests.md5 is not None
        token = secrets.token_hex(8)
        ids = [base64.b64encode(f"{token}-{i:08d}".encode()).decode() for i in range(len(digests.part_md5))]
        block_size = digests.part_size
        indices = iter(range(len(ids)))

        def read_block(index: int) -> bytes:
            with source.open("rb") as f:
                f.seek(index * block_size)
                return f.read(block_size)

        async def worker() -> None:
            for index in indices:  # shared iterator: each block is taken by exactly one worker
                data = await asyncio.to_thread(read_block, index)
                await blob.stage_block(
                    ids[index], data, length=len(data), headers=self._md5_header(digests.part_md5[index])
                )

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.max_concurrency, len(ids))):
                    group.create_task(worker())
        except* Exception as failures:  # the first failure is the cause; the rest are its echoes
            raise failures.exceptions[0] from None
        await blob.commit_block_list(
            [BlobBlock(block_id=block_id) for block_id in ids],
            content_settings=ContentSettings(content_type=content_type, content_md5=bytearray(digests.md5)),
            metadata=metadata,
        )

    def _stored(
        self,
        key: str,
        size: int,
        checksum: str,
        content_type: str,
        verified_by: str,
        parts: int,
        uploaded: bool,
    ) -> StoredObject:
        return StoredObject(
            key=key,
            size=size,
            checksum=checksum,
            location=self.location(key),
            content_type=content_type,
            verified_by=verified_by,
            parts=parts,
            uploaded=uploaded,
        )

    # ----------------------------------------------------------------------------------------- read
    @staticmethod
    async def _properties(blob: Any, what: str) -> Any | None:
        try:
            return await blob.get_blob_properties()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise ObjectNotFound(f"{what}: the container does not exist") from exc
            return None
        except (AzureError, aiohttp.ClientError, TimeoutError, ConnectionError, AddressRefused) as exc:
            raise map_azure_error(exc, what) from exc

    async def head(self, key: str) -> ObjectInfo | None:
        """Get Blob Properties: size, content type, last modified and metadata, or None."""
        props = await self._properties(self._container.get_blob_client(self._name(key)), f"{self}: head {key!r}")
        if props is None:
            return None
        return ObjectInfo(
            key=key,
            size=int(props.size),
            content_type=props.content_settings.content_type or DEFAULT_CONTENT_TYPE,
            last_modified=props.last_modified,
            metadata=dict(props.metadata or {}),
        )

    async def open_range(self, key: str, offset: int = 0, length: int = 0) -> AsyncIterator[bytes]:
        """Properties for the size, then a ranged download whose 4 MiB chunks are cut to ≤ 1 MiB."""
        blob = self._container.get_blob_client(self._name(key))
        what = f"{self}: read {key!r}"
        props = await self._properties(blob, what)
        if props is None:
            raise ObjectNotFound(f"{what}: no such object")
        start, end = resolve_range(int(props.size), offset, length)
        if start == end:
            return
        with _mapped(what):
            downloader = await blob.download_blob(offset=start, length=end - start, max_concurrency=1)
            chunks = downloader.chunks()
        while True:
            with _mapped(what):
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
            for piece in split_pieces(chunk):
                yield piece

    # --------------------------------------------------------------------------------- delete/list
    async def delete(self, key: str) -> None:
        """Delete Blob (with its snapshots); ObjectNotFound when absent."""
        with _mapped(f"{self}: delete {key!r}"):
            await self._container.get_blob_client(self._name(key)).delete_blob(delete_snapshots="include")

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """List Blobs under `<store prefix>/<prefix>`, yielding keys without the store prefix."""
        full = join_prefix(self.prefix, prefix) if self.prefix else prefix
        what = f"{self}: list {prefix!r}"
        with _mapped(what):
            pages = self._container.list_blobs(name_starts_with=full or None)
        while True:
            with _mapped(what):
                try:
                    item = await pages.__anext__()
                except StopAsyncIteration:
                    return
            key = strip_prefix(self.prefix, item.name)
            if key is not None:
                yield key

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._service.close()
