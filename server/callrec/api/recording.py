"""RecordingService: translates requests to the recording registry and back."""

from __future__ import annotations

import grpc

from callrec.api import convert
from callrec.api.errors import unary
from callrec.core.recordings import RecordingRegistry
from callrec.v1 import recording_pb2 as pb
from callrec.v1 import recording_pb2_grpc


class RecordingServicer(recording_pb2_grpc.RecordingServiceServicer):
    """Control RPCs; every response carries the resource as `recording`."""

    def __init__(self, registry: RecordingRegistry) -> None:
        self.registry = registry

    @unary
    async def StartRecording(
        self, request: pb.StartRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRecordingResponse:
        rec = await self.registry.start(request.server_call_id, convert.start_options(request))
        return pb.StartRecordingResponse(recording=convert.recording(rec))

    @unary
    async def GetRecordingState(
        self, request: pb.GetRecordingStateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRecordingStateResponse:
        return pb.GetRecordingStateResponse(recording=convert.recording(self.registry.get(request.recording_id)))

    @unary
    async def PauseRecording(
        self, request: pb.PauseRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseRecordingResponse:
        rec = await self.registry.pause(request.recording_id)
        return pb.PauseRecordingResponse(recording=convert.recording(rec))

    @unary
    async def ResumeRecording(
        self, request: pb.ResumeRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeRecordingResponse:
        rec = await self.registry.resume(request.recording_id)
        return pb.ResumeRecordingResponse(recording=convert.recording(rec))

    @unary
    async def StopRecording(
        self, request: pb.StopRecordingRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopRecordingResponse:
        rec = await self.registry.stop(request.recording_id)
        return pb.StopRecordingResponse(recording=convert.recording(rec))

    @unary
    async def ListRecordings(
        self, request: pb.ListRecordingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordingsResponse:
        recs, token = self.registry.list(
            request.server_call_id, convert.state_filter(request.state), request.page_size, request.page_token
        )
        return pb.ListRecordingsResponse(recordings=[convert.recording(r) for r in recs], next_page_token=token)
