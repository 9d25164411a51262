"""The one place where domain errors become gRPC statuses."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from callrec.core.errors import CallrecError, ErrorCode

STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

R = TypeVar("R")


def status_of(error: CallrecError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    return STATUS[error.code]


def unary(handler: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map CallrecError raised by a unary handler to its status (only CallrecError: never abort's own)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await handler(self, request, context)
        except CallrecError as exc:
            await context.abort(status_of(exc), exc.message)
            raise AssertionError("unreachable") from exc

    return wrapper


def streaming(handler: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    """The same for server-streaming handlers (async generators)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[R]:
        try:
            async for item in handler(self, request, context):
                yield item
        except CallrecError as exc:
            await context.abort(status_of(exc), exc.message)

    return wrapper
