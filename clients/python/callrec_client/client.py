"""Typed wrappers over the callrec.v1 stubs, so callers pass keywords instead of building messages.

Errors come back as `CallrecError` with the gRPC status code and the server's message.

Security (SPEC §5): `token=` sends `authorization: Bearer <token>` with every call the wrappers
make (also over plaintext, for a loopback server with `[auth]` but no TLS); `tls=TlsOptions(...)`
connects with TLS, trusting `ca_file` (default: the system's CAs) and, for mTLS, presenting
`cert_file` / `key_file`. Raw stub calls (`client.recordings.X(...)`) take `metadata=client.metadata`,
or `metadata=client.call_metadata(server_call_id)` to add the routing header.

Cluster mode (SPEC §8, `callrec_client.routing`): every call-scoped RPC also carries
`x-callrec-server-call-id` (`ROUTING_HEADER`) so the proxy sends it to the node owning the call.
The value comes from the request (`start_recording`, `list_recordings` / `subscribe_events` filtered
by call), from the `server_call_id=` keyword of the methods taking a recording id or a location,
or from `recording_calls`, the LRU map of `recording_id -> server_call_id` filled from every
`Recording` received. Unknown: no header (the node that gets the RPC forwards it to the owner).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
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
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from callrec_client.routing import DEFAULT_RECORDING_CACHE_SIZE, RecordingCalls, routing_metadata

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


def list_recordings_request(
    server_call_id: str = "", state: str | None = None, page_size: int = 0, page_token: str = ""
) -> recording_pb2.ListRecordingsRequest:
    """Build a ListRecordingsRequest; `state` "active", "inactive", "stopping", "completed", "failed" or None.

    An unknown `state` raises KeyError (the CLI turns it into a usage message).
    """
    return recording_pb2.ListRecordingsRequest(
        server_call_id=server_call_id,
        state=STATES[state] if state else recording_pb2.RECORDING_STATE_UNSPECIFIED,
        page_size=page_size,
        page_token=page_token,
    )


def add_webhook_request(url: str, secret: str = "", event_types: Sequence[str] = (), server_call_id: str = "",
                        schema: str = "") -> webhooks_pb2.AddWebhookRequest:
    """AddWebhookRequest; an empty `secret` makes the server generate one (returned once)."""
    return webhooks_pb2.AddWebhookRequest(url=url, secret=secret, event_types=list(event_types),
                                          server_call_id=server_call_id, schema=schema)


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

    `token` (a JWT from `callrec token create`) and `tls` as in the module docstring;
    `recording_calls` to share one recording -> call map between clients (default: a map of
    `DEFAULT_RECORDING_CACHE_SIZE` of its own).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        channel: grpc.aio.Channel | None = None,
        *,
        token: str = "",
        tls: TlsOptions | None = None,
        recording_calls: RecordingCalls | None = None,
    ) -> None:
        self.channel = channel or open_aio_channel(target, tls)
        self.metadata = auth_metadata(token)
        self.recording_calls = recording_calls if recording_calls is not None else RecordingCalls(
            DEFAULT_RECORDING_CACHE_SIZE)
        self.recordings = recording_pb2_grpc.RecordingServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.content = content_pb2_grpc.ContentServiceStub(self.channel)
        self.uploads = uploads_pb2_grpc.UploadServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)

    async def __aenter__(self) -> AsyncCallrecClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    def call_metadata(self, server_call_id: str = "") -> tuple[tuple[str, str], ...]:
        """The metadata of an RPC of `server_call_id`: the token and, for a known call, the routing header."""
        return self.metadata + routing_metadata(server_call_id)

    async def _call(self, method: Any, request: Any, server_call_id: str = "", timeout: float | None = 30.0) -> Any:
        try:
            return await method(request, timeout=timeout, metadata=self.call_metadata(server_call_id))
        except grpc.aio.AioRpcError as exc:
            raise _wrap(exc) from None

    async def _recording_call(self, method: Any, request: Any, server_call_id: str) -> recording_pb2.Recording:
        """A RecordingService RPC on `request.recording_id`, routed to its call; its call is remembered."""
        call = self.recording_calls.resolve(request.recording_id, server_call_id)
        rec: recording_pb2.Recording = (await self._call(method, request, call)).recording
        self.recording_calls.remember((rec,))
        return rec

    async def start_recording(self, server_call_id: str, **options: Any) -> recording_pb2.Recording:
        """Start recording a call; options as in `start_request`."""
        resp = await self._call(self.recordings.StartRecording, start_request(server_call_id, **options),
                                server_call_id)
        self.recording_calls.remember((resp.recording,))
        return resp.recording

    async def get_recording_state(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """The recording's current state; `server_call_id` (its call) routes it when the client does not know it."""
        req = recording_pb2.GetRecordingStateRequest(recording_id=recording_id)
        return await self._recording_call(self.recordings.GetRecordingState, req, server_call_id)

    async def pause_recording(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """Pause (no-op when paused); `server_call_id` as in `get_recording_state`."""
        req = recording_pb2.PauseRecordingRequest(recording_id=recording_id)
        return await self._recording_call(self.recordings.PauseRecording, req, server_call_id)

    async def resume_recording(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """Resume (no-op when active); `server_call_id` as in `get_recording_state`."""
        req = recording_pb2.ResumeRecordingRequest(recording_id=recording_id)
        return await self._recording_call(self.recordings.ResumeRecording, req, server_call_id)

    async def stop_recording(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """Stop (idempotent); `server_call_id` as in `get_recording_state`."""
        req = recording_pb2.StopRecordingRequest(recording_id=recording_id)
        return await self._recording_call(self.recordings.StopRecording, req, server_call_id)

    async def list_recordings(
        self, server_call_id: str = "", state: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> recording_pb2.ListRecordingsResponse:
        """One page of recordings, newest first (routed to the call when filtered by one)."""
        req = list_recordings_request(server_call_id, state, page_size, page_token)
        resp: recording_pb2.ListRecordingsResponse = await self._call(self.recordings.ListRecordings, req,
                                                                       server_call_id)
        self.recording_calls.remember(resp.recordings)
        return resp

    async def list_uploads(
        self, state: str | None = None, recording_id: str = "", page_size: int = 0, page_token: str = "", *,
        server_call_id: str = "",
    ) -> uploads_pb2.ListUploadsResponse:
        """One page of uploads, newest first; `state` "pending", "stored", "failed" or None (any).

        Routed to the recording's call (`server_call_id`, else the remembered one) when filtered by a recording.
        """
        req = list_uploads_request(state, recording_id, page_size, page_token)
        call = self.recording_calls.resolve(recording_id, server_call_id) if recording_id else ""
        return await self._call(self.uploads.ListUploads, req, call)

    async def retry_uploads(self, recording_id: str, *, server_call_id: str = "") -> uploads_pb2.RetryUploadsResponse:
        """Re-queue every failed upload of a recording (`uploads`; `missing_uploads` cannot be retried);
        `server_call_id` as in `get_recording_state`."""
        req = uploads_pb2.RetryUploadsRequest(recording_id=recording_id)
        call = self.recording_calls.resolve(recording_id, server_call_id)
        return await self._call(self.uploads.RetryUploads, req, call)

    async def add_webhook(self, url: str, secret: str = "", event_types: Sequence[str] = (),
                          server_call_id: str = "", schema: str = "") -> webhooks_pb2.AddWebhookResponse:
        """Add a webhook endpoint (admin); see `add_webhook_request`."""
        req = add_webhook_request(url, secret, event_types, server_call_id, schema)
        return await self._call(self.webhooks.AddWebhook, req, timeout=90.0)  # an Event Grid handshake may be slow

    async def webhook_admin(self, rpc: str, request: Any) -> Any:
        """Any other WebhookService RPC by name (`ListWebhooks`, `RemoveWebhook`, `EnableWebhook`,
        `ListWebhookDeliveries`, `RedeliverWebhookEvent`) with its request message."""
        return await self._call(getattr(self.webhooks, rpc), request, timeout=90.0)

    async def subscribe_events(self, **filters: Any) -> AsyncGenerator[events_pb2.Event, None]:
        """Events as they happen; filters as in `subscribe_request` (routed to the call when filtered by one).
        Cancel the iteration to stop."""
        req = subscribe_request(**filters)
        call = self.events.SubscribeEvents(req, metadata=self.call_metadata(req.server_call_id))
        try:
            async for resp in call:
                yield resp.event
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _wrap(exc) from None
        finally:
            call.cancel()

    async def download(
        self, location: str, offset: int = 0, length: int = 0, *, server_call_id: str = ""
    ) -> AsyncIterator[content_pb2.DownloadContentResponse]:
        """Pieces of a stored file; `server_call_id` (the recording's call) routes it to the node holding it."""
        req = content_pb2.DownloadContentRequest(location=location, offset=offset, length=length)
        try:
            async for piece in self.content.DownloadContent(req, metadata=self.call_metadata(server_call_id)):
                yield piece
        except grpc.aio.AioRpcError as exc:
            raise _wrap(exc) from None

    async def delete(self, location: str, *, server_call_id: str = "") -> content_pb2.DeleteContentResponse:
        """Delete a chunk by its deleteLocation; `server_call_id` as in `download`."""
        return await self._call(self.content.DeleteContent, content_pb2.DeleteContentRequest(location=location),
                                server_call_id)


class CallrecClient:
    """Blocking client with the same methods (and `token` / `tls` / `recording_calls`) as AsyncCallrecClient."""

    def __init__(
        self, target: str = DEFAULT_TARGET, timeout: float = 30.0, *, token: str = "", tls: TlsOptions | None = None,
        recording_calls: RecordingCalls | None = None,
    ) -> None:
        self.channel = open_channel(target, tls)
        self.metadata = auth_metadata(token)
        self.recording_calls = recording_calls if recording_calls is not None else RecordingCalls(
            DEFAULT_RECORDING_CACHE_SIZE)
        self.timeout = timeout
        self.recordings = recording_pb2_grpc.RecordingServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.content = content_pb2_grpc.ContentServiceStub(self.channel)
        self.uploads = uploads_pb2_grpc.UploadServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)

    def __enter__(self) -> CallrecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def call_metadata(self, server_call_id: str = "") -> tuple[tuple[str, str], ...]:
        """The metadata of an RPC of `server_call_id`: the token and, for a known call, the routing header."""
        return self.metadata + routing_metadata(server_call_id)

    def _call(self, method: Any, request: Any, server_call_id: str = "") -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self.call_metadata(server_call_id))
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    def _recording_call(self, method: Any, request: Any, server_call_id: str) -> recording_pb2.Recording:
        """A RecordingService RPC on `request.recording_id`, routed to its call; its call is remembered."""
        call = self.recording_calls.resolve(request.recording_id, server_call_id)
        rec: recording_pb2.Recording = self._call(method, request, call).recording
        self.recording_calls.remember((rec,))
        return rec

    def start_recording(self, server_call_id: str, **options: Any) -> recording_pb2.Recording:
        """Start recording a call; options as in `start_request`."""
        rec: recording_pb2.Recording = self._call(
            self.recordings.StartRecording, start_request(server_call_id, **options), server_call_id).recording
        self.recording_calls.remember((rec,))
        return rec

    def get_recording_state(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """The recording's current state; `server_call_id` (its call) routes it when the client does not know it."""
        req = recording_pb2.GetRecordingStateRequest(recording_id=recording_id)
        return self._recording_call(self.recordings.GetRecordingState, req, server_call_id)

    def pause_recording(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """Pause (no-op when paused); `server_call_id` as in `get_recording_state`."""
        req = recording_pb2.PauseRecordingRequest(recording_id=recording_id)
        return self._recording_call(self.recordings.PauseRecording, req, server_call_id)

    def resume_recording(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """Resume (no-op when active); `server_call_id` as in `get_recording_state`."""
        req = recording_pb2.ResumeRecordingRequest(recording_id=recording_id)
        return self._recording_call(self.recordings.ResumeRecording, req, server_call_id)

    def stop_recording(self, recording_id: str, *, server_call_id: str = "") -> recording_pb2.Recording:
        """Stop (idempotent); `server_call_id` as in `get_recording_state`."""
        req = recording_pb2.StopRecordingRequest(recording_id=recording_id)
        return self._recording_call(self.recordings.StopRecording, req, server_call_id)

    def list_recordings(
        self, server_call_id: str = "", state: str | None = None, page_size: int = 0, page_token: str = ""
    ) -> recording_pb2.ListRecordingsResponse:
        """One page of recordings, newest first (routed to the call when filtered by one)."""
        req = list_recordings_request(server_call_id, state, page_size, page_token)
        resp: recording_pb2.ListRecordingsResponse = self._call(self.recordings.ListRecordings, req, server_call_id)
        self.recording_calls.remember(resp.recordings)
        return resp

    def list_uploads(
        self, state: str | None = None, recording_id: str = "", page_size: int = 0, page_token: str = "", *,
        server_call_id: str = "",
    ) -> uploads_pb2.ListUploadsResponse:
        """One page of uploads, newest first; `state` "pending", "stored", "failed" or None (any).

        Routed to the recording's call (`server_call_id`, else the remembered one) when filtered by a recording.
        """
        call = self.recording_calls.resolve(recording_id, server_call_id) if recording_id else ""
        return self._call(self.uploads.ListUploads, list_uploads_request(state, recording_id, page_size, page_token),
                          call)

    def retry_uploads(self, recording_id: str, *, server_call_id: str = "") -> uploads_pb2.RetryUploadsResponse:
        """Re-queue every failed upload of a recording (`uploads`; `missing_uploads` cannot be retried);
        `server_call_id` as in `get_recording_state`."""
        call = self.recording_calls.resolve(recording_id, server_call_id)
        return self._call(self.uploads.RetryUploads, uploads_pb2.RetryUploadsRequest(recording_id=recording_id),
                          call)

    def add_webhook(self, url: str, secret: str = "", event_types: Sequence[str] = (), server_call_id: str = "",
                    schema: str = "") -> webhooks_pb2.AddWebhookResponse:
        """Add a webhook endpoint (admin); see `add_webhook_request`."""
        return self._call(self.webhooks.AddWebhook, add_webhook_request(url, secret, event_types, server_call_id,
                                                                        schema))

    def webhook_admin(self, rpc: str, request: Any) -> Any:
        """Any other WebhookService RPC by name (`ListWebhooks`, `RemoveWebhook`, `EnableWebhook`,
        `ListWebhookDeliveries`, `RedeliverWebhookEvent`) with its request message."""
        return self._call(getattr(self.webhooks, rpc), request)

    def subscribe_events(self, **filters: Any) -> Iterator[events_pb2.Event]:
        """Events as they happen (blocking iterator); filters as in `subscribe_request` (routed to the call
        when filtered by one)."""
        req = subscribe_request(**filters)
        call = self.events.SubscribeEvents(req, metadata=self.call_metadata(req.server_call_id))
        try:
            for resp in call:
                yield resp.event
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _wrap(exc) from None
        finally:
            call.cancel()

    def download(
        self, location: str, offset: int = 0, length: int = 0, *, server_call_id: str = ""
    ) -> Iterator[content_pb2.DownloadContentResponse]:
        """Pieces of a stored file; `server_call_id` (the recording's call) routes it to the node holding it."""
        req = content_pb2.DownloadContentRequest(location=location, offset=offset, length=length)
        try:
            yield from self.content.DownloadContent(req, timeout=None, metadata=self.call_metadata(server_call_id))
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    def delete(self, location: str, *, server_call_id: str = "") -> content_pb2.DeleteContentResponse:
        """Delete a chunk by its deleteLocation; `server_call_id` as in `download`."""
        return self._call(self.content.DeleteContent, content_pb2.DeleteContentRequest(location=location),
                          server_call_id)
