"""`callrec download`: fetch a stored file with a progress bar, resuming a partial download."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from callrec_client.client import CallrecClient


def default_name(location: str) -> str:
    """A file name from a location's last path segment."""
    name = unquote(urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1])
    return name or "download.bin"


def download(
    client: CallrecClient, location: str, output: Path, show_progress: bool = True, server_call_id: str = ""
) -> int:
    """Download `location` into `output`; a leftover `output.part` is resumed with a ranged read.

    Returns the file's size. The file appears under its final name only when complete.
    `server_call_id` (the recording's call) routes the download in a cluster (routing header).
    """
    part = output.with_name(output.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    total: int | None = None
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), disable=not show_progress,
    ) as progress:
        task = progress.add_task(output.name, total=None, completed=offset)
        with open(part, "ab") as out:
            for piece in client.download(location, offset=offset, server_call_id=server_call_id):
                if total is None:
                    total = piece.total_size
                    progress.update(task, total=total)
                if piece.offset != out.tell():
                    raise RuntimeError(f"server sent offset {piece.offset}, expected {out.tell()}")
                out.write(piece.data)
                progress.update(task, advance=len(piece.data))
            out.flush()
            os.fsync(out.fileno())
    size = part.stat().st_size
    if total is not None and size != total:
        raise RuntimeError(f"incomplete download: {size} of {total} bytes; run the command again to resume")
    part.replace(output)
    return size
