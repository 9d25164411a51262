"""RecordingService: translates requests to the recording registry and back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from callrec.api import convert
from callrec.api.errors import unary
from callrec.core.recording_registry import RecordingRegistry
from callrec.core.recording_state import Recording
from callrec.storage.outbox import Upload
from callrec.v1 import recording_pb2 as pb
from callrec.v1 import recording_pb2_grpc


class RecordingServicer(recording_pb2_grpc.RecordingServiceServicer):
    """Control RPCs; every response carries the resource as `recording`."""

    def __init__(
        self, registry: RecordingRegistry, uploads_of: Callable[[str], Sequence[Upload]] | None = None
    ) -> None:
        self.registry = registry
        self.uploads_of = uploads_of

    def _out(self, rec: Recording) -> pb.Recording:
        """The resource, with the upload progress of its files."""
        msg = convert.recording(rec)
        if self.uploads_of is not None:
            uploads = self.uploads_of(rec.recording_id)
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
        rec = await self.registry.start(request.server_call_id, convert.start_options(request))
        return pb.StartRecordingResponse(recording=self._out(rec))

    @unary
    async def GetRecordingState(
        self, request: pb.GetRecordingStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRecordingStateResponse:
        return pb.GetRecordingStateResponse(recording=self._out(self.registry.get(request.recording_id)))

    @unary
    async def PauseRecording(
        self, request: pb.PauseRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseRecordingResponse:
        rec = await self.registry.pause(request.recording_id)
        return pb.PauseRecordingResponse(recording=self._out(rec))

    @unary
    async def ResumeRecording(
        self, request: pb.ResumeRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeRecordingResponse:
        rec = await self.registry.resume(request.recording_id)
        return pb.ResumeRecordingResponse(recording=self._out(rec))

    @unary
    async def StopRecording(
        self, request: pb.StopRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopRecordingResponse:
        rec = await self.registry.stop(request.recording_id)
        return pb.StopRecordingResponse(recording=self._out(rec))

    @unary
    async def ListRecordings(
        self, request: pb.ListRecordingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordingsResponse:
        recs, token = self.registry.list(
            request.server_call_id, convert.state_filter(request.state), request.page_size, request.page_token
        )
        return pb.ListRecordingsResponse(recordings=[self._out(r) for r in recs], next_page_token=token)
