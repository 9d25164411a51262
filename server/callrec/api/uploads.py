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

    Cluster mode: every node's uploads are in PostgreSQL, so any node lists any recording's (and the
    whole cluster's); a retry is forwarded to the node whose spool holds the failed files.
    """

    def __init__(self, admin: UploadAdmin) -> None:
        self.admin = admin
        self.forwarder: Forwarder | None = None

    async def _holder(self, context: grpc.aio.ServicerContext, recording_id: str) -> NodeAddress | None:
        """Cluster mode: the node to retry on, when this one holds no failed upload of the recording: the
        files are in the spool of the node that wrote them (after a takeover, maybe not the one recording)."""
        if self.forwarder is None or not recording_id or Forwarder.was_forwarded(context):
            return None
        if await self.admin.has_failed_here(recording_id):
            return None
        return await self.forwarder.locator.node_with_failed_uploads(recording_id)

    @unary
    async def ListUploads(
        self, request: pb.ListUploadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUploadsResponse:
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
            return await self.forwarder.unary(holder, f"/{SERVICE}/RetryUploads", request,
                                              pb.RetryUploadsResponse, context)
        result = await self.admin.retry(request.recording_id)
        return pb.RetryUploadsResponse(
            uploads=[convert.upload(u) for u in result.retried],
            missing_uploads=[convert.upload(u) for u in result.missing],
        )
