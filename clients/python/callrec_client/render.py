"""Human and JSON rendering of API resources for the CLI."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from callrec.v1 import recording_pb2, uploads_pb2


def to_dict(msg: Message) -> dict[str, Any]:
    """Protobuf -> dict with the proto field names (as grpcurl prints them)."""
    return MessageToDict(msg, preserving_proto_field_name=True)


def to_json(msg: Message) -> str:
    """One JSON object on one line."""
    return json.dumps(to_dict(msg), ensure_ascii=False)


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def recording_line(rec: recording_pb2.Recording) -> str:
    """One line per recording for `callrec list`."""
    state = _enum_name(recording_pb2.RecordingState, rec.state, "RECORDING_STATE_")
    fmt = _enum_name(recording_pb2.RecordingFormat, rec.format, "RECORDING_FORMAT_")
    ch = _enum_name(recording_pb2.RecordingChannelType, rec.channel_type, "RECORDING_CHANNEL_TYPE_")
    started = rec.start_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if rec.HasField("start_time") else "-"
    up = rec.upload_status
    uploads = f"  uploads pending={up.pending_files} failed={up.failed_files}" if (
        up.pending_files or up.failed_files) else ""
    return f"{rec.recording_id}  {state:<9}  {ch:<7} {fmt:<3}  call={rec.server_call_id}  started={started}Z{uploads}"


def recording_text(rec: recording_pb2.Recording) -> str:
    """A readable block for one recording (`callrec state`, `start`, ...)."""
    d = to_dict(rec)
    state = _enum_name(recording_pb2.RecordingState, rec.state, "RECORDING_STATE_")
    lines = [
        f"recording  {rec.recording_id}",
        f"state      {state}",
        f"call       {rec.server_call_id} (call_id {rec.call_id})",
        "format     "
        + "/".join(
            [
                _enum_name(recording_pb2.RecordingChannelType, rec.channel_type, "RECORDING_CHANNEL_TYPE_"),
                _enum_name(recording_pb2.RecordingContentType, rec.content_type, "RECORDING_CONTENT_TYPE_"),
                _enum_name(recording_pb2.RecordingFormat, rec.format, "RECORDING_FORMAT_"),
            ]
        ),
        f"started    {d.get('start_time', '-')}",
        f"duration   {rec.duration.ToTimedelta().total_seconds():.1f} s",
    ]
    if rec.pause_intervals:
        lines.append(f"pauses     {len(rec.pause_intervals)}")
    if rec.session_end_reason:
        lines.append(f"ended      {rec.session_end_reason}")
    if rec.HasField("error") and rec.error.message:
        lines.append(f"error      {rec.error.message} (code {rec.error.code})")
    for chunk in rec.chunks:
        lines.append(f"chunk {chunk.index}    {chunk.content_location}")
        lines.append(f"           metadata {chunk.metadata_location}")
        lines.append(f"           delete   {chunk.delete_location}")
    up = rec.upload_status
    if up.pending_files or up.stored_files or up.failed_files:
        line = f"uploads    {up.stored_files} stored, {up.pending_files} pending, {up.failed_files} failed"
        lines.append(line + (f" (last error: {up.last_error})" if up.last_error else ""))
    stats = rec.media_stats
    rejected = sum(stats.frames_rejected_by_reason.values())
    lines.append(f"media      {stats.frames_received} frames received, {rejected} rejected")
    return "\n".join(lines)


def _utc(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") + "Z"


def upload_table(uploads: list[uploads_pb2.Upload]) -> str:
    """`callrec uploads list`: one row per upload, then what to know about it (error, next attempt,
    deadline, spool file or stored location) indented below."""
    header = ("STATE", "TRIES", "TARGET", "CREATED", "RECORDING", "KEY")
    rows = [
        (
            _enum_name(uploads_pb2.UploadState, u.state, "UPLOAD_STATE_"),
            str(u.attempts),
            u.target,
            _utc(u.create_time),
            u.recording_id,
            u.key,
        )
        for u in uploads
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells[:-1], widths, strict=True))]
        return "  ".join([*padded, cells[-1]])

    out = [line(header)]
    indent = " " * (widths[0] + 2)
    for u, row in zip(uploads, rows, strict=True):
        out.append(line(row))
        details = []
        if u.HasField("next_attempt_time"):
            details.append(f"next attempt {_utc(u.next_attempt_time)}")
        if u.HasField("deadline_time"):
            details.append(f"deadline {_utc(u.deadline_time)}")
        if details:
            out.append(indent + ", ".join(details))
        if u.last_error:
            out.append(indent + f"error: {u.last_error}")
        if u.spool_path:
            on_node = f" (on node {u.node_id})" if u.node_id else ""
            out.append(indent + f"spool: {u.spool_path}{on_node}")
        elif u.location:
            out.append(indent + f"stored: {u.location}")
    return "\n".join(out)
