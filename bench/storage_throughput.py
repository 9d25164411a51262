"""Upload/download throughput of the storage backends against real local servers (moto S3, Azurite).

    .venv/bin/python bench/storage_throughput.py [--size-mb 200] [--part-mib 8] [--concurrency 4]

Starts its own moto server and Azurite on loopback ports, writes one file of random bytes, then for
each backend times `put_file` (local hashing + multipart/block upload + checksum verification) and a
full `open_range` read, and watches the event loop while doing so: the storage layer shares the loop
with the audio mixer, so the worst stall matters as much as MB/s. MB = 10^6 bytes. Not run by tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "server"))

from callrec.storage.base import Store  # noqa: E402
from callrec.storage.targets import store_from_config  # noqa: E402
from tests.integration.storage_servers import TEST_BUCKET, TEST_CONTAINER, AzuriteServer, MotoServer  # noqa: E402


@dataclass
class Result:
    backend: str
    upload_s: float
    download_s: float
    size: int
    parts: int
    verified_by: str
    upload_stall_ms: float
    download_stall_ms: float

    def row(self) -> str:
        up = self.size / 1e6 / self.upload_s
        down = self.size / 1e6 / self.download_s
        cells = [
            f"{self.backend:<14}",
            f"{up:>11.1f}",
            f"{self.upload_s:>8.2f}",
            f"{down:>13.1f}",
            f"{self.parts:>5}",
            f"{self.verified_by:<20}",
            f"{self.upload_stall_ms:>11.1f}",
            f"{self.download_stall_ms:>13.1f}",
        ]
        return "| " + " | ".join(cells) + " |"


class LoopWatch:
    """Measures the longest time the event loop was blocked (a 5 ms ticker's worst overshoot)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)

    def __enter__(self) -> LoopWatch:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def make_file(path: Path, size: int) -> None:
    block = 8 * 1024 * 1024
    with path.open("wb") as f:
        remaining = size
        while remaining:
            n = min(block, remaining)
            f.write(os.urandom(n))
            remaining -= n


async def measure(name: str, config: dict[str, Any], source: Path, size: int) -> Result:
    store: Store = store_from_config(name, config)
    try:
        key = f"bench/{name}/0-video.mp4"
        with LoopWatch() as up_watch:
            start = time.perf_counter()
            stored = await store.put_file(key, source, "video/mp4")
            upload_s = time.perf_counter() - start
        with LoopWatch() as down_watch:
            start = time.perf_counter()
            read = 0
            async for piece in store.open_range(key):
                read += len(piece)
            download_s = time.perf_counter() - start
        assert read == size, (read, size)
        await store.delete(key)
        return Result(
            name,
            upload_s,
            download_s,
            size,
            stored.parts,
            stored.verified_by,
            up_watch.worst * 1000,
            down_watch.worst * 1000,
        )
    finally:
        await store.close()


async def run(args: argparse.Namespace, moto: MotoServer, azurite: AzuriteServer, workdir: Path) -> list[Result]:
    size = int(args.size_mb * 1e6)
    source = workdir / "source.bin"
    make_file(source, size)
    tuning_s3 = {"part_size_mib": args.part_mib, "max_concurrency": args.concurrency}
    tuning_az = {
        "max_block_size_mib": args.part_mib,
        "max_single_put_size_mib": args.part_mib,
        "max_concurrency": args.concurrency,
    }
    targets = {
        "local": {"kind": "local", "path": str(workdir / "store")},
        "s3 (moto)": moto.target(TEST_BUCKET, "bench", **tuning_s3),
        "azure": azurite.target(TEST_CONTAINER, "bench", **tuning_az),
    }
    if args.no_validate:
        targets["azure (no md5)"] = azurite.target(TEST_CONTAINER, "bench", validate_content=False, **tuning_az)
    results = []
    for name, config in targets.items():
        for _ in range(args.repeat):
            results.append(await measure(name, config, source, size))
            print(f"  done: {name}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=200, help="file size in MB (10^6 bytes)")
    parser.add_argument("--part-mib", type=int, default=8, help="multipart part / block size in MiB")
    parser.add_argument("--concurrency", type=int, default=4, help="parts/blocks in flight per upload")
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend")
    parser.add_argument("--no-validate", action="store_true", help="also run Azure without per-block MD5")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
        print("starting moto and Azurite...", file=sys.stderr)
        moto, azurite = MotoServer().start(), AzuriteServer().start()
        try:
            moto.create_bucket(TEST_BUCKET)
            azurite.create_container(TEST_CONTAINER)
            results = asyncio.run(run(args, moto, azurite, Path(tmp)))
        finally:
            moto.stop()
            azurite.stop()

    print(
        f"\nstorage throughput: {args.size_mb:g} MB file, {args.part_mib} MiB parts, "
        f"{args.concurrency} in flight, {os.cpu_count()} CPUs\n"
    )
    headers = [
        "backend",
        "upload MB/s",
        "upload s",
        "download MB/s",
        "parts",
        "verified by",
        "up stall ms",
        "down stall ms",
    ]
    widths = [14, 11, 8, 13, 5, 20, 11, 13]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
