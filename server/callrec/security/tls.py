"""The server's TLS files (`--tls-cert`, `--tls-key`, `--tls-client-ca`), read and checked at start-up.

gRPC's own errors for a bad certificate come late and say little (a handshake that fails for
every client, or "could not add port"); checking here turns a swapped cert/key pair, a key
that does not belong to the certificate or an expired certificate into one line naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class ServerTlsFiles:
    """PEM bytes for gRPC's server credentials (and the metrics endpoint)."""

    cert_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None
    """Client certificates must chain to one of these (mTLS); None: no client certificate asked for."""


def _read(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{setting} {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{setting} {path} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{setting} {path} is not a PEM file (no -----BEGIN line)")
    return data


def _certificates(data: bytes, path: Path, setting: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{setting} {path} holds no PEM certificate (is it the key?)") from None
    return certs


def load_server_tls(cert: Path, key: Path, client_ca: Path | None = None) -> ServerTlsFiles:
    """Read and check the server's certificate chain, its key and the optional client CA bundle."""
    cert_pem = _read(cert, "--tls-cert")
    key_pem = _read(key, "--tls-key")
    leaf = _certificates(cert_pem, cert, "--tls-cert")[0]
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        encrypted = isinstance(exc, TypeError)
        reason = "it is encrypted (give an unencrypted key)" if encrypted else "it is not a private key"
        raise ValueError(f"--tls-key {key} cannot be used: {reason}") from None
    if private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError(f"--tls-key {key} does not belong to the certificate in --tls-cert {cert}")
    if leaf.not_valid_after_utc < datetime.now(UTC):
        raise ValueError(f"--tls-cert {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    ca_pem = None
    if client_ca is not None:
        ca_pem = _read(client_ca, "--tls-client-ca")
        _certificates(ca_pem, client_ca, "--tls-client-ca")
    return ServerTlsFiles(cert_pem, key_pem, ca_pem)
