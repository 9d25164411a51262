"""Real storage servers for tests and benchmarks: moto's S3 server and Azurite, on free loopback ports.

Both run as subprocesses (not in the test process), so their CPU does not share our GIL, their state
does not leak into in-process `moto.mock_aws` users, and benchmarks measure something realistic.
The moto server enforces IAM authentication (an IAM user with `s3:*` is created first), so wrong
credentials really are refused; Azurite checks shared-key signatures on its own.

Plain classes with `start()`/`stop()` (no pytest here): `conftest.py` wraps them in session fixtures and
`bench/storage_throughput.py` uses them directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / "tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known development account key (public, documented by Microsoft)."""

TEST_BUCKET = "callrec-test"
TEST_CONTAINER = "callrec-test"


def free_port() -> int:
    """A loopback port nothing listens on right now (also the 'server down' endpoint for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening; log:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout} s; log:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class MotoServer:
    """moto's S3 (and IAM) server in a subprocess, with IAM authentication switched on."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="moto-")))
    region: str = "us-east-1"
    port: int = 0
    access_key_id: str = ""
    secret_access_key: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "moto.log"

    def start(self, *, auth: bool = True, timeout: float = 30.0) -> MotoServer:
        """Start, wait until it answers, create an IAM user with `s3:*`, then enforce authentication."""
        for attempt in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                _wait_for_port(self.port, self.process, self.log, timeout)
                break
            except RuntimeError:
                _stop(self.process)
                if attempt == 2:
                    raise
        self._create_identity()
        if auth:
            request = urllib.request.Request(
                f"{self.endpoint_url}/moto-api/reset-auth",
                data=b"0",
                method="POST",
                headers={"Content-Type": "text/plain"},
            )
            urllib.request.urlopen(request, timeout=10).close()
        return self

    def _create_identity(self) -> None:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        user = f"callrec-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]

    def client(self) -> Any:
        """A boto3 S3 client with the server's valid credentials (for test setup and assertions)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def create_bucket(self, bucket: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)

    def target(self, bucket: str = TEST_BUCKET, prefix: str = "", **extra: Any) -> dict[str, Any]:
        """A `kind = "s3"` storage target config for this server (see `callrec.storage.targets`)."""
        return {
            "kind": "s3",
            "bucket": bucket,
            "prefix": prefix,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            **extra,
        }

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class AzuriteServer:
    """Azurite's blob service in a subprocess, in-memory, with the well-known development account."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="azurite-")))
    port: int = 0
    account: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY
    process: subprocess.Popen[bytes] | None = None

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.account_key};"
            f"BlobEndpoint={self.account_url};"
        )

    @property
    def log(self) -> Path:
        return self.workdir / "azurite.log"

    def start(self, *, timeout: float = 60.0) -> AzuriteServer:
        """Start and wait until the blob port answers (Azurite takes ~2 s to boot)."""
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"Azurite is not installed at {AZURITE_BIN} (npm install in tools/)")
        for attempt in range(3):
            self.port = free_port()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        str(AZURITE_BIN),
                        "--blobHost",
                        "127.0.0.1",
                        "--blobPort",
                        str(self.port),
                        "--inMemoryPersistence",
                        "--skipApiVersionCheck",
                        "--disableTelemetry",
                        "--silent",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.workdir,  # anything Azurite writes lands in our temp dir
                    # Custom accounts would disable the well-known one the fixtures rely on.
                    env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
                )
            try:
                _wait_for_port(self.port, self.process, self.log, timeout)
                break
            except RuntimeError:
                _stop(self.process)
                if attempt == 2:
                    raise
        return self

    def create_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        with (
            BlobServiceClient.from_connection_string(self.connection_string) as service,
            contextlib.suppress(ResourceExistsError),
        ):
            service.create_container(container)

    def target(self, container: str = TEST_CONTAINER, prefix: str = "", **extra: Any) -> dict[str, Any]:
        """A `kind = "azure_blob"` storage target config for this server."""
        return {
            "kind": "azure_blob",
            "connection_string": self.connection_string,
            "container": container,
            "prefix": prefix,
            **extra,
        }

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)
