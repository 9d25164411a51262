"""Wiring: build the components from the config, serve gRPC, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import prometheus_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from callrec import compiled, loop_lag, metrics, runtime_blas, runtime_gc
from callrec.api.auth import AuthInterceptor
from callrec.api.content import ContentServicer
from callrec.api.events import EventServicer
from callrec.api.forward import ForwardCredentials, Forwarder
from callrec.api.healthz import HealthEndpoint
from callrec.api.media import MediaServicer
from callrec.api.recording import RecordingServicer
from callrec.api.uploads import UploadServicer
from callrec.api.webhooks import WebhookServicer
from callrec.api.wire import MalformedRequestInterceptor
from callrec.cancellation import honour_cancellation
from callrec.config import ServerConfig, parse_host_port
from callrec.core.admission import Admission
from callrec.core.call_hub import CallMediaHub, make_clock_factory
from callrec.core.call_registry import Call, CallRegistry
from callrec.core.errors import CallrecError
from callrec.core.media_recorder import MediaRecorder
from callrec.core.model import RecordingState
from callrec.core.ports import MediaIngest, MediaRecorderPort
from callrec.core.recording_registry import RecordingRegistry, RegistrySettings
from callrec.core.upload_admin import UploadAdmin
from callrec.events.log import EventLog, EventLogPort
from callrec.events.model import StoredEvent
from callrec.events.recording_events import AcsRecordingEvents
from callrec.events.redis_log import RedisEventLog
from callrec.logs import get_logger
from callrec.media import lame
from callrec.media.decode import PyAVAudioCodecs
from callrec.media.decode_pool import DecodePool
from callrec.media.video_output import make_video_recording_factory
from callrec.media.video_text import check_font_at_startup
from callrec.media.writer_pool import AudioWriterPool
from callrec.media.writers import writer_factory_for
from callrec.media.writers.repair import SpoolRepair
from callrec.runtime_priority import RealtimePriority
from callrec.security.tls import ServerTlsFiles, load_server_tls
from callrec.security.tokens import TokenVerifier
from callrec.state.chunks import ChunkIndex
from callrec.state.db import Database
from callrec.state.pg_chunks import PgChunkIndex
from callrec.state.pg_nodes import PgNodeRegistry
from callrec.state.pg_recordings import PgRecordingRepository
from callrec.state.pg_uploads import PgUploadRows
from callrec.state.postgres import PostgresDatabase
from callrec.state.recordings import RecordingRepository
from callrec.state.uploads import SqliteUploadRows
from callrec.storage.local import LocalStore
from callrec.storage.outbox import Outbox, PruneResult
from callrec.storage.resolver import StoreResolver
from callrec.storage.upload_worker import StoreSpec, UploadWorker, resolver_from_spec
from callrec.v1 import (
    content_pb2,
    content_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    media_pb2,
    media_pb2_grpc,
    recording_pb2,
    recording_pb2_grpc,
    uploads_pb2,
    uploads_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from callrec.webhooks.delivery import WebhookDispatcher
from callrec.webhooks.store import WebhookStore

log = get_logger("server")

#: sessionEndReason of a recording whose media pipeline failed (it ends FAILED with the error).
MEDIA_FAILED = "MediaFailed"

SERVICE_NAMES = (
    recording_pb2.DESCRIPTOR.services_by_name["RecordingService"].full_name,
    media_pb2.DESCRIPTOR.services_by_name["MediaService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    content_pb2.DESCRIPTOR.services_by_name["ContentService"].full_name,
    uploads_pb2.DESCRIPTOR.services_by_name["UploadService"].full_name,
    webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
)


@dataclass
class App:
    """The running server's components, for tests and the CLI."""

    config: ServerConfig
    db: Database
    repo: RecordingRepository | PgRecordingRepository
    events: EventLogPort
    calls: CallRegistry
    registry: RecordingRegistry
    ingest: MediaIngest
    stores: StoreResolver
    outbox: Outbox
    chunks: ChunkIndex | PgChunkIndex
    server: grpc.aio.Server
    health: HealthServicer
    port: int
    uploads: UploadAdmin
    upload_worker: UploadWorker | None = None
    shared_db: PostgresDatabase | None = None
    """Cluster mode's state database (`--database-url`); None: recordings and chunks are in `db`."""
    nodes: PgNodeRegistry | None = None
    """Cluster mode's node registry: this node's lease and the calls it owns."""
    healthz: HealthEndpoint | None = None
    """`GET /healthz` for proxies (`--health-listen`)."""
    forwarder: Forwarder | None = None
    """Cluster mode: the channels to the other nodes, for RPCs of calls they own."""
    webhooks: WebhookDispatcher | None = None
    """Pushes every event to the webhook endpoints (None in cluster mode, where it is not available yet)."""
    decode_pool: DecodePool | None = None
    """The Opus decode processes (`--decode-workers`), stopped last."""
    writer_pool: AudioWriterPool | None = None
    """The audio writer process (`--audio-writer-process`), stopped once the recordings are finalised."""
    serving: bool = False
    """True from `start()` until `stop()` begins: what /healthz reports."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def housekeeping(self) -> None:
        """Prune expired events and idempotency keys, apply local stores' retention, and prune the
        outbox and the spool (`prune_uploads`), every `housekeeping_interval_s`."""
        while True:
            honour_cancellation()  # a cancel a library swallowed (callrec/cancellation.py)
            try:  # a shared event log or database may be unreachable for a while: the next round tries again
                pruned = await self.events.prune()
                forgotten = await self.repo.forget_requests_before(timedelta(hours=self.config.idempotency_window_h))
            except CallrecError as exc:
                log.warning("housekeeping could not prune events and request ids", error=exc.message)
                pruned = forgotten = 0
            swept = await self.sweep_local_stores()
            try:
                uploads, spool_dirs = await self.prune_uploads()
            except Exception:  # never the end of housekeeping: the next round tries again
                log.exception("pruning uploads and spool failed")
                uploads, spool_dirs = PruneResult(0, 0, 0), 0
            if pruned or forgotten or swept or uploads.done_rows or uploads.failed_rows or spool_dirs:
                log.info("housekeeping", events_pruned=pruned, request_ids_forgotten=forgotten, files_expired=swept,
                         stored_uploads_forgotten=uploads.done_rows, failed_uploads_pruned=uploads.failed_rows,
                         failed_spool_files_deleted=uploads.failed_files, spool_dirs_removed=spool_dirs)
            await asyncio.sleep(self.config.housekeeping_interval_s)

    async def end_abandoned_recordings(self) -> None:
        """Cluster mode: every lease period, end the recordings of nodes dead for longer than the reconnect
        grace whose calls no gateway re-opened anywhere (ServerRestarted), so none stays ACTIVE forever."""
        assert self.nodes is not None
        while True:
            honour_cancellation()  # a cancel a library swallowed (callrec/cancellation.py)
            await asyncio.sleep(self.nodes.lease_s)
            try:
                await self.registry.end_abandoned(self.config.reconnect_grace_s)
            except CallrecError as exc:
                log.warning("could not look for abandoned recordings", error=exc.message)

    async def prune_uploads(self) -> tuple[PruneResult, int]:
        """Forget stored uploads after `upload_retention_h`; delete failed uploads (rows and spool
        files) after `failed_retention_h`; remove the spool directories of finished recordings
        (COMPLETED, or FAILED longer ago than the failed retention) that no pending or failed upload
        needs. A file a pending upload needs is never deleted."""
        cfg = self.config
        now = time.time()
        result = await self.outbox.prune(now - cfg.upload_retention_h * 3600, now - cfg.failed_retention_h * 3600)
        failed_before = datetime.now(UTC) - timedelta(hours=cfg.failed_retention_h)

        async def finished(recording_id: str) -> bool:
            rec = await self.repo.get(recording_id)
            if rec is None or rec.state not in (RecordingState.COMPLETED, RecordingState.FAILED):
                return False
            return rec.state is RecordingState.COMPLETED or (rec.stop_time or rec.start_time) < failed_before

        spool = cfg.spool_dir
        names = [entry.name for entry in spool.iterdir() if entry.is_dir()] if spool.is_dir() else []
        removable = {name for name in names if await finished(name)}
        return result, await self.outbox.prune_spool(spool, removable.__contains__)

    async def sweep_local_stores(self) -> int:
        """Delete recordings older than each local store's retention; their locations become NOT_FOUND."""
        swept = 0
        for name, store in self.stores.named.items():
            if isinstance(store, LocalStore) and store.retention:
                expired = await self.chunks.expired(name, store.retention.total_seconds())
                swept += await store.sweep_expired(store.retention)
                # the index forgets a chunk once its media is gone (the sweep goes by the file's age,
                # which starts when it was stored): a NOT_FOUND download then means the files are gone
                for chunk in expired:
                    if await store.head(chunk.media_key) is None:
                        await self.chunks.mark_deleted(chunk.document_id)
        return swept

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse new work, finalise recordings, close the server and the database."""
        timeout = self.config.drain_timeout_s if grace is None else grace
        log.info("draining", timeout_s=timeout)
        self.serving = False  # /healthz says NOT_SERVING: a proxy sends new calls elsewhere
        await self.health.enter_graceful_shutdown()
        await self.registry.drain(timeout)
        await self.calls.close()
        if self.writer_pool is not None:  # every recording closed its files: the process writes the rest and exits
            await self.writer_pool.close_all()
        await self.server.stop(grace=min(timeout, 5.0))
        await self.uploads.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.upload_worker is not None:
            await asyncio.to_thread(self.upload_worker.close)
        await self.stores.close()
        if self.webhooks is not None:
            await self.webhooks.close()
            await self.webhooks.store.close()
        await self.events.close()
        if self.forwarder is not None:
            await self.forwarder.close()
        if self.nodes is not None:
            await self.nodes.stop()
        if self.shared_db is not None:
            await self.shared_db.close()
        if self.healthz is not None:
            await self.healthz.stop()
        if self.decode_pool is not None:
            await self.decode_pool.close()
        self.db.close()
        log.info("stopped")


async def build_server(
    config: ServerConfig, media: MediaRecorderPort | None = None, ingest: MediaIngest | None = None
) -> App:
    """Create every component and bind the port (port 0 picks a free one); call `start` after."""
    # keys and certificates first: a bad one stops the start before anything is opened
    verifier = TokenVerifier.from_config(config.auth.hs256_keys, config.auth.jwks_file) if config.auth else None
    tls = server_tls(config)
    db = Database(config.state_db_path)
    stores = build_stores(config)
    upload_worker = UploadWorker(store_spec(config), stores)
    shared_db: PostgresDatabase | None = None
    upload_rows: SqliteUploadRows | PgUploadRows = SqliteUploadRows(db)
    repo: RecordingRepository | PgRecordingRepository
    chunks: ChunkIndex | PgChunkIndex
    if config.database_url:  # cluster mode: what every node shares is in PostgreSQL; spool files stay local
        shared_db = PostgresDatabase(config.database_url)
        await shared_db.open()
        repo, chunks = PgRecordingRepository(shared_db), PgChunkIndex(shared_db)
        upload_rows = PgUploadRows(shared_db)
    else:
        repo, chunks = RecordingRepository(db), ChunkIndex(db)
    outbox = Outbox(
        upload_rows,
        upload_worker,
        concurrency=config.upload_concurrency,
        backoff_max_s=config.upload_backoff_max_s,
        on_pending=metrics.UPLOADS_PENDING.set,
        attempt_timeout_s=config.upload_timeout_s,
        deadline_s=config.upload_deadline_h * 3600,
        under_pressure=lambda: hub.media_under_pressure(),  # uploads yield to late media (hub: below)
    )
    events: EventLogPort
    retention = timedelta(hours=config.event_retention_h)

    def published(stored: StoredEvent) -> None:
        metrics.EVENTS_PUBLISHED.labels(stored.event.event_type.value).inc()

    if config.events_url:  # cluster mode: one Redis Stream, one order of events for every node
        events = RedisEventLog(config.events_url, retention, on_publish=published,
                               max_subscribers=config.limits.max_event_subscribers,
                               max_queue=config.limits.max_subscriber_queue)
    else:
        events = EventLog(db, retention, on_publish=published, max_subscribers=config.limits.max_event_subscribers,
                          max_queue=config.limits.max_subscriber_queue)
    await events.start()
    calls = CallRegistry(config.reconnect_grace_s, config.limits)
    decode_pool = DecodePool(config.decode_workers)
    hub = CallMediaHub(make_clock_factory(config.clock, config.playout_delay_ms, config.max_playout_delay_ms),
                       PyAVAudioCodecs(decode_pool=decode_pool), config.limits)
    def media_failed(recording_id: str, exc: BaseException) -> None:
        """A recording's media failed: stop it; finalising then fails it with the media's error."""
        asyncio.get_running_loop().create_task(registry.stop(recording_id, MEDIA_FAILED))

    writer_pool = AudioWriterPool() if config.audio_writer_process else None
    recorder = MediaRecorder(hub, outbox, chunks, stores, config.spool_dir, config.resource_id, writer_factory_for,
                             video_recording_factory=make_video_recording_factory(config.clock),
                             on_media_error=media_failed, repair=SpoolRepair(), audio_writer_host=writer_pool)
    registry = RecordingRegistry(
        repo,
        AcsRecordingEvents(events, config.resource_id),
        calls,
        media or recorder,
        RegistrySettings(
            resource_id=config.resource_id,
            idempotency_window=timedelta(hours=config.idempotency_window_h),
            limits=config.limits,
            default_destination=config.default_storage,
            destinations=set(config.storage_targets),
        ),
    )
    calls.on_call_ended(hub.on_call_ended)  # after the registry's: recordings stop first, then media ends
    capacity = config.capacity
    admission: Admission | None = None
    if capacity.enabled:
        admission = Admission(capacity, calls.participant_count, registry.composite_count,
                              node=f"node {config.node_id!r}" if config.node_id else "this node",
                              calls=calls.call_count)
        calls.admission = admission
    metrics.CALLS_OPEN.set_function(calls.call_count)
    metrics.CALL_MEDIA_TASKS.set_function(hub.running_tasks)
    metrics.PLAYOUT_DELAY_MAX.set_function(hub.max_playout_delay_s)
    ingest = ingest or hub
    options = [
        ("grpc.max_receive_message_length", config.limits.max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ]
    # outermost first: a malformed request is answered INVALID_ARGUMENT whether or not auth refuses it
    interceptors: list[grpc.aio.ServerInterceptor] = [MalformedRequestInterceptor()]
    if verifier:
        interceptors.append(AuthInterceptor(verifier))
    server = grpc.aio.server(options=options, interceptors=interceptors)
    recording_servicer = RecordingServicer(registry, outbox.group, stores)
    recording_pb2_grpc.add_RecordingServiceServicer_to_server(recording_servicer, server)
    media_servicer = MediaServicer(calls, registry, ingest)
    media_pb2_grpc.add_MediaServiceServicer_to_server(media_servicer, server)
    events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(events, config.limits), server)
    content_servicer = ContentServicer(chunks, stores, call_of_recording(repo), config.limits.max_location_bytes)
    content_pb2_grpc.add_ContentServiceServicer_to_server(content_servicer, server)
    uploads = UploadAdmin(outbox, registry, stores, chunks)
    upload_servicer = UploadServicer(uploads)
    uploads_pb2_grpc.add_UploadServiceServicer_to_server(upload_servicer, server)
    webhooks: WebhookDispatcher | None = None
    if not (config.database_url or config.events_url):  # cluster mode: every node would deliver each event
        webhooks = WebhookDispatcher(
            events, WebhookStore(config.webhooks_db_path, max_attempts_kept=config.webhooks.policy.max_attempts_kept),
            config=config.webhooks, topic=config.resource_id,
        )
    webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(webhooks), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    host, port = config.host_port()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)], root_certificates=tls.client_ca,
                                                  require_client_auth=tls.client_ca is not None)
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {config.listen}: the address is in use or not available")
    nodes: PgNodeRegistry | None = None
    forwarder: Forwarder | None = None
    if shared_db is not None and isinstance(repo, PgRecordingRepository):
        node_id = config.node_id or f"{socket.gethostname()}:{bound}"
        if not config.advertise and host in ("0.0.0.0", "::", ""):
            log.warning("listening on a wildcard address without --advertise: other nodes cannot forward to "
                        f"{host}:{bound}; set --advertise HOST:PORT to the address they reach this node at")
        nodes = PgNodeRegistry(shared_db, node_id, config.advertise or f"{host}:{bound}", lease_s=config.node_lease_s,
                               load=admission.load if admission is not None else None)
        if admission is not None:
            admission.node = f"node {node_id!r}"
        await nodes.register()
        repo.node_id = node_id  # recovers only its own recordings
        calls.ownership = nodes
        registry.orphans = repo
        forwarder = Forwarder(nodes, node_id, forward_credentials(tls))
        recording_servicer.forwarder = content_servicer.forwarder = upload_servicer.forwarder = forwarder
        media_servicer.forwarder = forwarder
        if isinstance(chunks, PgChunkIndex):
            chunks.node_id = node_id  # its local store's chunks are on this node's disk
        if isinstance(upload_rows, PgUploadRows):
            upload_rows.node_id = node_id  # its uploads' files are in this node's spool

        async def release_call(call: Call, reason: str) -> None:
            await calls.release(call.server_call_id)

        calls.on_call_ended(release_call)  # last: after the recordings stopped and the media ended
        log.info("cluster node", node_id=node_id, role=config.role, database=shared_db.where)
    await uploads.resume()  # failed recordings whose retried uploads were pending when the server stopped
    return App(config, db, repo, events, calls, registry, ingest, stores, outbox, chunks, server, health, bound,
               uploads, upload_worker, shared_db, nodes, forwarder=forwarder, webhooks=webhooks,
               decode_pool=decode_pool, writer_pool=writer_pool)


def forward_credentials(tls: ServerTlsFiles | None) -> ForwardCredentials:
    """How this node calls the others (api/forward.py): TLS like its own port, presenting its own certificate,
    trusting the client CA (mTLS deployments) or else the system's roots."""
    if tls is None:
        return ForwardCredentials()
    return ForwardCredentials(root_certificates=tls.client_ca, private_key=tls.private_key,
                              certificate_chain=tls.cert_chain, tls=True)


def server_tls(config: ServerConfig) -> ServerTlsFiles | None:
    """The checked TLS files of --tls-cert/--tls-key/--tls-client-ca, or None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    return load_server_tls(config.tls_cert, config.tls_key, config.tls_client_ca)


def call_of_recording(repo: RecordingRepository | PgRecordingRepository) -> Callable[[str], Awaitable[str | None]]:
    """recording_id -> its server_call_id (None if unknown): how ContentService checks a token's calls."""

    async def call_of(recording_id: str) -> str | None:
        rec = await repo.get(recording_id)
        return rec.server_call_id if rec is not None else None

    return call_of


def start_metrics(config: ServerConfig) -> int:
    """Serve /metrics; over HTTPS with the gRPC port's certificate (and client CA) when TLS is on."""
    tls = server_tls(config)
    if tls is None or config.tls_cert is None or config.tls_key is None:
        return metrics.start_metrics_server(config.metrics_listen)
    host, port = parse_host_port(config.metrics_listen, "metrics_listen")
    http, _thread = prometheus_client.start_http_server(
        port, addr=host, certfile=str(config.tls_cert), keyfile=str(config.tls_key),
        client_cafile=str(config.tls_client_ca) if config.tls_client_ca else None,
        client_auth_required=tls.client_ca is not None,
    )
    return int(http.server_port)


def store_spec(config: ServerConfig) -> StoreSpec:
    """The configured storage targets, as the upload worker rebuilds them; the embedded `local` one
    keeps `local_retention_h` hours."""
    targets = {name: dict(target) for name, target in config.storage_targets.items()}
    local = targets.setdefault("local", {"kind": "local"})
    if local.get("kind") == "local":
        local.setdefault("retention_hours", config.local_retention_h)
    return StoreSpec(targets, config.default_storage, dict(config.storage_external), str(config.data_dir.resolve()),
                     config.log_level, config.log_format)


def build_stores(config: ServerConfig) -> StoreResolver:
    """The configured storage targets (downloads, deletes, sweeps and checks use them in this process)."""
    return resolver_from_spec(store_spec(config))


async def start(app: App) -> None:
    """Recover persisted recordings, start serving and mark every service healthy."""
    check_font_at_startup(log)
    await app.registry.recover()
    moved = await app.registry.recover_moved_away()  # cluster mode: chunks of recordings taken over meanwhile
    if moved:
        log.info("finished chunks of recordings other nodes took over", recordings=moved)
    await app.server.start()
    for name in ("", *SERVICE_NAMES):
        await app.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    app.serving = True
    if app.config.health_listen and app.healthz is None:
        app.healthz = HealthEndpoint(lambda: app.serving)
        await app.healthz.start(*parse_host_port(app.config.health_listen, "health_listen"))
    loop = asyncio.get_running_loop()
    app.tasks.append(loop.create_task(app.housekeeping()))
    app.tasks.append(loop.create_task(loop_lag.watch()))  # callrec_event_loop_lag_seconds
    if app.upload_worker is not None:
        app.upload_worker.start()
    app.tasks.append(loop.create_task(app.outbox.run()))
    if app.webhooks is not None:
        await app.webhooks.start()  # TOML endpoints synced; each endpoint resumes at its durable cursor
    if app.nodes is not None:
        app.nodes.start()
        app.tasks.append(loop.create_task(app.end_abandoned_recordings()))
    log.info("serving", listen=f"{app.config.host_port()[0]}:{app.port}", data_dir=str(app.config.data_dir),
             clock=app.config.clock, tls=app.config.tls_cert is not None, mtls=app.config.tls_client_ca is not None,
             auth=app.config.auth is not None)


def realtime_priority(config: ServerConfig) -> RealtimePriority | None:
    """A control node's `realtime_priority` (None when 0), its CPU budget's guard logging and counting each move;
    PriorityError (an OSError: `callrec serve` exits 1 saying what to grant) if the process may not take it."""
    if not config.realtime_priority:
        return None

    def changed(realtime: bool, cores: float) -> None:
        if realtime:
            metrics.REALTIME_PRIORITY.set(config.realtime_priority)
            log.info("back at real-time priority", priority=config.realtime_priority, cpu_cores=round(cores, 2))
        else:
            metrics.REALTIME_PRIORITY.set(0)
            metrics.REALTIME_DEMOTIONS.inc()
            log.warning(f"over realtime_cpu_budget: normal priority for {priority.cooldown_s:g} s, so the media "
                        "keeps its cores", cpu_cores=round(cores, 2), realtime_cpu_budget=config.realtime_cpu_budget)

    priority = RealtimePriority(config.realtime_priority, config.realtime_cpu_budget, on_change=changed)
    priority.check()  # before anything is served: a node that cannot take it refuses to start, saying why
    return priority


def start_realtime_priority(priority: RealtimePriority, config: ServerConfig) -> None:
    """Every thread to real time, once serving: the start-up's work is not counted against the CPU budget."""
    priority.start()
    metrics.REALTIME_PRIORITY.set(config.realtime_priority)
    log.info("real-time priority", policy="SCHED_RR", priority=config.realtime_priority,
             realtime_cpu_budget=config.realtime_cpu_budget)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain and exit."""
    priority = realtime_priority(config)
    if config.metrics_listen:
        port = start_metrics(config)
        log.info("metrics", listen=config.metrics_listen, port=port, tls=config.tls_cert is not None)
    app = await build_server(config)
    await start(app)
    runtime_gc.record_pauses()
    frozen = runtime_gc.freeze_startup_objects()  # a full collection would walk them all, stalling every call
    thresholds = runtime_gc.space_young_collections()  # the jitter buffers' frames would be walked 16 times a second
    log.info("start-up objects exempted from garbage collection", objects=frozen, gc_thresholds=thresholds)
    blas = runtime_blas.single_threaded_blas()  # the mixer's vecmat must not start a spinning BLAS thread pool
    log.info("BLAS limited to one thread", libraries=[f"{b['internal_api']} {b['version']}" for b in blas])
    log.info("mp3 encoder", encoder=lame.describe())
    media_path = compiled.state()
    (log.info if media_path.compiled or media_path.requested else log.warning)("media path", mode=media_path.reason)
    if priority is not None:
        start_realtime_priority(priority, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received, shutting down")
    if priority is not None:
        priority.stop()
    await app.stop()


def run(config: ServerConfig) -> None:
    """Blocking entry point on uvloop."""
    import uvloop

    uvloop.run(serve(config))
