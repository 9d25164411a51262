"""Domain errors. Each carries a code that `api/errors.py` maps to a gRPC status once.

The codes are names, not grpc objects, so that core/ stays free of gRPC.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """What kind of failure; mapped 1:1 to gRPC status codes in the API layer."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


#: google.rpc.Code numbers, for RecordingError.code.
RPC_CODE_NUMBERS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 3,
    ErrorCode.NOT_FOUND: 5,
    ErrorCode.PERMISSION_DENIED: 7,
    ErrorCode.RESOURCE_EXHAUSTED: 8,
    ErrorCode.FAILED_PRECONDITION: 9,
    ErrorCode.OUT_OF_RANGE: 11,
    ErrorCode.INTERNAL: 13,
    ErrorCode.UNAVAILABLE: 14,
}


class CallrecError(Exception):
    """Base of every domain error: a code and a message a user can act on."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(CallrecError):
    """A request field is missing or malformed."""

    code = ErrorCode.INVALID_ARGUMENT


class NotFound(CallrecError):
    """The named call, recording or object does not exist."""

    code = ErrorCode.NOT_FOUND


class FailedPrecondition(CallrecError):
    """The request is valid but the current state does not allow it."""

    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhausted(CallrecError):
    """A configured limit was reached."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class OutOfRange(CallrecError):
    """A position (offset, sequence) lies outside what exists."""

    code = ErrorCode.OUT_OF_RANGE


class RecordedElsewhere(FailedPrecondition):
    """The recording is in progress on another node of the cluster: the API layer forwards the RPC there."""

    def __init__(self, message: str, recording_id: str, server_call_id: str) -> None:
        super().__init__(message)
        self.recording_id = recording_id
        self.server_call_id = server_call_id
