"""Log lines: fields as real JSON keys with their types, journald priorities, native lines."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from agent import logformat
from agent.logformat import (
    JsonFormatter,
    KeyValueFormatter,
    configure_logging,
    log_native_line,
    record_fields,
)


def record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("agent.daemon", level, __file__, 1, msg, args, None)


def test_fields_come_from_the_format_string_with_their_types() -> None:
    event, fields = record_fields(
        record("window signed seq=%d start_ns=%d busy_ms=%s", 41, 10**18, "1,2")
    )
    assert event == "window signed"
    assert fields == {"seq": 41, "start_ns": 10**18, "busy_ms": "1,2"}
    event, fields = record_fields(record("window not attested reason=%r start_ns=%d; more", "x", 5))
    assert (event, fields) == ("window not attested", {"reason": "x", "start_ns": 5})
    # prose arguments are not fields; a reserved name is kept under another key
    event, fields = record_fields(record("sampler exhausted (end of replay)"))
    assert (event, fields) == ("sampler exhausted (end of replay)", {})
    _, fields = record_fields(record("odd %s level=%s", "prose", "x"))
    assert fields == {"field_level": "x"}


def test_json_lines_carry_the_fields_and_the_node_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logformat, "_context", {"node_id": "ab" * 32})
    line = JsonFormatter(journald=False).format(
        record("shipping failed kind=%s attempt=%d", "tls", 3, level=logging.ERROR)
    )
    entry = json.loads(line)
    assert entry["kind"] == "tls" and entry["attempt"] == 3
    assert entry["node_id"] == "ab" * 32
    assert entry["level"] == "error" and entry["event"] == "shipping failed"
    assert entry["msg"] == "shipping failed kind=tls attempt=3"


def test_journald_priorities_only_when_stderr_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal-stream"
    with path.open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        configure_logging(level="info", fmt="json", stream=stream)
        log = logging.getLogger("agent.test")
        log.error("shipping failed kind=%s", "dns")
        log.warning("reconnected to the verifier")
        log.info("window signed seq=%d", 1)
        log.debug("not shown")
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>"]
    assert json.loads(lines[0][3:])["kind"] == "dns"
    # Another stream (a file, a terminal): no prefix.
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    other = io.StringIO()
    formatter = KeyValueFormatter(journald=logformat.stream_is_journal(other))
    assert formatter.format(record("x")).startswith("ts=")


def test_native_lines_become_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log_native_line(
        "I1206 01:09:34.815586   18254 ssl_transport_security.cc:2563] Handshake failed with "
        "error SSL_ERROR_SSL: error:1a000064:ECDSA routines:OPENSSL_internal:BAD_SIGNATURE\n"
    )
    log_native_line("E1206 01:09:35.000001   18254 chttp2_transport.cc:12] closed\n")
    log_native_line("something else entirely\n")
    got = [(r.name, r.levelno, r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    assert got[0][:2] == ("grpc.core", logging.INFO)
    assert got[0][2].startswith("Handshake failed")
    assert got[0][3] == {"source": "ssl_transport_security.cc:2563", "thread": 18254}
    assert got[1][:2] == ("grpc.core", logging.ERROR)
    assert got[2][:3] == ("agent.stderr", logging.WARNING, "something else entirely")


def test_native_stderr_is_routed_and_restored(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json")
    before = sys.stderr
    restore = logformat.route_native_stderr()
    try:
        os.write(2, b"W1206 01:00:00.000001   77 chttp2.cc:1] raw core line\n")
    finally:
        restore()
    assert sys.stderr is before
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [(e["logger"], e["level"], e["msg"]) for e in lines] == [
        ("grpc.core", "warning", "raw core line")
    ]
    assert lines[0]["source"] == "chttp2.cc:1"
