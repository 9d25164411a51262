"""callrec: a self-hosted call-recording server (gRPC ingest, mixing, chunked recordings, ACS events)."""

__version__ = "0.1.0"
