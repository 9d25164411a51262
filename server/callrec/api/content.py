"""ContentService: downloads and deletes stored chunks by the locations events announced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from callrec.api import auth
from callrec.api.errors import streaming, unary
from callrec.api.forward import Forwarder, NodeAddress
from callrec.core.errors import CallrecError, ErrorCode, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from callrec.core.limits import check_text
from callrec.core.ports import StoredChunk
from callrec.security.redact import redact_text, redact_url
from callrec.state.chunks import ChunkIndex
from callrec.state.pg_chunks import PgChunkIndex
from callrec.state.uploads import METADATA_TYPE
from callrec.storage.address_policy import DestinationRefused
from callrec.storage.base import StorageError, Store
from callrec.storage.local import LocalStore
from callrec.storage.resolver import StoreResolver, describe_target
from callrec.v1 import content_pb2 as pb
from callrec.v1 import content_pb2_grpc

PIECE = 1024 * 1024
SERVICE = pb.DESCRIPTOR.services_by_name["ContentService"].full_name


def _domain(exc: StorageError, location: str) -> CallrecError:
    """A store's error as a domain error with a message naming the location."""
    try:
        code = ErrorCode(exc.code)
    except ValueError:
        code = ErrorCode.INTERNAL if exc.code != "DATA_LOSS" else ErrorCode.UNAVAILABLE
    if code is ErrorCode.NOT_FOUND:
        return NotFound(f"{redact_url(location)} no longer exists (deleted or past its retention)")
    return CallrecError(redact_text(f"storage error for {location}: {exc}"), code)


class ContentServicer(content_pb2_grpc.ContentServiceServicer):
    """DownloadContent / DeleteContent."""

    def __init__(
        self, index: ChunkIndex | PgChunkIndex, stores: StoreResolver,
        call_of: Callable[[str], Awaitable[str | None]] | None = None, max_location_bytes: int = 4096,
    ) -> None:
        self.index = index
        self.stores = stores
        self.max_location_bytes = max_location_bytes
        self.call_of = call_of
        """recording_id -> server_call_id, for tokens limited to calls (api/auth.py)."""
        self.forwarder: Forwarder | None = None
        """Cluster mode: a file in another node's local store is served (or deleted) by that node."""

    async def _holder(self, context: grpc.aio.ServicerContext, location: str) -> NodeAddress | None:
        """The live node whose local store holds the file a location names, when it is not this node (the
        local store is on each node's own disk; shared stores are served by any node)."""
        if self.forwarder is None or Forwarder.was_forwarded(context) or not location:
            return None
        check_text(location, "location", self.max_location_bytes, "max_location_bytes")
        found = await self.index.by_location(location)
        if found is None or not isinstance(self._store(found[0].target), LocalStore):
            return None
        return await self.forwarder.locator.node_of_chunk(location)

    async def _require_call(self, chunk: StoredChunk | None, location: str) -> None:
        """A call-limited token may only reach chunks of its calls; a location the index does not
        attribute to a recording belongs to none of them (and NOT_FOUND would tell it what exists)."""
        if auth.call_limited():
            call = await self.call_of(chunk.recording_id) if chunk is not None and self.call_of is not None else None
            auth.require_call(call or "", f"location {redact_url(location)!r}")

    def _store(self, target: str) -> Store:
        """The store of an indexed chunk's target; an external one is checked against today's policy."""
        try:
            return self.stores(target)
        except DestinationRefused as exc:
            raise CallrecError(
                f"the chunk's storage ({describe_target(target)}) is no longer allowed: {redact_text(str(exc))}",
                ErrorCode.PERMISSION_DENIED,
            ) from None
        except ValueError as exc:
            raise FailedPrecondition(
                f"the chunk's storage ({describe_target(target)}) cannot be used: {redact_text(str(exc))}"
            ) from None

    async def _resolve(self, location: str) -> tuple[Store, str, str]:
        """The store, key and content type of a content or metadata location."""
        if not location:
            raise InvalidArgument("location is required: a contentLocation or metadataLocation from an event")
        check_text(location, "location", self.max_location_bytes, "max_location_bytes")
        found = await self.index.by_location(location)
        await self._require_call(found[0] if found else None, location)
        if found is not None:
            chunk, what = found
            if what == "delete":
                raise InvalidArgument(f"{location} is a deleteLocation: pass it to DeleteContent, not DownloadContent")
            store = self._store(chunk.target)
            if what == "media":
                return store, chunk.media_key, chunk.media_type
            return store, chunk.metadata_key, METADATA_TYPE
        # Only what the index knows: mapping any location to a key of any store would let a client read
        # whatever the server's credentials can read (other objects in a target's bucket, other buckets).
        raise NotFound(
            f"no stored file has location {redact_url(location)!r}: ContentService serves only the "
            "contentLocation and metadataLocation this server announced for its recordings' chunks "
            "(unknown, deleted or expired)"
        )

    @streaming
    async def DownloadContent(
        self, request: pb.DownloadContentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadContentResponse]:
        location = request.location
        holder = await self._holder(context, location)
        if holder is not None and self.forwarder is not None:
            async for message in self.forwarder.stream(holder, f"/{SERVICE}/DownloadContent", request,
                                                       pb.DownloadContentResponse, context):
                yield message
            return
        store, key, content_type = await self._resolve(location)
        try:
            info = await store.head(key)
        except StorageError as exc:
            raise _domain(exc, location) from None
        if info is None:
            raise NotFound(f"{location} no longer exists (deleted or past its retention)")
        size, offset, length = info.size, request.offset, request.length
        content_type = content_type or info.content_type
        if offset > size or (length and offset + length > size):
            raise OutOfRange(
                f"range offset={offset} length={length or 'to the end'} is past the end of {location} "
                f"({size} bytes)"
            )
        if offset == size:
            yield pb.DownloadContentResponse(data=b"", offset=offset, total_size=size, content_type=content_type)
            return
        position = offset
        try:
            async for piece in store.open_range(key, offset, length):
                for start in range(0, len(piece), PIECE):
                    data = piece[start:start + PIECE]
                    yield pb.DownloadContentResponse(data=data, offset=position, total_size=size,
                                                     content_type=content_type)
                    position += len(data)
        except StorageError as exc:
            raise _domain(exc, location) from None

    @unary
    async def DeleteContent(
        self, request: pb.DeleteContentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteContentResponse:
        location = request.location
        holder = await self._holder(context, location)
        if holder is not None and self.forwarder is not None:
            return await self.forwarder.unary(holder, f"/{SERVICE}/DeleteContent", request,
                                              pb.DeleteContentResponse, context)
        if not location:
            raise InvalidArgument("location is required: a deleteLocation from an event")
        check_text(location, "location", self.max_location_bytes, "max_location_bytes")
        found = await self.index.by_location(location)
        await self._require_call(found[0] if found else None, location)
        if found is None:
            raise NotFound(
                f"no stored chunk has deleteLocation {redact_url(location)!r}: DeleteContent takes only a "
                "deleteLocation this server announced for a chunk (unknown or already deleted)"
            )
        chunk, what = found
        if what != "delete":
            raise InvalidArgument(
                f"{location} is a {'content' if what == 'media' else 'metadata'}Location; DeleteContent takes the "
                "chunk's deleteLocation, which removes both its media and its metadata"
            )
        store = self._store(chunk.target)
        deleted = []
        for key, loc in ((chunk.media_key, chunk.content_location), (chunk.metadata_key, chunk.metadata_location)):
            try:
                await store.delete(key)
                deleted.append(loc)
            except StorageError as exc:
                if exc.code != "NOT_FOUND":
                    raise _domain(exc, loc) from None
        await self.index.mark_deleted(chunk.document_id)
        return pb.DeleteContentResponse(deleted_locations=deleted)
