"""Prints the HAProxy `tcp-check` rules that call `grpc.health.v1.Health/Check` on each node.

Why raw bytes: HAProxy (2.6) has no gRPC health check, and its `http-check` cannot send a gRPC message
(the 5-byte length prefix is made of NUL bytes, which a config string cannot hold; `body-lf` sends
nothing). So the check is the whole cleartext HTTP/2 exchange, written out: the connection preface,
an empty SETTINGS frame, a HEADERS frame (HPACK: `:method POST`, `:scheme http`, `:path
/grpc.health.v1.Health/Check`, `:authority localhost`, `content-type application/grpc`, `te
trailers`) and a DATA frame ending the stream with an empty `HealthCheckRequest` (service "": the
whole server). A node is up when its answer holds the response message `status: SERVING` (bytes
`00 00000002 0801`); NOT_SERVING (`0802`, while it drains), an error or no answer within
`timeout check` marks it down.

    python deploy/haproxy_grpc_health.py   # the lines deploy/haproxy.cfg and haproxy-compose.cfg carry
"""

from __future__ import annotations

PATH = b"/grpc.health.v1.Health/Check"
SERVING_MESSAGE = "00000000020801"
"""gRPC frame of `HealthCheckResponse{status: SERVING}`: not compressed, 2 bytes, field 1 = 1."""


def _string(value: bytes) -> bytes:
    assert len(value) < 127  # HPACK 7-bit length prefix, no Huffman coding
    return bytes([len(value)]) + value


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def request() -> bytes:
    """The check's bytes: preface, SETTINGS, HEADERS (END_HEADERS), DATA (END_STREAM)."""
    headers = (
        b"\x83"  # :method POST (static table 3)
        + b"\x86"  # :scheme http (6)
        + b"\x04" + _string(PATH)  # :path (4), literal value, not indexed
        + b"\x01" + _string(b"localhost")  # :authority (1)
        + b"\x0f\x10" + _string(b"application/grpc")  # content-type (31 = 15 + 16)
        + b"\x00" + _string(b"te") + _string(b"trailers")  # a new name, literal value
    )
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(0x4, 0x0, 0, b"")  # SETTINGS
        + _frame(0x1, 0x4, 1, headers)  # HEADERS, END_HEADERS
        + _frame(0x0, 0x1, 1, b"\x00" * 5)  # DATA, END_STREAM: an empty HealthCheckRequest
    )


def rules() -> list[str]:
    """The backend lines."""
    return [
        "option tcp-check",
        "tcp-check connect",
        f"tcp-check send-binary {request().hex()}",
        f"tcp-check expect binary {SERVING_MESSAGE}",
    ]


if __name__ == "__main__":
    print("\n".join("    " + line for line in rules()))
