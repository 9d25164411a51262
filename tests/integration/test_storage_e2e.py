"""Recordings end to end into real S3 (moto) and Azure Blob (Azurite) stores, through `callrec serve`.

For each backend: a server configured by a TOML file; a recording sent to a named target
(`destination`) and one to the default target; bring-your-own-storage (`external_storage`) where the
operator's `[storage.external]` policy allows it (SPEC §5; what it refuses: `test_byos_lockdown.py`). What is
checked against the store itself (boto3 / azure SDK, not the server):
- the objects are exactly `{prefix}/{YYYYMMDD}/{callId}/{recordingId[:8]}-{unique}/{i}-audio.wav` and
  `{i}-metadata.json` (SPEC §3), nothing else;
- their bytes equal what DownloadContent returns, the audio decodes to the tone that was sent and the
  metadata validates and names the chunk;
- the event's (and the resource's) locations are the store's own URLs, without credentials;
- DeleteContent removes both objects of a chunk, after which the locations are NOT_FOUND.

The helpers here (`Bucket`, `write_config`, `stream_call`, `check_stored`, ...) are shared with
`test_outbox_outages.py`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import grpc
import pytest

from callrec.testing import decode_file, dominant_frequencies, interleave
from callrec.v1 import events_pb2 as epb
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.client import start_request
from callrec_client.gateway import GatewayConnection
from tests.harness import unique
from tests.integration.audio_recording import FILE_STATUS, Speaker, download, frames_of
from tests.integration.storage_servers import TEST_BUCKET, TEST_CONTAINER, AzuriteServer, MotoServer
from tests.integration.test_recording_service import wait_state

FAILED_EVENT = "Microsoft.Communication.StartRecordingFailed"
TONE_HZ = 440.0
CALL_SECONDS = 3.0
CHUNK_SECONDS = 2  # a 3 s call gives two chunks: 0 (2 s, ChunkMaximumSizeExceeded) and 1 (1 s, SessionEnded)
RATE = 16_000


# --------------------------------------------------------------------------------------- the stores
@dataclass
class Bucket:
    """The test bucket (moto) or container (Azurite), read directly with the vendor SDK."""

    kind: str  # "s3" | "azure_blob"
    server: MotoServer | AzuriteServer

    def target(self, prefix: str, *, endpoint_port: int | None = None, **extra: Any) -> dict[str, Any]:
        """A storage target table under `prefix`; `endpoint_port` points it at another loopback port."""
        if isinstance(self.server, MotoServer):
            config = self.server.target(prefix=prefix, **extra)
            if endpoint_port is not None:
                config["endpoint_url"] = f"http://127.0.0.1:{endpoint_port}"
            return config
        config = self.server.target(prefix=prefix, **extra)
        if endpoint_port is not None:
            config["connection_string"] = self.server.connection_string.replace(
                f"127.0.0.1:{self.server.port}/", f"127.0.0.1:{endpoint_port}/"
            )
        return config

    def account_url(self, endpoint_port: int | None = None) -> str:
        assert isinstance(self.server, AzuriteServer)
        return f"http://127.0.0.1:{endpoint_port or self.server.port}/{self.server.account}"

    def location(self, name: str, endpoint_port: int | None = None) -> str:
        """The store's own URL of an object (what events must announce)."""
        if self.kind == "s3":
            return f"s3://{TEST_BUCKET}/{quote(name)}"
        return f"{self.account_url(endpoint_port)}/{TEST_CONTAINER}/{quote(name)}"

    def names(self, prefix: str) -> list[str]:
        """Every object name under `prefix/`, sorted."""
        if isinstance(self.server, MotoServer):
            pages = (
                self.server.client().get_paginator("list_objects_v2").paginate(Bucket=TEST_BUCKET, Prefix=prefix + "/")
            )
            return sorted(item["Key"] for page in pages for item in page.get("Contents", []))
        with self._container() as container:
            return sorted(blob.name for blob in container.list_blobs(name_starts_with=prefix + "/"))

    def read(self, name: str) -> bytes:
        if isinstance(self.server, MotoServer):
            return self.server.client().get_object(Bucket=TEST_BUCKET, Key=name)["Body"].read()
        with self._container() as container:
            return container.download_blob(name).readall()

    def content_type(self, name: str) -> str:
        if isinstance(self.server, MotoServer):
            return self.server.client().head_object(Bucket=TEST_BUCKET, Key=name)["ContentType"]
        with self._container() as container:
            return container.get_blob_client(name).get_blob_properties().content_settings.content_type

    def _container(self) -> Any:
        from azure.storage.blob import ContainerClient

        assert isinstance(self.server, AzuriteServer)
        return ContainerClient.from_connection_string(self.server.connection_string, TEST_CONTAINER)

    def sas_container_url(self, prefix: str) -> str:
        """`http://127.0.0.1:PORT/devstoreaccount1/callrec-test/<prefix>?<container SAS>` (rwdl, 1 h)."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        assert isinstance(self.server, AzuriteServer)
        sas = generate_container_sas(
            self.server.account,
            TEST_CONTAINER,
            account_key=self.server.account_key,
            permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        return f"{self.account_url()}/{TEST_CONTAINER}/{prefix}?{sas}"


def bucket_for(request: pytest.FixtureRequest) -> Bucket:
    """The `Bucket` of a fixture parametrized with "s3" / "azure_blob" (starting its server on first use)."""
    if request.param == "s3":
        return Bucket("s3", request.getfixturevalue("moto_server"))
    return Bucket("azure_blob", request.getfixturevalue("azurite_server"))


@pytest.fixture(params=["s3", "azure_blob"])
def bucket(request: pytest.FixtureRequest) -> Bucket:
    """Each test using it runs once against moto and once against Azurite."""
    return bucket_for(request)


def new_prefix(tag: str) -> str:
    return f"e2e-{tag}-{uuid.uuid4().hex[:10]}"


def isolated_aws_env(**values: str) -> dict[str, str]:
    """AWS settings for a server process that must not see the host's AWS files or instance metadata."""
    return {
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        **values,
    }


def moto_env(moto: MotoServer) -> dict[str, str]:
    """The standard AWS environment of a server that uploads to moto through the default chain."""
    return isolated_aws_env(
        AWS_ACCESS_KEY_ID=moto.access_key_id,
        AWS_SECRET_ACCESS_KEY=moto.secret_access_key,
        AWS_DEFAULT_REGION=moto.region,
        AWS_ENDPOINT_URL_S3=moto.endpoint_url,
    )


# --------------------------------------------------------------------------------------- the server
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes


def write_config(
    path: Path,
    targets: dict[str, dict[str, Any]],
    default: str | None = None,
    external: dict[str, Any] | None = None,
) -> Path:
    """A `callrec serve --config` file with `[storage]` targets (SPEC §5 shape) and, when given, the
    bring-your-own-storage policy: `external = {"allow": [...], "s3": [{...}, ...]}` becomes
    `[storage.external] allow = [...]` and one `[[storage.external.s3]]` table per entry."""
    lines = ["[storage]"]
    if default:
        lines.append(f"default = {_toml_value(default)}")
    for name, table in targets.items():
        lines += ["", f"[storage.targets.{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items() if value not in ("", None)]
    if external is not None:
        lines += ["", "[storage.external]", f"allow = {_toml_value(list(external.get('allow', [])))}"]
        for grant in external.get("s3", []):
            lines += ["", "[[storage.external.s3]]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in grant.items() if value not in ("", None)]
    path.write_text("\n".join(lines) + "\n")
    return path


def moto_grant(moto: MotoServer, **extra: Any) -> dict[str, Any]:
    """A `[[storage.external.s3]]` entry for the test bucket on moto, with moto's keys."""
    return {
        "endpoint_url": moto.endpoint_url,
        "bucket": TEST_BUCKET,
        "region": moto.region,
        "access_key_id": moto.access_key_id,
        "secret_access_key": moto.secret_access_key,
        **extra,
    }


def azurite_allow(azurite: AzuriteServer) -> str:
    """The `[storage.external] allow` entry for the test container on Azurite (loopback, so listed exactly)."""
    return f"127.0.0.1:{azurite.port}/{azurite.account}/{TEST_CONTAINER}"


def server_args(config: Path | None = None, *extra: str) -> tuple[str, ...]:
    return ("--clock", "media", *(("--config", str(config)) if config else ()), *extra)


# ----------------------------------------------------------------------------------------- the call
async def stream_call(
    target: str,
    *,
    destination: str = "",
    external: tuple[int, str] | None = None,
    end: bool = True,
) -> pb.Recording:
    """Open a call with one 440 Hz speaker, start a wav recording (2 s chunks), send 3 s, end the call.

    Returns the recording as StartRecording answered; does not wait for it to complete.
    `external` is `(ExternalStorageKind, container_url)` for bring-your-own-storage.
    """
    call_id = unique("st")
    speaker = Speaker("alice", TONE_HZ, seconds=CALL_SECONDS)
    request = start_request(
        call_id,
        content_type="audio",
        format="wav",
        destination=destination,
        chunk_max_duration=timedelta(seconds=CHUNK_SECONDS),
    )
    if external is not None:
        request.external_storage.kind, request.external_storage.container_url = external
    async with AsyncCallrecClient(target) as client, GatewayConnection(target, call_id, gateway_id="gw") as gw:
        f = speaker.audio_format
        await gw.join(
            speaker.participant_id, "Alice", audio=f.encoding.value, sample_rate=f.sample_rate, channels=f.channels
        )
        rec = (await client.recordings.StartRecording(request, timeout=30)).recording
        for frame in interleave(frames_of([speaker])):
            await gw.audio(frame.participant_id, frame.sequence, frame.timestamp_us, frame.data)
        if end:
            await gw.end()
    return rec


async def events_of(client: AsyncCallrecClient, recording_id: str, settle: float = 1.0) -> list[epb.Event]:
    """Every retained event of a recording: read from the oldest until none arrives for `settle` s."""
    out: list[epb.Event] = []
    stream = client.subscribe_events(recording_id=recording_id, from_oldest=True).__aiter__()
    try:
        while True:
            try:
                out.append(await asyncio.wait_for(stream.__anext__(), settle))
            except (TimeoutError, StopAsyncIteration):
                return out
    finally:
        await stream.aclose()


def event_types(events: list[epb.Event]) -> list[str]:
    return [e.event_type.rsplit(".", 1)[-1] for e in events]


# ------------------------------------------------------------------------------------- the checks
SESSION = re.compile(r"^[A-Za-z0-9._-]+-[A-Za-z0-9._-]+$")


def expected_directory(prefix: str, rec: pb.Recording, names: list[str]) -> str:
    """The one session directory of `names`, checked against SPEC §3 for this recording."""
    directories = {name.rsplit("/", 1)[0] for name in names}
    assert len(directories) == 1, f"one recording, one directory; got {sorted(directories)}"
    (directory,) = directories
    day = rec.start_time.ToDatetime(tzinfo=UTC).strftime("%Y%m%d")
    head = f"{prefix}/{day}/{rec.call_id}/"
    assert directory.startswith(head), f"{directory!r} is not under {head!r}"
    session = directory[len(head) :]
    assert "/" not in session and SESSION.match(session), session
    assert session.startswith(rec.recording_id[:8] + "-"), (session, rec.recording_id)
    return directory


async def check_stored(
    client: AsyncCallrecClient,
    bucket: Bucket,
    prefix: str,
    done: pb.Recording,
    tmp: Path,
    validate_json: Callable[[str, object], None],
    *,
    endpoint_port: int | None = None,
) -> list[str]:
    """The COMPLETED recording's chunks are in the store under SPEC §3 names, byte-exact; returns the names."""
    assert done.state == pb.RECORDING_STATE_COMPLETED, done
    names = bucket.names(prefix)
    directory = expected_directory(prefix, done, names)
    count = len(done.chunks)
    assert count == 2, [c.index for c in done.chunks]
    assert names == sorted(f"{directory}/{i}-{what}" for i in range(count) for what in ("audio.wav", "metadata.json"))
    assert [c.end_reason for c in done.chunks] == ["ChunkMaximumSizeExceeded", "SessionEnded"]

    samples = 0
    for chunk in done.chunks:
        media, metadata = f"{directory}/{chunk.index}-audio.wav", f"{directory}/{chunk.index}-metadata.json"
        # the locations are the store's own URLs, never carrying credentials
        assert chunk.content_location == bucket.location(media, endpoint_port)
        assert chunk.metadata_location == bucket.location(metadata, endpoint_port)
        assert chunk.delete_location.startswith(bucket.location(directory, endpoint_port) + "/")
        for loc in (chunk.content_location, chunk.metadata_location, chunk.delete_location):
            assert "sig=" not in loc and "AccountKey" not in loc
        # byte-exact: the object as the SDK reads it = what ContentService serves
        stored_media = bucket.read(media)
        assert await download(client, chunk.content_location) == stored_media
        ranged = await download(client, chunk.content_location, 100, 1000)
        assert ranged == stored_media[100:1100]
        stored_meta = bucket.read(metadata)
        assert await download(client, chunk.metadata_location) == stored_meta
        assert bucket.content_type(metadata) == "application/json"
        # the audio is what was sent: a 440 Hz tone, 16 kHz mono s16le
        path = tmp / f"{done.recording_id[-8:]}-{chunk.index}.wav"
        path.write_bytes(stored_media)
        audio = decode_file(path)
        assert (audio.sample_rate, audio.channels, audio.codec) == (RATE, 1, "pcm_s16le")
        middle = audio.channel(0)[len(audio.samples) // 4 : 3 * len(audio.samples) // 4]
        assert abs(dominant_frequencies(middle, RATE)[0] - TONE_HZ) < 10
        samples += len(audio.samples)
        # the metadata names this chunk
        meta = json.loads(stored_meta)
        validate_json("recording-chunk-metadata", meta)
        assert (meta["chunkDocumentId"], meta["chunkIndex"], meta["callId"]) == (
            chunk.document_id,
            chunk.index,
            done.call_id,
        )
        assert abs(meta["chunkDuration"] - 1000 * len(audio.samples) / RATE) <= 20
    assert abs(samples / RATE - CALL_SECONDS) <= 0.05
    return names


async def file_status_event(client: AsyncCallrecClient, done: pb.Recording, validate_json) -> dict:
    """The recording's one RecordingFileStatusUpdated event; its chunks are the resource's chunks."""
    events = await events_of(client, done.recording_id, settle=0.5)
    files = [e for e in events if e.event_type == FILE_STATUS]
    assert len(files) == 1, event_types(events)
    doc = json.loads(files[0].json)
    validate_json("recording-file-status-updated", doc)
    chunks = doc["data"]["recordingStorageInfo"]["recordingChunks"]
    assert [
        (c["documentId"], c["index"], c["endReason"], c["contentLocation"], c["metadataLocation"], c["deleteLocation"])
        for c in chunks
    ] == [
        (c.document_id, c.index, c.end_reason, c.content_location, c.metadata_location, c.delete_location)
        for c in done.chunks
    ]
    return doc


async def check_delete(client: AsyncCallrecClient, bucket: Bucket, prefix: str, done: pb.Recording) -> None:
    """DeleteContent by each chunk's deleteLocation removes its media and metadata objects."""
    for chunk in done.chunks:
        response = await client.delete(chunk.delete_location)
        assert list(response.deleted_locations) == [chunk.content_location, chunk.metadata_location]
        for loc in (chunk.content_location, chunk.metadata_location):
            with pytest.raises(CallrecError) as info:
                await download(client, loc)
            assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert bucket.names(prefix) == []
    with pytest.raises(CallrecError) as info:
        await client.delete(done.chunks[0].delete_location)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


# ----------------------------------------------------------------------------------------- tests
async def test_named_and_default_targets_store_spec_names_byte_exact(
    bucket: Bucket, make_server, tmp_path, validate_json
):
    """TOML `[storage]`: `default = "archive"` and a second target `named`, both on the backend.

    For S3 the default target has no keys in the file: the server takes them from the standard AWS
    environment (`AWS_ACCESS_KEY_ID`...), the named one carries its own.
    """
    default_prefix, named_prefix = new_prefix("default"), new_prefix("named")
    archive = bucket.target(default_prefix)
    env: dict[str, str] | None = None
    if bucket.kind == "s3":
        assert isinstance(bucket.server, MotoServer)
        archive = {k: v for k, v in archive.items() if k not in ("access_key_id", "secret_access_key")}
        env = isolated_aws_env(
            AWS_ACCESS_KEY_ID=bucket.server.access_key_id, AWS_SECRET_ACCESS_KEY=bucket.server.secret_access_key
        )
    config = write_config(
        tmp_path / "callrec.toml", {"archive": archive, "named": bucket.target(named_prefix)}, default="archive"
    )
    srv = make_server(*server_args(config), env=env)
    async with AsyncCallrecClient(srv.target) as client:
        to_named = await stream_call(srv.target, destination="named")
        to_default = await stream_call(srv.target)
        assert (to_named.destination, to_default.destination) == ("named", "archive")
        stored = {}
        for rec, prefix in ((to_named, named_prefix), (to_default, default_prefix)):
            done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
            stored[prefix] = await check_stored(client, bucket, prefix, done, tmp_path, validate_json)
            await file_status_event(client, done, validate_json)
            status = done.upload_status
            assert (status.stored_files, status.pending_files, status.failed_files) == (4, 0, 0)
        # nothing of either recording went anywhere else (e.g. the local store)
        assert not any((srv.data_dir / "recordings").rglob("*.wav"))
        spool = srv.data_dir / "spool"
        assert not [p for p in spool.rglob("*") if p.is_file()], "the spool copies are removed once stored"
        await check_delete(client, bucket, named_prefix, await client.get_recording_state(to_named.recording_id))
        assert bucket.names(default_prefix) == stored[default_prefix]  # the other recording is untouched


EXTERNAL_CASES = ["s3-url", "s3-endpoint-path-style", "s3-credentials-from-target", "azure-sas"]


@pytest.mark.parametrize("case", EXTERNAL_CASES)
async def test_bring_your_own_storage(case, request, make_server, tmp_path, validate_json):
    """`external_storage {kind, container_url}` where the operator's `[storage.external]` allows it: S3
    through a `[[storage.external.s3]]` entry (its own keys, or `credentials_from` a configured target), as
    an `s3://` URL or the endpoint's path-style URL; Azure through an allowed container URL with a SAS.

    The server has no AWS credentials in its environment: an S3 upload can only use the entry's keys.
    """
    prefix = new_prefix("byos")
    env = isolated_aws_env()
    if case.startswith("s3"):
        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = Bucket("s3", moto)
        if case == "s3-credentials-from-target":
            targets = {"mine": moto.target(prefix=new_prefix("mine"))}
            grant = moto_grant(moto, access_key_id="", secret_access_key="", credentials_from="mine")
        else:
            targets, grant = {}, moto_grant(moto)
        config = write_config(tmp_path / "callrec.toml", targets, external={"s3": [grant]})
        srv = make_server(*server_args(config), env=env)
        url = f"s3://{TEST_BUCKET}/{prefix}" if case == "s3-url" else f"{moto.endpoint_url}/{TEST_BUCKET}/{prefix}"
        external = (pb.EXTERNAL_STORAGE_KIND_S3, url)
    else:
        azurite: AzuriteServer = request.getfixturevalue("azurite_server")
        bucket = Bucket("azure_blob", azurite)
        config = write_config(tmp_path / "callrec.toml", {}, external={"allow": [azurite_allow(azurite)]})
        srv = make_server(*server_args(config), env=env)
        url = bucket.sas_container_url(prefix)
        external = (pb.EXTERNAL_STORAGE_KIND_AZURE_BLOB, url)
    async with AsyncCallrecClient(srv.target) as client:
        rec = await stream_call(srv.target, external=external)
        assert rec.external_storage.kind == external[0]
        assert "sig=" not in rec.external_storage.container_url, "the SAS must be redacted"
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
        await check_stored(client, bucket, prefix, done, tmp_path, validate_json)
        doc = await file_status_event(client, done, validate_json)
        assert "sig=" not in json.dumps(doc)
        await check_delete(client, bucket, prefix, done)
    if case == "azure-sas":  # the SAS is nowhere in what operators read either
        signature = parse_qs(urlsplit(url).query)["sig"][0]
        assert signature not in srv.log_text() and quote(signature, safe="") not in srv.log_text()


async def test_bring_your_own_storage_refuses_a_bad_container_url_at_start(make_server, azurite_server, tmp_path):
    """An allowed container URL the server cannot use (no SAS) is refused by StartRecording, naming the
    problem; without `[storage.external]` any external_storage is refused, naming the setting."""
    config = write_config(tmp_path / "callrec.toml", {}, external={"allow": [azurite_allow(azurite_server)]})
    srv = make_server(*server_args(config))
    call_id = unique("bad")
    async with AsyncCallrecClient(srv.target) as client, GatewayConnection(srv.target, call_id) as gw:
        request = start_request(call_id, content_type="audio", format="wav")
        request.external_storage.kind = pb.EXTERNAL_STORAGE_KIND_AZURE_BLOB
        request.external_storage.container_url = f"{azurite_server.account_url}/{TEST_CONTAINER}"  # no SAS
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.recordings.StartRecording(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "SAS" in (info.value.details() or "")
        recordings = await client.recordings.ListRecordings(pb.ListRecordingsRequest(server_call_id=call_id))
        assert list(recordings.recordings) == [], "a refused start leaves no recording behind"
        await gw.end()


async def test_bring_your_own_storage_is_off_by_default(make_server, azurite_server):
    """No `[storage.external]`: an allowed-looking, valid container URL is PERMISSION_DENIED."""
    srv = make_server(*server_args())
    call_id = unique("off")
    bucket = Bucket("azure_blob", azurite_server)
    async with AsyncCallrecClient(srv.target) as client, GatewayConnection(srv.target, call_id) as gw:
        request = start_request(call_id, content_type="audio", format="wav")
        request.external_storage.kind = pb.EXTERNAL_STORAGE_KIND_AZURE_BLOB
        request.external_storage.container_url = bucket.sas_container_url(new_prefix("off"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.recordings.StartRecording(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "[storage.external] allow" in (info.value.details() or "")
        assert "sig=" not in (info.value.details() or "")
        await gw.end()
