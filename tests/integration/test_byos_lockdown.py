"""Bring-your-own-storage cannot be turned against the server (SPEC §5), through a real `callrec serve`.

A raw TCP listener on a loopback port counts every connection and byte it receives. The server has real
S3 credentials: a moto target with keys in the config file, and the same keys in its AWS environment
with `AWS_ENDPOINT_URL_S3` pointing at the listener (so any S3 client built from the default chain would
knock on it). Then clients send every `external_storage` / `destination` we could think of that points
at the listener (http/https, names and address spellings of loopback, Azure URLs with and without a SAS,
target strings smuggled into `destination`) and download/delete locations pointing at it: each is refused
at StartRecording (PERMISSION_DENIED or INVALID_ARGUMENT, no credentials in the message), and the
listener gets no connection and no byte, with bring-your-own-storage off and with a permissive policy
(`allow = ["*", ...]`) under which an allowed destination does work.

And ContentService serves only what the server announced: an object put straight into the configured
target's bucket (next to a real recording's files) can be neither downloaded nor deleted (NOT_FOUND, the
object stays).

All traffic stays on loopback: the listener, moto and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest

from callrec.storage.base import PermissionDenied
from callrec.storage.external import ExternalPolicy
from callrec.v1 import recording_pb2 as pb
from callrec_client import AsyncCallrecClient, CallrecError
from callrec_client.client import start_request
from callrec_client.gateway import GatewayConnection
from tests.harness import unique
from tests.integration.audio_recording import download
from tests.integration.storage_servers import TEST_BUCKET, TEST_CONTAINER, AzuriteServer, MotoServer
from tests.integration.test_recording_service import wait_state
from tests.integration.test_storage_e2e import (
    Bucket,
    isolated_aws_env,
    moto_grant,
    new_prefix,
    server_args,
    stream_call,
    write_config,
)

SIGNATURE = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
SAS = f"sv=2024-08-04&sr=c&sp=rwdl&se=2030-01-01T00%3A00%3A00Z&sig={SIGNATURE}"
S3 = pb.EXTERNAL_STORAGE_KIND_S3
AZURE = pb.EXTERNAL_STORAGE_KIND_AZURE_BLOB
REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)


@dataclass
class Listener:
    """A TCP server on loopback (IPv4, and IPv6 on the same port when available) that counts what it gets."""

    port: int = 0
    ipv6: bool = False
    connections: int = 0
    received: int = 0
    peers: list[str] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.peers.append(str(writer.get_extra_info("peername")))
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                self.received += len(data)
        writer.close()

    async def start(self) -> Listener:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._servers.append(server)
        with contextlib.suppress(OSError):
            self._servers.append(await asyncio.start_server(self._handle, "::1", self.port, family=socket.AF_INET6))
            self.ipv6 = True
        return self

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    trap = await Listener().start()
    try:
        # the trap works: a probe is counted (then forgotten), so the zero counts asserted later mean something
        _, writer = await asyncio.open_connection("127.0.0.1", trap.port)
        writer.write(b"probe")
        await writer.drain()
        writer.close()
        for _ in range(100):
            if trap.received == 5:
                break
            await asyncio.sleep(0.01)
        assert (trap.connections, trap.received) == (1, 5)
        trap.connections, trap.received, trap.peers = 0, 0, []
        yield trap
    finally:
        await trap.close()


def attacks(port: int, ipv6: bool) -> list[tuple[str, int | str, str]]:
    """(name, kind or "destination", value): every way we know to point the server at the listener."""
    cases: list[tuple[str, int | str, str]] = [
        ("s3 http endpoint", S3, f"http://127.0.0.1:{port}/{TEST_BUCKET}/p"),
        ("s3 https endpoint", S3, f"https://127.0.0.1:{port}/{TEST_BUCKET}/p"),
        ("s3 other bucket", S3, f"http://127.0.0.1:{port}/other/p"),
        ("s3 localhost", S3, f"http://localhost:{port}/{TEST_BUCKET}/p"),
        ("s3 integer address", S3, f"http://2130706433:{port}/{TEST_BUCKET}/p"),
        ("s3 user-info", S3, f"http://user:pw@127.0.0.1:{port}/{TEST_BUCKET}/p"),
        ("s3 signed query", S3, f"http://127.0.0.1:{port}/{TEST_BUCKET}/p?X-Amz-Signature=abc"),
        ("s3 url of an unknown bucket", S3, "s3://not-a-granted-bucket/p"),
        ("azure with sas", AZURE, f"http://127.0.0.1:{port}/devstoreaccount1/c/p?{SAS}"),
        ("azure without sas", AZURE, f"http://127.0.0.1:{port}/devstoreaccount1/c/p"),
        ("azure https with sas", AZURE, f"https://127.0.0.1:{port}/devstoreaccount1/c?{SAS}"),
        ("azure localhost", AZURE, f"http://localhost:{port}/devstoreaccount1/c?{SAS}"),
        ("azure unspecified address", AZURE, f"http://0.0.0.0:{port}/devstoreaccount1/c?{SAS}"),
        ("azure integer address", AZURE, f"http://2130706433:{port}/devstoreaccount1/c?{SAS}"),
        ("azure ipv4-mapped", AZURE, f"http://[::ffff:127.0.0.1]:{port}/devstoreaccount1/c?{SAS}"),
        ("azure s3-shaped", AZURE, f"http://127.0.0.1:{port}/{TEST_BUCKET}/c?{SAS}"),
        ("destination url", "destination", f"http://127.0.0.1:{port}/{TEST_BUCKET}"),
        ("destination azure target", "destination", f"external|azure_blob|http://127.0.0.1:{port}/a/c?{SAS}"),
        ("destination s3 target", "destination", f"external|s3|http://127.0.0.1:{port}/{TEST_BUCKET}/p"),
    ]
    if ipv6:
        cases += [
            ("s3 ipv6 loopback", S3, f"http://[::1]:{port}/{TEST_BUCKET}/p"),
            ("azure ipv6 loopback", AZURE, f"http://[::1]:{port}/devstoreaccount1/c?{SAS}"),
        ]
    return cases


async def refuse_every_attack(target: str, trap: Listener, *, enabled: bool) -> None:
    """Each attack is refused at StartRecording on an open call; no recording is created."""
    call_id = unique("trap")
    async with AsyncCallrecClient(target) as client, GatewayConnection(target, call_id) as gw:  # the call is open
        for name, kind, value in attacks(trap.port, trap.ipv6):
            request = start_request(call_id, content_type="audio", format="wav",
                                    chunk_max_duration=timedelta(seconds=2))
            if kind == "destination":
                request.destination = value
            else:
                request.external_storage.kind, request.external_storage.container_url = kind, value
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.recordings.StartRecording(request, timeout=20)
            code, details = info.value.code(), info.value.details() or ""
            assert code in REFUSED, (name, code, details)
            assert SIGNATURE not in details and "sig=" not in details and "pw@" not in details, (name, details)
            if kind == "destination":
                assert code == grpc.StatusCode.INVALID_ARGUMENT and "[storage.external] allow" in details, details
            elif not enabled:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (name, details)
                assert "[storage.external] allow" in details, (name, details)
            elif kind == AZURE and "sig=" in value and "https" not in value:
                # allowed by the list: the address policy refuses (after DNS for the names)
                assert code == grpc.StatusCode.PERMISSION_DENIED and "address" in details, (name, details)
        recordings = await client.recordings.ListRecordings(pb.ListRecordingsRequest(server_call_id=call_id))
        assert list(recordings.recordings) == [], "refused starts leave no recording behind"
        # locations pointing at the listener are not the server's: NOT_FOUND, nothing fetched
        for location in (f"http://127.0.0.1:{trap.port}/{TEST_BUCKET}/p/0-audio.wav",
                         f"http://127.0.0.1:{trap.port}/devstoreaccount1/c/0-audio.wav?{SAS}"):
            for call in (download(client, location), client.delete(location)):
                with pytest.raises(CallrecError) as refused:
                    await call
                assert refused.value.code == grpc.StatusCode.NOT_FOUND
                assert SIGNATURE not in str(refused.value)
        await gw.end()


def server_env(moto: MotoServer, trap: Listener) -> dict[str, str]:
    """Real credentials in the environment, and the default chain's endpoint pointing at the listener."""
    return isolated_aws_env(
        AWS_ACCESS_KEY_ID=moto.access_key_id,
        AWS_SECRET_ACCESS_KEY=moto.secret_access_key,
        AWS_DEFAULT_REGION=moto.region,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{trap.port}",
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{trap.port}",
    )


def assert_untouched(trap: Listener, log: str, moto: MotoServer) -> None:
    assert (trap.connections, trap.received, trap.peers) == (0, 0, []), "the listener was contacted"
    for secret in (SIGNATURE, moto.secret_access_key, moto.access_key_id):
        assert secret not in log, f"{secret[:6]}... appears in the server log"


async def test_byos_off_reaches_nothing_and_content_serves_only_announced_locations(
    make_server, moto_server: MotoServer, listener: Listener, tmp_path, validate_json
):
    bucket = Bucket("s3", moto_server)
    prefix = new_prefix("lock")
    config = write_config(tmp_path / "callrec.toml", {"archive": bucket.target(prefix)}, default="archive")
    srv = make_server(*server_args(config), env=server_env(moto_server, listener))
    await refuse_every_attack(srv.target, listener, enabled=False)

    # a real recording in the configured target, then objects planted next to it and elsewhere
    async with AsyncCallrecClient(srv.target) as client:
        rec = await stream_call(srv.target)
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
        chunk = done.chunks[0]
        assert await download(client, chunk.content_location), "announced locations are served"
        directory = chunk.content_location.removeprefix(f"s3://{TEST_BUCKET}/").rsplit("/", 1)[0]
        s3 = moto_server.client()
        planted = [f"{directory}/7-audio.wav", f"{directory}/7-metadata.json", f"{prefix}/secret.txt",
                   f"elsewhere-{uuid.uuid4().hex[:8]}/secret.txt"]
        for key in planted:
            s3.put_object(Bucket=TEST_BUCKET, Key=key, Body=b"not a recording")
        for key in planted:
            for location in (f"s3://{TEST_BUCKET}/{key}", f"{moto_server.endpoint_url}/{TEST_BUCKET}/{key}"):
                with pytest.raises(CallrecError) as info:
                    await download(client, location)
                assert info.value.code == grpc.StatusCode.NOT_FOUND, (location, info.value)
                assert "announced" in str(info.value)
                with pytest.raises(CallrecError) as info:
                    await client.delete(location)
                assert info.value.code == grpc.StatusCode.NOT_FOUND, (location, info.value)
        forged_delete = f"s3://{TEST_BUCKET}/{directory}/7-"
        with pytest.raises(CallrecError) as info:
            await client.delete(forged_delete)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        for key in planted:
            assert s3.head_object(Bucket=TEST_BUCKET, Key=key)["ContentLength"] == len(b"not a recording")
        # the announced ones still work, and deleting them leaves the planted neighbours alone
        await client.delete(chunk.delete_location)
        assert s3.head_object(Bucket=TEST_BUCKET, Key=f"{directory}/7-audio.wav")
    await asyncio.sleep(0.5)  # anything the server might still be sending would have arrived
    assert_untouched(listener, srv.log_text(), moto_server)


async def test_a_permissive_policy_still_reaches_nothing_it_does_not_list(
    make_server, moto_server: MotoServer, listener: Listener, tmp_path, validate_json
):
    """`allow = ["*", "*:<listener port>"]` (any host, also on the listener's port) plus an S3 entry for
    moto: the allow list lets every Azure attack through, so what refuses them is the address policy
    (loopback, unspecified, IPv4-mapped, names resolving to loopback); only the entry's bucket works for S3,
    and the server's environment credentials are never what it uses."""
    bucket = Bucket("s3", moto_server)
    external = {"allow": ["*", f"*:{listener.port}"], "s3": [moto_grant(moto_server)]}
    config = write_config(tmp_path / "callrec.toml", {"archive": bucket.target(new_prefix("own"))},
                          default="archive", external=external)
    srv = make_server(*server_args(config), env=server_env(moto_server, listener))
    await refuse_every_attack(srv.target, listener, enabled=True)

    # the allowed destination works end to end (to moto, with the entry's keys)
    prefix = new_prefix("allowed")
    async with AsyncCallrecClient(srv.target) as client:
        rec = await stream_call(srv.target, external=(S3, f"s3://{TEST_BUCKET}/{prefix}"))
        done = await wait_state(client, rec.recording_id, pb.RECORDING_STATE_COMPLETED, timeout=30)
        assert len(bucket.names(prefix)) == 2 * len(done.chunks) > 0
    await asyncio.sleep(0.5)
    assert_untouched(listener, srv.log_text(), moto_server)


# ------------------------------------------------------------------- the connection-time check, in-process
async def test_connections_go_to_the_checked_addresses_and_a_rebound_name_is_refused(
    azurite_server: AzuriteServer, listener: Listener, tmp_path
):
    """The Azure store of an external destination connects through the address policy.

    Names here resolve only through the policy's injected resolver (the system's is never asked):
    a listed name pinned to Azurite's address uploads, so the connection went where the check said;
    a name that passed StartRecording's check with a public address and then "rebinds" to loopback is
    refused when the upload connects (PERMISSION_DENIED, not retried), and the listener sees nothing.
    """
    pinned = f"{azurite_server.account}.blob.localhost"  # Azurite's production-style host name
    answers = {pinned: ["127.0.0.1"], "rebind.test": ["93.184.216.34"]}

    def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    account, port = azurite_server.account, azurite_server.port
    sas = Bucket("azure_blob", azurite_server).sas_container_url("x").split("?", 1)[1]
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 1000)

    listed = ExternalPolicy.from_config({"allow": [f"{pinned}:{port}/{TEST_CONTAINER}"]}, resolve=resolve)
    prefix = new_prefix("pinned")
    destination = await listed.check("azure_blob", f"http://{pinned}:{port}/{TEST_CONTAINER}/{prefix}?{sas}")
    store = destination.build({"max_attempts": 1})
    try:
        stored = await store.put_file("k.bin", source, "application/octet-stream")
        assert stored.location == f"http://{pinned}:{port}/{TEST_CONTAINER}/{prefix}/k.bin"
        assert (await store.head("k.bin")).size == 1000  # type: ignore[union-attr]
        await store.delete("k.bin")
    finally:
        await store.close()

    anywhere = ExternalPolicy.from_config({"allow": [f"*.test:{listener.port}"]}, resolve=resolve)  # a wildcard
    url = f"http://rebind.test:{listener.port}/{account}/{TEST_CONTAINER}/p?{sas}"
    destination = await anywhere.check("azure_blob", url)  # public answer: accepted at StartRecording
    store = destination.build({"max_attempts": 1})
    answers["rebind.test"] = ["127.0.0.1"]  # ... and then the name points at loopback
    try:
        with pytest.raises(PermissionDenied, match="address policy") as info:
            await store.put_file("k.bin", source, "application/octet-stream")
        assert not info.value.retryable and "sig=" not in str(info.value)
    finally:
        await store.close()
    await asyncio.sleep(0.2)
    assert (listener.connections, listener.received) == (0, 0)
