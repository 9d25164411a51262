"""Storage without servers: object names (keys.py), target config and BYO URLs (targets.py), range
arithmetic, and the local store's retention sweep on a fake clock."""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from callrec.core.object_keys import ChunkKeys, safe_segment
from callrec.storage.azure_blob import AzureBlobStore
from callrec.storage.base import RangeNotSatisfiable, resolve_range
from callrec.storage.local import LocalStore
from callrec.storage.s3 import S3Store
from callrec.storage.targets import store_from_config, store_from_external, stores_from_config

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
async def test_external_s3_urls() -> None:
    cases = {
        "s3://bucket/a/b": ("bucket", "a/b", None, None),
        "https://bucket.s3.eu-west-1.amazonaws.com/x": ("bucket", "x", "eu-west-1", None),
        "https://s3.us-east-2.amazonaws.com/bucket/y/z": ("bucket", "y/z", "us-east-2", None),
        "http://127.0.0.1:9000/bucket/p": ("bucket", "p", None, "http://127.0.0.1:9000"),
        "https://minio.example.com/bucket": ("bucket", "", None, "https://minio.example.com"),
    }
    for url, (bucket, prefix, region, endpoint) in cases.items():
        store = store_from_external("S3", url)
        assert isinstance(store, S3Store)
        assert (store.bucket, store.prefix, store.region, store.endpoint_url) == (bucket, prefix, region, endpoint)
        await store.close()
    with pytest.raises(ValueError, match="takes no query string"):
        store_from_external("s3", "https://minio.example.com/bucket?X-Amz-Signature=1")
    with pytest.raises(ValueError, match="names no bucket"):
        store_from_external("s3", "https://minio.example.com/")


async def test_external_azure_urls() -> None:
    store = store_from_external("AZURE_BLOB", f"https://acct.blob.core.windows.net/recs/calls/x?{SAS}")
    assert isinstance(store, AzureBlobStore)
    assert store.location("k.wav") == "https://acct.blob.core.windows.net/recs/calls/x/k.wav"
    assert "sig=" not in store.location("k.wav")
    assert store.key_for(f"https://acct.blob.core.windows.net/recs/calls/x/k.wav?{SAS}") == "k.wav"
    await store.close()

    emulator = store_from_external("azure_blob", f"http://127.0.0.1:10000/devstoreaccount1/recs?{SAS}")
    assert emulator.location("k") == "http://127.0.0.1:10000/devstoreaccount1/recs/k"
    await emulator.close()
    with pytest.raises(ValueError, match="needs a SAS"):
        store_from_external("azure_blob", "https://acct.blob.core.windows.net/recs")
    with pytest.raises(ValueError, match="names no container"):
        store_from_external("azure_blob", f"https://acct.blob.core.windows.net/?{SAS}")
    with pytest.raises(ValueError, match="must be S3 or AZURE_BLOB"):
        store_from_external("gcs", "gs://bucket")


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
