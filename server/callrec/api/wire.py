"""Requests that are not valid protobuf get INVALID_ARGUMENT, not UNKNOWN and a traceback.

gRPC Python deserializes a request before any servicer code runs; when the bytes are not a
valid message (a truncated field, a string that is not UTF-8) the generated deserializer
raises, gRPC logs a traceback at error level and answers UNKNOWN — which tells a client
nothing and lets anyone fill the server's log. This interceptor wraps every method's
deserializer so that a bad message becomes a `Malformed` value, and the method answers
INVALID_ARGUMENT naming the message type and what was wrong. For a request stream the
bad message ends the stream the same way, when the servicer reaches it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from callrec import metrics
from callrec.core.errors import InvalidArgument

__all__ = ["Malformed", "MalformedRequestInterceptor"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


@dataclass(frozen=True)
class Malformed:
    """What the deserializer returns for bytes that are not a valid request message."""

    message: str


def _checked_deserializer(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            metrics.MALFORMED_REQUESTS.labels(method).inc()
            return Malformed(f"{method}: the request is not a valid protobuf message ({exc})")

    return run


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream, raising `InvalidArgument` at the first malformed message."""
    async for request in requests:
        if isinstance(request, Malformed):
            raise InvalidArgument(request.message)
        yield request


def _wrap(handler: Any, method: str) -> Any:
    """A copy of `handler` (an aio handler: its behaviours are coroutine functions) that checks requests."""
    deserialize = _checked_deserializer(handler.request_deserializer, method)
    serialize = handler.response_serializer

    if handler.request_streaming and handler.response_streaming:
        inner_bidi: Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]] = (
            handler.stream_stream
        )

        if not inspect.isasyncgenfunction(inner_bidi):  # writes with context.write()

            async def bidi_writer(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await inner_bidi(_checked_stream(requests), context)  # type: ignore[misc]  # a coroutine

            return grpc.stream_stream_rpc_method_handler(bidi_writer, deserialize, serialize)

        async def bidi(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in inner_bidi(_checked_stream(requests), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(bidi, deserialize, serialize)
    if handler.request_streaming:
        inner_client: Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], Awaitable[Any]] = (
            handler.stream_unary
        )

        async def client_streaming(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await inner_client(_checked_stream(requests), context)

        return grpc.stream_unary_rpc_method_handler(client_streaming, deserialize, serialize)

    if handler.response_streaming:
        inner_gen: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]] = handler.unary_stream

        if not inspect.isasyncgenfunction(inner_gen):  # writes with context.write()

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                return await inner_gen(request, context)  # type: ignore[misc]  # a coroutine

            return grpc.unary_stream_rpc_method_handler(writer, deserialize, serialize)

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for response in inner_gen(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(streaming, deserialize, serialize)

    inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]] = handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answers malformed request bytes with INVALID_ARGUMENT (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        wrapped: grpc.RpcMethodHandler[_Request, _Response] = _wrap(handler, handler_call_details.method)
        return wrapped
