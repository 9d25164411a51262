"""Log lines keep their fields: core's stdlib records and structlog's events, console and JSON alike."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
import structlog

from callrec import logs
from callrec.core.log import get_logger as core_logger


@pytest.fixture
def capture() -> Iterator[Callable[..., io.StringIO]]:
    """`capture(fmt, level)` configures logging into a fresh stream; the previous setup comes back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()

    def configure(fmt: str, level: str = "info") -> io.StringIO:
        stream = io.StringIO()
        logs.configure_logging(level, fmt, stream=stream)
        return stream

    yield configure
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.configure(**config)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_core_fields_are_json_keys(capture):
    stream = capture("json")
    core_logger("callrec.core.x").warning("chunk finished", recording_id="r1", call_id="c1", index=3)
    (line,) = json_lines(stream)
    assert line["event"] == "chunk finished"
    assert line["level"] == "warning"
    assert (line["recording_id"], line["call_id"], line["index"]) == ("r1", "c1", 3)
    assert line["component"] == "callrec.core.x"
    assert datetime.fromisoformat(str(line["timestamp"])).utcoffset() is not None
    assert not any(str(key).startswith("_") for key in line), line  # no formatter internals


def test_core_fields_are_key_values_on_the_console(capture):
    stream = capture("console")
    core_logger("callrec.core.x").warning("chunk finished", recording_id="r1", call_id="c1")
    (line,) = stream.getvalue().splitlines()
    assert "chunk finished" in line and "warning" in line
    for pair in ("recording_id=r1", "call_id=c1", "component=callrec.core.x"):
        assert pair in line, line


def test_stdlib_extra_fields_are_kept_too(capture):
    """Code still on `logging.getLogger(...)` with `extra={...}` gets the same treatment."""
    stream = capture("json")
    logging.getLogger("callrec.core.y").info("tick sink failed", extra={"call_id": "c9"})
    (line,) = json_lines(stream)
    assert (line["event"], line["call_id"], line["component"], line["level"]) == ("tick sink failed", "c9",
                                                                                  "callrec.core.y", "info")


def test_reserved_field_names_are_renamed_not_fatal(capture):
    stream = capture("json")
    log = core_logger("callrec.core.x")
    log.info("odd names", name="n", msg="m", args=(1,), module="mod", message="x", _logger="l", recording_id="r1")
    (line,) = json_lines(stream)
    assert line["event"] == "odd names" and line["component"] == "callrec.core.x"
    assert (line["field_name"], line["field_msg"], line["field_args"], line["field_module"]) == ("n", "m", [1], "mod")
    assert (line["field_message"], line["field__logger"], line["recording_id"]) == ("x", "l", "r1")


def test_bound_fields_and_exceptions(capture):
    stream = capture("json")
    log = core_logger("callrec.core.x").bind(call_id="c1")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("writer failed", recording_id="r1")
    log.info("next", call_id="c2")
    failed, following = json_lines(stream)
    assert (failed["level"], failed["call_id"], failed["recording_id"]) == ("error", "c1", "r1")
    assert "ZeroDivisionError" in str(failed["exception"])
    assert following["call_id"] == "c2", "a method's field overrides a bound one"


def test_records_name_the_calling_line(capture):
    capture("json")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        core_logger("callrec.core.x").info("here")
    finally:
        logging.getLogger().removeHandler(handler)
    (record,) = seen
    assert (record.funcName, record.filename) == ("test_records_name_the_calling_line", "test_logs.py")


def test_level_governs_core_and_third_party_loggers(capture):
    stream = capture("json", "info")
    core_logger("callrec.core.x").debug("hidden", recording_id="r1")
    logging.getLogger("botocore.endpoint").debug("noise")
    logging.getLogger("botocore.endpoint").warning("retrying")
    core_logger("callrec.core.x").info("shown")
    assert [line["event"] for line in json_lines(stream)] == ["retrying", "shown"]

    stream = capture("json", "debug")
    core_logger("callrec.core.x").debug("now shown")
    assert [line["event"] for line in json_lines(stream)] == ["now shown"]


def test_each_record_is_written_once(capture):
    capture("console")
    stream = capture("json")  # reconfiguring replaces the handler, it does not add a second one
    core_logger("callrec.core.x").warning("once", recording_id="r1")
    logs.get_logger("outbox").warning("once too")
    assert [line["event"] for line in json_lines(stream)] == ["once", "once too"]
    marked = [h for h in logging.getLogger().handlers if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)]
    assert len(marked) == 1


def test_structlog_loggers_keep_their_fields(capture):
    stream = capture("json")
    logs.get_logger("outbox").info("uploaded", key="rec1/0.wav", size=3)
    (line,) = json_lines(stream)
    assert (line["event"], line["level"], line["component"]) == ("uploaded", "info", "outbox")
    assert (line["key"], line["size"]) == ("rec1/0.wav", 3)
    assert "timestamp" in line

    stream = capture("console")
    logs.get_logger("outbox").warning("upload failed, will retry", key="k", attempt=2)
    (text,) = stream.getvalue().splitlines()
    assert "upload failed, will retry" in text and "attempt=2" in text and "component=outbox" in text


def test_structlog_level_filter(capture):
    stream = capture("json", "warning")
    logs.get_logger("outbox").info("quiet")
    logs.get_logger("outbox").warning("loud")
    assert [line["event"] for line in json_lines(stream)] == ["loud"]
