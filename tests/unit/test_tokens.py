"""Tokens, the role policy, [auth] / TLS settings and the server's TLS files, without a server (SPEC §5)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest

from callrec.config import AuthSettings, ConfigError, load_auth_settings, load_config
from callrec.security import policy
from callrec.security.tls import load_server_tls
from callrec.security.tokens import (
    LEEWAY_S,
    Role,
    TokenClaims,
    TokenError,
    TokenVerifier,
    create_token,
    hs256_keys,
    load_jwks,
    parse_ttl,
)
from tests.security_helpers import SECRET_K1, SECRET_K2, jwks_keys, make_pki, token


@pytest.fixture(scope="module")
def verifier() -> TokenVerifier:
    return TokenVerifier(hs256_keys({"k1": SECRET_K1, "k2": SECRET_K2}))


def refused(verifier: TokenVerifier, jwt_text: str) -> str:
    with pytest.raises(TokenError) as info:
        verifier.verify(jwt_text)
    message = str(info.value)
    assert not any(len(part) >= 8 and part in message for part in jwt_text.split(".")), "the token was echoed"
    return message


# ---- verification ------------------------------------------------------------------------------

def test_a_valid_token_gives_its_role_calls_and_kid(verifier: TokenVerifier) -> None:
    claims = verifier.verify(token("gateway", calls=["call-1"], extra={"sub": "gw-eu-1"}))
    assert claims.role is Role.GATEWAY and claims.calls == frozenset({"call-1"})
    assert claims.key_id == "k1" and claims.subject == "gw-eu-1"
    assert claims.allows_call("call-1") and not claims.allows_call("call-2")


def test_two_keys_at_once_for_rotation(verifier: TokenVerifier) -> None:
    assert verifier.verify(token("admin", kid="k1", key=SECRET_K1)).key_id == "k1"
    assert verifier.verify(token("admin", kid="k2", key=SECRET_K2)).key_id == "k2"
    # the old key retired: its tokens are refused, naming the keys still known
    retired = TokenVerifier(hs256_keys({"k2": SECRET_K2}))
    assert refused(retired, token("admin", kid="k1")) == "unknown kid 'k1'; the server knows k2"


def test_unknown_kid_names_the_known_ones(verifier: TokenVerifier) -> None:
    assert refused(verifier, token(kid="x")) == "unknown kid 'x'; the server knows k1, k2"


def test_a_token_without_kid_is_told_how_to_get_one(verifier: TokenVerifier) -> None:
    message = refused(verifier, token(kid=None))
    assert "no 'kid' header" in message and "k1, k2" in message


def test_bad_signature(verifier: TokenVerifier) -> None:
    forged = token(kid="k1", key="not-the-secret-" + "x" * 40)
    assert refused(verifier, forged) == "token signature does not verify with key 'k1'"


def test_expired_says_when(verifier: TokenVerifier) -> None:
    exp = time.time() - 3600
    message = refused(verifier, token(exp=exp))
    assert message.startswith("token expired at ") and "callrec token create" in message
    assert time.strftime("%Y-%m-%dT%H:%M", time.gmtime(exp)) in message


def test_exp_is_required(verifier: TokenVerifier) -> None:
    assert "no 'exp' claim" in refused(verifier, token(exp=-1))


def test_leeway_of_30_seconds_on_exp_and_nbf(verifier: TokenVerifier) -> None:
    assert LEEWAY_S == 30
    verifier.verify(token(exp=time.time() - 20))  # expired 20 s ago: within the leeway
    refused(verifier, token(exp=time.time() - 45))
    verifier.verify(token(nbf=time.time() + 20))  # valid in 20 s: within the leeway
    assert refused(verifier, token(nbf=time.time() + 120)).startswith("token not valid before ")


@pytest.mark.parametrize("role,fragment", [
    (None, "'role' claim is missing"),
    ("superuser", "'role' claim is 'superuser'"),
])
def test_role_must_be_one_of_the_three(verifier: TokenVerifier, role: str | None, fragment: str) -> None:
    message = refused(verifier, token(role))
    assert fragment in message and "admin, controller, gateway" in message


@pytest.mark.parametrize("calls", [[], "call-1", [1, 2], [""]])
def test_calls_must_be_a_non_empty_list_of_ids(verifier: TokenVerifier, calls: object) -> None:
    assert "'calls' claim" in refused(verifier, token("gateway", extra={"calls": calls}))


@pytest.mark.parametrize("text", ["", "garbage", "a.b.c", "Bearer x"])
def test_not_a_jwt(verifier: TokenVerifier, text: str) -> None:
    with pytest.raises(TokenError):
        verifier.verify(text)


def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    unsigned = jwt.encode({"role": "admin", "exp": int(time.time()) + 60}, None, algorithm="none",
                          headers={"kid": "k1"})
    assert "signed with 'none'" in refused(verifier, unsigned)


def test_admin_tokens_are_never_call_limited() -> None:
    claims = TokenClaims(Role.ADMIN, frozenset({"call-1"}), "", "k1", _far())
    assert not claims.call_limited and claims.allows_call("call-2")


def _far():  # an expiry the tests never reach
    from datetime import UTC, datetime
    return datetime.now(UTC) + timedelta(days=1)


# ---- JWKS: RS256 and ES256 ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def jwks_verifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenVerifier, object]:
    keys = jwks_keys()
    path = tmp_path_factory.mktemp("jwks") / "keys.json"
    path.write_text(json.dumps(keys.jwks))
    return TokenVerifier.from_config({"k1": SECRET_K1}, path), keys


def test_rs256_and_es256_tokens_from_a_jwks_file(jwks_verifier) -> None:
    v, keys = jwks_verifier
    assert v.verify(token("controller", kid="rsa-1", key=keys.rsa_private, algorithm="RS256")).role is Role.CONTROLLER
    assert v.verify(token("gateway", kid="ec-1", key=keys.ec_private, algorithm="ES256")).role is Role.GATEWAY
    assert v.verify(token("admin", kid="k1")).key_id == "k1"  # HS256 keys beside them
    assert v.kids == ["ec-1", "k1", "rsa-1"]


def test_the_key_fixes_the_algorithm(jwks_verifier, tmp_path: Path) -> None:
    """An HS256 token "signed" with the RSA public key (algorithm confusion) never verifies."""
    v, keys = jwks_verifier
    message = refused(v, token("admin", kid="rsa-1", key=json.dumps(keys.jwks["keys"][0]) + "x" * 32))
    assert message == "the token is signed with 'HS256' but key 'rsa-1' is RS256"
    message = refused(v, token("admin", kid="ec-1", key=keys.rsa_private, algorithm="RS256"))
    assert "key 'ec-1' is ES256" in message


def test_jwks_file_errors(tmp_path: Path) -> None:
    keys = jwks_keys()
    path = tmp_path / "keys.json"
    with pytest.raises(ValueError, match="does not exist"):
        load_jwks(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="must be a JWK set"):
        load_jwks(path)
    no_kid = dict(keys.jwks["keys"][0])
    del no_kid["kid"]
    path.write_text(json.dumps({"keys": [no_kid]}))
    with pytest.raises(ValueError, match='no "kid"'):
        load_jwks(path)
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(
        jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).prepare_key(keys.ec_private)))
    path.write_text(json.dumps({"keys": [{**private, "kid": "leak"}]}))
    with pytest.raises(ValueError, match="is a private key"):
        load_jwks(path)
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]}))
    with pytest.raises(ValueError, match="RS256 or ES256"):
        load_jwks(path)
    path.write_text(json.dumps(keys.jwks))
    with pytest.raises(ValueError, match="both in hs256_keys and in the jwks_file"):
        TokenVerifier.from_config({"rsa-1": SECRET_K1}, path)


def test_short_hs256_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        hs256_keys({"k1": "a-long-random-secret"})


# ---- creation (`callrec token create`) ----------------------------------------------------------

def test_created_tokens_verify(verifier: TokenVerifier) -> None:
    made = create_token(SECRET_K2, "k2", "gateway", parse_ttl("1h"), calls=["call-1", "call-2"], subject="gw")
    claims = verifier.verify(made)
    assert claims.role is Role.GATEWAY and claims.calls == {"call-1", "call-2"} and claims.key_id == "k2"
    assert 3590 < claims.expires_at.timestamp() - time.time() <= 3600
    assert jwt.get_unverified_header(made)["kid"] == "k2"


def test_admin_tokens_cannot_be_made_call_limited() -> None:
    with pytest.raises(ValueError, match="admin tokens are not limited to calls"):
        create_token(SECRET_K1, "k1", "admin", timedelta(hours=1), calls=["call-1"])


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800),
                                          ("1h30m", 5400), ("0.5h", 1800)])
def test_parse_ttl(text: str, seconds: float) -> None:
    assert parse_ttl(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1y", "0s", "1h-5m"])
def test_parse_ttl_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="ttl must be"):
        parse_ttl(text)


# ---- policy ------------------------------------------------------------------------------------

def _claims(role: str, calls: list[str] | None = None) -> TokenClaims:
    return TokenClaims(Role(role), frozenset(calls) if calls is not None else None, "", "k1", _far())


@pytest.mark.parametrize("role,allowed", [
    ("admin", {"RecordingService", "MediaService", "EventService", "ContentService", "UploadService",
               "SomeFutureService"}),  # a service the policy does not name is admin-only
    ("controller", {"RecordingService", "EventService", "ContentService"}),
    ("gateway", {"MediaService"}),
])
def test_roles_to_services(role: str, allowed: set[str]) -> None:
    for service in ("RecordingService", "MediaService", "EventService", "ContentService", "UploadService",
                    "SomeFutureService"):
        method = f"/callrec.v1.{service}/Anything"
        if service in allowed:
            policy.authorize(_claims(role), method)
        else:
            with pytest.raises(policy.AccessDenied, match=f"role '{role}' may not call callrec.v1.{service}"):
                policy.authorize(_claims(role), method)


def test_health_and_reflection_are_open() -> None:
    assert policy.is_open("/grpc.health.v1.Health/Check")
    assert policy.is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert policy.is_open("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert not policy.is_open("/callrec.v1.RecordingService/StartRecording")


def test_call_limits_name_the_call() -> None:
    limited = _claims("controller", ["call-1"])
    policy.check_call(limited, "call-1")
    with pytest.raises(policy.AccessDenied, match="limited to calls 'call-1'; call 'call-2' is not one of them"):
        policy.check_call(limited, "call-2")
    with pytest.raises(policy.AccessDenied, match="set server_call_id"):
        policy.check_call(limited, "")
    with pytest.raises(policy.AccessDenied, match="recording 'r1' belongs to call 'call-2'"):
        policy.check_call(limited, "call-2", "recording 'r1'")
    policy.check_call(_claims("controller"), "call-2")  # no `calls`: every call


# ---- settings ----------------------------------------------------------------------------------

def test_auth_section_and_relative_paths(tmp_path: Path) -> None:
    toml = tmp_path / "callrec.toml"
    toml.write_text(f'[server]\ntls_cert = "certs/server.pem"\ntls_key = "certs/server.key"\n'
                    f'[auth]\nhs256_keys = {{ k1 = "{SECRET_K1}", k2 = "{SECRET_K2}" }}\njwks_file = "keys.json"\n')
    cfg = load_config({}, toml)
    assert cfg.auth == AuthSettings({"k1": SECRET_K1, "k2": SECRET_K2}, tmp_path / "keys.json")
    assert cfg.tls_cert == tmp_path / "certs" / "server.pem" and cfg.tls_key == tmp_path / "certs" / "server.key"
    assert SECRET_K1 not in repr(cfg), "secrets must never be printed"
    flagged = load_config({"tls_cert": Path("a.pem"), "tls_key": Path("a.key")}, toml)
    assert flagged.tls_cert == Path("a.pem")  # a flag beats the file
    assert load_auth_settings(toml) == cfg.auth


@pytest.mark.parametrize("text,fragment", [
    ("[auth]\n", "[auth] needs hs256_keys"),
    ("[auth]\nhs256_key = 1\n", "unknown [auth] keys ['hs256_key']"),
    ("[auth]\nhs256_keys = [1]\n", "must be a table of kid"),
    ('[server]\ntls_cert = "a.pem"\n', "--tls-cert and --tls-key go together"),
    ('[server]\ntls_client_ca = "ca.pem"\n', "--tls-client-ca (client certificates) needs TLS"),
])
def test_bad_security_settings(tmp_path: Path, text: str, fragment: str) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config({}, toml)
    assert fragment in str(info.value)


def test_public_bind_needs_tls_and_tokens_or_insecure(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f'[auth]\nhs256_keys = {{ k1 = "{SECRET_K1}" }}\n')
    tls = {"tls_cert": Path("s.pem"), "tls_key": Path("s.key")}
    with pytest.raises(ConfigError, match=r"missing: TLS \(--tls-cert, --tls-key\)\); .* pass --insecure"):
        load_config({"listen": "0.0.0.0:50051"}, toml)
    with pytest.raises(ConfigError, match=r"missing: tokens \(\[auth\] in the config file\)"):
        load_config({"listen": "0.0.0.0:50051", **tls})
    assert load_config({"listen": "0.0.0.0:50051", **tls}, toml).listen == "0.0.0.0:50051"
    with pytest.raises(ConfigError, match=r"refusing to serve metrics on 0\.0\.0\.0:9100"):
        load_config({"metrics_listen": "0.0.0.0:9100"})
    assert load_config({"metrics_listen": "0.0.0.0:9100", **tls}, toml).metrics_listen == "0.0.0.0:9100"
    assert load_config({"metrics_listen": "0.0.0.0:9100", "insecure": True}).insecure


# ---- the server's TLS files --------------------------------------------------------------------

def test_server_tls_files_are_checked(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    files = load_server_tls(pki.server_cert, pki.server_key, pki.ca)
    assert files.client_ca == pki.ca.read_bytes() and b"BEGIN CERTIFICATE" in files.cert_chain
    assert b"PRIVATE KEY" not in repr(files).encode()
    with pytest.raises(ValueError, match="does not belong to the certificate"):
        load_server_tls(pki.server_cert, pki.client_key)
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        load_server_tls(pki.server_key, pki.server_key)
    with pytest.raises(ValueError, match="is not a private key"):
        load_server_tls(pki.server_cert, pki.server_cert)
    with pytest.raises(ValueError, match="does not exist"):
        load_server_tls(tmp_path / "nope.pem", pki.server_key)
    (tmp_path / "text.pem").write_text("hello")
    with pytest.raises(ValueError, match="is not a PEM file"):
        load_server_tls(pki.server_cert, pki.server_key, tmp_path / "text.pem")
