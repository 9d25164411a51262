"""Python client for callrec: async (`AsyncCallrecClient`) and sync (`CallrecClient`); `TlsOptions` for TLS."""

from callrec_client.client import AsyncCallrecClient, CallrecClient, CallrecError, TlsOptions

__all__ = ["AsyncCallrecClient", "CallrecClient", "CallrecError", "TlsOptions"]
