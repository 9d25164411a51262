"""RecordingService: translates requests to the recording registry and back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar, cast

import grpc
from google.protobuf.message import Message

from callrec.api import auth, convert
from callrec.api.errors import unary
from callrec.api.forward import Forwarder
from callrec.core.errors import CallrecError, ErrorCode, InvalidArgument, RecordedElsewhere
from callrec.core.model import RecordingOptions
from callrec.core.recording_registry import RecordingRegistry
from callrec.core.recording_state import Recording
from callrec.security.redact import redact_text
from callrec.storage.address_policy import SETTING, DestinationRefused
from callrec.storage.outbox import Upload
from callrec.storage.resolver import StoreResolver
from callrec.v1 import recording_pb2 as pb
from callrec.v1 import recording_pb2_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["RecordingService"].full_name
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)


class _CarriesRecording(Protocol):
    """Pause, Resume and StopRecordingResponse: each carries the resource in its `recording` field."""

    @property
    def recording(self) -> pb.Recording: ...


async def check_storage(stores: StoreResolver, options: RecordingOptions) -> None:
    """Refuse a StartRecording whose storage the server may not use, before anything is created or stored.

    Why here, ahead of the registry: the check of an `external_storage` resolves its host (DNS), which
    must not run under the registry's lock, and a refused request must leave no recording, event or
    idempotency key behind. Codes: PERMISSION_DENIED when the operator's policy (`[storage.external]
    allow`, the address policy) refuses a well-formed destination: the request is fine, this server will
    not write there, and operators can tell such refusals (worth an alert: someone probing) from typos;
    INVALID_ARGUMENT when the request itself is wrong (an unknown target name, a malformed URL, an Azure
    URL without a SAS); UNAVAILABLE when the host did not resolve in time. Messages carry no credentials.
    """
    ext = options.external_storage
    if ext is None:
        name = options.destination
        if name and name not in stores.named:
            raise InvalidArgument(
                f"destination {redact_text(name)!r} is not a configured storage target (configured: "
                f"{', '.join(sorted(stores.named))}); `destination` takes the name of a [storage.targets.NAME], "
                f"a bucket or container of your own goes in `external_storage`, which the server accepts only "
                f"where the operator's `{SETTING}` lists it"
            )
        return
    try:
        await stores.check_external(ext.kind, ext.container_url)
    except DestinationRefused as exc:
        raise CallrecError(redact_text(str(exc)), ErrorCode.PERMISSION_DENIED) from None
    except ValueError as exc:
        raise InvalidArgument(redact_text(str(exc))) from None
    except TimeoutError as exc:
        raise CallrecError(redact_text(str(exc)), ErrorCode.UNAVAILABLE) from None


class RecordingServicer(recording_pb2_grpc.RecordingServiceServicer):
    """Control RPCs; every response carries the resource as `recording`.

    With `stores`, StartRecording checks the destination first (`check_storage`).
    """

    def __init__(
        self,
        registry: RecordingRegistry,
        uploads_of: Callable[[str], Awaitable[Sequence[Upload]]] | None = None,
        stores: StoreResolver | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.registry = registry
        self.uploads_of = uploads_of
        self.stores = stores
        self.forwarder = forwarder
        """Cluster mode: sends an RPC of a call another node owns on to that node (api/forward.py)."""

    async def _forward(self, context: grpc.aio.ServicerContext, method: str, request: M, response_type: type[R],
                       *, recording_id: str = "", server_call_id: str = "") -> R | None:
        """The owner node's answer when another live node records the recording (or owns the call);
        None when this node should answer (single node, no live owner elsewhere, or already forwarded)."""
        if self.forwarder is None or Forwarder.was_forwarded(context):
            return None
        locator = self.forwarder.locator
        node = await (locator.node_of_recording(recording_id) if recording_id else locator.node_of_call(server_call_id))
        if node is None:
            return None
        return await self.forwarder.unary(node, f"/{SERVICE}/{method}", request, response_type, context)

    async def _require_call_of(self, recording_id: str) -> None:
        """A call-limited token may only act on recordings of its calls (NOT_FOUND for unknown ids)."""
        if auth.call_limited():
            auth.require_call((await self.registry.get(recording_id)).server_call_id, f"recording {recording_id!r}")

    async def _control(self, context: grpc.aio.ServicerContext, method: str, request: M, recording_id: str,
                       response_type: type[R], action: Callable[[str], Awaitable[Recording]]) -> R:
        """Pause, resume or stop here, or, when another node records the recording, there (forwarded)."""
        await self._require_call_of(recording_id)
        try:
            rec = await action(recording_id)
        except RecordedElsewhere:
            forwarded = await self._forward(context, method, request, response_type, recording_id=recording_id)
            if forwarded is None:
                raise
            return forwarded
        response = response_type()
        cast(_CarriesRecording, response).recording.CopyFrom(await self._out(rec))
        return response

    async def _out(self, rec: Recording) -> pb.Recording:
        """The resource, with the upload progress of its files."""
        msg = convert.recording(rec)
        if self.uploads_of is not None:
            uploads = await self.uploads_of(rec.recording_id)
            status = msg.upload_status
            for upload in uploads:
                if upload.state == "pending":
                    status.pending_files += 1
                elif upload.state == "done":
                    status.stored_files += 1
                else:
                    status.failed_files += 1
                if upload.last_error:
                    status.last_error = upload.last_error
        return msg

    @unary
    async def StartRecording(
        self, request: pb.StartRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRecordingResponse:
        auth.require_call(request.server_call_id)
        options = convert.start_options(request)
        self.registry.check_request_sizes(request.server_call_id, options)  # before anything echoes a field
        if self.stores is not None:
            await check_storage(self.stores, options)
        if not self.registry.has_call(request.server_call_id):  # cluster mode: the call may be another node's
            forwarded = await self._forward(context, "StartRecording", request, pb.StartRecordingResponse,
                                            server_call_id=request.server_call_id)
            if forwarded is not None:
                return forwarded
        rec = await self.registry.start(request.server_call_id, options)
        return pb.StartRecordingResponse(recording=await self._out(rec))

    @unary
    async def GetRecordingState(
        self, request: pb.GetRecordingStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRecordingStateResponse:
        # Answered here whichever node records it: in cluster mode the recording's row and every node's
        # uploads are in the shared state, which the recording node writes before it answers any change. So
        # a control node (role = control) answers it on a loop that no call's media shares.
        await self._require_call_of(request.recording_id)
        return pb.GetRecordingStateResponse(recording=await self._out(await self.registry.get(request.recording_id)))

    @unary
    async def PauseRecording(
        self, request: pb.PauseRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseRecordingResponse:
        return await self._control(context, "PauseRecording", request, request.recording_id,
                                   pb.PauseRecordingResponse, self.registry.pause)

    @unary
    async def ResumeRecording(
        self, request: pb.ResumeRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeRecordingResponse:
        return await self._control(context, "ResumeRecording", request, request.recording_id,
                                   pb.ResumeRecordingResponse, self.registry.resume)

    @unary
    async def StopRecording(
        self, request: pb.StopRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopRecordingResponse:
        return await self._control(context, "StopRecording", request, request.recording_id,
                                   pb.StopRecordingResponse, self.registry.stop)

    @unary
    async def ListRecordings(
        self, request: pb.ListRecordingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordingsResponse:
        auth.require_call(request.server_call_id)
        recs, token = await self.registry.list(
            request.server_call_id, convert.state_filter(request.state), request.page_size, request.page_token
        )
        return pb.ListRecordingsResponse(recordings=[await self._out(r) for r in recs], next_page_token=token)
