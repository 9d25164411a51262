"""UploadService: translates requests to the upload admin (core) and back."""

from __future__ import annotations

import grpc

from callrec.api import convert
from callrec.api.errors import unary
from callrec.api.forward import Forwarder, NodeAddress
from callrec.core.upload_admin import UploadAdmin
from callrec.v1 import uploads_pb2 as pb
from callrec.v1 import uploads_pb2_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["UploadService"].full_name


class UploadServicer(uploads_pb2_grpc.UploadServiceServicer):
    """Shows the upload outbox and re-queues a recording's failed uploads.

    Cluster mode: each node's outbox holds the uploads of the recordings it records (their spool files
    are on its disk), so a request about one recording is forwarded to the node that records it; the
    list without a recording shows this node's outbox.
    """

    def __init__(self, admin: UploadAdmin) -> None:
        self.admin = admin
        self.forwarder: Forwarder | None = None

    async def _holder(self, context: grpc.aio.ServicerContext, recording_id: str) -> NodeAddress | None:
        if self.forwarder is None or not recording_id or Forwarder.was_forwarded(context):
            return None
        return await self.forwarder.locator.node_of_recording(recording_id)

    @unary
    async def ListUploads(
        self, request: pb.ListUploadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUploadsResponse:
        holder = await self._holder(context, request.recording_id)
        if holder is not None and self.forwarder is not None:
            forwarded = await self.forwarder.unary(holder, f"/{SERVICE}/ListUploads", request, pb.ListUploadsResponse,
                                                   context, unreachable_ok=True)
            if forwarded is not None:
                return forwarded
        uploads, token = await self.admin.list_uploads(
            convert.upload_state_filter(request.state), request.recording_id, request.page_size, request.page_token
        )
        return pb.ListUploadsResponse(uploads=[convert.upload(u) for u in uploads], next_page_token=token)

    @unary
    async def RetryUploads(
        self, request: pb.RetryUploadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RetryUploadsResponse:
        holder = await self._holder(context, request.recording_id)
        if holder is not None and self.forwarder is not None:
            forwarded = await self.forwarder.unary(holder, f"/{SERVICE}/RetryUploads", request,
                                                   pb.RetryUploadsResponse, context)
            assert forwarded is not None  # the holder's error is relayed (abort)
            return forwarded
        result = await self.admin.retry(request.recording_id)
        return pb.RetryUploadsResponse(
            uploads=[convert.upload(u) for u in result.retried],
            missing_uploads=[convert.upload(u) for u in result.missing],
        )
