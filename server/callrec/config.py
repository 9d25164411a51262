"""Server settings: embedded defaults < TOML file < `CALLREC_*` environment < command-line flags.

The CLI (`callrec serve`) resolves flags and environment variables (typer's
`envvar`), then `load_config` lays them over the TOML file and the defaults, so
the precedence is exactly the one SPEC §5 promises.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from callrec.core.admission import Capacity
from callrec.core.limits import Limits
from callrec.webhooks.config import WebhookConfigError, WebhooksConfig, parse_webhooks

CLUSTER_AUDIO_PARTICIPANTS = 853.0
CLUSTER_CALLS = 256.0
"""Cluster mode's default audio capacity of a node: a load of participants / 853 + calls / 256, which is 1.0 at
both shapes one node behind HAProxy kept at real time on the 2-core development machine (`make bench
ARGS="--only cluster"`, rows 8a and 8c, PostgreSQL and Redis on the same machine, Opus in, mixed mp3, every
frame on time and the control probe under 200 ms; 2026-12-03): 64 10-person calls (640 participants; 800 kept
every frame, the probe took 207 ms) and 160 1:1 calls (320; 400 likewise, 292 ms). Row 8d fits the two; by
hand, 720 and 360 passed twice each, so the fit keeps a margin. Before the per-call share the default was 640
participants alone, which admitted 1:1 calls up to 512 participants at the ceiling, past the 400 where they
fall behind. A slower machine should set `capacity_audio_participants` and `capacity_calls`."""
CLUSTER_VIDEO_COMPOSITES = 1.0
"""1080p16 composites one node sustains (`make bench`, same machine)."""

ENV_PREFIX = "CALLREC_"
MAX_DECODE_WORKERS = 64


def default_decode_workers() -> int:
    """Opus decode processes: one per core beyond the first, at most 4; none on a 1-core machine.

    Measured on 2 cores (README "Benchmarks"): once the pool's own cost on the loop was cut (one read
    buffer, one answer write per batch, pipes wide enough for a tick), a worker takes libopus off the
    event loop thread (from 80 % to 64-70 % of a core at 240 participants) and row 1 holds 240
    participants instead of 200, for about a fifth more CPU in total (pickling, pipes)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))

CLOCK_KINDS = ("realtime", "media")
ROLES = ("full", "control")
LOG_FORMATS = ("console", "json")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says what is expected."""


@dataclass(frozen=True)
class AuthSettings:
    """Token keys ([auth] in the TOML file); with this section set, every RPC but health and
    reflection needs an `authorization: Bearer <jwt>` (see callrec/security/tokens.py)."""

    hs256_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    """kid -> HS256 secret (at least 32 bytes); several at once for rotation. Never printed."""
    jwks_file: Path | None = None
    """JWKS file of RS256/ES256 public keys (relative paths: to the config file's directory)."""


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of `callrec serve`; see `callrec serve --help` for the flag of each."""

    listen: str = "127.0.0.1:50051"
    """HOST:PORT the gRPC server binds (port 0 picks a free port)."""
    data_dir: Path = Path("./data")
    """SQLite state, the spool and the local store live here."""
    database_url: str = field(default="", repr=False)
    """Cluster mode: `postgresql://USER:PASSWORD@HOST:PORT/DB` holds recordings, idempotency keys and the
    chunk index, shared by every node; empty: SQLite under `data_dir` (the embedded default). Never logged
    with its password."""
    node_id: str = ""
    """Cluster mode: this node's stable name in the node registry (recovers its own recordings after a
    restart); empty: `HOSTNAME:PORT` of the bound gRPC port."""
    advertise: str = ""
    """Cluster mode: HOST:PORT other nodes reach this node at; empty: the bound `listen` address."""
    node_lease_s: float = 15.0
    """Cluster mode: seconds a node stays alive in the registry without a heartbeat (renewed every third);
    a dead node's calls go to the node their gateways re-open them on after this."""
    role: str = "full"
    """Cluster mode: `full` (takes calls and answers every RPC) or `control` (takes no calls: answers the control
    and read RPCs a proxy routes to it, GetRecordingState from the shared state, on an event loop no call's
    media shares; state changes go on to the node that records the call)."""
    realtime_priority: int = 0
    """A control node's threads at real-time priority (SCHED_RR 1-98), so its answers do not wait for the media's
    turn on a loaded machine; 0: normal priority. Only with `role = control` (a node that takes calls would put
    its media above its own workers). Needs CAP_SYS_NICE or RLIMIT_RTPRIO (see `callrec.runtime_priority`)."""
    realtime_cpu_budget: float = 0.5
    """Cores a real-time control node may use (measured every 0.5 s); over it, its threads go back to normal
    priority for 10 s, so a flood of requests competes fairly with the media instead of taking its cores."""
    capacity_audio_participants: float = 0.0
    """Admission: audio participants this node keeps at real time; 0 = automatic: off on a single node, and
    in cluster mode the figure `make bench` measured for one node on the 2-core development machine."""
    capacity_calls: float = 0.0
    """Admission: the per-call share of the load (each call's stream, tick, mix and encoder), as the calls this
    node would keep at real time if participants cost nothing; 0 = automatic: in cluster mode with
    `capacity_audio_participants` automatic too, the figure fitted to `make bench`'s 10-person and 1:1 calls;
    otherwise calls are not costed apart from their participants."""
    capacity_video_composites: float = 0.0
    """Admission: 1080p mp4 composites this node keeps at real time; 0 = automatic: off on a single node,
    1 in cluster mode (measured likewise)."""
    admission_ceiling: float = 0.8
    """Admission: a node whose load (participants / capacity + composites / capacity) reached this refuses new
    calls with RESOURCE_EXHAUSTED; participants joining calls already here are refused past 1.0."""
    events_url: str = field(default="", repr=False)
    """Cluster mode: `redis://[:PASSWORD@]HOST:PORT[/DB]` holds the event log as a Redis Stream (one order for
    the whole cluster); empty: the SQLite log under `data_dir`."""
    metrics_listen: str = ""
    """HOST:PORT of the Prometheus /metrics endpoint; empty disables it."""
    health_listen: str = ""
    """HOST:PORT of a plain-HTTP `GET /healthz` (200 while serving, 503 before and while draining), for proxies
    that check nodes over HTTP/1.1 (HAProxy: `option httpchk GET /healthz` + `check port`); empty disables it."""
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
    tls_cert: Path | None = None
    """PEM certificate chain of the gRPC port (and of /metrics); with `tls_key`, the port speaks TLS only."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert` (unencrypted)."""
    tls_client_ca: Path | None = None
    """PEM CA bundle: clients must present a certificate it signed (mTLS); needs `tls_cert`."""
    auth: AuthSettings | None = None
    """Token keys ([auth] in the TOML file); None: no token needed (a loopback-only server)."""
    reconnect_grace_s: float = 30.0
    """Seconds a broken gateway stream may take to reconnect before its call counts as ended."""
    playout_delay_ms: int = 200
    """Real-time clock: how long the mixer waits for late frames."""
    max_playout_delay_ms: int = 2000
    """Real-time clock: how far the wait may grow while the server is overloaded (then late frames are lost).

    The trade: media waiting out the delay is what a kill -9 loses. 750 keeps a crash's loss under
    about a second however loaded the server is, but an overloaded server then drops more frames as
    late, all the time (measured by the soak: 10x more); 2000 (the default) drops few and loses up to
    ~2.2 s at a crash while the server is overloaded (~0.4 s while it keeps up)."""
    decode_workers: int = field(default_factory=lambda: default_decode_workers())
    """Processes that decode Opus for the event loop (one request per call per tick); 0: decode on the loop.

    Opus decoding is about a quarter of the loop's work under load, and a process decodes on another
    core (threads cannot: libopus's returns would queue for the GIL). Default: one per core beyond two,
    at most 4 (none on 2 cores, where the measured gain was nil). Started at the first Opus packet."""
    audio_writer_process: bool = True
    """Write audio recordings' files (mp3 encoding included) in a process of their own; False: in writer threads.

    Each 0.1 s batch of each recording was a writer thread's job, and each job took the GIL back three times
    from the event loop every call and RPC shares (`callrec.media.writer_pool`); the process takes none."""
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
    storage_external: Mapping[str, Any] = field(default_factory=dict)
    """Bring-your-own-storage policy ([storage.external] in the TOML file: `allow` and `[[storage.external.s3]]`,
    see callrec.storage.external); empty: StartRecording refuses every `external_storage`."""
    limits: Limits = field(default_factory=Limits)
    """Resource limits ([limits] in the TOML file)."""
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    """HTTPS endpoints every event is pushed to (`[[webhooks]]` and `[webhooks_policy]` in the TOML file)."""

    @property
    def webhooks_db_path(self) -> Path:
        """The SQLite file of webhook endpoints, their cursors, attempts and dead letters."""
        return self.data_dir / "webhooks.sqlite3"

    @property
    def capacity(self) -> Capacity:
        """The node's admission capacity: the settings, or the measured defaults in cluster mode (0 = automatic)."""
        cluster = bool(self.database_url)
        audio = self.capacity_audio_participants or (CLUSTER_AUDIO_PARTICIPANTS if cluster else 0.0)
        video = self.capacity_video_composites or (CLUSTER_VIDEO_COMPOSITES if cluster else 0.0)
        # the automatic per-call share belongs to the automatic participant figure it was fitted with
        automatic_audio = cluster and not self.capacity_audio_participants
        calls = self.capacity_calls or (CLUSTER_CALLS if automatic_audio else 0.0)
        return Capacity(audio, video, self.admission_ceiling, calls=calls, takes_calls=self.role != "control")

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


_TOML_SECTIONS = {"server", "storage", "limits", "auth", "webhooks", "webhooks_policy"}
_PATH_SETTINGS = ("tls_cert", "tls_key", "tls_client_ca")


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed file, or a ConfigError saying it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _from_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file into ServerConfig keyword arguments."""
    doc = _read_toml(path)
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
    if "external" in storage:
        values["storage_external"] = storage["external"]
    if "limits" in doc:
        known = {f.name for f in fields(Limits)}
        bad = set(doc["limits"]) - known
        if bad:
            raise ConfigError(f"config file {path}: unknown [limits] keys {sorted(bad)}; known: {sorted(known)}")
        values["limits"] = Limits(**doc["limits"])
    for key in _PATH_SETTINGS:  # paths in the file are relative to the file, as a reader expects
        if isinstance(values.get(key), str):
            values[key] = path.parent / values[key]
    if "auth" in doc:
        values["auth"] = _auth_from_toml(doc["auth"], path)
    if "webhooks" in doc or "webhooks_policy" in doc:
        try:
            values["webhooks"] = parse_webhooks(doc)
        except WebhookConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return values


def load_auth_settings(path: Path) -> AuthSettings | None:
    """Only the [auth] section of a config file (for `callrec token create`, which must not fail on
    settings that flags would fix at `serve` time); None when the file has none."""
    doc = _read_toml(path)
    return _auth_from_toml(doc["auth"], path) if "auth" in doc else None


def _auth_from_toml(section: Any, path: Path) -> AuthSettings:
    """The [auth] section: `hs256_keys = { kid = "secret" }` and/or `jwks_file = "keys.json"`."""
    known = {f.name for f in fields(AuthSettings)}
    if not isinstance(section, dict) or set(section) - known:
        bad = sorted(set(section) - known) if isinstance(section, dict) else section
        raise ConfigError(f"config file {path}: unknown [auth] keys {bad}; known: {sorted(known)}")
    keys = section.get("hs256_keys", {})
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ConfigError(f'config file {path}: [auth] hs256_keys must be a table of kid = "secret"')
    jwks = section.get("jwks_file")
    if jwks is not None and not isinstance(jwks, str):
        raise ConfigError(f"config file {path}: [auth] jwks_file must be a file name")
    if not keys and jwks is None:
        raise ConfigError(f'config file {path}: [auth] needs hs256_keys = {{ kid = "secret" }} and/or jwks_file')
    return AuthSettings(dict(keys), path.parent / jwks if jwks is not None else None)


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
    for key in _PATH_SETTINGS:
        if key in values:
            values[key] = Path(values[key]) if values[key] else None
    config = replace(ServerConfig(), **values)
    validate(config)
    return config


def validate(config: ServerConfig) -> None:
    """Reject settings that cannot work, naming the setting and the expected values."""
    config.host_port()  # raises when `listen` is malformed
    if config.database_url and not config.database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("database_url must be a postgresql:// URL (cluster mode) or empty (SQLite under data_dir); "
                          f"got one starting {config.database_url.split(':', 1)[0]!r}")
    if config.events_url and not config.events_url.startswith(("redis://", "rediss://")):
        raise ConfigError("events_url must be a redis:// or rediss:// URL (cluster mode) or empty (SQLite under "
                          f"data_dir); got one starting {config.events_url.split(':', 1)[0]!r}")
    if (config.database_url or config.events_url) and config.webhooks.endpoints:
        raise ConfigError("[[webhooks]] are not available in cluster mode yet (every node would deliver each "
                          "event): remove them from the config of the cluster's nodes, or run them on a single node")
    if config.metrics_listen:
        parse_host_port(config.metrics_listen, "metrics_listen")
    if config.health_listen:
        parse_host_port(config.health_listen, "health_listen")
    if config.clock not in CLOCK_KINDS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCK_KINDS)}; got {config.clock!r}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}; got {config.log_format!r}")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error; got {config.log_level!r}")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: the certificate chain and its private key")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigError("--tls-client-ca (client certificates) needs TLS: set --tls-cert and --tls-key too")
    missing = [what for what, present in (("TLS (--tls-cert, --tls-key)", config.tls_cert is not None),
                                          ("tokens ([auth] in the config file)", config.auth is not None))
               if not present]
    for setting, verb, address in (("listen", "listen on", config.listen),
                                   ("metrics_listen", "serve metrics on", config.metrics_listen)):
        if address and not is_loopback(parse_host_port(address, setting)[0]) and missing and not config.insecure:
            raise ConfigError(
                f"refusing to {verb} {address} without TLS and tokens (missing: "
                f"{' and '.join(missing)}); configure them, bind a loopback address or pass --insecure"
            )
    for name, value in (
        ("reconnect_grace_s", config.reconnect_grace_s),
        ("node_lease_s", config.node_lease_s),
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
    if config.role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)} (control: a cluster node that takes no calls); "
                          f"got {config.role!r}")
    if config.role == "control" and not config.database_url:
        raise ConfigError("role = control needs cluster mode: a control node answers from the shared state that "
                          "the nodes recording the calls write, so set --database-url (and --events-url) too")
    _validate_realtime(config)
    if not 0 < config.admission_ceiling <= 1:
        raise ConfigError(f"admission_ceiling must be in (0, 1] (a fraction of the node's capacity); "
                          f"got {config.admission_ceiling}")
    for name in ("capacity_audio_participants", "capacity_calls", "capacity_video_composites"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0 (0 = automatic); got {getattr(config, name)}")
    if config.max_playout_delay_ms < config.playout_delay_ms:
        raise ConfigError(
            f"max_playout_delay_ms ({config.max_playout_delay_ms}) must be >= "
            f"playout_delay_ms ({config.playout_delay_ms})"
        )
    for limit in fields(config.limits):
        value = getattr(config.limits, limit.name)
        if not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"[limits] {limit.name} must be a number > 0; got {value!r}")
    workers = config.decode_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_DECODE_WORKERS:
        raise ConfigError(f"decode_workers must be 0-{MAX_DECODE_WORKERS} (0: decode Opus on the event loop); "
                          f"got {workers!r}")
    if not isinstance(config.audio_writer_process, bool):
        raise ConfigError("audio_writer_process must be true (a process writes audio recordings) or false (writer "
                          f"threads); got {config.audio_writer_process!r}")
    if config.upload_concurrency < 1:
        raise ConfigError(f"upload_concurrency must be >= 1; got {config.upload_concurrency}")
    if config.upload_timeout_s <= 0:
        raise ConfigError(f"upload_timeout_s must be > 0; got {config.upload_timeout_s}")
    if config.storage_external:
        from callrec.storage.external import ExternalPolicy  # the storage layer owns the table's rules

        try:
            ExternalPolicy.from_config(config.storage_external, config.storage_targets)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.default_storage != "local" and config.default_storage not in config.storage_targets:
        raise ConfigError(
            f"default storage target {config.default_storage!r} is not defined; "
            f"add [storage.targets.{config.default_storage}] to the config file"
        )


def _validate_realtime(config: ServerConfig) -> None:
    """realtime_priority: an int 0-98, only on a control node; realtime_cpu_budget: a share of the machine."""
    from callrec.runtime_priority import MAX_PRIORITY

    priority = config.realtime_priority
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ConfigError(f"realtime_priority must be 0 (normal priority) or a SCHED_RR priority 1-{MAX_PRIORITY}; "
                          f"got {priority!r}")
    if priority and config.role != "control":
        raise ConfigError(f"realtime_priority {priority} is for control nodes (role = control), which carry no "
                          f"media; this node's role is {config.role!r}, whose media at real-time priority would "
                          "take the cores its own decode and writer workers need: set realtime_priority = 0")
    budget = config.realtime_cpu_budget
    cores = os.cpu_count() or 1
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget <= cores:
        raise ConfigError(f"realtime_cpu_budget must be in (0, {cores}] (cores of this machine a real-time control "
                          f"node may use before it goes back to normal priority); got {budget!r}")
