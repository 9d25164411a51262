"""Typed wrappers over the callrec.v1 stubs, so callers pass keywords instead of building messages.

Errors come back as `CallrecError` with the gRPC status code and the server's message.

Security (SPEC §5): `token=` sends `authorization: Bearer <token>` with every call the wrappers
make (also over plaintext, for a loopback server with `[auth]` but no TLS); `tls=TlsOptions(...)`
connects with TLS, trusting `ca_file` (default: the system's CAs) and, for mTLS, presenting
`cert_file` / `key_file`. Raw stub calls (`client.recordings.X(...)`) take `metadata=client.metadata`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from callrec.v1 import (
    content_pb2,
    content_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    recording_pb2,
    recording_pb2_grpc,
    uploads_pb2,
    uploads_pb2_grpc,
)

DEFAULT_TARGET = "127.0.0.1:50051"

CONTENT_TYPES = {"audio": recording_pb2.RECORDING_CONTENT_TYPE_AUDIO,
                 "audio_video": recording_pb2.RECORDING_CONTENT_TYPE_AUDIO_VIDEO}
CHANNEL_TYPES = {"mixed": recording_pb2.RECORDING_CHANNEL_TYPE_MIXED,
                 "unmixed": recording_pb2.RECORDING_CHANNEL_TYPE_UNMIXED}
FORMATS = {"wav": recording_pb2.RECORDING_FORMAT_WAV, "mp3": recording_pb2.RECORDING_FORMAT_MP3,
           "mp4": recording_pb2.RECORDING_FORMAT_MP4}
PAUSE_MODES = {"skip": recording_pb2.PAUSE_MODE_SKIP, "silence": recording_pb2.PAUSE_MODE_SILENCE}
STATES = {
    "active": recording_pb2.RECORDING_STATE_ACTIVE,
    "inactive": recording_pb2.RECORDING_STATE_INACTIVE,
    "stopping": recording_pb2.RECORDING_STATE_STOPPING,
    "completed": recording_pb2.RECORDING_STATE_COMPLETED,
    "failed": recording_pb2.RECORDING_STATE_FAILED,
}
UPLOAD_STATES = {
    "pending": uploads_pb2.UPLOAD_STATE_PENDING,
    "stored": uploads_pb2.UPLOAD_STATE_STORED,
    "failed": uploads_pb2.UPLOAD_STATE_FAILED,
}


class CallrecError(Exception):
    """An RPC failed; `code` is the gRPC status, `details` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _wrap(exc: grpc.RpcError) -> CallrecError:
    return CallrecError(exc.code(), exc.details() or "")


@dataclass(frozen=True)
class TlsOptions:
    """How a client speaks TLS to the server: which CA to trust and, under mTLS, its own certificate."""

    ca_file: Path | None = None
    """PEM bundle of the CA(s) that signed the server's certificate; None: the system's trusted CAs."""
    cert_file: Path | None = None
    """PEM certificate the client presents when the server asks for one (mTLS); with `key_file`."""
    key_file: Path | None = None
    """Unencrypted PEM private key of `cert_file`."""

    @staticmethod
    def _read(path: Path, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{what} {path} cannot be read: {exc.strerror}") from None

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; ValueError naming a file that cannot be read or a lone cert/key."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("--tls-cert and --tls-key go together: the client certificate and its private key")
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca_file, "--tls-ca") if self.ca_file else None,
            private_key=self._read(self.key_file, "--tls-key") if self.key_file else None,
            certificate_chain=self._read(self.cert_file, "--tls-cert") if self.cert_file else None,
        )


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The `authorization: Bearer <token>` metadata of a call (empty without a token)."""
    token = token.strip()
    return (("authorization", f"Bearer {token}"),) if token else ()


def open_channel(target: str, tls: TlsOptions | None = None) -> grpc.Channel:
    """A blocking channel to `target`: TLS when `tls` is given, else plaintext."""
    return grpc.secure_channel(target, tls.credentials()) if tls else grpc.insecure_channel(target)


def open_aio_channel(target: str, tls: TlsOptions | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `target`: TLS when `tls` is given, else plaintext."""
    return grpc.aio.secure_channel(target, tls.credentials()) if tls else grpc.aio.insecure_channel(target)


def start_request(
    server_call_id: str,
    *,
    content_type: str | None = None,
    channel_type: str | None = None,
    format: str | None = None,
    pause_on_start: bool = False,
    pause_mode: str | None = None,
    destination: str = "",
    chunk_max_duration: timedelta | None = None,
    chunk_max_bytes: int = 0,
    request_id: str = "",
    unmixed_max_channels: int = 0,
    audio_channel_participant_ordering: Iterable[str] = (),
    channel_affinity: dict[str, int] | None = None,
    operation_context: str = "",
) -> recording_pb2.StartRecordingRequest:
    """Build a StartRecordingRequest from plain values ("audio", "mixed", "wav", ...)."""
    req = recording_pb2.StartRecordingRequest(
        server_call_id=server_call_id,
        pause_on_start=pause_on_start,
        destination=destination,
        chunk_max_bytes=chunk_max_bytes,
        request_id=request_id,
        unmixed_max_channels=unmixed_max_channels,
        audio_channel_participant_ordering=list(audio_channel_participant_ordering),
        operation_context=operation_context,
    )
    for value, table, field in (
        (content_type, CONTENT_TYPES, "content_type"),
        (channel_type, CHANNEL_TYPES, "channel_type"),
        (format, FORMATS, "format"),
        (pause_mode, PAUSE_MODES, "pause_mode"),
    ):
        if value is not None:
            if value not in table:
                raise ValueError(f"{field} must be one of {', '.join(table)}; got {value!r}")
            setattr(req, field, table[value])
    if chunk_max_duration is not None:
        d = duration_pb2.Duration()
        d.FromTimedelta(chunk_max_duration)
        req.chunk_max_duration.CopyFrom(d)
    for pid, channel in (channel_affinity or {}).items():
        req.channel_affinity.add(channel=channel, participant_id=pid)
    return req


def list_uploads_request(
    state: str | None = None, recording_id: str = "", page_size: int = 0, page_token: str = ""
) -> uploads_pb2.ListUploadsRequest:
    """Build a ListUploadsRequest; `state` is "pending", "stored", "failed" or None (any)."""
    if state is not None and state not in UPLOAD_STATES:
        raise ValueError(f"state must be one of {', '.join(UPLOAD_STATES)}; got {state!r}")
    return uploads_pb2.ListUploadsRequest(
        state=UPLOAD_STATES[state] if state else uploads_pb2.UPLOAD_STATE_UNSPECIFIED,
        recording_id=recording_id,
        page_size=page_size,
        page_token=page_token,
    )


def subscribe_request(
    event_types: Iterable[str] = (),
    server_call_id: str = "",
    recording_id: str = "",
    after_sequence: int | None = None,
    from_oldest: bool = False,
) -> events_pb2.SubscribeEventsRequest:
    """Build a SubscribeEventsRequest."""
    req = events_pb2.SubscribeEventsRequest(
        event_types=list(event_types), server_call_id=server_call_id, recording_id=recording_id,
        from_oldest=from_oldest,
    )
    if after_sequence is not None:
        req.after_sequence = after_sequence
    return req


class AsyncCallrecClient:
    """asyncio client: `async with AsyncCallrecClient("127.0.0.1:50051") as c: await c.start_recording(...)`.

    `token` (a JWT from `callrec token create`) and `tls` as in the module docstring.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        channel: grpc.aio.Channel | None = None,
        *,
        token: str = "",
        tls: TlsOptions | None = None,
    ) -> None:
        self.channel = channel or open_aio_channel(target, tls)
        self.metadata = auth_metadata(token)
        self.recordings = recording_pb2_grpc.RecordingServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.content = content_pb2_grpc.ContentServiceStub(self.channel)
        self.uploads = uploads_pb2_grpc.UploadServiceStub(self.channel)

    async def __aenter__(self) -> AsyncCallrecClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None = 30.0) -> Any:
        try:
            return await method(request, timeout=timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise _wrap(exc) from None

    async def start_recording(self, server_call_id: str, **options: Any) -> recording_pb2.Recording:
        """Start recording a call; options as in `start_request`."""
        resp = await self._call(self.recordings.StartRecording, start_request(server_call_id, **options))
        return resp.recording

    async def get_recording_state(self, recording_id: str) -> recording_pb2.Recording:
        """The recording's current state."""
        req = recording_pb2.GetRecordingStateRequest(recording_id=recording_id)
        return (await self._call(self.recordings.GetRecordingState, req)).recording

    async def pause_recording(self, recording_id: str) -> recording_pb2.Recording:
        """Pause (no-op when paused)."""
        req = recording_pb2.PauseRecordingRequest(recording_id=recording_id)
        return (await self._call(self.recordings.PauseRecording, req)).recording

    async def resume_recording(self, recording_id: str) -> recording_pb2.Recording:
        """Resume (no-op when active)."""
        req = recording_pb2.ResumeRecordingRequest(recording_id=recording_id)
        return (await self._call(self.recordings.ResumeRecording, req)).recording

    async def stop_recording(self, recording_id: str) -> recording_pb2.Recording:
        """Stop (idempotent)."""
        req = recording_pb2.StopRecordingRequest(recording_id=recording_id)
        return (await self._call(self.recordings.StopRecording, req)).recording

    async def list_recordings(
        self, server_call_id: str = "", state: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> recording_pb2.ListRecordingsResponse:
        """One page of recordings, newest first."""
        req = recording_pb2.ListRecordingsRequest(
            server_call_id=server_call_id,
            state=STATES[state] if state else recording_pb2.RECORDING_STATE_UNSPECIFIED,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call(self.recordings.ListRecordings, req)

    async def list_uploads(
        self, state: str | None = None, recording_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> uploads_pb2.ListUploadsResponse:
        """One page of uploads, newest first; `state` "pending", "stored", "failed" or None (any)."""
        req = list_uploads_request(state, recording_id, page_size, page_token)
        return await self._call(self.uploads.ListUploads, req)

    async def retry_uploads(self, recording_id: str) -> uploads_pb2.RetryUploadsResponse:
        """Re-queue every failed upload of a recording (`uploads`; `missing_uploads` cannot be retried)."""
        req = uploads_pb2.RetryUploadsRequest(recording_id=recording_id)
        return await self._call(self.uploads.RetryUploads, req)

    async def subscribe_events(self, **filters: Any) -> AsyncGenerator[events_pb2.Event, None]:
        """Events as they happen; filters as in `subscribe_request`. Cancel the iteration to stop."""
        call = self.events.SubscribeEvents(subscribe_request(**filters), metadata=self.metadata)
        try:
            async for resp in call:
                yield resp.event
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _wrap(exc) from None
        finally:
            call.cancel()

    async def download(
        self, location: str, offset: int = 0, length: int = 0
    ) -> AsyncIterator[content_pb2.DownloadContentResponse]:
        """Pieces of a stored file."""
        req = content_pb2.DownloadContentRequest(location=location, offset=offset, length=length)
        try:
            async for piece in self.content.DownloadContent(req, metadata=self.metadata):
                yield piece
        except grpc.aio.AioRpcError as exc:
            raise _wrap(exc) from None

    async def delete(self, location: str) -> content_pb2.DeleteContentResponse:
        """Delete a chunk by its deleteLocation."""
        return await self._call(self.content.DeleteContent, content_pb2.DeleteContentRequest(location=location))


class CallrecClient:
    """Blocking client with the same methods (and `token` / `tls`) as AsyncCallrecClient."""

    def __init__(
        self, target: str = DEFAULT_TARGET, timeout: float = 30.0, *, token: str = "", tls: TlsOptions | None = None
    ) -> None:
        self.channel = open_channel(target, tls)
        self.metadata = auth_metadata(token)
        self.timeout = timeout
        self.recordings = recording_pb2_grpc.RecordingServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.content = content_pb2_grpc.ContentServiceStub(self.channel)
        self.uploads = uploads_pb2_grpc.UploadServiceStub(self.channel)

    def __enter__(self) -> CallrecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    def start_recording(self, server_call_id: str, **options: Any) -> recording_pb2.Recording:
        """Start recording a call; options as in `start_request`."""
        return self._call(self.recordings.StartRecording, start_request(server_call_id, **options)).recording

    def get_recording_state(self, recording_id: str) -> recording_pb2.Recording:
        """The recording's current state."""
        req = recording_pb2.GetRecordingStateRequest(recording_id=recording_id)
        return self._call(self.recordings.GetRecordingState, req).recording

    def pause_recording(self, recording_id: str) -> recording_pb2.Recording:
        """Pause (no-op when paused)."""
        req = recording_pb2.PauseRecordingRequest(recording_id=recording_id)
        return self._call(self.recordings.PauseRecording, req).recording

    def resume_recording(self, recording_id: str) -> recording_pb2.Recording:
        """Resume (no-op when active)."""
        req = recording_pb2.ResumeRecordingRequest(recording_id=recording_id)
        return self._call(self.recordings.ResumeRecording, req).recording

    def stop_recording(self, recording_id: str) -> recording_pb2.Recording:
        """Stop (idempotent)."""
        req = recording_pb2.StopRecordingRequest(recording_id=recording_id)
        return self._call(self.recordings.StopRecording, req).recording

    def list_recordings(
        self, server_call_id: str = "", state: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> recording_pb2.ListRecordingsResponse:
        """One page of recordings, newest first."""
        req = recording_pb2.ListRecordingsRequest(
            server_call_id=server_call_id,
            state=STATES[state] if state else recording_pb2.RECORDING_STATE_UNSPECIFIED,
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self.recordings.ListRecordings, req)

    def list_uploads(
        self, state: str | None = None, recording_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> uploads_pb2.ListUploadsResponse:
        """One page of uploads, newest first; `state` "pending", "stored", "failed" or None (any)."""
        return self._call(self.uploads.ListUploads, list_uploads_request(state, recording_id, page_size, page_token))

    def retry_uploads(self, recording_id: str) -> uploads_pb2.RetryUploadsResponse:
        """Re-queue every failed upload of a recording (`uploads`; `missing_uploads` cannot be retried)."""
        return self._call(self.uploads.RetryUploads, uploads_pb2.RetryUploadsRequest(recording_id=recording_id))

    def subscribe_events(self, **filters: Any) -> Iterator[events_pb2.Event]:
        """Events as they happen (blocking iterator); filters as in `subscribe_request`."""
        call = self.events.SubscribeEvents(subscribe_request(**filters), metadata=self.metadata)
        try:
            for resp in call:
                yield resp.event
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _wrap(exc) from None
        finally:
            call.cancel()

    def download(
        self, location: str, offset: int = 0, length: int = 0
    ) -> Iterator[content_pb2.DownloadContentResponse]:
        """Pieces of a stored file."""
        req = content_pb2.DownloadContentRequest(location=location, offset=offset, length=length)
        try:
            yield from self.content.DownloadContent(req, timeout=None, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    def delete(self, location: str) -> content_pb2.DeleteContentResponse:
        """Delete a chunk by its deleteLocation."""
        return self._call(self.content.DeleteContent, content_pb2.DeleteContentRequest(location=location))
