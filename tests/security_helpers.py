"""Certificates, keys and tokens for the security tests, made with `cryptography` in a tmp dir.

`make_pki(dir)` writes a CA, a server certificate for 127.0.0.1 / localhost and a client
certificate (plus a second, untrusted CA with its own client certificate); `jwks_keys()` makes an
RS256 and an ES256 key pair with their public JWKS; `token(...)` mints a JWT the way an identity
provider or `callrec token create` would, with any claims a test needs (expired, wrong role, ...).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from callrec.core.model import AudioEncoding, AudioFormat
from callrec.testing import ParticipantStream, tone_frames
from callrec.v1 import recording_pb2
from callrec_client.client import AsyncCallrecClient, TlsOptions
from callrec_client.gateway import GatewayConnection
from tests.harness import ServerProcess

SECRET_K1 = "k1-secret-" + "a" * 40
SECRET_K2 = "k2-secret-" + "b" * 40


@dataclass(frozen=True)
class Pki:
    """PEM files of a test PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA the server does not trust, and a client certificate it signed."""
    stranger_cert: Path
    stranger_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    """Write the test PKI's PEM files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("callrec test CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "callrec test server", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "callrec test client", server=False)
    other_key, other_cert = _ca("some other CA")
    stranger_key, stranger_cert = _leaf(other_key, other_cert, "a stranger", server=False)
    files = {
        "ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.pem": server_cert.public_bytes(serialization.Encoding.PEM),
        "server.key": _key_pem(server_key),
        "client.pem": client_cert.public_bytes(serialization.Encoding.PEM),
        "client.key": _key_pem(client_key),
        "other-ca.pem": other_cert.public_bytes(serialization.Encoding.PEM),
        "stranger.pem": stranger_cert.public_bytes(serialization.Encoding.PEM),
        "stranger.key": _key_pem(stranger_key),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return Pki(*(folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key",
                                      "other-ca.pem", "stranger.pem", "stranger.key")))


@dataclass(frozen=True)
class JwksKeys:
    """Private keys (PEM) for signing test tokens and the JWKS of their public halves."""

    rsa_private: bytes
    ec_private: bytes
    jwks: dict[str, Any]


def jwks_keys(rsa_kid: str = "rsa-1", ec_kid: str = "ec-1") -> JwksKeys:
    """An RS256 and an ES256 key pair; the JWKS names them `rsa_kid` and `ec_kid`."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    rsa_jwk.update(kid=rsa_kid, alg="RS256", use="sig")
    ec_jwk.update(kid=ec_kid, use="sig")  # no "alg": the key type (P-256) implies ES256
    return JwksKeys(_key_pem(rsa_key), _key_pem(ec_key), {"keys": [rsa_jwk, ec_jwk]})


def token(
    role: str | None = "admin",
    *,
    kid: str | None = "k1",
    key: str | bytes = SECRET_K1,
    algorithm: str = "HS256",
    calls: list[str] | None = None,
    ttl_s: float = 600,
    exp: float | None = None,
    nbf: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A JWT with the given claims (exp = now + ttl_s unless given; `exp=-1` leaves it out)."""
    now = time.time()
    claims: dict[str, Any] = {"iat": int(now) - 5}
    if role is not None:
        claims["role"] = role
    if exp != -1:
        claims["exp"] = int(exp if exp is not None else now + ttl_s)
    if nbf is not None:
        claims["nbf"] = int(nbf)
    if calls is not None:
        claims["calls"] = calls
    claims.update(extra or {})
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


class SecureServerProcess(ServerProcess):
    """`callrec serve` with TLS: readiness is checked over TLS (health needs no token)."""

    def __init__(self, data_dir: Path, pki: Pki, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, *args, env=env)
        self.pki = pki

    def channel_credentials(self, client_cert: bool = True) -> grpc.ChannelCredentials:
        """Trusting the test CA; with the test client certificate unless `client_cert` is False."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca.read_bytes(),
            private_key=self.pki.client_key.read_bytes() if client_cert else None,
            certificate_chain=self.pki.client_cert.read_bytes() if client_cert else None,
        )

    def channel(self) -> grpc.Channel:
        """A TLS channel (the harness's readiness check uses it)."""
        return grpc.secure_channel(self.target, self.channel_credentials())


def auth_config(folder: Path, jwks: dict[str, Any] | None = None) -> Path:
    """A config file with [auth]: hs256 keys k1 and k2 (rotation) and, given `jwks`, a jwks_file."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[auth]", f'hs256_keys = {{ k1 = "{SECRET_K1}", k2 = "{SECRET_K2}" }}']
    if jwks is not None:
        (folder / "keys.json").write_text(json.dumps(jwks))
        lines.append('jwks_file = "keys.json"')
    path = folder / "callrec.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def record_short_call(
    target: str, server_call_id: str, token: str, tls: TlsOptions | None = None, gateway_id: str = "gw-setup"
) -> recording_pb2.Recording:
    """Open a call, record 1 s of a tone as wav, end the call; the COMPLETED recording (server on --clock media)."""
    pcm = AudioFormat(AudioEncoding.PCM16LE, 16000, 1)
    frames = ParticipantStream("alice", pcm, tone_frames(440, 1.0, pcm)).gateway_frames()
    async with AsyncCallrecClient(target, token=token, tls=tls) as client, \
            GatewayConnection(target, server_call_id, gateway_id=gateway_id, token=token, tls=tls) as gw:
        await gw.join("alice", "Alice")
        rec = await client.start_recording(server_call_id, content_type="audio", format="wav")
        for f in frames:
            await gw.audio(f.participant_id, f.sequence, f.timestamp_us, f.data)
        await gw.end()
        deadline = time.monotonic() + 60
        while rec.state != recording_pb2.RECORDING_STATE_COMPLETED:
            assert time.monotonic() < deadline, f"recording still {recording_pb2.RecordingState.Name(rec.state)}"
            await asyncio.sleep(0.05)
            rec = await client.get_recording_state(rec.recording_id)
    return rec
