"""Storage without servers: object names (keys.py), target config (targets.py), bring-your-own-storage
under the `[storage.external]` policy (external.py, resolver.py) and redaction, range arithmetic, and the
local store's retention sweep on a fake clock. No test here resolves a name or opens a connection."""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from callrec.core.object_keys import ChunkKeys, safe_segment
from callrec.security.redact import redact_text, redact_url
from callrec.storage.address_policy import DestinationRefused
from callrec.storage.azure_blob import AzureBlobStore
from callrec.storage.base import RangeNotSatisfiable, Store, resolve_range
from callrec.storage.external import ExternalDestination, ExternalPolicy
from callrec.storage.local import LocalStore
from callrec.storage.resolver import StoreResolver, describe_target, external_target
from callrec.storage.s3 import S3Store
from callrec.storage.targets import store_from_config, stores_from_config

SAS = "sv=2024-08-04&sr=c&sp=rwdl&se=2030-01-01T00%3A00%3A00Z&sig=abc%2Bdef%3D"


# ------------------------------------------------------------------------------------------- keys
def test_safe_segment_keeps_safe_ids_and_separates_unsafe_ones() -> None:
    guid = "0f2b9a36-4c1e-4d6b-9b7e-6a0c5c1e2f3a"
    assert safe_segment(guid) == guid
    a, b = safe_segment("sip:alice/b c"), safe_segment("sip_alice_b_c")
    assert re.fullmatch(r"sip_alice_b_c-[0-9a-f]{8}", a)
    assert b == "sip_alice_b_c" and a != b
    assert "/" not in safe_segment("../../etc") and safe_segment("..") not in (".", "..")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", safe_segment("通话 ☎"))
    assert len(safe_segment("x" * 500)) <= 96 + 9


def test_chunk_keys_follow_the_spec_layout() -> None:
    started = datetime(2025, 1, 2, 23, 30, tzinfo=timezone(timedelta(hours=-2)))  # 2025-01-03 in UTC
    keys = ChunkKeys.for_recording(started=started, call_id="call/1", recording_id="abcdef0123456789", unique_id="u1")
    assert re.fullmatch(r"20250103/call_1-[0-9a-f]{8}/abcdef01-u1", keys.directory)
    assert keys.media(0, "audio", "wav") == f"{keys.directory}/0-audio.wav"
    assert keys.media(3, "video", ".MP4") == f"{keys.directory}/3-video.mp4"
    assert keys.metadata(3) == f"{keys.directory}/3-metadata.json"
    prefixed = ChunkKeys.for_recording(started=date(2025, 1, 3), call_id="c", recording_id="r", prefix="/x/y/")
    assert re.fullmatch(r"x/y/20250103/c/r-[0-9a-f]{32}", prefixed.directory)


def test_chunk_keys_refuse_ambiguous_input() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ChunkKeys.for_recording(started=datetime(2025, 1, 1), call_id="c", recording_id="r")
    keys = ChunkKeys.for_recording(started=datetime(2025, 1, 1, tzinfo=UTC), call_id="c", recording_id="r")
    with pytest.raises(ValueError):
        keys.media(-1, "audio", "wav")
    with pytest.raises(ValueError):
        keys.media(0, "audio", "w/v")
    with pytest.raises(ValueError):
        keys.media(0, "text", "wav")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ range
def test_resolve_range() -> None:
    assert resolve_range(10, 0, 0) == (0, 10)
    assert resolve_range(10, 3, 4) == (3, 7)
    assert resolve_range(10, 10, 0) == (10, 10)
    assert resolve_range(0, 0, 0) == (0, 0)
    for offset, length in [(11, 0), (5, 6), (-1, 0), (0, -1)]:
        with pytest.raises(RangeNotSatisfiable):
            resolve_range(10, offset, length)


# ---------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "storage target 'archive': missing required field 'kind'"),
        ({"kind": "ftp"}, "field 'kind' must be one of local, s3, azure_blob"),
        ({"kind": "s3"}, "storage target 'archive': missing required field 'bucket'"),
        ({"kind": "s3", "bucket": "b", "bukket": "c"}, "unknown field(s) 'bukket'"),
        ({"kind": "s3", "bucket": 3}, "field 'bucket' must be a string"),
        ({"kind": "s3", "bucket": "b", "access_key_id": "a"}, "'access_key_id' and 'secret_access_key'"),
        ({"kind": "s3", "bucket": "b", "part_size_mib": 1}, "field 'part_size_mib' must be at least 5"),
        ({"kind": "s3", "bucket": "b", "endpoint_url": "ftp://x"}, "field 'endpoint_url' must be an http(s) URL"),
        ({"kind": "s3", "bucket": "b", "checksum": "crc"}, "field 'checksum' must be one of sha256, none"),
        ({"kind": "azure_blob"}, "exactly one of 'connection_string' or 'account_url'"),
        (
            {"kind": "azure_blob", "account_url": "https://a.blob.core.windows.net"},
            "missing required field 'container'",
        ),
        (
            {"kind": "azure_blob", "container": "c", "connection_string": "x", "account_url": "https://a"},
            "exactly one of",
        ),
        ({"kind": "azure_blob", "container": "c", "connection_string": "garbage"}, "storage target 'archive'"),
        ({"kind": "azure_blob", "container": "c", "account_url": "https://a", "max_concurrency": 0}, "at least 1"),
        ({"kind": "azure_blob", "container": "c", "account_url": "https://a", "validate_content": "yes"}, "true or"),
        ({"kind": "local"}, "missing required field 'path'"),
        ({"kind": "local", "path": "/tmp/x", "retention_hours": -1}, "at least 0"),
    ],
)
def test_bad_target_config_names_target_and_field(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        store_from_config("archive", config)
    assert message in str(raised.value)
    assert "archive" in str(raised.value)


async def test_target_config_builds_each_kind(tmp_path: Path) -> None:
    stores, default = stores_from_config(
        {
            "default": "archive",
            "targets": {
                "archive": {"kind": "s3", "bucket": "recordings", "prefix": "calls", "region": "eu-west-1"},
                "blob": {
                    "kind": "azure_blob",
                    "account_url": "https://acct.blob.core.windows.net",
                    "sas_token": "?" + SAS,
                    "container": "recordings",
                    "prefix": "p",
                },
                "keep": {"kind": "local", "path": "kept", "retention_hours": 0},
            },
        },
        data_dir=tmp_path,
    )
    try:
        assert default == "archive"
        assert isinstance(stores["archive"], S3Store)
        assert stores["archive"].location("a.wav") == "s3://recordings/calls/a.wav"
        assert isinstance(stores["blob"], AzureBlobStore)
        assert stores["blob"].location("a.wav") == "https://acct.blob.core.windows.net/recordings/p/a.wav"
        local, keep = stores["local"], stores["keep"]
        assert isinstance(local, LocalStore) and local.root == tmp_path / "recordings"
        assert local.retention == timedelta(hours=24)
        assert isinstance(keep, LocalStore) and keep.root == tmp_path / "kept" and keep.retention is None
    finally:
        for store in stores.values():
            await store.close()
    with pytest.raises(ValueError, match="default target 'nope' is not configured"):
        stores_from_config({"default": "nope"}, data_dir=tmp_path)


# ------------------------------------------------------------------------------- bring your own
KEYS = {"access_key_id": "AKIAEXTERNAL00000001", "secret_access_key": "external-secret"}


def policy(**table: object) -> ExternalPolicy:
    """An ExternalPolicy whose DNS answers come from nowhere (any resolution fails the test)."""

    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError(f"no DNS expected for {host!r}")

    return ExternalPolicy.from_config(table, {"archive": {"kind": "s3", "bucket": "own", **KEYS},
                                              "chain": {"kind": "s3", "bucket": "own"}}, resolve=no_dns)


def build(destination: ExternalDestination) -> Store:
    return destination.build({})


async def test_bring_your_own_storage_is_off_without_a_policy() -> None:
    resolver = StoreResolver({}, "local")
    for kind, url in (("s3", "s3://bucket/p"), ("azure_blob", f"https://acct.blob.core.windows.net/c?{SAS}")):
        with pytest.raises(DestinationRefused, match=r"\[storage.external\] allow"):
            resolver(external_target(kind, url))
        with pytest.raises(DestinationRefused, match=r"bring-your-own-storage is off"):
            await resolver.check_external(kind, url)


async def test_external_s3_needs_an_entry_with_its_own_keys() -> None:
    grants = policy(s3=[
        {"bucket": "bucket", **KEYS},
        {"bucket": "bucket", "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1", **KEYS},
        {"bucket": "minio-bucket", "endpoint_url": "https://minio.example.com", "credentials_from": "archive"},
    ])
    cases = {
        "https://bucket.s3.eu-west-1.amazonaws.com/x": ("bucket", "x", "eu-west-1", None),
        "https://s3.us-east-2.amazonaws.com/bucket/y/z": ("bucket", "y/z", "us-east-2", None),
        "http://127.0.0.1:9000/bucket/p": ("bucket", "p", "eu-west-1", "http://127.0.0.1:9000"),
        "https://minio.example.com:443/minio-bucket": ("minio-bucket", "", None, "https://minio.example.com"),
        "s3://minio-bucket/a/b": ("minio-bucket", "a/b", None, "https://minio.example.com"),
    }
    for url, (bucket, prefix, region, endpoint) in cases.items():
        store = build(grants.plan("S3", url))
        assert isinstance(store, S3Store)
        assert (store.bucket, store.prefix, store.region, store.endpoint_url) == (bucket, prefix, region, endpoint)
        assert store.use_default_credentials is False
        assert store._session_args["aws_access_key_id"] == KEYS["access_key_id"]
        assert store._config.ignore_configured_endpoint_urls is True
        await store.close()
    refused = [
        "http://127.0.0.1:9001/bucket/p",  # another port of an allowed endpoint
        "https://127.0.0.1:9000/bucket/p",  # another scheme
        "http://127.0.0.1:9000/other/p",  # another bucket
        "https://minio.example.com/bucket",  # a bucket of another entry, at the wrong endpoint
        "s3://unknown/p",
        "https://other.s3.amazonaws.com/x",
    ]
    for url in refused:
        with pytest.raises(DestinationRefused, match=r"\[\[storage.external.s3\]\]"):
            grants.plan("s3", url)
    with pytest.raises(ValueError, match="ambiguous"):
        grants.plan("s3", "s3://bucket/p")
    with pytest.raises(ValueError, match="takes no query string") as info:
        grants.plan("s3", "http://127.0.0.1:9000/bucket?X-Amz-Signature=secret1")
    assert "secret1" not in str(info.value)
    with pytest.raises(ValueError, match="names no bucket"):
        grants.plan("s3", "http://127.0.0.1:9000/")
    with pytest.raises(ValueError, match="user or password"):
        grants.plan("s3", "http://me:pw@127.0.0.1:9000/bucket")
    for host in ("127.0.0.1%2e", "ｍinio.example.com", "minio.example.com\\"):
        with pytest.raises(ValueError, match="plain ASCII"):
            grants.plan("s3", f"https://{host}/bucket")
    # `allow` strings alone never enable S3: the server would have no keys of the bucket's owner to use
    with pytest.raises(DestinationRefused, match="does not enable S3"):
        policy(allow=["127.0.0.1:9000"]).plan("s3", "http://127.0.0.1:9000/bucket/p")


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        ({"bucket": "b"}, "give 'access_key_id' and 'secret_access_key'"),
        ({"bucket": "b", "access_key_id": "a"}, "give 'access_key_id' and 'secret_access_key'"),
        ({"bucket": "b", "credentials_from": "chain"}, "explicit 'access_key_id'"),
        ({"bucket": "b", "credentials_from": "nope"}, "names no [storage.targets.nope]"),
        ({"bucket": "b", "credentials_from": "archive", **KEYS}, "not both"),
        ({"endpoint_url": "http://x", **KEYS}, "missing required field 'bucket'"),
        ({"bucket": "b", "endpoint_url": "ftp://x", **KEYS}, "must be an http(s) URL"),
        ({"bucket": "b", "profile": "default", **KEYS}, "unknown field(s) 'profile'"),
    ],
)
def test_bad_external_s3_entries_are_config_errors(grant: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=r"\[\[storage.external.s3\]\] entry #1") as info:
        policy(s3=[grant])
    assert message in str(info.value)
    assert "external-secret" not in str(info.value)


def test_bad_external_tables_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown field"):
        policy(allowed=["x"])
    with pytest.raises(ValueError, match="repeats"):
        policy(s3=[{"bucket": "b", **KEYS}, {"bucket": "b", **KEYS}])
    assert not policy().enabled and policy(allow=["x"]).enabled
    assert policy(s3={"bucket": "b", **KEYS}).s3[0].bucket == "b"  # [storage.external.s3] as one table


async def test_external_azure_needs_an_allowed_host_and_a_sas() -> None:
    allowed = policy(allow=["acct.blob.core.windows.net/recs", "127.0.0.1:10000/devstoreaccount1"])
    destination = allowed.plan("AZURE_BLOB", f"https://acct.blob.core.windows.net/recs/calls/x?{SAS}")
    assert destination.shown == "https://acct.blob.core.windows.net/recs/calls/x"
    assert not destination.check_addresses  # an exact entry lists the host
    store = build(destination)
    assert isinstance(store, AzureBlobStore)
    assert store.location("k.wav") == "https://acct.blob.core.windows.net/recs/calls/x/k.wav"
    assert store.key_for(f"https://acct.blob.core.windows.net/recs/calls/x/k.wav?{SAS}") == "k.wav"
    await store.close()

    emulator = build(allowed.plan("azure_blob", f"http://127.0.0.1:10000/devstoreaccount1/recs?{SAS}"))
    assert emulator.location("k") == "http://127.0.0.1:10000/devstoreaccount1/recs/k"
    await emulator.close()
    with pytest.raises(ValueError, match="needs a SAS") as info:
        allowed.plan("azure_blob", "https://acct.blob.core.windows.net/recs?sv=2024&sp=rwdl")
    assert not isinstance(info.value, DestinationRefused)
    with pytest.raises(ValueError, match="names no container"):
        policy(allow=["acct.blob.core.windows.net"]).plan("azure_blob", f"https://acct.blob.core.windows.net/?{SAS}")
    with pytest.raises(ValueError, match="must be S3 or AZURE_BLOB"):
        allowed.plan("gcs", "gs://bucket")
    refused = [
        f"https://acct.blob.core.windows.net/other?{SAS}",  # another container
        f"https://acct.blob.core.windows.net:8443/recs?{SAS}",  # another port
        f"http://127.0.0.1:10001/devstoreaccount1/recs?{SAS}",
        f"https://evil.example.com/recs?{SAS}",
        "https://evil.example.com/recs",  # refused before the SAS is even looked at
    ]
    for url in refused:
        with pytest.raises(DestinationRefused, match=r"not listed in `\[storage.external\] allow`") as info:
            allowed.plan("azure_blob", url)
        assert "sig=" not in str(info.value) and "abc" not in str(info.value)


async def test_external_azure_on_a_wildcard_is_checked_after_resolution() -> None:
    answers = {"acct.blob.core.windows.net": ["20.60.1.4"], "evil.blob.core.windows.net": ["10.0.0.5"]}
    wildcard = ExternalPolicy.from_config({"allow": ["*.blob.core.windows.net", "*"]},
                                          resolve=lambda host, port: answers[host])
    destination = await wildcard.check("azure_blob", f"https://acct.blob.core.windows.net/recs?{SAS}")
    assert destination.check_addresses
    with pytest.raises(DestinationRefused, match=r"resolves to 10\.0\.0\.5, which is a private address"):
        await wildcard.check("azure_blob", f"https://evil.blob.core.windows.net/recs?{SAS}")
    # IP literals are refused already by `plan` (before each upload), without DNS
    for host in ("127.0.0.1", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1"):
        with pytest.raises(DestinationRefused, match="refused for client-chosen storage"):
            wildcard.plan("azure_blob", f"https://{host}/account/recs?{SAS}")


async def test_the_resolver_rechecks_external_targets_and_describes_them_without_secrets() -> None:
    allowed = policy(allow=["acct.blob.core.windows.net/recs"])
    resolver = StoreResolver({}, "local", external=allowed)
    target = external_target("azure_blob", f"https://acct.blob.core.windows.net/recs/p?{SAS}")
    store = resolver(target)
    assert resolver(target) is store  # built once, checked on every call
    assert resolver.describe(target) == "external azure_blob https://acct.blob.core.windows.net/recs/p"
    await resolver.close()
    later = StoreResolver({}, "local", external=policy(allow=["other.blob.core.windows.net"]))
    with pytest.raises(DestinationRefused):
        later(target)  # e.g. a pending upload after the operator removed the entry and restarted
    with pytest.raises(ValueError, match="is not configured") as info:
        later(f"https://x/y?{SAS}")
    assert "sig=" not in str(info.value)
    assert describe_target("external|s3|http://u:p@h/b?x=1#f") == "external s3 http://h/b"


def test_redaction() -> None:
    text = (
        f"GET https://acct.blob.core.windows.net/c/k?{SAS} failed; signed http://u:pw@h/x?X-Amz-Signature=abc "
        "AccountKey=Zm9vYmFy; key AKIAIOSFODNN7EXAMPLE; sig=abc%2Bdef%3D"
    )
    clean = redact_text(text)
    for secret in ("abc%2Bdef", "pw@", "Zm9vYmFy", "AKIAIOSFODNN7EXAMPLE", "X-Amz-Signature=abc"):
        assert secret not in clean, (secret, clean)
    assert "https://acct.blob.core.windows.net/c/k" in clean
    assert redact_text("token s3cr3t-token here", ["s3cr3t-token"]) == "token <redacted> here"
    assert redact_url(f"https://u:p@acct.blob.core.windows.net:443/c?{SAS}#frag") == (
        "https://acct.blob.core.windows.net:443/c"
    )
    assert redact_url("archive") == "archive"


# -------------------------------------------------------------------------------- local retention
async def test_local_sweep_deletes_what_is_older_than_the_retention(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    store = LocalStore(tmp_path / "store", now=lambda: now)
    source = tmp_path / "f.wav"
    source.write_bytes(b"x" * 100)
    for key in ("old/a/0-audio.wav", "old/a/0-metadata.json", "new/b/0-audio.wav"):
        await store.put_file(key, source, "audio/wav")
    stale_part = store.root / "new" / "b" / ".1-audio.wav.dead.part"
    stale_part.write_bytes(b"partial")
    day = 24 * 3600
    for path in (store.root / "old/a/0-audio.wav", store.root / "old/a/0-metadata.json", stale_part):
        os.utime(path, (now - day - 1, now - day - 1))
    os.utime(store.root / "new/b/0-audio.wav", (now - day + 60, now - day + 60))

    assert await store.sweep_expired(timedelta(hours=24)) == 2
    assert [k async for k in store.list()] == ["new/b/0-audio.wav"]
    assert not (store.root / "old").exists()  # emptied directories go too
    assert not stale_part.exists()
    assert await store.sweep_expired(timedelta(hours=24)) == 0
