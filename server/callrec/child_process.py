"""Start a callrec worker module as a child process that talks over two pipes.

The video worker (`callrec.media.video_worker`) and the upload worker
(`callrec.storage.upload_worker`) are started the same way: a fresh interpreter running
`python -m <module> <command fd> <event fd>`, not multiprocessing's spawn, so the child
never re-imports the server's `__main__`, inherits no event loop, threads or sockets, and
shows in `ps` as what it is. Messages are pickled over `multiprocessing.connection`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from callrec.runtime_priority import normal_priority

__all__ = ["ChildProcess", "child_connections", "start_child"]

#: The directory that holds the `callrec` package: the child must import the same code.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class ChildProcess:
    """A started worker: the process, where the parent sends commands and where it reads events."""

    process: subprocess.Popen[bytes]
    commands: Connection  # parent -> child, write only
    events: Connection  # child -> parent, read only


def start_child(module: str) -> ChildProcess:
    """Run `python -m module <command fd> <event fd>` with this interpreter and this package on its path."""
    cmd_r, cmd_w = os.pipe()
    evt_r, evt_w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(cmd_r), str(evt_w)],
            pass_fds=(cmd_r, evt_w),
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except BaseException:
        for fd in (cmd_w, evt_r):
            os.close(fd)
        raise
    finally:
        os.close(cmd_r)
        os.close(evt_w)
    normal_priority(process.pid)  # a real-time control node's worker does bulk work: never above the media
    return ChildProcess(process, Connection(cmd_w, readable=False), Connection(evt_r, writable=False))


def child_connections(argv: list[str]) -> tuple[Connection, Connection]:
    """In the child: (commands, events) from the two descriptors `start_child` passed on its command line.

    Also back to normal priority before the worker starts a thread, if it inherited a real-time one (its
    parent lowers it too, right after starting it; this closes the moment between the two)."""
    normal_priority()
    return Connection(int(argv[1]), writable=False), Connection(int(argv[2]), readable=False)
