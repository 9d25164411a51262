"""Keyword-field logging for `core/`: `log.info("chunk finished", recording_id=rid, index=3)`.

Why not structlog: `core/` may import only itself, the standard library and numpy, so it logs
through stdlib `logging`. Why not bare `logging.getLogger`: ids passed as `extra={...}` are easy
to forget and crash on a clashing name (`extra={"name": ...}` raises `KeyError` inside
`makeRecord`), and structlog loggers elsewhere in the server take fields as keywords. This
wrapper takes keywords, hands them to `logging` as `extra`, and renames a key that clashes with
a `LogRecord` attribute (`name` becomes `field_name`) instead of raising: a log line must never
take down the code that writes it. `callrec.logs` renders the extra fields as `key=value`
(console) or JSON keys, next to the level, timestamp and logger name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TypeAlias, TypedDict

__all__ = ["FIELD_PREFIX", "ExcInfo", "KeywordLogger", "LogFields", "get_logger"]

ExcInfo: TypeAlias = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)
"""What `logging` accepts as `exc_info`."""


class LogFields(TypedDict, total=False):
    """The ids a recording's parts add to each of their lines (`log.info("...", **fields)`).

    A TypedDict, not `dict[str, str]`: unpacked into a `KeywordLogger` method, a plain dict could
    carry `exc_info` or `stack_info` as far as the type checker knows; these keys cannot.
    """

    recording_id: str
    call_id: str

FIELD_PREFIX = "field_"
"""Prepended to a field name that `logging` reserves (`name` -> `field_name`)."""

_RESERVED: frozenset[str] = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__) | {
    "message",  # set by Formatter.format; refused in `extra` by makeRecord
    "asctime",  # likewise
}
"""Attributes of every `LogRecord` (Python version dependent: 3.12 added `taskName`)."""


def _safe_key(key: str) -> str:
    # a leading underscore is left to formatters (structlog's ProcessorFormatter keys off `_logger`/`_name`)
    while key in _RESERVED or key.startswith("_"):
        key = FIELD_PREFIX + key
    return key


class KeywordLogger:
    """A `logging.Logger` whose methods take structured fields as keyword arguments.

    `bind(**fields)` returns a logger that adds those fields to every line (a call id, say);
    fields given to a method override bound ones. Records name the caller's file and line,
    not this module's.
    """

    __slots__ = ("_fields", "logger")

    def __init__(self, logger: logging.Logger, fields: Mapping[str, object] | None = None) -> None:
        self.logger = logger
        self._fields: dict[str, object] = {_safe_key(k): v for k, v in (fields or {}).items()}

    @property
    def name(self) -> str:
        """The stdlib logger's name (`callrec.core.audio_recording`)."""
        return self.logger.name

    def bind(self, **fields: object) -> KeywordLogger:
        """A logger for the same name that adds `fields` to every line."""
        return KeywordLogger(self.logger, {**self._fields, **fields})

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at `level` would be emitted (to skip building costly fields)."""
        return self.logger.isEnabledFor(level)

    def debug(self, msg: str, /, *, exc_info: ExcInfo = None, stack_info: bool = False, **fields: object) -> None:
        """Log `msg` at DEBUG with `fields`."""
        self._log(logging.DEBUG, msg, exc_info, stack_info, fields)

    def info(self, msg: str, /, *, exc_info: ExcInfo = None, stack_info: bool = False, **fields: object) -> None:
        """Log `msg` at INFO with `fields`."""
        self._log(logging.INFO, msg, exc_info, stack_info, fields)

    def warning(self, msg: str, /, *, exc_info: ExcInfo = None, stack_info: bool = False, **fields: object) -> None:
        """Log `msg` at WARNING with `fields`."""
        self._log(logging.WARNING, msg, exc_info, stack_info, fields)

    def error(self, msg: str, /, *, exc_info: ExcInfo = None, stack_info: bool = False, **fields: object) -> None:
        """Log `msg` at ERROR with `fields`."""
        self._log(logging.ERROR, msg, exc_info, stack_info, fields)

    def exception(self, msg: str, /, *, exc_info: ExcInfo = True, stack_info: bool = False, **fields: object) -> None:
        """Log `msg` at ERROR with `fields` and the exception being handled."""
        self._log(logging.ERROR, msg, exc_info, stack_info, fields)

    def _log(self, level: int, msg: str, exc_info: ExcInfo, stack_info: bool, fields: Mapping[str, object]) -> None:
        if not self.logger.isEnabledFor(level):
            return
        extra = {**self._fields, **{_safe_key(k): v for k, v in fields.items()}}
        # stacklevel 3: skip this method and the public one, so the record names the caller's line;
        # `msg` goes through `%` formatting only when args are given, and none ever are
        self.logger.log(level, msg, exc_info=exc_info, stack_info=stack_info, stacklevel=3, extra=extra)


def get_logger(name: str) -> KeywordLogger:
    """The keyword logger for `name` (use the module's `__name__`)."""
    return KeywordLogger(logging.getLogger(name))
