"""Build stores from configuration: named targets (TOML `[storage.targets.NAME]`).

Bring-your-own-storage URLs are not built here but by `storage.external` (under the operator's
`[storage.external]` policy): a store for a client-chosen URL must never be built with a configured
target's or the environment's credentials.

Why validation lives here: a typo in a storage target should stop `callrec serve` at start-up with a
message naming the target and the field, not surface hours later as a failed upload. Unknown fields
are errors for the same reason.

Target fields (SPEC §5), all optional unless marked:
- `kind = "local"`: `path` (directory; default `<data dir>/recordings`), `retention_hours` (default 24,
  0 keeps forever).
- `kind = "s3"`: `bucket` (required), `prefix`, `region`, `endpoint_url`, `access_key_id` +
  `secret_access_key` (+ `session_token`) or `profile` (else the standard AWS chain),
  `part_size_mib` (8), `max_concurrency` (4), `max_attempts` (3), `connect_timeout` / `read_timeout`
  (seconds), `addressing_style` (`auto`|`path`|`virtual`), `checksum` (`sha256`|`none`).
- `kind = "azure_blob"`: `container` (required), `prefix`, one of `connection_string` or `account_url`
  (with `credential` = account key, or `sas_token`), `max_block_size_mib` (8),
  `max_single_put_size_mib` (8), `max_concurrency` (4), `max_attempts` (3), `connection_timeout` /
  `read_timeout`, `validate_content` (true).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from callrec.security.redact import redact_text, redact_url
from callrec.storage.base import Store

MIB = 1024 * 1024
_Choice = TypeVar("_Choice", bound=str)
KINDS = ("local", "s3", "azure_blob")

_COMMON = {"kind", "prefix"}
_FIELDS: dict[str, set[str]] = {
    "local": {"kind", "path", "retention_hours"},
    "s3": _COMMON
    | {
        "bucket",
        "region",
        "endpoint_url",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "profile",
        "part_size_mib",
        "max_concurrency",
        "max_attempts",
        "connect_timeout",
        "read_timeout",
        "addressing_style",
        "checksum",
    },
    "azure_blob": _COMMON
    | {
        "container",
        "connection_string",
        "account_url",
        "credential",
        "sas_token",
        "max_block_size_mib",
        "max_single_put_size_mib",
        "max_concurrency",
        "max_attempts",
        "connection_timeout",
        "read_timeout",
        "validate_content",
    },
}


class _Fields:
    """Typed, named access to one target's mapping; every error names the target and the field."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.config = config

    def error(self, message: str) -> ValueError:
        return ValueError(f"storage target {self.name!r}: {message}")

    def text(self, field: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.config.get(field)
        if value is None or value == "":
            if required:
                raise self.error(f"missing required field {field!r}")
            return default
        if not isinstance(value, str):
            raise self.error(f"field {field!r} must be a string, got {type(value).__name__}")
        return value

    def number(self, field: str, default: float, *, minimum: float, integer: bool = False) -> float:
        value = self.config.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            kind = "an integer" if integer else "a number"
            raise self.error(f"field {field!r} must be {kind}, got {value!r}")
        if value < minimum:
            raise self.error(f"field {field!r} must be at least {minimum:g}, got {value!r}")
        return value

    def integer(self, field: str, default: int, *, minimum: int) -> int:
        return int(self.number(field, default, minimum=minimum, integer=True))

    def boolean(self, field: str, default: bool) -> bool:
        value = self.config.get(field, default)
        if not isinstance(value, bool):
            raise self.error(f"field {field!r} must be true or false, got {value!r}")
        return value

    def choice(self, field: str, default: _Choice, choices: tuple[_Choice, ...]) -> _Choice:
        value = (self.text(field, default=default) or default).lower()
        if value not in choices:
            raise self.error(f"field {field!r} must be one of {', '.join(choices)}, got {value!r}")
        return choices[choices.index(value)]  # the same string, typed as one of `choices`


def store_from_config(name: str, config: Mapping[str, Any], *, data_dir: Path | str | None = None) -> Store:
    """Build the store of target `name` from its config mapping; `ValueError` names what is wrong.

    `data_dir` resolves a local target without `path` (to `<data_dir>/recordings`) and relative paths.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"storage target {name!r}: must be a table of fields, got {type(config).__name__}")
    fields = _Fields(name, config)
    kind = fields.text("kind", required=True)
    if kind not in KINDS:
        raise fields.error(f"field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(config) - _FIELDS[kind])
    if unknown:
        raise fields.error(
            f"unknown field(s) {', '.join(map(repr, unknown))} for kind {kind!r} "
            f"(valid: {', '.join(sorted(_FIELDS[kind]))})"
        )
    return _BUILDERS[kind](fields, Path(data_dir) if data_dir is not None else None)


def _local(fields: _Fields, data_dir: Path | None) -> Store:
    from callrec.storage.local import LocalStore

    path = fields.text("path")
    if path is None:
        if data_dir is None:
            raise fields.error("missing required field 'path'")
        root = data_dir / "recordings"
    else:
        root = Path(path).expanduser()
        if not root.is_absolute() and data_dir is not None:
            root = data_dir / root
    hours = fields.number("retention_hours", 24, minimum=0)
    return LocalStore(root, retention=timedelta(hours=hours) if hours else None)


def _s3(fields: _Fields, _data_dir: Path | None) -> Store:
    from callrec.storage.s3 import ADDRESSING_STYLES, S3Store

    access_key_id = fields.text("access_key_id")
    secret_access_key = fields.text("secret_access_key")
    if bool(access_key_id) != bool(secret_access_key):
        raise fields.error("give both 'access_key_id' and 'secret_access_key', or neither")
    if access_key_id and fields.text("profile"):
        raise fields.error("give explicit keys or 'profile', not both")
    # Unset: path style for custom endpoints (MinIO, moto...), botocore's choice for AWS.
    addressing_style = (
        fields.choice("addressing_style", "auto", ADDRESSING_STYLES)
        if fields.text("addressing_style")
        else None
    )
    endpoint_url = fields.text("endpoint_url")
    if endpoint_url and urlsplit(endpoint_url).scheme not in ("http", "https"):
        raise fields.error(f"field 'endpoint_url' must be an http(s) URL, got {redact_url(endpoint_url)!r}")
    return S3Store(
        str(fields.text("bucket", required=True)),
        prefix=fields.text("prefix") or "",
        region=fields.text("region"),
        endpoint_url=endpoint_url,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        session_token=fields.text("session_token"),
        profile=fields.text("profile"),
        part_size=fields.integer("part_size_mib", 8, minimum=5) * MIB,
        max_concurrency=fields.integer("max_concurrency", 4, minimum=1),
        max_attempts=fields.integer("max_attempts", 3, minimum=1),
        connect_timeout=fields.number("connect_timeout", 5.0, minimum=0.1),
        read_timeout=fields.number("read_timeout", 60.0, minimum=0.1),
        addressing_style=addressing_style,
        checksum_algorithm=None if fields.choice("checksum", "sha256", ("sha256", "none")) == "none" else "SHA256",
    )


def _azure_blob(fields: _Fields, _data_dir: Path | None) -> Store:
    from callrec.storage.azure_blob import AzureBlobStore

    connection_string = fields.text("connection_string")
    account_url = fields.text("account_url")
    credential = fields.text("credential")
    sas_token = fields.text("sas_token")
    if bool(connection_string) == bool(account_url):
        raise fields.error("give exactly one of 'connection_string' or 'account_url'")
    if connection_string and (credential or sas_token):
        raise fields.error("'credential' and 'sas_token' go with 'account_url', not 'connection_string'")
    if credential and sas_token:
        raise fields.error("give 'credential' or 'sas_token', not both")
    if account_url and urlsplit(account_url).scheme not in ("http", "https"):
        raise fields.error(f"field 'account_url' must be an http(s) URL, got {redact_url(account_url)!r}")
    try:
        return AzureBlobStore(
            str(fields.text("container", required=True)),
            prefix=fields.text("prefix") or "",
            connection_string=connection_string,
            account_url=account_url,
            credential=credential,
            sas_token=sas_token,
            max_block_size=fields.integer("max_block_size_mib", 8, minimum=1) * MIB,
            max_single_put_size=fields.integer("max_single_put_size_mib", 8, minimum=1) * MIB,
            max_concurrency=fields.integer("max_concurrency", 4, minimum=1),
            max_attempts=fields.integer("max_attempts", 3, minimum=1),
            connection_timeout=fields.number("connection_timeout", 5.0, minimum=0.1),
            read_timeout=fields.number("read_timeout", 60.0, minimum=0.1),
            validate_content=fields.boolean("validate_content", True),
        )
    except ValueError as exc:  # e.g. a malformed connection string, reported by the SDK (which may quote it)
        raise fields.error(redact_text(str(exc), [connection_string, credential, sas_token])) from None


_BUILDERS: dict[str, Callable[[_Fields, Path | None], Store]] = {
    "local": _local,
    "s3": _s3,
    "azure_blob": _azure_blob,
}


def stores_from_config(storage: Mapping[str, Any] | None, *, data_dir: Path | str) -> tuple[dict[str, Store], str]:
    """All stores of a `[storage]` table and the default target's name.

    A `local` target under `<data_dir>/recordings` exists even when not configured (the embedded
    default); `default` falls back to `local`.
    """
    storage = storage or {}
    unknown = sorted(set(storage) - {"default", "targets"})
    if unknown:
        raise ValueError(f"[storage]: unknown field(s) {', '.join(map(repr, unknown))} (valid: default, targets)")
    targets = dict(storage.get("targets") or {})
    targets.setdefault("local", {"kind": "local"})
    default = storage.get("default") or "local"
    if default not in targets:
        raise ValueError(f"[storage]: default target {default!r} is not configured (have: {', '.join(targets)})")
    return {name: store_from_config(name, cfg, data_dir=data_dir) for name, cfg in targets.items()}, default
