"""Forwarding a call-scoped RPC to the node that owns the call (cluster mode, SPEC §8).

A proxy routes RPCs by `x-callrec-server-call-id`, but an RPC may still land on a node that does not
own its call: a client that could not name the call (a recording id it never saw), a proxy that
re-hashed after a node joined. That node sends the same request to the owner, found in the shared
state (a live lease), and relays the answer, the owner's error included.

What travels with it: the caller's `authorization` (the owner checks the token itself, with the
same keys), the routing header, and `x-callrec-forwarded-by: <this node>`. A forwarded request is
never forwarded again, so two nodes that disagree about an owner cannot bounce it between them: the
second answers with its own error. With TLS, nodes talk TLS to each other: the channel trusts the
client CA (`--tls-client-ca`) or the system's roots, and presents this node's certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from callrec.logs import get_logger

__all__ = ["FORWARDED_HEADER", "ROUTING_HEADER", "Forwarder", "NodeAddress", "NodeLocator"]

log = get_logger(__name__)

FORWARDED_HEADER = "x-callrec-forwarded-by"
ROUTING_HEADER = "x-callrec-server-call-id"
FORWARD_TIMEOUT_S = 30.0
PASSED_ON = ("authorization", ROUTING_HEADER)

M = TypeVar("M", bound=Message)


class NodeAddress(Protocol):
    """What the forwarder needs of a node (`state.pg_nodes.NodeInfo`)."""

    @property
    def node_id(self) -> str:
        """The node's name."""
        ...

    @property
    def advertise(self) -> str:
        """HOST:PORT the node is reached at."""
        ...


class NodeLocator(Protocol):
    """Finds the live node, other than this one, that owns a recording or a call."""

    async def node_of_recording(self, recording_id: str) -> NodeAddress | None:
        """The node recording it, or None."""
        ...

    async def node_of_call(self, server_call_id: str) -> NodeAddress | None:
        """The node owning the call, or None."""
        ...

    async def node_of_chunk(self, location: str) -> NodeAddress | None:
        """The node that stored the chunk a location names, or None."""
        ...

    async def node_with_failed_uploads(self, recording_id: str) -> NodeAddress | None:
        """A live node whose spool holds failed uploads of the recording, or None."""
        ...

    async def least_loaded(self, below: float) -> NodeAddress | None:
        """The live node with the lowest advertised load under `below`, or None."""
        ...


@dataclass
class ForwardCredentials:
    """TLS for node-to-node calls (None fields: plaintext, as the node itself serves)."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    tls: bool = False


class Forwarder:
    """Sends a request on to another node and relays its answer."""

    def __init__(self, locator: NodeLocator, node_id: str, credentials: ForwardCredentials | None = None) -> None:
        self.locator = locator
        self.node_id = node_id
        self.credentials = credentials or ForwardCredentials()
        self._channels: dict[str, grpc.aio.Channel] = {}

    @staticmethod
    def was_forwarded(context: grpc.aio.ServicerContext) -> bool:
        """Whether this request already came from another node (then it is answered here, whatever)."""
        return any(key == FORWARDED_HEADER for key, _ in context.invocation_metadata() or ())

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            creds = self.credentials
            if creds.tls:
                ssl = grpc.ssl_channel_credentials(creds.root_certificates, creds.private_key, creds.certificate_chain)
                channel = grpc.aio.secure_channel(address, ssl)
            else:
                channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
        return channel

    async def unary(
        self,
        node: NodeAddress,
        method: str,
        request: Message,
        response_type: type[M],
        context: grpc.aio.ServicerContext,
    ) -> M:
        """Call `method` (`/callrec.v1.Service/Method`) on `node` with the caller's credentials; a
        status from the owner is relayed as it is (abort)."""
        metadata = self._metadata(context)
        call: Callable[..., Awaitable[Any]] = self._channel(node.advertise).unary_unary(
            method, request_serializer=type(request).SerializeToString, response_deserializer=response_type.FromString
        )
        remaining = context.time_remaining()
        timeout = min(FORWARD_TIMEOUT_S, remaining) if remaining is not None else FORWARD_TIMEOUT_S
        try:
            response: M = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                details = (f"node {node.node_id!r} ({node.advertise}) owns this call but did not answer: {details}; "
                           "retry (if that node died, its lease lapses within --node-lease seconds)")
            log.info("forwarded RPC failed", method=method, node=node.node_id, code=code.name)
            await context.abort(code, details)
            raise AssertionError("unreachable") from exc
        log.debug("forwarded RPC", method=method, node=node.node_id)
        return response

    async def stream(
        self,
        node: NodeAddress,
        method: str,
        request: Message,
        response_type: type[M],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[M]:
        """A server-streaming `method` on `node`: its messages, then its status relayed (abort)."""
        call = self._channel(node.advertise).unary_stream(
            method, request_serializer=type(request).SerializeToString, response_deserializer=response_type.FromString
        )
        stream = call(request, metadata=self._metadata(context))
        try:
            async for message in stream:
                yield message
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                details = f"node {node.node_id!r} ({node.advertise}) holds this file but did not answer: {details}"
            await context.abort(exc.code(), details)
        finally:
            stream.cancel()

    def _metadata(self, context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
        """The caller's credentials and routing header, and who forwards it (never forwarded again)."""
        return [*self._metadata_of(context), (FORWARDED_HEADER, self.node_id)]

    async def bidi(
        self,
        node: NodeAddress,
        method: str,
        first: Message,
        rest: AsyncIterator[Any],
        response_type: type[M],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[M]:
        """Relay a bidirectional stream to `node`: `first` and then `rest` go there, its messages come back,
        then its status (abort). The caller's half-close reaches it; a cancelled caller cancels it."""
        call = self._channel(node.advertise).stream_stream(
            method, request_serializer=type(first).SerializeToString, response_deserializer=response_type.FromString
        )

        async def requests() -> AsyncIterator[Message]:
            yield first
            async for request in rest:
                yield request

        stream = call(requests(), metadata=self._metadata(context))
        try:
            async for message in stream:
                yield message
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                details = (f"node {node.node_id!r} ({node.advertise}) owns this call but did not answer: {details}; "
                           "re-open the stream (if that node died, its lease lapses within --node-lease seconds)")
            await context.abort(exc.code(), details)
        finally:
            stream.cancel()

    @staticmethod
    def _metadata_of(context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
        passed: list[tuple[str, str]] = [
            (key, value) for key, value in context.invocation_metadata() or ()
            if key in PASSED_ON and isinstance(value, str)
        ]
        return passed

    async def close(self) -> None:
        """Close the channels to other nodes."""
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
