"""A media gateway's side of MediaService.StreamMedia, for tests, `gateway-sim` and integrators.

`async with GatewayConnection(target, "call-1", gateway_id="gw-1") as gw:` opens the
stream and waits for `opened`; `join`, `audio`, `video`, `batch`, `leave` queue messages;
`end` finishes the call for this gateway. A gateway with several participants sends a tick
of all of them in one `batch` (one message costs the server ~0.1 ms of CPU before any work):

    await gw.batch(audio=[gw.audio_frame("alice", seq, ts, a), gw.audio_frame("bob", seq, ts, b)])
 Responses (acks, warnings,
recording_state) are collected in `responses` and can be awaited with `next_response`.
With `[auth]` on the server, pass a gateway (or admin) `token`; `tls` as in `callrec_client.client`.

The stream carries the `x-callrec-server-call-id` routing header (cluster mode, SPEC §8): gRPC sends
metadata when the stream is created, before `open`, so the call id is a constructor argument and a
proxy hashing on the header routes every stream of the call to the node that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc

from callrec.v1 import media_pb2 as pb
from callrec.v1 import media_pb2_grpc
from callrec_client.client import CallrecError, TlsOptions, auth_metadata, open_aio_channel
from callrec_client.routing import routing_metadata

AUDIO_ENCODINGS = {"pcm16le": pb.AUDIO_ENCODING_PCM16LE, "pcmu": pb.AUDIO_ENCODING_PCMU,
                   "pcma": pb.AUDIO_ENCODING_PCMA, "opus": pb.AUDIO_ENCODING_OPUS}
VIDEO_ENCODINGS = {"i420": pb.VIDEO_ENCODING_I420, "h264": pb.VIDEO_ENCODING_H264, "vp8": pb.VIDEO_ENCODING_VP8}


class GatewayConnection:
    """One StreamMedia stream carrying one call's participants."""

    def __init__(
        self,
        target: str,
        server_call_id: str,
        gateway_id: str = "gateway-1",
        call_id: str = "",
        channel: grpc.aio.Channel | None = None,
        queue_size: int = 500,
        *,
        token: str = "",
        tls: TlsOptions | None = None,
    ) -> None:
        self._own_channel = channel is None
        self.channel = channel or open_aio_channel(target, tls)
        # the token and the routing header: sent once, when `open()` creates the stream
        self.metadata = auth_metadata(token) + routing_metadata(server_call_id)
        self.stub = media_pb2_grpc.MediaServiceStub(self.channel)
        self.server_call_id = server_call_id
        self.gateway_id = gateway_id
        self.call_id = call_id
        self._requests: asyncio.Queue[pb.StreamMediaRequest | None] = asyncio.Queue(queue_size)  # None: half-close
        self.responses: list[pb.StreamMediaResponse] = []
        self._new: asyncio.Queue[pb.StreamMediaResponse] = asyncio.Queue()
        self._call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self.opened: pb.StreamOpened | None = None
        self.error: CallrecError | None = None
        self.closed = asyncio.Event()

    async def _request_stream(self) -> AsyncIterator[pb.StreamMediaRequest]:
        while True:
            item = await self._requests.get()
            if item is None:
                return
            yield item

    async def _read(self) -> None:
        assert self._call is not None
        try:
            async for resp in self._call:
                self.responses.append(resp)
                await self._new.put(resp)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = CallrecError(exc.code(), exc.details() or "")
        finally:
            self.closed.set()

    async def open(self, send_open: bool = True) -> None:
        """Start the stream; with `send_open`, send `open` and wait for `opened`."""
        self._call = self.stub.StreamMedia(self._request_stream(), metadata=self.metadata)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        if send_open:
            await self.send(pb.StreamMediaRequest(open=pb.StreamOpen(
                server_call_id=self.server_call_id, call_id=self.call_id, gateway_id=self.gateway_id)))
            resp = await self.next_response("opened")
            self.opened = resp.opened

    async def __aenter__(self) -> GatewayConnection:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        """Requests `send` queued that gRPC has not taken yet: it grows when this process cannot write as fast as
        it sends (its event loop is too busy). A server that reads slowly shows late, not here: gRPC takes
        the writes into its own buffers first (measured: a server 10 s behind, this queue under 40 ms), so
        watch the `ack` counters and the `late` warnings for that.
        """
        return self._requests.qsize()

    async def send(self, request: pb.StreamMediaRequest) -> None:
        """Queue one request (waits when the queue is full: back-pressure).

        Raises the stream's error (or EOFError) once the stream has ended, so a gateway
        notices a server that went away and can re-open its calls.
        """
        if self.closed.is_set() and self._call is not None:
            if self.error is not None:
                raise self.error
            raise EOFError("the stream ended")
        await self._requests.put(request)

    async def next_response(self, kind: str | None = None, timeout: float = 10.0) -> pb.StreamMediaResponse:
        """The next response (of `kind` if given); CallrecError if the stream failed first."""
        async def wait() -> pb.StreamMediaResponse:
            while True:
                getter = asyncio.ensure_future(self._new.get())
                closed = asyncio.ensure_future(self.closed.wait())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    closed.cancel()
                    resp = getter.result()
                    if kind is None or resp.WhichOneof("message") == kind:
                        return resp
                    continue
                getter.cancel()
                if self.error is not None:
                    raise self.error
                raise EOFError("the stream ended")

        return await asyncio.wait_for(wait(), timeout)

    async def join(
        self,
        participant_id: str,
        display_name: str = "",
        audio: str | None = "pcm16le",
        sample_rate: int = 16000,
        channels: int = 1,
        video: str | None = None,
        width: int = 0,
        height: int = 0,
    ) -> None:
        """A participant enters."""
        join = pb.ParticipantJoin(participant_id=participant_id, display_name=display_name or participant_id)
        if audio is not None:
            join.audio_format.CopyFrom(pb.AudioFormat(encoding=AUDIO_ENCODINGS[audio], sample_rate=sample_rate,
                                                      channels=channels))
        if video is not None:
            join.video_format.CopyFrom(pb.VideoFormat(encoding=VIDEO_ENCODINGS[video], width=width, height=height))
        await self.send(pb.StreamMediaRequest(join=join))

    async def audio(self, participant_id: str, sequence: int, timestamp_us: int, data: bytes) -> None:
        """One audio frame."""
        await self.send(pb.StreamMediaRequest(audio=pb.AudioFrame(
            participant_id=participant_id, sequence=sequence, timestamp_us=timestamp_us, data=data)))

    async def video(
        self, participant_id: str, sequence: int, timestamp_us: int, data: bytes, width: int, height: int,
        keyframe: bool = False,
    ) -> None:
        """One video frame."""
        await self.send(pb.StreamMediaRequest(video=pb.VideoFrame(
            participant_id=participant_id, sequence=sequence, timestamp_us=timestamp_us, data=data,
            width=width, height=height, keyframe=keyframe)))

    @staticmethod
    def audio_frame(participant_id: str, sequence: int, timestamp_us: int, data: bytes) -> pb.AudioFrame:
        """An audio frame for `batch`."""
        return pb.AudioFrame(participant_id=participant_id, sequence=sequence, timestamp_us=timestamp_us, data=data)

    @staticmethod
    def video_frame(
        participant_id: str, sequence: int, timestamp_us: int, data: bytes, width: int, height: int,
        keyframe: bool = False,
    ) -> pb.VideoFrame:
        """A video frame for `batch`."""
        return pb.VideoFrame(participant_id=participant_id, sequence=sequence, timestamp_us=timestamp_us, data=data,
                             width=width, height=height, keyframe=keyframe)

    async def batch(self, audio: Sequence[pb.AudioFrame] = (), video: Sequence[pb.VideoFrame] = ()) -> None:
        """Frames of any participants in one `media_batch` message (at most the server's
        `max_batch_frames`, 256 by default); each is handled as if sent alone, audio first.

        A message costs the server about 0.1 ms of CPU whatever it holds: send a tick of every
        participant per batch, or several ticks of a small call (`gateway-sim --batch-ms`)."""
        await self.send(pb.StreamMediaRequest(media_batch=pb.MediaBatch(audio=audio, video=video)))

    async def leave(self, participant_id: str) -> None:
        """A participant leaves."""
        await self.send(pb.StreamMediaRequest(leave=pb.ParticipantLeave(participant_id=participant_id)))

    async def end(self, reason: str = "hangup", timeout: float = 30.0) -> None:
        """End the call for this gateway and wait until the server closed the stream."""
        await self.send(pb.StreamMediaRequest(end=pb.StreamEnd(reason=reason)))
        await self._requests.put(None)
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def break_connection(self) -> None:
        """Drop the stream without `end` (as a crashed gateway would)."""
        if self._call is not None:
            self._call.cancel()
        await self.closed.wait()

    async def close(self) -> None:
        """Half-close (if not done) and release the channel."""
        # Always end the request iterator: after a server crash gRPC's task that reads it would
        # otherwise stay parked in `get()` and be destroyed pending when the channel closes.
        with contextlib.suppress(asyncio.QueueFull):
            self._requests.put_nowait(None)
        if not self.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), 5)
        await asyncio.sleep(0)
        if self._reader is not None:
            self._reader.cancel()
        if self._own_channel:
            await self.channel.close()
