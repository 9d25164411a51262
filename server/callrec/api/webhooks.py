"""WebhookService: translates the webhook admin RPCs to `callrec.webhooks.WebhookDispatcher` and back.

Admin tokens only (`security/policy.py`). Every request field has a limit checked here, with an error
naming it; what the dispatcher refuses (the URL, the address policy, the secret, the Event Grid
handshake) comes back with the status its error class names. Secrets are never shown, except the one
the server generated for AddWebhook, once, in its response.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from callrec.api.errors import unary
from callrec.core.errors import CallrecError, ErrorCode
from callrec.storage.address_policy import DestinationRefused, UnresolvableHost
from callrec.v1 import webhooks_pb2 as pb
from callrec.v1 import webhooks_pb2_grpc
from callrec.webhooks.delivery import WebhookDispatcher
from callrec.webhooks.errors import EndpointManagedByConfig, EndpointNotFound, ValidationHandshakeFailed
from callrec.webhooks.store import DeadLetter, DeliveryAttempt, WebhookEndpoint

__all__ = ["WebhookServicer"]

MAX_URL = 2048
MAX_SECRET = 256
MAX_EVENT_TYPES = 16
MAX_CALL_ID = 256
MAX_ID = 64
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

CLUSTER_REFUSAL = (
    "webhooks are not available in cluster mode yet (every node would deliver each event); run them on a "
    "single node, or subscribe with SubscribeEvents"
)


def _check_length(value: str, limit: int, field: str, *, required: bool = False) -> str:
    if required and not value:
        raise CallrecError(f"{field} is required", ErrorCode.INVALID_ARGUMENT)
    if len(value) > limit:
        raise CallrecError(f"{field} is {len(value)} characters; the limit is {limit}", ErrorCode.INVALID_ARGUMENT)
    return value


def _translate(exc: Exception) -> CallrecError:
    """The dispatcher's errors as the API's, with the status their kind calls for."""
    if isinstance(exc, (ValidationHandshakeFailed, EndpointManagedByConfig)):
        return CallrecError(str(exc), ErrorCode.FAILED_PRECONDITION)
    if isinstance(exc, EndpointNotFound):
        return CallrecError(str(exc), ErrorCode.NOT_FOUND)
    if isinstance(exc, UnresolvableHost):
        return CallrecError(str(exc), ErrorCode.INVALID_ARGUMENT)
    if isinstance(exc, DestinationRefused):
        return CallrecError(str(exc), ErrorCode.PERMISSION_DENIED)
    return CallrecError(str(exc), ErrorCode.INVALID_ARGUMENT)


def _time(at: float | None) -> datetime | None:
    return datetime.fromtimestamp(at, UTC) if at else None


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    """The admin side of webhooks; `dispatcher` None: cluster mode, where they are not available yet."""

    def __init__(self, dispatcher: WebhookDispatcher | None) -> None:
        self.dispatcher = dispatcher

    def _require(self) -> WebhookDispatcher:
        if self.dispatcher is None:
            raise CallrecError(CLUSTER_REFUSAL, ErrorCode.FAILED_PRECONDITION)
        return self.dispatcher

    async def _webhook(self, endpoint: WebhookEndpoint) -> pb.Webhook:
        dispatcher = self._require()
        cursor = await dispatcher.cursor(endpoint.id)
        dead = await dispatcher.dead_letters(endpoint.id, MAX_LIMIT)
        msg = pb.Webhook(
            webhook_id=endpoint.id, url=endpoint.shown_url, event_types=list(endpoint.event_types),
            server_call_id=endpoint.server_call_id, schema=endpoint.schema, source=endpoint.source,
            enabled=endpoint.enabled, disabled_reason=endpoint.disabled_reason,
            delivered_sequence=cursor.delivered_sequence, pending_attempts=cursor.attempts, dead_letters=len(dead),
        )
        created = _time(endpoint.created_at)
        if created is not None:
            msg.create_time.FromDatetime(created)
        return msg

    @staticmethod
    def _attempt(a: DeliveryAttempt) -> pb.WebhookAttempt:
        msg = pb.WebhookAttempt(event_id=a.event_id, sequence=a.sequence, attempt=a.attempt,
                                status_code=a.status or 0, error=a.error, duration_ms=round(a.duration_ms),
                                redelivery=a.redelivery)
        at = _time(a.at)
        if at is not None:
            msg.attempt_time.FromDatetime(at)
        return msg

    @staticmethod
    def _dead(d: DeadLetter) -> pb.WebhookDeadLetter:
        msg = pb.WebhookDeadLetter(event_id=d.event_id, sequence=d.first_sequence, event_type=d.event_type,
                                   reason=d.reason, attempts=d.attempts)
        at = _time(d.at)
        if at is not None:
            msg.dead_time.FromDatetime(at)
        return msg

    @unary
    async def AddWebhook(
        self, request: pb.AddWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddWebhookResponse:
        dispatcher = self._require()
        url = _check_length(request.url.strip(), MAX_URL, "url", required=True)
        secret = _check_length(request.secret.strip(), MAX_SECRET, "secret")
        if len(request.event_types) > MAX_EVENT_TYPES:
            raise CallrecError(f"event_types has {len(request.event_types)} entries; the limit is {MAX_EVENT_TYPES}",
                               ErrorCode.INVALID_ARGUMENT)
        call_id = _check_length(request.server_call_id, MAX_CALL_ID, "server_call_id")
        try:
            endpoint = await dispatcher.add_endpoint(url, secret or None, event_types=list(request.event_types),
                                                     server_call_id=call_id, schema=request.schema or "callrec")
        except (ValueError, LookupError) as exc:
            raise _translate(exc) from None
        return pb.AddWebhookResponse(webhook=await self._webhook(endpoint), secret="" if secret else endpoint.secret)

    @unary
    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhooksResponse:
        dispatcher = self._require()
        return pb.ListWebhooksResponse(webhooks=[await self._webhook(e) for e in await dispatcher.list_endpoints()])

    async def _endpoint_id(self, value: str) -> str:
        return _check_length(value.strip(), MAX_ID, "webhook_id", required=True)

    @unary
    async def RemoveWebhook(
        self, request: pb.RemoveWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveWebhookResponse:
        dispatcher = self._require()
        try:
            await dispatcher.remove_endpoint(await self._endpoint_id(request.webhook_id))
        except (ValueError, LookupError) as exc:
            raise _translate(exc) from None
        return pb.RemoveWebhookResponse()

    @unary
    async def EnableWebhook(
        self, request: pb.EnableWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnableWebhookResponse:
        dispatcher = self._require()
        try:
            endpoint = await dispatcher.enable(await self._endpoint_id(request.webhook_id))
        except (ValueError, LookupError) as exc:
            raise _translate(exc) from None
        return pb.EnableWebhookResponse(webhook=await self._webhook(endpoint))

    @unary
    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookDeliveriesResponse:
        dispatcher = self._require()
        if request.limit > MAX_LIMIT:
            raise CallrecError(f"limit is {request.limit}; the most is {MAX_LIMIT}", ErrorCode.INVALID_ARGUMENT)
        limit = request.limit or DEFAULT_LIMIT
        endpoint_id = await self._endpoint_id(request.webhook_id)
        try:
            attempts = await dispatcher.deliveries(endpoint_id, limit)
            dead = await dispatcher.dead_letters(endpoint_id, limit)
        except (ValueError, LookupError) as exc:
            raise _translate(exc) from None
        return pb.ListWebhookDeliveriesResponse(attempts=[self._attempt(a) for a in attempts],
                                                dead_letters=[self._dead(d) for d in dead])

    @unary
    async def RedeliverWebhookEvent(
        self, request: pb.RedeliverWebhookEventRequest, context: grpc.aio.ServicerContext
    ) -> pb.RedeliverWebhookEventResponse:
        dispatcher = self._require()
        endpoint_id = await self._endpoint_id(request.webhook_id)
        event_id = _check_length(request.event_id.strip(), MAX_CALL_ID, "event_id", required=True)
        try:
            attempt = await dispatcher.redeliver(endpoint_id, event_id)
        except (ValueError, LookupError) as exc:
            raise _translate(exc) from None
        return pb.RedeliverWebhookEventResponse(attempt=self._attempt(attempt))
