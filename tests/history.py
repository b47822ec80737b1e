"""What a dishonest verifier operator can do to the log's history, played for real on a SQLite
store: rewrite entries (re-signed with the log key, tree rebuilt, checkpoint re-signed), or roll
the whole store back to an older copy; and witness processes to run beside a verifier.

    rewrite_history(files.store, log_key, "test.example/verifier", indices=[5, 6])
    copy = backup_store(files.store, tmp_path / "old.db"); ...; restore_store(copy, files.store)
    with running_witness(tmp_path / "w1", "witness.example/w1", seed=301, log_vkey=vkey) as w: ...
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pausewatch.v1 import findings_pb2 as fpb

from attest import merkle
from attest.checkpoint import Checkpoint, CosignatureSigner, sign_checkpoint
from attest.envelope import PayloadType, envelope_digest, sign_envelope
from attest.keys import Ed25519Signer, save_private_key
from attest.note import Ed25519NoteSigner
from tests.builders import fixed_private_key
from tests.verifier_harness import REPO


def benign_finding(lab_id: str, index: int) -> fpb.Finding:
    return fpb.Finding(
        format_version=1,
        lab_id=lab_id,
        kind=fpb.FINDING_KIND_GAP,
        severity=fpb.SEVERITY_INFO,
        summary=f"nothing to see here ({index})",
        detected_at_ns=1,
    )


def rewrite_history(
    db_path: Path,
    log_key: Ed25519PrivateKey,
    origin: str,
    indices: Sequence[int],
    replacements: Mapping[int, bytes] | None = None,
) -> bytes:
    """Replace the entries at ``indices`` by benign findings signed with the log key (or by the
    envelopes given in ``replacements``, e.g. attestations re-signed by a colluding lab), rebuild
    every tree node, and replace the checkpoints by one freshly signed over the new root, in one
    transaction, as an operator with the store and the log key can. Returns the new root."""
    envelope_signer = Ed25519Signer.from_private_key(log_key)
    note_signer = Ed25519NoteSigner(origin, log_key)
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        for index in indices:
            (lab_id,) = db.execute(
                "SELECT lab_id FROM log_entries WHERE idx = ?", (index,)
            ).fetchone()
            payload = benign_finding(lab_id or "lab-a", index).SerializeToString(deterministic=True)
            raw = sign_envelope(envelope_signer, PayloadType.FINDING, payload)
            db.execute(
                "UPDATE log_entries SET entry = ?, leaf_hash = ?, digest = ?, kind = 'finding' "
                "WHERE idx = ?",
                (raw, merkle.leaf_hash(raw), envelope_digest(raw), index),
            )
        for index, raw in (replacements or {}).items():
            db.execute(
                "UPDATE log_entries SET entry = ?, leaf_hash = ?, digest = ? WHERE idx = ?",
                (raw, merkle.leaf_hash(raw), envelope_digest(raw), index),
            )
        leaves = [bytes(r[0]) for r in db.execute("SELECT leaf_hash FROM log_entries ORDER BY idx")]
        appender = merkle.TreeAppender()
        nodes: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            nodes.extend(appender.append(leaf))
        db.execute("DELETE FROM tree_nodes")
        db.executemany("INSERT INTO tree_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
        root = appender.root()
        note = sign_checkpoint(Checkpoint(origin, len(leaves), root), note_signer)
        db.execute("DELETE FROM checkpoints")
        db.execute(
            "INSERT INTO checkpoints (tree_size, root_hash, note, signed_at_ns) VALUES (?,?,?,?)",
            (len(leaves), root, note, time.time_ns()),
        )
        db.execute("COMMIT")
    finally:
        db.close()
    return root


def backup_store(db_path: Path, copy_path: Path) -> Path:
    """A consistent copy of a live SQLite store (the backup API, WAL included)."""
    source = sqlite3.connect(db_path, timeout=30)
    target = sqlite3.connect(copy_path)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return copy_path


def restore_store(copy_path: Path, db_path: Path) -> None:
    """Put an older copy in place of a (stopped) verifier's store."""
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    db_path.write_bytes(copy_path.read_bytes())


@dataclass
class RunningWitness:
    name: str
    url: str
    vkey: str
    state: Path
    process: subprocess.Popen[bytes]
    key_path: Path
    log_path: Path


def witness_signer(seed: int, name: str) -> CosignatureSigner:
    return CosignatureSigner(name, fixed_private_key(seed))


def start_witness(
    directory: Path, name: str, *, seed: int, log_vkeys: Sequence[str], port: int = 0
) -> RunningWitness:
    """``pausewatch witness serve`` as a real process on 127.0.0.1 (port 0: any free one)."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "witness.key"
    if not key_path.exists():
        save_private_key(key_path, fixed_private_key(seed))
    port_file = directory / "port"
    port_file.unlink(missing_ok=True)
    log_path = directory / "witness.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]))
    args = [
        sys.executable, "-m", "verifier.cli", "--log-level", "info", "witness", "serve",
        "--key", str(key_path), "--name", name, "--state", str(directory / "state"),
        "--listen", f"127.0.0.1:{port}", "--port-file", str(port_file),
    ]  # fmt: skip
    for vkey in log_vkeys:
        args += ["--log-key", vkey]
    with log_path.open("ab") as log:
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"witness exited {process.returncode}: {log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError("witness did not start")
        time.sleep(0.05)
    bound = int(port_file.read_text())
    vkey = witness_signer(seed, name).verifier().to_vkey()
    return RunningWitness(
        name, f"http://127.0.0.1:{bound}", vkey, directory / "state", process, key_path, log_path
    )


def stop_witness(witness: RunningWitness, sig: int = signal.SIGTERM) -> int:
    witness.process.send_signal(sig)
    return witness.process.wait(timeout=30)


@contextmanager
def running_witnesses(
    directory: Path, count: int, log_vkeys: Sequence[str]
) -> Iterator[list[RunningWitness]]:
    started: list[RunningWitness] = []
    try:
        for i in range(count):
            started.append(
                start_witness(
                    directory / f"w{i + 1}",
                    f"witness.example/w{i + 1}",
                    seed=301 + i,
                    log_vkeys=log_vkeys,
                )
            )
        yield started
    finally:
        for witness in started:
            if witness.process.poll() is None:
                stop_witness(witness, signal.SIGKILL)
