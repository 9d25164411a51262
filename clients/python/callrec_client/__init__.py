"""Python client for callrec: async (`AsyncCallrecClient`) and sync (`CallrecClient`); `TlsOptions` for TLS.

`ROUTING_HEADER` is the metadata key the clients send on call-scoped RPCs (cluster mode, SPEC §8);
`RecordingCalls` is the bounded recording -> call map they route recording-id RPCs with.
"""

from callrec_client.client import AsyncCallrecClient, CallrecClient, CallrecError, TlsOptions
from callrec_client.routing import ROUTING_HEADER, RecordingCalls

__all__ = ["ROUTING_HEADER", "AsyncCallrecClient", "CallrecClient", "CallrecError", "RecordingCalls", "TlsOptions"]
