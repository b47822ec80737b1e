"""docs/verifier.md's operator commands, run as written (paths aside): the health check against a
verifier with mutual TLS, and the SQLite backup and restore."""

from __future__ import annotations

import datetime
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pausewatch.v1 import audit_pb2 as apb

from tests.integration.test_serve_refusals import tls_verifier_files, write_pem
from tests.tls import TestPki
from tests.verifier_harness import (
    REPO,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

DOC = REPO / "docs" / "verifier.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end >= 0 else len(text)]


def _sh_blocks(section: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_documented_health_check_works_with_mutual_tls(tmp_path: Path) -> None:
    block = _sh_blocks(_section("**Health.**"))[0]
    command, script = block.split("<<'EOF'\n", 1)
    script = script.rsplit("EOF", 1)[0]
    args = command.split()[2:]  # after "/opt/pausewatch/bin/python -"
    pki = TestPki.create()
    files = tls_verifier_files(tmp_path / "v", pki)
    running = start_verifier_process(files, tmp_path / "verifier.log", wait_health=False)
    try:
        given = {
            "ca.pem": write_pem(tmp_path / "ca.pem", pki.ca_pem, 0o644),
            "health.pem": write_pem(tmp_path / "health.pem", pki.client_cert_pem, 0o644),
            "health.key": write_pem(tmp_path / "health.key", pki.client_key_pem),
        }
        port = running.address.rsplit(":", 1)[1]
        argv = [f"localhost:{port}" if ":7443" in a else str(given.get(a, a)) for a in args]
        for _ in range(50):
            result = subprocess.run(
                [sys.executable, "-", *argv],
                input=script,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if result.stdout.strip() == "SERVING":
                break
        assert result.stdout.strip() == "SERVING", result.stderr[-2000:]
    finally:
        assert stop_process(running) == 0


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command")
def test_the_documented_backup_is_private_and_restores(tmp_path: Path) -> None:
    backup_block, restore_block = _sh_blocks(_section("## Backups"))[:2]
    files = write_verifier_files(tmp_path / "v", store='path = "store/verifier.db"')
    store = files.directory / "store" / "verifier.db"
    backups = tmp_path / "backups"
    backups.mkdir()

    def as_here(block: str) -> str:
        return block.replace("/var/lib/pausewatch/verifier.db", str(store)).replace(
            "/backups", str(backups)
        )

    running = start_verifier_process(files, tmp_path / "verifier.log")
    size = running.client().audit.GetCheckpoint(apb.GetCheckpointRequest()).tree_size
    ran = subprocess.run(
        ["bash", "-c", "umask 022\n" + as_here(backup_block)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "ok"
    (copy,) = backups.iterdir()
    assert copy.name == f"verifier-{datetime.date.today().isoformat()}.db"
    assert stat.S_IMODE(copy.stat().st_mode) & 0o077 == 0, oct(copy.stat().st_mode)
    assert stop_process(running) == 0

    restore = as_here(restore_block).replace(str(backups / "verifier-2026-12-01.db"), str(copy))
    ran = subprocess.run(["bash", "-ec", restore], capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    running = start_verifier_process(files, tmp_path / "verifier.log")
    try:
        restored = running.client().audit.GetCheckpoint(apb.GetCheckpointRequest())
        assert restored.tree_size >= size
    finally:
        assert stop_process(running) == 0
