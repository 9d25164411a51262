"""Prometheus metrics, served on their own HTTP port (`--metrics-listen`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

from callrec.config import parse_host_port

FRAMES_RECEIVED = Counter("callrec_frames_received_total", "Media frames accepted", ["kind"])
FRAMES_REJECTED = Counter("callrec_frames_rejected_total", "Media frames rejected", ["kind", "reason"])
EVENTS_PUBLISHED = Counter("callrec_events_published_total", "Events appended to the log", ["event_type"])
RECORDINGS_IN_PROGRESS = Gauge("callrec_recordings_in_progress", "Recordings active or paused")
UPLOADS_PENDING = Gauge("callrec_uploads_pending", "Chunks waiting in the upload outbox")
UPLOADS_FAILED = Counter("callrec_uploads_failed_total", "Upload attempts that failed")
CALLS_OPEN = Gauge("callrec_calls_open", "Calls open (a gateway stream, or a broken one within its grace period)")
MALFORMED_REQUESTS = Counter("callrec_malformed_requests_total", "Request messages that were not valid protobuf",
                             ["method"])
CALL_MEDIA_TASKS = Gauge("callrec_call_media_tasks", "Call media (mixer) tasks running, ending ones included")
PLAYOUT_DELAY_MAX = Gauge("callrec_playout_delay_max_seconds",
                          "The largest playout delay of any call: the base plus what overload added (media held "
                          "in memory that long is what a kill -9 loses)")

REALTIME_PRIORITY = Gauge("callrec_realtime_priority",
                          "The SCHED_RR priority this control node's threads run at; 0: normal priority (not "
                          "configured, or put back by its CPU budget)")
REALTIME_DEMOTIONS = Counter("callrec_realtime_demotions_total",
                             "Times a real-time control node went over realtime_cpu_budget and back to normal "
                             "priority")


def start_metrics_server(listen: str) -> int:
    """Serve /metrics on HOST:PORT; returns the bound port."""
    host, port = parse_host_port(listen, "metrics_listen")
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
