"""A MediaService that only counts: the far end for measuring the load generator alone (row 9).

It also answers `GetRecordingState` with one canned recording and nothing else: a gRPC server with callrec's
protos, uvloop and no callrec code, for row 1d to probe beside the real server at the same moments (how long
any server built on grpc.aio takes to answer on this machine under this load: the floor under row 1d).

    python -m bench.null_sink

listens on a free loopback port, prints `{"event": "ready", "port": N}` on stdout and serves until
SIGTERM or EOF on stdin. Of the media service it implements `StreamMedia` alone: `open` is answered with
`opened`, `join` registers a participant, every frame of `audio`, `video` and `media_batch` is counted
per participant (received, highest sequence), an `ack` with every participant goes back at least
once a second and once more when `end` arrives, and then the stream ends.

Why it exists: the real server cannot take the 1000 participants the load generator must show it
can drive, so a capacity figure against it measures the server. This sink decodes nothing, buffers
nothing and records nothing, so what is left is the generator's own cost (and the sink's gRPC
receive path, measured beside it). It is not a stand-in for the server anywhere else: it checks
nothing a real server checks besides `open` coming first.

Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterable

import grpc

import bench  # noqa: F401  (sys.path)
from callrec.v1 import media_pb2 as pb
from callrec.v1 import media_pb2_grpc, recording_pb2_grpc
from callrec.v1 import recording_pb2 as rpb

ACK_INTERVAL_S = 1.0
#: Frames of a participant never joined on the stream are counted under this reason, not dropped.
UNKNOWN = "unknown_participant"


class Counters:
    """What one participant's frames added up to: the figures of its `ParticipantAck`."""

    __slots__ = ("joined", "last_audio", "last_video", "received", "rejected")

    def __init__(self, joined: bool) -> None:
        self.joined = joined  # False: frames arrived for a participant never joined (counted as UNKNOWN)
        self.received = 0
        self.last_audio = 0
        self.last_video = 0
        self.rejected = 0


class Stream:
    """One gateway stream's participants and their counters."""

    def __init__(self) -> None:
        self.participants: dict[str, Counters] = {}

    def join(self, participant_id: str) -> None:
        counters = self.participants.setdefault(participant_id, Counters(True))
        counters.joined = True

    def _reject(self, participant_id: str) -> None:
        """A frame of a participant that never joined: counted, so the ack still adds up to what was sent."""
        self.participants.setdefault(participant_id, Counters(False)).rejected += 1

    def count_audio(self, frames: Iterable[pb.AudioFrame]) -> None:
        """Count audio frames into the highest audio sequence."""
        self._count(frames, "last_audio")

    def count_video(self, frames: Iterable[pb.VideoFrame]) -> None:
        """Count video frames into the highest video sequence."""
        self._count(frames, "last_video")

    def _count(self, frames: Iterable[pb.AudioFrame] | Iterable[pb.VideoFrame], last: str) -> None:
        """Per frame one dict lookup and two counter updates, nothing else."""
        participants = self.participants
        for frame in frames:
            c = participants.get(frame.participant_id)
            if c is None or not c.joined:
                self._reject(frame.participant_id)
                continue
            c.received += 1
            if frame.sequence > getattr(c, last):
                setattr(c, last, frame.sequence)

    def handle(self, request: pb.StreamMediaRequest) -> bool:
        """Apply one request; True when it was `end`. `leave` changes nothing: counters stay in the acks."""
        kind = request.WhichOneof("message")
        if kind == "media_batch":
            self.count_audio(request.media_batch.audio)
            self.count_video(request.media_batch.video)
        elif kind == "audio":
            self.count_audio((request.audio,))
        elif kind == "video":
            self.count_video((request.video,))
        elif kind == "join":
            self.join(request.join.participant_id)
        return kind == "end"

    def ack(self) -> pb.StreamMediaResponse:
        """Every participant's counters, as the server's `ack` carries them."""
        return pb.StreamMediaResponse(ack=pb.MediaAck(participants=[
            pb.ParticipantAck(participant_id=pid, received=c.received, last_audio_sequence=c.last_audio,
                              last_video_sequence=c.last_video,
                              rejected_by_reason={UNKNOWN: c.rejected} if c.rejected else {})
            for pid, c in self.participants.items()
        ]))


async def _read(requests: AsyncIterator[pb.StreamMediaRequest], stream: Stream) -> None:
    """Count requests until `end` or the gateway's half-close."""
    async for request in requests:
        if stream.handle(request):
            return


class NullSink(media_pb2_grpc.MediaServiceServicer):
    """`StreamMedia` that counts and acknowledges, nothing more."""

    async def StreamMedia(  # the generated servicer's name
        self, request_iterator: AsyncIterator[pb.StreamMediaRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamMediaResponse]:
        requests = request_iterator.__aiter__()
        first = await anext(requests, None)
        if first is None or first.WhichOneof("message") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be `open`")
            return
        yield pb.StreamMediaResponse(opened=pb.StreamOpened(server_call_id=first.open.server_call_id,
                                                            call_connection_id=str(uuid.uuid4())))
        stream = Stream()
        reader = asyncio.ensure_future(_read(requests, stream))
        try:
            while True:  # an ack a second; the one after `end` (or half-close) is the last
                done, _ = await asyncio.wait({reader}, timeout=ACK_INTERVAL_S)
                yield stream.ack()
                if done:
                    reader.result()  # a broken stream raises here
                    return
        finally:
            reader.cancel()


def canned_recording(participants: int = 10) -> rpb.Recording:
    """A recording of a 10-person call as callrec answers it mid-call: about the same bytes on the wire."""
    rec = rpb.Recording(recording_id="null-sink-recording", server_call_id="null-sink-call", call_id="null-sink-call",
                        state=rpb.RECORDING_STATE_ACTIVE, content_type=rpb.RECORDING_CONTENT_TYPE_AUDIO,
                        channel_type=rpb.RECORDING_CHANNEL_TYPE_MIXED, format=rpb.RECORDING_FORMAT_MP3,
                        pause_mode=rpb.PAUSE_MODE_SKIP, destination="local")
    rec.start_time.GetCurrentTime()
    for n in range(participants):
        rec.participants.add(participant_id=f"p{n + 1}")
    return rec


class NullRecording(recording_pb2_grpc.RecordingServiceServicer):
    """`GetRecordingState` answered from one canned message, whatever the id (the other RPCs: UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.response = rpb.GetRecordingStateResponse(recording=canned_recording())

    async def GetRecordingState(  # the generated servicer's name
        self, request: rpb.GetRecordingStateRequest, context: grpc.aio.ServicerContext
    ) -> rpb.GetRecordingStateResponse:
        return self.response


async def _watch_stdin(stop: asyncio.Event) -> None:
    """Set `stop` at EOF on stdin (the parent went away or closed it); no-op if stdin is not a pipe."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):  # a regular file: only signals stop us
        return
    while await reader.read(4096):
        pass
    stop.set()


async def main() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    media_pb2_grpc.add_MediaServiceServicer_to_server(NullSink(), server)
    recording_pb2_grpc.add_RecordingServiceServicer_to_server(NullRecording(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(_watch_stdin(stop))
    print(json.dumps({"event": "ready", "port": port}), flush=True)
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await server.stop(grace=1.0)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main())
