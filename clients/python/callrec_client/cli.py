"""The `callrec` command: run the server and drive recordings from a terminal.

Every client command talks to --server (env CALLREC_SERVER, default 127.0.0.1:50051),
prints readable text by default and one JSON object per line with --json. Against a server
with tokens and TLS (SPEC §5) every client command also takes --token (env CALLREC_TOKEN),
--tls / --tls-ca (trust the server's certificate) and --tls-cert / --tls-key (mTLS);
`callrec token create` makes a token from the server's config file.

In cluster mode (SPEC §8) every command that concerns one call sends the routing header
`x-callrec-server-call-id` so the proxy picks the node owning the call: `start`, `list --call`,
`events --call` and `gateway-sim` know the call; the commands taking a recording id or a location
take it as --server-call-id (a new process has no memory of earlier recordings). Without it they
send no header and the node that receives the RPC forwards it to the owner.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from callrec.v1 import webhooks_pb2
from callrec_client.client import DEFAULT_TARGET, CallrecClient, CallrecError, TlsOptions
from callrec_client.render import recording_line, recording_text, to_json, upload_table

app = typer.Typer(
    name="callrec",
    help="callrec: self-hosted call recording. `callrec serve` runs the server; the other commands drive it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: 30]" and "[auth]" must print as written
)

Server = Annotated[
    str, typer.Option("--server", "-s", envvar="CALLREC_SERVER", help="HOST:PORT of the callrec server.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (one object per line) instead of text.")]
Token = Annotated[str, typer.Option(
    "--token", envvar="CALLREC_TOKEN", show_default=False,
    help="JWT sent as 'authorization: Bearer <jwt>' (make one with `callrec token create`).")]
Tls = Annotated[bool, typer.Option(
    "--tls", envvar="CALLREC_TLS", help="Connect with TLS, trusting the system's CAs (implied by --tls-ca).")]
TlsCa = Annotated[Path | None, typer.Option(
    "--tls-ca", envvar="CALLREC_TLS_CA", help="PEM CA bundle that signed the server's certificate (TLS).")]
TlsCert = Annotated[Path | None, typer.Option(
    "--tls-cert", envvar="CALLREC_TLS_CLIENT_CERT",
    help="PEM client certificate, when the server asks for one (mTLS).")]
TlsKey = Annotated[Path | None, typer.Option(
    "--tls-key", envvar="CALLREC_TLS_CLIENT_KEY", help="PEM private key of --tls-cert.")]
ServerCallId = Annotated[str, typer.Option(
    "--server-call-id", show_default=False,
    help="The call (server_call_id) the recording belongs to, sent as the x-callrec-server-call-id header "
         "so a cluster's proxy routes straight to the node that owns the call; without it no header is "
         "sent and the receiving node forwards the RPC.")]


@dataclass(frozen=True)
class Credentials:
    """The --token and --tls* options of the client command being run."""

    token: str = ""
    tls: TlsOptions | None = None


_credentials: contextvars.ContextVar[Credentials | None] = contextvars.ContextVar("callrec_cli_credentials",
                                                                                   default=None)


def credentials() -> Credentials:
    """The token and TLS options of the running command (see `connection_options`)."""
    return _credentials.get() or Credentials()


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --token, --tls, --tls-ca, --tls-cert and --tls-key to a client command.

    Why a decorator: every client command takes the same five options and typer has no shared
    option groups; written out they would be sixty lines burying each command's own options.
    The command reads them through `credentials()` (and `_client`), set for its run only.
    """
    signature = inspect.signature(command, eval_str=True)
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in (("token", Token, ""), ("tls", Tls, False), ("tls_ca", TlsCa, None),
                                          ("tls_cert", TlsCert, None), ("tls_key", TlsKey, None))
    ]

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        token, tls, ca, cert, key = (kwargs.pop(n) for n in ("token", "tls", "tls_ca", "tls_cert", "tls_key"))
        options = TlsOptions(ca, cert, key) if tls or ca or cert or key else None
        if options is not None:
            try:
                options.credentials()  # a missing file or a lone --tls-cert: say so before connecting
            except ValueError as exc:
                typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
                raise typer.Exit(2) from None
        reset = _credentials.set(Credentials(token, options))
        try:
            return command(**kwargs)
        finally:
            _credentials.reset(reset)

    run.__signature__ = signature.replace(  # type: ignore[attr-defined]  # typer reads it via inspect
        parameters=[*signature.parameters.values(), *added])
    run.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()},
                           **{p.name: p.annotation for p in added}}
    return run


def _fail(exc: CallrecError) -> None:
    hint = ""
    if exc.code.name == "UNAVAILABLE":  # a TLS mismatch looks like a dead server: say what to check
        hint = ("\n  is the server running at --server? If it uses TLS, pass --tls-ca (or --tls), and "
                "--tls-cert/--tls-key when it asks for a client certificate")
    typer.secho(f"error: {exc.code.name}: {exc.details}{hint}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


def _client(server: str) -> CallrecClient:
    creds = credentials()
    return CallrecClient(server, token=creds.token, tls=creds.tls)


@app.command()
def serve(
    listen: Annotated[str | None, typer.Option(envvar="CALLREC_LISTEN",
                      help="HOST:PORT to bind [default: 127.0.0.1:50051].")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="CALLREC_DATA_DIR",
                        help="SQLite state, spool and local store [default: ./data].")] = None,
    config: Annotated[Path | None, typer.Option("--config", envvar="CALLREC_CONFIG",
                      help="TOML config file (flags and CALLREC_* env override it).")] = None,
    metrics_listen: Annotated[str | None, typer.Option(envvar="CALLREC_METRICS_LISTEN",
                              help="HOST:PORT for Prometheus /metrics; empty disables [default: off].")] = None,
    health_listen: Annotated[str | None, typer.Option(envvar="CALLREC_HEALTH_LISTEN",
                             help="HOST:PORT for a plain-HTTP GET /healthz (200 while serving, 503 while "
                             "draining) for proxies such as HAProxy [default: off].")] = None,
    clock: Annotated[str | None, typer.Option(envvar="CALLREC_CLOCK",
                     help="realtime (production) or media (tests, benchmarks) [default: realtime].")] = None,
    resource_id: Annotated[str | None, typer.Option(envvar="CALLREC_RESOURCE_ID",
                           help="Stable path naming this deployment (events' topic, metadata resourceId).")] = None,
    log_level: Annotated[str | None, typer.Option(envvar="CALLREC_LOG_LEVEL",
                         help="debug, info, warning, error [default: info].")] = None,
    log_format: Annotated[str | None, typer.Option(envvar="CALLREC_LOG_FORMAT",
                          help="console or json [default: console].")] = None,
    insecure: Annotated[bool | None, typer.Option("--insecure/--no-insecure", envvar="CALLREC_INSECURE",
                        help="Allow a non-loopback listen (or metrics) address without TLS and tokens.")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", envvar="CALLREC_TLS_CERT",
                        help="PEM certificate chain: the gRPC port (and /metrics) speak TLS only.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", envvar="CALLREC_TLS_KEY",
                       help="PEM private key of --tls-cert (unencrypted).")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option("--tls-client-ca", envvar="CALLREC_TLS_CLIENT_CA",
                             help="PEM CA bundle: clients must present a certificate it signed (mTLS).")] = None,
    reconnect_grace: Annotated[float | None, typer.Option(envvar="CALLREC_RECONNECT_GRACE",
                               help="Seconds a broken gateway stream may take to reconnect [default: 30].")] = None,
    playout_delay_ms: Annotated[int | None, typer.Option(envvar="CALLREC_PLAYOUT_DELAY_MS",
                                help="Real-time clock: ms to wait for late frames [default: 200].")] = None,
    max_playout_delay_ms: Annotated[int | None, typer.Option(envvar="CALLREC_MAX_PLAYOUT_DELAY_MS",
                                    help="Real-time clock: how far the wait may grow while the server is "
                                    "overloaded; media waiting that long is what a crash loses (750 keeps a "
                                    "crash under ~1 s, at the price of more late frames) [default: 2000].")] = None,
    decode_workers: Annotated[int | None, typer.Option(envvar="CALLREC_DECODE_WORKERS",
                              help="Processes that decode Opus beside the event loop; 0 decodes on the loop "
                              "[default: one per core beyond the first, at most 4].")] = None,
    audio_writer_process: Annotated[bool | None, typer.Option(
        "--audio-writer-process/--no-audio-writer-process", envvar="CALLREC_AUDIO_WRITER_PROCESS",
        help="Write audio recordings (mp3 encoding included) in a process of their own instead of writer "
        "threads, which compete with the event loop for the GIL [default: on].")] = None,
    event_retention_h: Annotated[float | None, typer.Option(envvar="CALLREC_EVENT_RETENTION_H",
                                 help="Hours events stay in the log [default: 24].")] = None,
    local_retention_h: Annotated[float | None, typer.Option(envvar="CALLREC_LOCAL_RETENTION_H",
                                 help="Hours the local store keeps recordings [default: 24].")] = None,
    default_storage: Annotated[str | None, typer.Option(envvar="CALLREC_DEFAULT_STORAGE",
                               help="Storage target used when StartRecording names none [default: local].")] = None,
    upload_backoff_max: Annotated[float | None, typer.Option(envvar="CALLREC_UPLOAD_BACKOFF_MAX",
                                  help="Longest wait in seconds between upload retries [default: 30].")] = None,
    upload_concurrency: Annotated[int | None, typer.Option(envvar="CALLREC_UPLOAD_CONCURRENCY",
                                  help="Files uploaded at once per storage target [default: 2].")] = None,
    upload_timeout: Annotated[float | None, typer.Option(envvar="CALLREC_UPLOAD_TIMEOUT",
                              help="Seconds one upload attempt may take, plus 1 s per MiB of the file; then "
                              "it is retried [default: 300].")] = None,
    upload_deadline_h: Annotated[float | None, typer.Option(envvar="CALLREC_UPLOAD_DEADLINE_H",
                                 help="Hours until an upload still not stored fails (recording FAILED, "
                                 "file kept in the spool); 0 = never [default: 24].")] = None,
    upload_retention_h: Annotated[float | None, typer.Option(envvar="CALLREC_UPLOAD_RETENTION_H",
                                  help="Hours stored uploads stay listed before pruning [default: 24].")] = None,
    failed_retention_h: Annotated[float | None, typer.Option(envvar="CALLREC_FAILED_RETENTION_H",
                                  help="Hours failed uploads (and failed recordings' spool files) are kept "
                                  "[default: 168].")] = None,
    housekeeping_interval: Annotated[float | None, typer.Option(envvar="CALLREC_HOUSEKEEPING_INTERVAL",
                                     help="Seconds between retention sweeps [default: 60].")] = None,
    drain_timeout: Annotated[float | None, typer.Option(envvar="CALLREC_DRAIN_TIMEOUT",
                             help="Seconds SIGTERM waits for recordings to finish [default: 60].")] = None,
    database_url: Annotated[str | None, typer.Option(envvar="CALLREC_DATABASE_URL", show_default=False,
                            help="Cluster mode: postgresql://USER:PASSWORD@HOST:PORT/DB for the state every "
                            "node shares (recordings, request ids, chunk index, node registry) [default: SQLite "
                            "under --data-dir].")] = None,
    events_url: Annotated[str | None, typer.Option(envvar="CALLREC_EVENTS_URL", show_default=False,
                          help="Cluster mode: redis://[:PASSWORD@]HOST:PORT[/DB] for the event log as a Redis "
                          "Stream, one order for the whole cluster [default: SQLite under --data-dir].")] = None,
    node_id: Annotated[str | None, typer.Option(envvar="CALLREC_NODE_ID",
                       help="Cluster mode: this node's stable name [default: HOSTNAME:PORT].")] = None,
    advertise: Annotated[str | None, typer.Option(envvar="CALLREC_ADVERTISE",
                         help="Cluster mode: HOST:PORT other nodes reach this node at [default: the bound "
                         "--listen address].")] = None,
    capacity_audio_participants: Annotated[float | None, typer.Option(
        envvar="CALLREC_CAPACITY_AUDIO_PARTICIPANTS",
        help="Admission: audio participants this node keeps at real time; 0 = automatic (off on a single node, "
        "the measured figure in cluster mode) [default: 0].")] = None,
    capacity_calls: Annotated[float | None, typer.Option(
        envvar="CALLREC_CAPACITY_CALLS",
        help="Admission: the per-call share of the load, as the calls this node would keep at real time if "
        "participants cost nothing (1:1 calls cost more per participant than large ones); 0 = automatic (in "
        "cluster mode with --capacity-audio-participants automatic: the measured figure; else not costed) "
        "[default: 0].")] = None,
    capacity_video_composites: Annotated[float | None, typer.Option(
        envvar="CALLREC_CAPACITY_VIDEO_COMPOSITES",
        help="Admission: 1080p mp4 composites this node keeps at real time; 0 = automatic (off on a single "
        "node, 1 in cluster mode) [default: 0].")] = None,
    admission_ceiling: Annotated[float | None, typer.Option(
        envvar="CALLREC_ADMISSION_CEILING",
        help="Admission: share of the capacity at which new calls get RESOURCE_EXHAUSTED [default: 0.8].")] = None,
    role: Annotated[str | None, typer.Option(
        envvar="CALLREC_ROLE",
        help="Cluster mode: full (takes calls, answers every RPC) or control (takes no calls; answers the "
        "control and read RPCs a proxy routes to it on a loop no media shares) [default: full].")] = None,
    realtime_priority: Annotated[int | None, typer.Option(
        envvar="CALLREC_REALTIME_PRIORITY",
        help="Control nodes: run every thread at real-time priority (SCHED_RR 1-98) so answers do not wait for "
        "the media's turn on a busy machine; needs CAP_SYS_NICE or RLIMIT_RTPRIO; 0 = normal [default: 0].")] = None,
    realtime_cpu_budget: Annotated[float | None, typer.Option(
        envvar="CALLREC_REALTIME_CPU_BUDGET",
        help="Cores a real-time control node may use; over it, back to normal priority for 10 s "
        "[default: 0.5].")] = None,
    node_lease: Annotated[float | None, typer.Option(envvar="CALLREC_NODE_LEASE",
                          help="Cluster mode: seconds a node stays alive without a heartbeat; then its calls go "
                          "to the node their gateways re-open them on [default: 15].")] = None,
) -> None:
    """Run the server (SQLite + local storage under --data-dir; no external service needed).

    Precedence: flags > CALLREC_* environment > --config TOML file > defaults.

    Security: with an [auth] section in the config file (hs256_keys = { k1 = "secret" } and/or
    jwks_file = "keys.json") every RPC but health and reflection needs a token (`callrec token
    create`). A non-loopback --listen needs TLS and [auth], or --insecure.

    \b
    Examples:
      callrec serve --listen 127.0.0.1:50051 --data-dir ./data --config callrec.toml
      callrec serve --listen 0.0.0.0:50051 --config callrec.toml --tls-cert server.pem --tls-key server.key
      callrec serve --listen 127.0.0.1:50061 --data-dir ./node1 --node-id node1 \\
          --database-url postgresql://callrec:secret@127.0.0.1:5432/callrec --events-url redis://127.0.0.1:6379/0
      callrec serve --listen 127.0.0.1:50064 --data-dir ./control1 --node-id control1 --role control \\
          --realtime-priority 10 --database-url postgresql://callrec:secret@127.0.0.1:5432/callrec \\
          --events-url redis://127.0.0.1:6379/0
    """
    from callrec.config import ConfigError, load_config
    from callrec.logs import configure_logging
    from callrec.server import run

    overrides = {
        "listen": listen, "data_dir": data_dir, "metrics_listen": metrics_listen, "health_listen": health_listen,
        "clock": clock,
        "resource_id": resource_id, "log_level": log_level, "log_format": log_format, "insecure": insecure,
        "tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca,
        "reconnect_grace_s": reconnect_grace, "playout_delay_ms": playout_delay_ms,
        "max_playout_delay_ms": max_playout_delay_ms, "decode_workers": decode_workers,
        "audio_writer_process": audio_writer_process,
        "event_retention_h": event_retention_h, "local_retention_h": local_retention_h,
        "default_storage": default_storage, "drain_timeout_s": drain_timeout,
        "housekeeping_interval_s": housekeeping_interval, "upload_backoff_max_s": upload_backoff_max,
        "upload_concurrency": upload_concurrency, "upload_timeout_s": upload_timeout,
        "upload_deadline_h": upload_deadline_h, "upload_retention_h": upload_retention_h,
        "failed_retention_h": failed_retention_h, "database_url": database_url, "events_url": events_url,
        "node_id": node_id, "advertise": advertise, "node_lease_s": node_lease, "role": role,
        "realtime_priority": realtime_priority, "realtime_cpu_budget": realtime_cpu_budget,
        "capacity_audio_participants": capacity_audio_participants, "capacity_calls": capacity_calls,
        "capacity_video_composites": capacity_video_composites, "admission_ceiling": admission_ceiling,
    }
    try:
        cfg = load_config(overrides, config)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    configure_logging(cfg.log_level, cfg.log_format)
    try:
        run(cfg)
    except ValueError as exc:  # a storage target that cannot be built
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None


@app.command()
@connection_options
def start(
    server_call_id: Annotated[str, typer.Argument(help="The call to record (a gateway must have opened it).")],
    content: Annotated[str, typer.Option(help="audio or audio_video.")] = "audio_video",
    channel: Annotated[str, typer.Option(help="mixed or unmixed.")] = "mixed",
    format: Annotated[str, typer.Option("--format", help="wav, mp3 or mp4.")] = "mp4",
    pause_on_start: Annotated[bool, typer.Option(help="Start paused.")] = False,
    pause_mode: Annotated[str, typer.Option(help="skip (cut pauses out) or silence.")] = "skip",
    destination: Annotated[str, typer.Option(help="Configured storage target; empty = default.")] = "",
    chunk_max_seconds: Annotated[float, typer.Option(help="Longest chunk in seconds (1..14400).")] = 14400,
    chunk_max_bytes: Annotated[int, typer.Option(help="Largest chunk in bytes; 0 = no limit.")] = 0,
    request_id: Annotated[str, typer.Option(help="Idempotency key: a retry returns the same recording.")] = "",
    unmixed_max_channels: Annotated[int, typer.Option(help="Unmixed: most channels (1..32).")] = 5,
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """Start recording a call.

    Example: callrec start call-1 --content audio --format wav
    """
    try:
        with _client(server) as c:
            rec = c.start_recording(
                server_call_id, content_type=content, channel_type=channel, format=format,
                pause_on_start=pause_on_start, pause_mode=pause_mode, destination=destination,
                chunk_max_duration=timedelta(seconds=chunk_max_seconds), chunk_max_bytes=chunk_max_bytes,
                request_id=request_id, unmixed_max_channels=unmixed_max_channels,
            )
    except ValueError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except CallrecError as exc:
        _fail(exc)
    typer.echo(to_json(rec) if json else recording_text(rec))


def _one(verb: str, recording_id: str, server: str, json: bool, server_call_id: str) -> None:
    try:
        with _client(server) as c:
            rec = getattr(c, verb)(recording_id, server_call_id=server_call_id)
    except CallrecError as exc:
        _fail(exc)
    typer.echo(to_json(rec) if json else recording_text(rec))


RecordingId = Annotated[str, typer.Argument(help="The recording id StartRecording returned.")]


@app.command()
@connection_options
def state(
    recording_id: RecordingId, server_call_id: ServerCallId = "", server: Server = DEFAULT_TARGET, json: Json = False,
) -> None:
    """Show a recording's state, chunks and media counters."""
    _one("get_recording_state", recording_id, server, json, server_call_id)


@app.command()
@connection_options
def pause(
    recording_id: RecordingId, server_call_id: ServerCallId = "", server: Server = DEFAULT_TARGET, json: Json = False,
) -> None:
    """Pause a recording (no-op when paused)."""
    _one("pause_recording", recording_id, server, json, server_call_id)


@app.command()
@connection_options
def resume(
    recording_id: RecordingId, server_call_id: ServerCallId = "", server: Server = DEFAULT_TARGET, json: Json = False,
) -> None:
    """Resume a paused recording (no-op when active)."""
    _one("resume_recording", recording_id, server, json, server_call_id)


@app.command()
@connection_options
def stop(
    recording_id: RecordingId, server_call_id: ServerCallId = "", server: Server = DEFAULT_TARGET, json: Json = False,
) -> None:
    """Stop a recording; its files are finalised and stored (idempotent)."""
    _one("stop_recording", recording_id, server, json, server_call_id)


@app.command("list")
@connection_options
def list_(
    call: Annotated[str, typer.Option("--call", help="Only this server_call_id.")] = "",
    state: Annotated[str | None, typer.Option(help="active, inactive, stopping, completed, failed.")] = None,
    limit: Annotated[int, typer.Option(help="Most recordings to show (pages are fetched as needed).")] = 50,
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """List recordings, newest first."""
    shown = 0
    token = ""
    try:
        with _client(server) as c:
            while shown < limit:
                page = c.list_recordings(call, state, min(1000, limit - shown), token)
                for rec in page.recordings:
                    typer.echo(to_json(rec) if json else recording_line(rec))
                    shown += 1
                token = page.next_page_token
                if not token:
                    break
    except KeyError:
        typer.secho("error: --state must be active, inactive, stopping, completed or failed", err=True)
        raise typer.Exit(2) from None
    except CallrecError as exc:
        _fail(exc)
    if not shown and not json:
        typer.echo("no recordings", err=True)


@app.command()
@connection_options
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming new events.")] = False,
    after: Annotated[int | None, typer.Option("--after", help="Resume after this sequence number.")] = None,
    type_: Annotated[list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")] = None,
    call: Annotated[str, typer.Option("--call", help="Only events of this server_call_id.")] = "",
    recording: Annotated[str, typer.Option("--recording", help="Only events of this recording.")] = "",
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """Print retained events (all, or after --after); with --follow keep streaming.

    --json prints each event's ACS JSON (one per line), ready for a webhook consumer.
    """
    from callrec_client.aio_events import print_events

    try:
        creds = credentials()
        asyncio.run(print_events(server, follow, after, type_ or [], call, recording, json, creds.token, creds.tls))
    except CallrecError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@app.command("download")
@connection_options
def download_(
    location: Annotated[str, typer.Argument(help="A contentLocation or metadataLocation from an event or `state`.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write [default: the name in "
                                                "the location].")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    server_call_id: ServerCallId = "",
    server: Server = DEFAULT_TARGET,
) -> None:
    """Download a recorded file with a progress bar; an interrupted download resumes where it stopped.

    Example: callrec download file://localhost/.../0-audio.wav -o call.wav
    """
    from callrec_client.download import default_name, download

    target = output or Path(default_name(location))
    try:
        with _client(server) as c:
            size = download(c, location, target, show_progress=not quiet, server_call_id=server_call_id)
    except CallrecError as exc:
        _fail(exc)
    except RuntimeError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    typer.echo(f"{target}  {size} bytes")


@app.command()
@connection_options
def delete(
    location: Annotated[str, typer.Argument(help="A chunk's deleteLocation.")],
    server_call_id: ServerCallId = "",
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """Delete a chunk's media and metadata by its deleteLocation."""
    try:
        with _client(server) as c:
            resp = c.delete(location, server_call_id=server_call_id)
    except CallrecError as exc:
        _fail(exc)
    if json:
        typer.echo(to_json(resp))
    else:
        for loc in resp.deleted_locations:
            typer.echo(f"deleted {loc}")


webhooks_app = typer.Typer(
    name="webhooks",
    help="Manage the HTTPS endpoints every event is pushed to (WebhookService; admin tokens).",
    no_args_is_help=True,
)
app.add_typer(webhooks_app)


def _webhook_call(server: str, rpc: str, request: Any) -> Any:
    """One WebhookService RPC, or the CLI's error exit."""
    try:
        with _client(server) as c:
            return c.webhook_admin(rpc, request)
    except CallrecError as exc:
        _fail(exc)


def _webhook_line(w: Any) -> str:
    state = "enabled" if w.enabled else f"DISABLED ({w.disabled_reason})"
    types = ",".join(w.event_types) or "all events"
    call = f" call={w.server_call_id}" if w.server_call_id else ""
    return (f"{w.webhook_id}  {w.url}  [{w.schema}, {w.source}]  {state}  {types}{call}  "
            f"delivered up to #{w.delivered_sequence}, {w.pending_attempts} attempt(s) on the next, "
            f"{w.dead_letters} dead letter(s)")


@webhooks_app.command("add")
@connection_options
def webhooks_add(
    url: Annotated[str, typer.Argument(help="Where to POST events: https://... (http:// only with allow_private).")],
    secret: Annotated[str, typer.Option(help="A Standard Webhooks secret (whsec_...); default: the server "
                                             "makes one and prints it once.")] = "",
    event_type: Annotated[list[str] | None, typer.Option(
        "--event-type", help="Only this event type (repeat for several); default: every event.")] = None,
    server_call_id: Annotated[str, typer.Option("--server-call-id", help="Only this call's events.")] = "",
    schema: Annotated[str, typer.Option(help="callrec, or eventgrid (aeg-event-type headers and Event Grid's "
                                             "validation handshake).")] = "callrec",
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """Add an endpoint: it receives every event published from now on.

    Each event is one POST: the event's ACS JSON in a JSON array, with the
    Standard Webhooks headers webhook-id (the event id, the same on every
    retry), webhook-timestamp and webhook-signature. Failed deliveries are
    retried for 24 h on Event Grid's schedule; `callrec webhooks deliveries`
    shows what happened.

    Examples:

      callrec webhooks add https://hooks.example.com/callrec

      callrec webhooks add https://hooks.example.com/acs --schema eventgrid \\
          --event-type Microsoft.Communication.RecordingFileStatusUpdated
    """
    try:
        with _client(server) as c:
            resp = c.add_webhook(url, secret, event_type or (), server_call_id, schema)
    except CallrecError as exc:
        _fail(exc)
    if json:
        typer.echo(to_json(resp))
        return
    typer.echo(f"added {_webhook_line(resp.webhook)}")
    if resp.secret:
        typer.echo(f"secret (shown once, keep it to verify signatures): {resp.secret}")


@webhooks_app.command("list")
@connection_options
def webhooks_list(server: Server = DEFAULT_TARGET, json: Json = False) -> None:
    """List the endpoints with their state and how far each got (secrets are never shown)."""
    resp = _webhook_call(server, "ListWebhooks", webhooks_pb2.ListWebhooksRequest())
    for w in resp.webhooks:
        typer.echo(to_json(w) if json else _webhook_line(w))
    if not resp.webhooks and not json:
        typer.echo("no webhooks", err=True)


@webhooks_app.command("remove")
@connection_options
def webhooks_remove(
    webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...), from `callrec webhooks list`.")],
    server: Server = DEFAULT_TARGET,
) -> None:
    """Remove an endpoint added with `callrec webhooks add` (those of the config file stay)."""
    _webhook_call(server, "RemoveWebhook", webhooks_pb2.RemoveWebhookRequest(webhook_id=webhook_id))
    typer.echo(f"removed {webhook_id}")


@webhooks_app.command("enable")
@connection_options
def webhooks_enable(
    webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")],
    server: Server = DEFAULT_TARGET,
) -> None:
    """Enable an endpoint a 410 Gone disabled; delivery resumes where it stopped."""
    resp = _webhook_call(server, "EnableWebhook", webhooks_pb2.EnableWebhookRequest(webhook_id=webhook_id))
    typer.echo(f"enabled {_webhook_line(resp.webhook)}")


@webhooks_app.command("deliveries")
@connection_options
def webhooks_deliveries(
    webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")],
    limit: Annotated[int, typer.Option(help="Most attempts and dead letters to show (at most 1000).")] = 50,
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """Show an endpoint's latest delivery attempts and its dead letters, newest first.

    Example:

      callrec webhooks deliveries wh_3kT9xQ2mZp7a --limit 20
    """
    resp = _webhook_call(server, "ListWebhookDeliveries",
                         webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id, limit=limit))
    if json:
        typer.echo(to_json(resp))
        return
    for a in resp.attempts:
        outcome = f"HTTP {a.status_code}" if a.status_code else "no response"
        note = f"  {a.error}" if a.error else ""
        again = " (redelivery)" if a.redelivery else ""
        typer.echo(f"{a.attempt_time.ToDatetime():%Y-%m-%d %H:%M:%S}  #{a.sequence} {a.event_id}  attempt "
                   f"{a.attempt}{again}  {outcome}  {a.duration_ms} ms{note}")
    for d in resp.dead_letters:
        typer.secho(f"dead letter  #{d.sequence} {d.event_id or '(pruned range)'} {d.event_type}  after {d.attempts} "
                    f"attempt(s): {d.reason}", fg=typer.colors.YELLOW)
    if not resp.attempts and not resp.dead_letters:
        typer.echo("no deliveries yet", err=True)


@webhooks_app.command("redeliver")
@connection_options
def webhooks_redeliver(
    webhook_id: Annotated[str, typer.Argument(help="The endpoint's id (wh_...).")],
    event_id: Annotated[str, typer.Argument(help="The event's id (the webhook-id header), e.g. from a dead letter.")],
    server: Server = DEFAULT_TARGET,
) -> None:
    """Send one event to the endpoint again, now (one attempt; the endpoint's cursor does not move)."""
    resp = _webhook_call(server, "RedeliverWebhookEvent",
                         webhooks_pb2.RedeliverWebhookEventRequest(webhook_id=webhook_id, event_id=event_id))
    a = resp.attempt
    outcome = f"HTTP {a.status_code}" if a.status_code else f"no response: {a.error}"
    typer.echo(f"redelivered {event_id}: {outcome}")


uploads_app = typer.Typer(
    name="uploads",
    help="Show the upload outbox and re-queue failed uploads (UploadService).",
    no_args_is_help=True,
)
app.add_typer(uploads_app)


@uploads_app.command("list")
@connection_options
def uploads_list(
    state: Annotated[str | None, typer.Option(help="Only uploads in this state: pending, stored or failed.")] = None,
    recording: Annotated[str, typer.Option("--recording", help="Only the uploads of this recording.")] = "",
    limit: Annotated[int, typer.Option(help="Most uploads to show (pages are fetched as needed).")] = 100,
    server_call_id: Annotated[str, typer.Option(
        "--server-call-id", show_default=False,
        help="With --recording: the recording's call (server_call_id), sent as the x-callrec-server-call-id "
             "header so a cluster's proxy routes straight to the node that owns the call.")] = "",
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """List uploads, newest first, with their last error and where the file is.

    A table of state, attempts, storage target, creation time, recording and
    object key; below each row the next attempt and deadline (pending), the last
    error, and the spool file (pending, failed) or the stored location.
    A failed upload (refused by the store, or not stored before the upload
    deadline) keeps its file in the spool; `callrec uploads retry` re-queues it.

    Examples:

      callrec uploads list --state failed

      callrec uploads list --recording <recording_id> --json
    """
    shown = 0
    token = ""
    uploads = []
    try:
        with _client(server) as c:
            while shown < limit:
                page = c.list_uploads(state, recording, min(1000, limit - shown), token,
                                      server_call_id=server_call_id)
                for upload in page.uploads:
                    if json:
                        typer.echo(to_json(upload))
                    uploads.append(upload)
                    shown += 1
                token = page.next_page_token
                if not token:
                    break
    except ValueError as exc:
        typer.secho(f"error: --{exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except CallrecError as exc:
        _fail(exc)
    if not json:
        if uploads:
            typer.echo(upload_table(uploads))
        else:
            typer.echo("no uploads", err=True)


@uploads_app.command("retry")
@connection_options
def uploads_retry(
    recording_id: Annotated[str, typer.Argument(help="The recording whose failed uploads to re-queue.")],
    server_call_id: ServerCallId = "",
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """Re-queue every failed upload of a recording: pending again, due now.

    Fix the cause first (the store's credentials, address or availability;
    `callrec uploads list --state failed` shows each error). Attempts start
    again from zero, with a new deadline. When every file of a failed recording
    is then stored, RecordingFileStatusUpdated is published for it (the
    recording stays failed, with its error). A file no longer in the spool
    cannot be retried: it is reported and stays failed.

    Examples:

      callrec uploads retry <recording_id>

      callrec uploads list --state failed --json   # which recordings need one
    """
    try:
        with _client(server) as c:
            resp = c.retry_uploads(recording_id, server_call_id=server_call_id)
    except CallrecError as exc:
        _fail(exc)
    if json:
        typer.echo(to_json(resp))
        return
    typer.echo(f"re-queued {len(resp.uploads)} upload(s) of recording {recording_id}")
    for upload in resp.uploads:
        typer.echo(f"  {upload.key}  -> {upload.target}")
    for upload in resp.missing_uploads:
        typer.secho(f"  cannot retry {upload.key}: {upload.last_error}", err=True, fg=typer.colors.YELLOW)


@app.command("gateway-sim")
@connection_options
def gateway_sim(
    call: Annotated[str, typer.Argument(help="server_call_id to open.")],
    participants: Annotated[int, typer.Option("--participants", "-n", help="Number of participants.")] = 3,
    duration: Annotated[float, typer.Option(help="Seconds of media per participant.")] = 10.0,
    codec: Annotated[str, typer.Option(help="pcm16le, pcmu, pcma or opus.")] = "pcm16le",
    sample_rate: Annotated[int, typer.Option(help="PCM16LE sample rate (8000-48000).")] = 16000,
    stereo: Annotated[bool, typer.Option(help="Send 2-channel PCM16LE / Opus.")] = False,
    speech: Annotated[bool, typer.Option(help="espeak-ng speech instead of tones.")] = False,
    video: Annotated[bool, typer.Option(help="Also send a moving test pattern per participant.")] = False,
    realtime: Annotated[bool, typer.Option("--realtime/--fast", help="Pace frames in real time, or send "
                                           "as fast as possible (for a server on --clock media).")] = True,
    jitter_ms: Annotated[float, typer.Option(help="Random send delay per frame, 0..N ms.")] = 0.0,
    loss: Annotated[float, typer.Option(help="Probability a frame is lost (0..1).")] = 0.0,
    reorder: Annotated[float, typer.Option(help="Probability a frame arrives late, after later ones.")] = 0.0,
    duplicate: Annotated[float, typer.Option(help="Probability a frame is sent twice.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed for the impairments.")] = 1,
    gateway_id: Annotated[str, typer.Option(help="Gateway id sent in `open`.")] = "gateway-sim",
    call_id: Annotated[str, typer.Option(help="call_id (correlation id) sent in `open`.")] = "",
    end: Annotated[bool, typer.Option("--end/--no-end", help="Send `end` at the finish (ends the call).")] = True,
    batch: Annotated[bool, typer.Option("--batch/--no-batch", help="Send each tick of all participants in one "
                                        "media_batch message (as a busy gateway should), or a message per "
                                        "frame.")] = True,
    batch_ms: Annotated[float, typer.Option(help="Put every frame of N ms in one media_batch (60: three 20 ms "
                                            "ticks a message), sent when its newest frame is due. Each "
                                            "message costs the server ~0.1 ms of CPU whatever it holds: "
                                            "fewer messages for N ms more delay. 0: a message per tick.",
                                            min=0.0, max=1000.0)] = 0.0,
    server: Server = DEFAULT_TARGET,
    json: Json = False,
) -> None:
    """Stream N synthetic participants of a call: distinct tones (300, 500, 700 Hz ...) or speech.

    Example: callrec gateway-sim call-1 -n 3 --duration 20 --codec opus --jitter-ms 40 --loss 0.01
    Fewer, fuller messages (what a gateway with many small calls should send): --batch-ms 60
    """
    import json as jsonlib

    from rich.progress import Progress

    from callrec_client.simulator import Impairments, run_simulation

    imp = Impairments(jitter_ms=jitter_ms, loss=loss, reorder=reorder, duplicate=duplicate, seed=seed)
    try:
        with Progress(transient=True, disable=json) as progress:
            task = progress.add_task(f"streaming {call}", total=None)
            report = asyncio.run(run_simulation(
                server, call, participants, duration, codec, sample_rate, 2 if stereo else 1, speech, realtime,
                imp, gateway_id, call_id, video=video, end=end,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                token=credentials().token, tls=credentials().tls, batch=batch, batch_ms=batch_ms,
            ))
    except CallrecError as exc:
        _fail(exc)
    except (RuntimeError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    if json:
        typer.echo(jsonlib.dumps(report.__dict__))
        return
    for pid, sent in report.sent.items():
        rejected = report.rejected.get(pid, {})
        typer.echo(f"{pid}: sent {sent} (+{report.duplicated[pid]} duplicates, {report.dropped[pid]} lost), "
                   f"server accepted {report.received.get(pid, 0)}, rejected {rejected or 0}")
    typer.echo(f"{report.messages} messages")


token_app = typer.Typer(
    name="token",
    help="Make JWTs for a server with [auth] (SPEC §5: roles admin, controller, gateway).",
    no_args_is_help=True,
)
app.add_typer(token_app)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin (everything), controller (RecordingService, EventService, "
                                      "ContentService) or gateway (MediaService).", show_default=False)],
    call: Annotated[list[str] | None, typer.Option("--call", help="Limit the token to this server_call_id "
                                                   "(repeatable) [default: every call].")] = None,
    ttl: Annotated[str, typer.Option(help="Lifetime: 90s, 15m, 1h, 7d or 1h30m.")] = "1h",
    kid: Annotated[str | None, typer.Option(help="Key id in [auth] hs256_keys that signs it [default: the only "
                                            "one]; needed with several keys or with --secret.")] = None,
    config: Annotated[Path | None, typer.Option("--config", envvar="CALLREC_CONFIG",
                      help="The server's TOML config file; its [auth] hs256_keys sign the token.")] = None,
    secret: Annotated[str | None, typer.Option("--secret", envvar="CALLREC_TOKEN_SECRET", show_default=False,
                      help="An HS256 secret instead of --config (prefer the env var: arguments show in `ps`).")
                      ] = None,
    subject: Annotated[str, typer.Option(help="`sub` claim: who the token is for (in the server's logs).")] = "",
) -> None:
    """Print a JWT signed with an HS256 key of the server's [auth] section.

    The token carries role, exp (now + --ttl), nbf, iat and, with --call, the calls it is
    limited to. Pass it to any client command with --token (or CALLREC_TOKEN), or send it as
    metadata 'authorization: Bearer <jwt>' (grpcurl / buf curl: -H).

    \b
    Examples:
      callrec token create --role gateway --call call-1 --ttl 1h --config callrec.toml
      export CALLREC_TOKEN=$(callrec token create --role controller --ttl 8h --kid k1 --config callrec.toml)
      CALLREC_TOKEN_SECRET=... callrec token create --role admin --ttl 15m --kid k1
    """
    from callrec.config import ConfigError, load_auth_settings
    from callrec.security.tokens import Role, create_token, parse_ttl

    def usage(message: str) -> typer.Exit:
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
        return typer.Exit(2)

    if role not in {r.value for r in Role}:
        raise usage(f"--role must be admin, controller or gateway; got {role!r}")
    if secret is None:
        if config is None:
            raise usage("give --config FILE (the server's config, with [auth] hs256_keys) or --secret with --kid")
        try:
            auth = load_auth_settings(config)
        except ConfigError as exc:
            raise usage(str(exc)) from None
        keys = dict(auth.hs256_keys) if auth else {}
        if not keys:
            raise usage(f"{config} has no [auth] hs256_keys to sign with (keys in a jwks_file are public keys: "
                        "tokens for them come from the identity provider holding the private keys)")
        if kid is None:
            if len(keys) > 1:
                raise usage(f"{config} has several keys ({', '.join(sorted(keys))}): choose one with --kid")
            kid = next(iter(keys))
        if kid not in keys:
            raise usage(f"unknown kid {kid!r}; {config} has {', '.join(sorted(keys))}")
        secret = keys[kid]
    elif kid is None:
        raise usage("--secret needs --kid: the key id the server knows this secret by")
    try:
        token = create_token(secret, kid, role, parse_ttl(ttl), calls=call or (), subject=subject)
    except ValueError as exc:
        raise usage(str(exc)) from None
    typer.echo(token)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="callrec")


if __name__ == "__main__":
    main()
