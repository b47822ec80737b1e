"""Structured log lines for the agent: ``key=value`` (default) or one JSON object per line, with
journald priorities, and the gRPC C core's own stderr lines routed through the same formatter.

    configure_logging(level="info", fmt="json")
    set_log_context(node_id="3f1c0a...")
    log.info("window signed seq=%d gpus=%d", 12, 8)
    # {"ts": "2025-11-29T08:00:00.123Z", "level": "info", "logger": "agent.daemon",
    #  "event": "window signed", "msg": "window signed seq=12 gpus=8", "node_id": "3f1c0a...",
    #  "seq": 12, "gpus": 8}

Fields are not parsed out of rendered text: every ``key=%d`` (or ``%s``, ``%r``) in a message's
format string names the argument it formats, and that argument becomes a top-level JSON key with
its own type (an int stays an int). ``event`` is the format string before the first field: a
stable name to query on. No message ever holds key material or a nonce. Tracebacks are printed
only at debug level.

Under systemd, when stderr is the journal's stream (``$JOURNAL_STREAM`` names its device and
inode), each line starts with its syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info,
``<7>`` debug), which journald strips and records as PRIORITY, so ``journalctl -p err`` works.

:func:`route_native_stderr` points file descriptor 2 at a pipe read by a thread that turns each
line into a log record (the gRPC core writes ``I1206 01:09:34.815586 18254
ssl_transport_security.cc:2563] Handshake failed ...`` straight to fd 2; it becomes a record of
logger ``grpc.core`` with ``source`` and ``thread`` fields), while this module's handler writes to
the original stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_RESERVED = frozenset({"ts", "level", "logger", "event", "msg", "exception", "traceback"})
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
_FIELD_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=$")
_context: dict[str, Any] = {}


def set_log_context(**fields: Any) -> None:
    """Fields added to every line from now on (the node id, once the key is loaded)."""
    _context.update(fields)


def record_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """(event, {field: value}) from the record's format string and its arguments."""
    fields: dict[str, Any] = dict(getattr(record, "fields", {}) or {})
    template = record.msg if isinstance(record.msg, str) else str(record.msg)
    args = record.args if isinstance(record.args, tuple) else ()
    event_end: int | None = None
    index = 0
    for match in _CONVERSION.finditer(template):
        if match.group() == "%%":
            continue
        if index >= len(args):
            break
        key = _FIELD_BEFORE.search(template, 0, match.start())
        if key is not None:
            name = key.group(1)
            if event_end is None:
                event_end = key.start()
            value = args[index]
            if not isinstance(value, bool | int | float | str) and value is not None:
                value = str(value)
            fields[name if name not in _RESERVED else f"field_{name}"] = value
        index += 1
    if event_end is None:
        first_field = re.search(r"\b[A-Za-z_][A-Za-z0-9_]*=", template)
        event_end = first_field.start() if first_field else len(template)
    event = template[:event_end].strip().rstrip(":;,").strip()
    named = getattr(record, "event_name", None)
    if isinstance(named, str):
        event = named
    elif "%" in event:  # prose arguments before any field: the rendered text names the event
        event = record.getMessage()[:80]
    return event, fields


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class _Formatter(logging.Formatter):
    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self._journald = journald

    def _prefix(self, record: logging.LogRecord) -> str:
        return f"<{_syslog_priority(record.levelno)}>" if self._journald else ""


class KeyValueFormatter(_Formatter):
    """``ts=... level=... logger=... msg="..." node_id=...``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self._prefix(record)}ts={_timestamp(record)} level={record.levelname.lower()} "
            f"logger={record.name} msg={json.dumps(record.getMessage(), ensure_ascii=False)}"
        )
        for key, value in _context.items():
            line += f" {key}={value}"
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(_Formatter):
    """One JSON object per line, fields as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = record_fields(record)
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
            "msg": record.getMessage(),
            **_context,
            **fields,
        }
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                entry["traceback"] = self.formatException(record.exc_info)
        return self._prefix(record) + json.dumps(entry, ensure_ascii=False, default=str)


class _AgentHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler this module installs (so reconfiguring replaces only our own)."""


def stream_is_journal(stream: IO[str]) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def configure_logging(*, level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Send structured lines to stderr (journald picks them up under systemd)."""
    target = stream or sys.stderr
    journald = stream_is_journal(target)
    handler = _AgentHandler(target)
    handler.setFormatter(
        JsonFormatter(journald=journald) if fmt == "json" else KeyValueFormatter(journald=journald)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _AgentHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.ERROR))


_NATIVE_LINE = re.compile(
    r"^(?P<severity>[IWEF])(?P<date>\d{4}) (?P<time>\d\d:\d\d:\d\d\.\d+)\s+(?P<thread>\d+)\s+"
    r"(?P<source>[^\]\s]+:\d+)\]\s?(?P<text>.*)$"
)
_NATIVE_LEVELS = {
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}
_native_log = logging.getLogger("grpc.core")
_stray_log = logging.getLogger("agent.stderr")


def log_native_line(line: str) -> None:
    """One line a native library wrote to fd 2, as a log record."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return
    match = _NATIVE_LINE.match(line)
    if match is None:
        _stray_log.warning(
            "%s", line, extra={"fields": {"source": "stderr"}, "event_name": "stderr line"}
        )
        return
    _native_log.log(
        _NATIVE_LEVELS[match.group("severity")],
        "%s",
        match.group("text"),
        extra={
            "fields": {"source": match.group("source"), "thread": int(match.group("thread"))},
            "event_name": "grpc core log",
        },
    )


def route_native_stderr() -> Callable[[], None]:
    """Route what native code writes to fd 2 through the logging handlers; returns a function
    that restores fd 2 (and lets the reader drain)."""
    previous_stderr = sys.stderr
    saved = os.dup(2)
    original = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace")
    read_fd, write_fd = os.pipe()
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = original
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _AgentHandler):
            handler.setStream(original)

    def reader() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                with contextlib.suppress(Exception):  # a log line must never kill the agent
                    log_native_line(line)

    thread = threading.Thread(target=reader, name="native-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        thread.join(timeout=2)
        sys.stderr = previous_stderr
        for handler in logging.getLogger().handlers:
            if isinstance(handler, _AgentHandler) and handler.stream is original:
                handler.setStream(previous_stderr)

    return restore
