"""UploadService: translates requests to the upload admin (core) and back."""

from __future__ import annotations

import grpc

from callrec.api import convert
from callrec.api.errors import unary
from callrec.core.upload_admin import UploadAdmin
from callrec.v1 import uploads_pb2 as pb
from callrec.v1 import uploads_pb2_grpc


class UploadServicer(uploads_pb2_grpc.UploadServiceServicer):
    """Shows the upload outbox and re-queues a recording's failed uploads."""

    def __init__(self, admin: UploadAdmin) -> None:
        self.admin = admin

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
        result = await self.admin.retry(request.recording_id)
        return pb.RetryUploadsResponse(
            uploads=[convert.upload(u) for u in result.retried],
            missing_uploads=[convert.upload(u) for u in result.missing],
        )
