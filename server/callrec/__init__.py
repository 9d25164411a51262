"""callrec: a self-hosted call-recording server (gRPC ingest, mixing, chunked recordings, ACS events)."""

from callrec import compiled as _compiled

__version__ = "0.1.0"

# Before any other module of the package loads: the compiled media path, or its source if that build
# is missing, disabled or older than the source (see `callrec.compiled`).
_compiled.install()
