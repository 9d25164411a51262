"""The one token check of every RPC: a `grpc.aio.ServerInterceptor`, and the per-call checks servicers ask for.

The interceptor reads `authorization: Bearer <jwt>` from the call's metadata, verifies it
(`security/tokens.py`), checks the role against the service (`security/policy.py`) and answers
UNAUTHENTICATED / PERMISSION_DENIED itself, before any servicer code runs; health and
reflection pass untouched. It works the same for unary and streaming RPCs because it decides
before the handler starts.

A token's `calls` limit cannot be checked there: the interceptor sees the method name, not the
request (for StreamMedia, the call id arrives in the first message of the stream). So the
interceptor stores the verified claims in a contextvar (gRPC runs the handler in the
interceptor's context, as its documentation promises), and a servicer calls `require_call`
with the call its request names; the check raises a domain error that `api/errors.py` maps to
PERMISSION_DENIED. With `[auth]` unset there is no interceptor and no claims: every check passes.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from callrec.core.errors import CallrecError, ErrorCode
from callrec.logs import get_logger
from callrec.security import policy
from callrec.security.tokens import TokenClaims, TokenError, TokenVerifier

log = get_logger("api.auth")

NO_METADATA = ("no authorization metadata: send 'authorization: Bearer <jwt>'; "
               "create one with `callrec token create`")

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

_claims: contextvars.ContextVar[TokenClaims | None] = contextvars.ContextVar("callrec_token_claims", default=None)


def current_claims() -> TokenClaims | None:
    """The verified claims of the RPC being handled (None: auth is off, or an open RPC)."""
    return _claims.get()


def call_limited() -> bool:
    """True when the caller's token is limited to calls, so a servicer must find the request's call."""
    claims = _claims.get()
    return claims is not None and claims.call_limited


def require_call(server_call_id: str, what: str = "") -> None:
    """PERMISSION_DENIED (a domain error) unless the caller's token may act on `server_call_id`.

    `what` names where the call came from when the request did not name it ("recording …").
    """
    claims = _claims.get()
    if claims is None:
        return
    try:
        policy.check_call(claims, server_call_id, what)
    except policy.AccessDenied as exc:
        raise CallrecError(str(exc), ErrorCode.PERMISSION_DENIED) from None


def bearer_token(metadata: Any) -> str:
    """The token of the `authorization` metadata; TokenError when there is none or it is not Bearer."""
    values = [value for key, value in (metadata or ()) if key == "authorization"]
    if not values:
        raise TokenError(NO_METADATA)
    if len(values) > 1:
        raise TokenError("several authorization metadata entries: send exactly one 'authorization: Bearer <jwt>'")
    value = values[0].decode() if isinstance(values[0], bytes) else str(values[0])
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenError("authorization metadata must be 'Bearer <jwt>'")
    return token.strip()


def _refusal(
    handler: grpc.RpcMethodHandler[_Request, _Response], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[_Request, _Response]:
    """A handler of the same shape as `handler` that answers `code` without running the servicer."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def abort_streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # unreachable: makes this an async generator, the shape a streaming response needs

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_streaming, deserialize, serialize)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, deserialize, serialize)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_streaming, deserialize, serialize)
    return grpc.unary_unary_rpc_method_handler(abort, deserialize, serialize)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token of every RPC except health and reflection; see the module docstring."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or policy.is_open(method):
            return handler  # an unknown method answers UNIMPLEMENTED; health and reflection are open
        try:
            claims = self.verifier.verify(bearer_token(handler_call_details.invocation_metadata))
        except TokenError as exc:
            log.info("rpc refused: no valid token", method=method, reason=str(exc))
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        try:
            policy.authorize(claims, method)
        except policy.AccessDenied as exc:
            log.info("rpc refused: role", method=method, role=claims.role.value, kid=claims.key_id,
                     subject=claims.subject, reason=str(exc))
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        _claims.set(claims)
        return handler
