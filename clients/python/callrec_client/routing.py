"""The cluster routing header: which call an RPC belongs to, for the proxy in front of the nodes.

In cluster mode (SPEC §8) a call belongs to the node where its gateway opened it, and a proxy
(HAProxy `balance hdr(x-callrec-server-call-id)`, or Envoy's ring hash on the header) sends every
RPC carrying the same `x-callrec-server-call-id` to the same node. Without the header HAProxy falls
back to round robin, so a call's control RPCs would land on other nodes and each be forwarded: one
extra hop per RPC. Clients therefore send the header on every call-scoped RPC they can attribute.

Recording ids are opaque (they do not contain the call id), so the clients remember
`recording_id -> server_call_id` from every `Recording` they receive, in `RecordingCalls`: a
bounded LRU map (10 000 entries by default, about 2 MB), because a long-running back end sees an
unbounded number of recordings and only the recent ones are still being paused, stopped or queried.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from urllib.parse import quote

from callrec.v1 import recording_pb2

ROUTING_HEADER = "x-callrec-server-call-id"
"""Metadata key naming the call an RPC belongs to (lower case: gRPC metadata keys are)."""

DEFAULT_RECORDING_CACHE_SIZE = 10_000
"""How many `recording_id -> server_call_id` pairs a client remembers (least recently used go first)."""


def routing_value(server_call_id: str) -> str:
    """The header value for a call: the id itself when it is printable ASCII without edge spaces
    (every gateway's ids in practice), else its UTF-8 percent-encoding.

    Why encode at all: a gRPC metadata value must be printable ASCII (grpc raises on anything
    else), and the proxy only needs the same value for the same call. The encoding is
    `encodeURIComponent`'s, so the Node client produces the identical value and hashes alike.
    """
    if server_call_id.isascii() and server_call_id.isprintable() and server_call_id == server_call_id.strip():
        return server_call_id
    return quote(server_call_id, safe="!*'()")


def routing_metadata(server_call_id: str) -> tuple[tuple[str, str], ...]:
    """`((ROUTING_HEADER, value),)` for a known call; empty when `server_call_id` is empty (unknown)."""
    return ((ROUTING_HEADER, routing_value(server_call_id)),) if server_call_id else ()


class RecordingCalls:
    """A bounded, thread-safe LRU map `recording_id -> server_call_id`.

    Filled from the `Recording`s a client receives; read by the RPCs that take only a
    `recording_id` (Get/Pause/Resume/StopRecording, RetryUploads, ListUploads of a recording).
    Thread-safe because one `CallrecClient` may be shared by a back end's worker threads.
    """

    def __init__(self, max_size: int = DEFAULT_RECORDING_CACHE_SIZE) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1; got {max_size}")
        self.max_size = max_size
        self._calls: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, recording_id: object) -> bool:
        return recording_id in self._calls

    def set(self, recording_id: str, server_call_id: str) -> None:
        """Remember one pair (the most recently used from now on); empty ids are ignored."""
        if not recording_id or not server_call_id:
            return
        with self._lock:
            self._calls[recording_id] = server_call_id
            self._calls.move_to_end(recording_id)
            while len(self._calls) > self.max_size:
                self._calls.popitem(last=False)

    def remember(self, recordings: Iterable[recording_pb2.Recording]) -> None:
        """Remember the call of each recording (a response's `recording` or `recordings`)."""
        for rec in recordings:
            self.set(rec.recording_id, rec.server_call_id)

    def get(self, recording_id: str) -> str:
        """The recording's call, or "" when unknown; a hit counts as a use (LRU)."""
        with self._lock:
            server_call_id = self._calls.get(recording_id, "")
            if server_call_id:
                self._calls.move_to_end(recording_id)
            return server_call_id

    def resolve(self, recording_id: str, server_call_id: str = "") -> str:
        """The call to route a recording's RPC to: `server_call_id` when given (it wins), else the map's."""
        return server_call_id or self.get(recording_id)
