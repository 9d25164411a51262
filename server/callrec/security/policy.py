"""Who may call what: roles to services, and a token's `calls` limit. Pure: method names are strings.

SPEC §5: `admin` may do everything; `controller` is an application back end (RecordingService,
EventService, ContentService); `gateway` is a media gateway (MediaService only). UploadService
(the outbox's admin view, which names every recording's files and targets) is admin-only.
Health and server reflection stay open: load balancers probe health without credentials, and
the API is public (its .proto files are in the repository), so reflection reveals nothing a
token would protect. A service this table does not name needs an admin token: a new service
is closed until someone decides who may use it.
"""

from __future__ import annotations

from collections.abc import Mapping

from callrec.security.tokens import Role, TokenClaims

OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
"""Services anyone may call, with or without a token."""

SERVICE_ROLES: Mapping[str, frozenset[Role]] = {
    "callrec.v1.RecordingService": frozenset({Role.ADMIN, Role.CONTROLLER}),
    "callrec.v1.EventService": frozenset({Role.ADMIN, Role.CONTROLLER}),
    "callrec.v1.ContentService": frozenset({Role.ADMIN, Role.CONTROLLER}),
    "callrec.v1.MediaService": frozenset({Role.ADMIN, Role.GATEWAY}),
    "callrec.v1.UploadService": frozenset({Role.ADMIN}),
    "callrec.v1.WebhookService": frozenset({Role.ADMIN}),
}
"""The roles that may call each service."""

_FOR_ROLE = {
    Role.CONTROLLER: "a controller token may use RecordingService, EventService and ContentService",
    Role.GATEWAY: "a gateway token may use MediaService only",
    Role.ADMIN: "",
}


class AccessDenied(Exception):
    """A valid token that may not do this (PERMISSION_DENIED); the message names the role or the call."""


def service_of(method: str) -> str:
    """"callrec.v1.RecordingService" of "/callrec.v1.RecordingService/StartRecording"."""
    return method.lstrip("/").split("/", 1)[0]


def is_open(method: str) -> bool:
    """True for RPCs that need no token (health checks, server reflection)."""
    return service_of(method) in OPEN_SERVICES


def authorize(claims: TokenClaims, method: str) -> None:
    """Raise AccessDenied unless the token's role may call `method` ("/package.Service/Method")."""
    service = service_of(method)
    allowed = SERVICE_ROLES.get(service, frozenset({Role.ADMIN}))
    if claims.role in allowed:
        return
    who = " or ".join(sorted(r.value for r in allowed))
    article = "an" if who[0] in "aeiou" else "a"
    hint = _FOR_ROLE[claims.role]
    raise AccessDenied(
        f"role {claims.role.value!r} may not call {method.lstrip('/')}: it needs {article} {who} token"
        + (f" ({hint})" if hint else "")
    )


def check_call(claims: TokenClaims, server_call_id: str, what: str = "") -> None:
    """Raise AccessDenied when the token is limited to calls and `server_call_id` is not one of them.

    `what` names the thing the call was found from ("recording 1234…", "location …") when the
    request did not name the call itself.
    """
    if claims.allows_call(server_call_id):
        return
    limited = ", ".join(repr(c) for c in sorted(claims.calls or ()))
    if not server_call_id:
        subject = f"{what} belongs to none of them" if what else "the request names no call (set server_call_id)"
    elif what:
        subject = f"{what} belongs to call {server_call_id!r}"
    else:
        subject = f"call {server_call_id!r} is not one of them"
    raise AccessDenied(f"this {claims.role.value} token is limited to calls {limited}; {subject}")
