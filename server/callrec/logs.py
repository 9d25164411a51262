"""Structured logging: one line per event, with call and recording ids as fields.

Two kinds of logger write here. structlog loggers (`get_logger`, outside `core/`) render through
structlog's own chain. Stdlib loggers (`core/`, which may not import structlog and logs through
`callrec.core.log`, plus third-party libraries) go to one handler on the root logger whose
`structlog.stdlib.ProcessorFormatter` runs the same processors and renderer, with
`structlog.stdlib.ExtraAdder` turning a record's `extra` fields into event fields. So a line
from core reads like any other (`recording_id=...` on the console, a JSON key with
`--log-format json`); a plain `%(message)s` formatter used to drop those fields.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_HANDLER_MARK = "_callrec_handler"
"""Attribute set on the root handler `configure_logging` installs, so reconfiguring replaces it."""

_NOT_FIELDS = ("message", "asctime")
"""Record attributes a formatter (another handler's) may have added: never `extra` fields."""


def _add_component(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Name a stdlib record's logger as `component`, the key structlog loggers bind."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("component", record.name)
    for key in _NOT_FIELDS:
        event_dict.pop(key, None)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to `stream` (stderr) as console text or JSON lines.

    `level` governs both: structlog loggers filter at it, and the root logger's level applies
    to every stdlib logger that sets none of its own (core's, botocore's, grpc's).
    """
    out = sys.stderr if stream is None else stream
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    numeric = logging.getLevelName(level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]

    # stdlib records: one handler on the root logger (replacing ours from an earlier call; no
    # basicConfig handler beside it, so no line is written twice)
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _add_component],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)

    # structlog loggers: their own chain straight to the stream, as before
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger that tags every line with its component name."""
    return structlog.get_logger(component=name)
