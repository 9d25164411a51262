"""Server settings: embedded defaults < TOML file < `CALLREC_*` environment < command-line flags.

The CLI (`callrec serve`) resolves flags and environment variables (typer's
`envvar`), then `load_config` lays them over the TOML file and the defaults, so
the precedence is exactly the one SPEC §5 promises.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "CALLREC_"
CLOCK_KINDS = ("realtime", "media")
LOG_FORMATS = ("console", "json")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says what is expected."""


@dataclass(frozen=True)
class Limits:
    """Resource limits, enforced with RESOURCE_EXHAUSTED."""

    max_recordings: int = 200
    """Recordings in progress (active or paused) at once, server-wide."""
    max_participants_per_call: int = 100
    """Participants one call may have."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message accepted (a 1080p I420 frame is ~3 MiB)."""
    max_buffered_ms_per_participant: int = 5_000
    """Media buffered per participant before frames are rejected as overflow."""


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of `callrec serve`; see `callrec serve --help` for the flag of each."""

    listen: str = "127.0.0.1:50051"
    """HOST:PORT the gRPC server binds (port 0 picks a free port)."""
    data_dir: Path = Path("./data")
    """SQLite state, the spool and the local store live here."""
    metrics_listen: str = ""
    """HOST:PORT of the Prometheus /metrics endpoint; empty disables it."""
    clock: str = "realtime"
    """realtime (production, playout delay) or media (tests/benchmarks: as fast as media arrives)."""
    resource_id: str = "/callrec/deployments/default"
    """Stable path naming this deployment: the events' `topic` and the metadata's `resourceId`."""
    log_level: str = "info"
    """debug, info, warning or error."""
    log_format: str = "console"
    """console (human) or json (one JSON object per line)."""
    insecure: bool = False
    """Allow binding a non-loopback address without TLS and tokens."""
    reconnect_grace_s: float = 30.0
    """Seconds a broken gateway stream may take to reconnect before its call counts as ended."""
    playout_delay_ms: int = 200
    """Real-time clock: how long the mixer waits for late frames."""
    event_retention_h: float = 24.0
    """Hours events stay in the durable log."""
    local_retention_h: float = 24.0
    """Hours the built-in local store keeps recordings before deleting them."""
    idempotency_window_h: float = 24.0
    """Hours a StartRecording `request_id` is remembered."""
    upload_backoff_max_s: float = 30.0
    """Longest wait between two upload attempts of a file while its store is failing."""
    upload_concurrency: int = 2
    """Files uploaded at once per storage target (a slow or dead target fills only its own slots)."""
    upload_timeout_s: float = 300.0
    """Seconds one upload attempt may take (plus 1 s per MiB of the file); then it is retried."""
    upload_deadline_h: float = 24.0
    """Hours after which an upload still not stored fails (its recording FAILED, the file kept); 0: never."""
    upload_retention_h: float = 24.0
    """Hours the outbox remembers stored uploads (`callrec uploads list`) before pruning them."""
    failed_retention_h: float = 168.0
    """Hours failed uploads (rows and spool files) and failed recordings' spool directories are kept."""
    housekeeping_interval_s: float = 60.0
    """Seconds between retention sweeps (events, idempotency keys, local store files, uploads, spool)."""
    drain_timeout_s: float = 60.0
    """On SIGTERM: seconds to finish recordings and uploads before exiting."""
    default_storage: str = "local"
    """Name of the storage target used when StartRecording gives no destination."""
    storage_targets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Named storage targets ([storage.targets.NAME] in the TOML file); "local" always exists."""
    limits: Limits = field(default_factory=Limits)
    """Resource limits ([limits] in the TOML file)."""

    @property
    def state_db_path(self) -> Path:
        """The SQLite database with recordings, idempotency keys, outbox and events."""
        return self.data_dir / "callrec.sqlite3"

    @property
    def spool_dir(self) -> Path:
        """Where chunks are written before they are stored."""
        return self.data_dir / "spool"

    @property
    def local_store_dir(self) -> Path:
        """Root of the built-in local store."""
        return self.data_dir / "store"

    def host_port(self) -> tuple[str, int]:
        """Split `listen` into host and port, with a clear error when malformed."""
        return parse_host_port(self.listen, "listen")


def parse_host_port(value: str, setting: str) -> tuple[str, int]:
    """Parse "HOST:PORT" ("[::1]:50051" for IPv6)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{setting} must be HOST:PORT, e.g. 127.0.0.1:50051; got {value!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    return host in ("localhost", "::1") or host.startswith("127.")


_TOML_SECTIONS = {"server", "storage", "limits"}


def _from_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file into ServerConfig keyword arguments."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(doc) - _TOML_SECTIONS - {f.name for f in fields(ServerConfig)}
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown keys {sorted(unknown)}; known sections: {sorted(_TOML_SECTIONS)}"
        )
    values: dict[str, Any] = {k: v for k, v in doc.items() if k not in _TOML_SECTIONS}
    values.update(doc.get("server", {}))
    storage = doc.get("storage", {})
    if "default" in storage:
        values["default_storage"] = storage["default"]
    if "targets" in storage:
        values["storage_targets"] = storage["targets"]
    if "limits" in doc:
        known = {f.name for f in fields(Limits)}
        bad = set(doc["limits"]) - known
        if bad:
            raise ConfigError(f"config file {path}: unknown [limits] keys {sorted(bad)}; known: {sorted(known)}")
        values["limits"] = Limits(**doc["limits"])
    return values


def load_config(overrides: Mapping[str, Any] | None = None, config_file: Path | None = None) -> ServerConfig:
    """Build the config: defaults, then the TOML file, then `overrides` (flags and env, None = unset)."""
    values: dict[str, Any] = _from_toml(config_file) if config_file else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    known = {f.name for f in fields(ServerConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"])
    config = replace(ServerConfig(), **values)
    validate(config)
    return config


def validate(config: ServerConfig) -> None:
    """Reject settings that cannot work, naming the setting and the expected values."""
    host, _ = config.host_port()
    if config.metrics_listen:
        parse_host_port(config.metrics_listen, "metrics_listen")
    if config.clock not in CLOCK_KINDS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCK_KINDS)}; got {config.clock!r}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}; got {config.log_format!r}")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error; got {config.log_level!r}")
    if not is_loopback(host) and not config.insecure:
        raise ConfigError(
            f"refusing to listen on {config.listen} without TLS and tokens; "
            "bind a loopback address or pass --insecure"
        )
    for name, value in (
        ("reconnect_grace_s", config.reconnect_grace_s),
        ("event_retention_h", config.event_retention_h),
        ("local_retention_h", config.local_retention_h),
        ("drain_timeout_s", config.drain_timeout_s),
        ("housekeeping_interval_s", config.housekeeping_interval_s),
        ("upload_backoff_max_s", config.upload_backoff_max_s),
        ("upload_deadline_h", config.upload_deadline_h),
        ("upload_retention_h", config.upload_retention_h),
        ("failed_retention_h", config.failed_retention_h),
    ):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0; got {value}")
    if config.upload_concurrency < 1:
        raise ConfigError(f"upload_concurrency must be >= 1; got {config.upload_concurrency}")
    if config.upload_timeout_s <= 0:
        raise ConfigError(f"upload_timeout_s must be > 0; got {config.upload_timeout_s}")
    if config.default_storage != "local" and config.default_storage not in config.storage_targets:
        raise ConfigError(
            f"default storage target {config.default_storage!r} is not defined; "
            f"add [storage.targets.{config.default_storage}] to the config file"
        )
