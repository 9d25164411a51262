"""Python client for callrec: async (`AsyncCallrecClient`) and sync (`CallrecClient`)."""

from callrec_client.client import AsyncCallrecClient, CallrecClient, CallrecError

__all__ = ["AsyncCallrecClient", "CallrecClient", "CallrecError"]
