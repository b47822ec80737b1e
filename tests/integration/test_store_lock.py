"""One writer per SQLite store: a second verifier process on the same store is refused at start
with the first one named, the first keeps serving with its log intact, and a verifier killed with
SIGKILL leaves no stale lock behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as apb

from attest.errors import ConfigError
from tests.builders import TestNode
from tests.verifier_harness import (
    REPO,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.store.sqlite import SqliteStore

S = 10**9


def serve(config: Path, port_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "verifier.cli",
            "verifier",
            "serve",
            "--config",
            str(config),
            "--port-file",
            str(port_file),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")])),
        timeout=60,
        check=False,
    )


def test_a_second_verifier_on_one_sqlite_store_is_refused_and_the_first_serves_on(
    tmp_path: Path,
) -> None:
    files = write_verifier_files(tmp_path / "v")
    first = start_verifier_process(files, tmp_path / "first.log")
    try:
        assert first.process is not None
        client = first.client()
        node = TestNode.from_seed(91)
        client.enroll(node, created_at_ns=node.t0_ns - S)
        receipts = client.submit(node.chain(3))
        assert [r.status for r in receipts] == [spb.RECEIPT_STATUS_ACCEPTED] * 3
        last_index = receipts[-1].log_index

        second = serve(files.config, tmp_path / "second.port")
        assert second.returncode == 2, second.stderr
        assert f"is in use by another verifier (pid {first.process.pid} on " in second.stderr
        assert "verifier.db.lock" in second.stderr
        assert not (tmp_path / "second.port").exists()
        assert "Traceback" not in second.stderr

        # The first is untouched: it still accepts, its log goes on where it was.
        more = client.submit(node.chain(4)[3:])
        assert [r.status for r in more] == [spb.RECEIPT_STATUS_ACCEPTED]
        assert more[0].log_index > last_index
        last_index = more[0].log_index
    finally:
        if first.process is not None and first.process.poll() is None:
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=30)
    # SIGKILL leaves no stale lock: the next verifier starts on the same store, log intact.
    again = start_verifier_process(files, tmp_path / "again.log")
    try:
        tree = again.client().audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=10)
        assert tree.tree_size > last_index
    finally:
        stop_process(again)


def test_in_one_process_the_store_is_locked_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "store" / "verifier.db"
    store = SqliteStore.open(path)
    with pytest.raises(ConfigError, match=rf"in use by another verifier \(pid {os.getpid()} "):
        SqliteStore.open(path)
    other = SqliteStore.open(tmp_path / "store" / "other.db")  # another store: no conflict
    other.close()
    store.close()
    SqliteStore.open(path).close()
    assert oct((path.parent / "verifier.db.lock").stat().st_mode & 0o777) == "0o600"
