"""The outbox's upload attempts run in a child process (`callrec.storage.upload_worker`).

Real parts: the child is `python -m callrec.storage.upload_worker`, the S3 target is the session's
moto server, "black-holed" is a loopback listener that never accepts. Checked: a file stored by the
child is the file (downloaded back through the server's own store and compared); errors cross the
pipe as the classes the outbox tells apart; a killed child fails its attempts as transient and the
next attempt gets a new child; a cancelled attempt does not hold up others; and a child whose server
was killed exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec.storage.base import PermissionDenied, StoredObject, Transient
from callrec.storage.upload_worker import NICENESS, StoreSpec, UploadWorker, resolver_from_spec
from tests.harness import ROOT, free_port
from tests.integration.conftest import TEST_BUCKET
from tests.integration.storage_servers import MotoServer
from tests.integration.test_upload_deadline_retry import black_hole


def s3_target(moto: MotoServer, *, port: int | None = None, secret: str | None = None) -> dict[str, object]:
    endpoint = moto.endpoint_url if port is None else f"http://127.0.0.1:{port}"
    return {"kind": "s3", "bucket": TEST_BUCKET, "prefix": "upload-worker", "endpoint_url": endpoint,
            "region": moto.region, "access_key_id": moto.access_key_id,
            "secret_access_key": secret or moto.secret_access_key, "max_attempts": 1,
            "connect_timeout": 2, "read_timeout": 30}


@pytest.fixture
def hole_port() -> Iterator[int]:
    port = free_port()
    sock = black_hole(port)
    try:
        yield port
    finally:
        sock.close()


@pytest.fixture
def spec(tmp_path: Path, moto_server: MotoServer, hole_port: int) -> StoreSpec:
    return StoreSpec(
        targets={
            "local": {"kind": "local", "path": str(tmp_path / "stored")},
            "s3": s3_target(moto_server),
            "wrong-key": s3_target(moto_server, secret="not-the-secret"),
            "hole": s3_target(moto_server, port=hole_port),
        },
        default="local",
        data_dir=str(tmp_path),
    )


@pytest.fixture
def worker(spec: StoreSpec) -> Iterator[UploadWorker]:
    parent_stores = resolver_from_spec(spec)
    uploads = UploadWorker(spec, parent_stores)
    try:
        yield uploads
    finally:
        uploads.close()
        asyncio.run(parent_stores.close())


def spool_file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / "spool" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


async def test_the_child_stores_the_file_the_server_reads_back(worker: UploadWorker, spec: StoreSpec,
                                                              tmp_path: Path) -> None:
    path = spool_file(tmp_path, "0-audio.wav", 3 * 1024 * 1024 + 17)
    stored = await worker("s3").put_file("rec-1/0-audio.wav", path, "audio/wav")
    assert isinstance(stored, StoredObject)
    assert stored.checksum == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert stored.size == path.stat().st_size
    assert worker.pid is not None and worker.pid != os.getpid()
    assert niceness(worker.pid) == niceness(os.getpid()) + NICENESS  # media before uploads on a busy box

    stores = resolver_from_spec(spec)  # the server's own store reads what the child wrote
    try:
        data = b"".join([piece async for piece in stores("s3").open_range("rec-1/0-audio.wav")])
    finally:
        await stores.close()
    assert data == path.read_bytes()

    local = await worker("local").put_file("rec-1/0-audio.json", path, "application/json")
    assert Path(spec.targets["local"]["path"], "rec-1/0-audio.json").read_bytes() == path.read_bytes()
    assert local.location.startswith("file://")
    assert worker.starts == 1  # one child did both


async def test_errors_cross_the_pipe_as_the_classes_the_outbox_tells_apart(worker: UploadWorker,
                                                                          tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not configured"):
        worker("nowhere")  # refused by the server's resolver before anything is sent
    assert worker.starts == 0

    path = spool_file(tmp_path, "a.wav", 1000)
    with pytest.raises(FileNotFoundError):
        await worker("local").put_file("rec/a.wav", tmp_path / "gone.wav", "audio/wav")
    with pytest.raises(ValueError, match=r"'\.\.' segment"):
        await worker("local").put_file("rec/../a.wav", path, "audio/wav")
    with pytest.raises(PermissionDenied):
        await worker("wrong-key").put_file("rec/a.wav", path, "audio/wav")
    assert worker.starts == 1  # failed attempts do not cost the child


async def test_a_killed_child_fails_its_attempts_as_transient_and_is_replaced(worker: UploadWorker,
                                                                             tmp_path: Path) -> None:
    path = spool_file(tmp_path, "b.wav", 1000)
    hanging = asyncio.ensure_future(worker("hole").put_file("rec/b.wav", path, "audio/wav"))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if worker.pid is not None:
            break
    first = worker.pid
    assert first is not None
    await asyncio.sleep(0.5)  # the attempt is waiting on the black hole
    assert not hanging.done()
    os.kill(first, signal.SIGKILL)
    with pytest.raises(Transient, match="killed by signal 9"):
        await asyncio.wait_for(hanging, 10)

    stored = await worker("local").put_file("rec/b.wav", path, "audio/wav")  # a new child
    assert stored.size == 1000
    assert worker.starts == 2 and worker.pid not in (None, first)


async def test_a_cancelled_attempt_does_not_hold_up_the_others(worker: UploadWorker, tmp_path: Path) -> None:
    path = spool_file(tmp_path, "c.wav", 200_000)
    hanging = asyncio.ensure_future(worker("hole").put_file("rec/c.wav", path, "audio/wav"))
    stored = await asyncio.wait_for(worker("local").put_file("rec/c.wav", path, "audio/wav"), 20)
    assert stored.size == 200_000 and not hanging.done()
    hanging.cancel()  # what the outbox does when an attempt times out
    with pytest.raises(asyncio.CancelledError):
        await hanging
    again = await asyncio.wait_for(worker("local").put_file("rec/c2.wav", path, "audio/wav"), 20)
    assert again.size == 200_000 and worker.starts == 1


def test_the_child_exits_when_its_server_is_killed(spec: StoreSpec, tmp_path: Path) -> None:
    """`kill -9` of the server leaves no uploader behind (it would upload a file the restarted server
    uploads again, or hold a spool file open)."""
    path = spool_file(tmp_path, "d.wav", 1000)
    spec_file = tmp_path / "spec.py"
    spec_file.write_text(f"from callrec.storage.upload_worker import StoreSpec\nSPEC = {spec!r}\n")
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from callrec.storage.upload_worker import UploadWorker
        from spec import SPEC
        async def main():
            worker = UploadWorker(SPEC, lambda target: None)
            asyncio.ensure_future(worker("hole").put_file("rec/d.wav", {str(path)!r}, "audio/wav"))
            while worker.pid is None:
                await asyncio.sleep(0.02)
            print(worker.pid, flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                              start_new_session=True)  # its own group: the cleanup kill hits no one else
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        time.sleep(0.5)
        assert alive(child)
        server.kill()
        server.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the upload worker outlived its server"
    finally:
        with_suppressed_kill(server.pid)


def niceness(pid: int) -> int:
    """A process's nice value (field 19 of /proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left for a PID 1 that does not reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def with_suppressed_kill(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
