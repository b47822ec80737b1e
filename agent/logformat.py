"""Structured log lines for the agent: ``key=value`` (default) or one JSON object per line.

    configure_logging(level="info", fmt="json")
    log.info("window signed seq=%d gpus=%d", 12, 8)
    # {"ts": "2025-11-29T08:00:00.123Z", "level": "info", "logger": "agent.daemon",
    #  "msg": "window signed seq=12 gpus=8"}

Messages carry their fields as ``key=value`` pairs; no message ever holds key material or a
nonce. Tracebacks are printed only at debug level.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"ts={_timestamp(record)} level={record.levelname.lower()} logger={record.name} "
            f"msg={json.dumps(record.getMessage(), ensure_ascii=False)}"
        )
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _AgentHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler this module installs (so reconfiguring replaces only our own)."""


def configure_logging(*, level: str, fmt: str) -> None:
    """Send structured lines to stderr (journald picks them up under systemd)."""
    handler = _AgentHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _AgentHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.ERROR))
