"""A log monitor written from the docs alone (tests/docs_impl/log_monitor.py) against a real
verifier process whose operator rewrites its own store: it must see the honest log grow
consistently, and a rewritten entry, a restored backup and a regrown history as a fork, a
rollback or an entry that no longer matches its proof, as the project's own `pausewatch log`
commands do. It connects as the `public` role (a client certificate no identity names), the
role anyone gets."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from pausewatch.v1 import audit_pb2, audit_pb2_grpc

from attest.envelope import envelope_digest
from attest.keys import load_private_key
from attest.note import Ed25519NoteSigner
from tests.builders import TestNode, fixed_private_key
from tests.docs_impl.log_monitor import (
    LogKey,
    LogMonitor,
    NoteError,
    Status,
    WitnessKey,
    leaf_hash,
    main,
    verify_checkpoint,
    verify_inclusion,
)
from tests.history import (
    RunningWitness,
    backup_store,
    restore_store,
    rewrite_history,
    start_witness,
    stop_witness,
)
from tests.verifier_harness import (
    REPO,
    Client,
    RunningVerifier,
    VerifierFiles,
    pausewatch,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)
from verifier.server.tlsgen import issue_client_cert, write_self_signed

pytestmark = pytest.mark.slow

ORIGIN = "test.example/verifier"
SPIFFE = "spiffe://regulator.test"
S = 10**9


@dataclass
class Lab:
    """A verifier process with mutual TLS: the regulator (who feeds it) by certificate, and
    everyone else `public`, as the monitor is."""

    files: VerifierFiles
    tls: Path
    directory: Path
    verifier: RunningVerifier
    node: TestNode
    log_vkey: str
    chain: list[bytes] = field(default_factory=list)
    starts: int = 1

    def credentials(self, who: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=(self.tls / "ca.pem").read_bytes(),
            private_key=(self.tls / f"{who}.key").read_bytes(),
            certificate_chain=(self.tls / f"{who}.pem").read_bytes(),
        )

    def channel(self, who: str = "public") -> grpc.Channel:
        return grpc.secure_channel(self.verifier.address, self.credentials(who))

    def monitor(self, log_key: str | None = None, **kwargs: Any) -> LogMonitor:
        return LogMonitor(self.channel(), LogKey.parse(log_key or self.log_vkey), **kwargs)

    def submit(self, count: int, *, busy_ms: int = 30_000) -> None:
        """Append ``count`` more windows of the node's chain (as the regulator's client)."""
        prev = envelope_digest(self.chain[-1]) if self.chain else None
        new: list[bytes] = []
        for seq in range(len(self.chain), len(self.chain) + count):
            raw = self.node.sign_body(self.node.body(seq, prev, busy_ms=busy_ms))
            new.append(raw)
            prev = envelope_digest(raw)
        with self.channel("regulator") as channel:
            receipts = Client(channel, self.files.operator).submit(new)
        assert all(r.status == 1 for r in receipts), receipts
        self.chain += new

    def store_size(self) -> int:
        db = sqlite3.connect(self.files.store, timeout=30)
        try:
            return int(db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0])
        finally:
            db.close()

    def wait_checkpoint(
        self, size: int, witnesses: int | None = None, timeout_s: float = 60
    ) -> None:
        """Until the verifier serves a checkpoint of ``size`` (with ``witnesses`` cosignatures);
        polled, since a checkpoint is signed once per interval."""
        deadline = time.monotonic() + timeout_s
        with self.channel() as channel:
            stub = audit_pb2_grpc.AuditServiceStub(channel)
            while True:
                got = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=10)
                if got.tree_size == size and (
                    witnesses is None or got.signed_note.count("\u2014") == 1 + witnesses
                ):
                    return
                assert time.monotonic() < deadline, (size, got.tree_size, got.signed_note)
                time.sleep(0.1)

    def cli(self, *args: str, log_key: str | None = None) -> subprocess.CompletedProcess[str]:
        """`pausewatch log ...` / `audit watch` as a public client, the log key pinned."""
        target = [
            "--verifier", self.verifier.address, "--ca-cert", str(self.tls / "ca.pem"),
            "--client-cert", str(self.tls / "public.pem"),
            "--client-key", str(self.tls / "public.key"),
        ]  # fmt: skip
        return pausewatch(*args[:2], *target, "--log-key", log_key or self.log_vkey, *args[2:])

    def stop(self) -> None:
        assert stop_process(self.verifier) == 0

    def start(self) -> None:
        """Start the verifier, on the address it had before if it ran already: a monitor's
        channel outlives the verifier's restarts."""
        self.starts += 1
        self.verifier = start_verifier_process(
            self.files,
            self.directory / f"verifier-{self.starts}.log",
            channel_for=lambda address: grpc.secure_channel(address, self.credentials("public")),
            extra_args=["--listen", self.verifier.address] if self.verifier.address else [],
        )


def make_lab(directory: Path, extra_config: str = "") -> Lab:
    tls = directory / "tls"
    server = write_self_signed(tls, ["127.0.0.1", "localhost"], keep_ca_key=True)
    issue_client_cert(tls, "regulator", uri=f"{SPIFFE}/regulator")
    issue_client_cert(tls, "public", uri=f"{SPIFFE}/anybody")  # named by no identity: public
    access = f'unauthenticated_role = "public"\n[[access.identities]]\nuri = "{SPIFFE}/regulator"\nrole = "regulator"\n'
    files = write_verifier_files(
        directory, access=access, extra_config="[monitor]\ninterval_s = 0\n" + extra_config
    )
    text = files.config.read_text()
    files.config.write_text(
        text.replace(
            'insecure_no_tls = true\nlisten = "127.0.0.1:0"',
            f'listen = "127.0.0.1:0"\ntls_cert = "{server.server_cert}"\n'
            f'tls_key = "{server.server_key}"\nclient_ca = "{server.ca_cert}"',
        )
    )
    log_vkey = (
        Ed25519NoteSigner(ORIGIN, load_private_key(directory / "log.key")).verifier().to_vkey()
    )
    now = time.time_ns()
    node = TestNode.from_seed(91, t0_ns=now - now % (60 * S) - 3600 * S)
    lab = Lab(files, tls, directory, RunningVerifier(files, ""), node, log_vkey, starts=0)
    lab.start()
    with lab.channel("regulator") as channel:
        Client(channel, files.operator).enroll(node, created_at_ns=node.t0_ns - S)
    lab.submit(6)
    lab.wait_checkpoint(lab.store_size())
    return lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = make_lab(tmp_path / "v")
    try:
        yield lab
    finally:
        if lab.verifier.process is not None and lab.verifier.process.poll() is None:
            stop_process(lab.verifier, signal.SIGKILL)


def monitor_main(lab: Lab, state: Path, *args: str) -> int:
    """The monitor's own command line, run as a public client."""
    return main(
        [
            "--verifier", lab.verifier.address, "--ca-cert", str(lab.tls / "ca.pem"),
            "--client-cert", str(lab.tls / "public.pem"),
            "--client-key", str(lab.tls / "public.key"),
            "--log-key", lab.log_vkey, "--state", str(state), *args,
        ]
    )  # fmt: skip


def statuses(reports: Sequence[Any]) -> set[Status]:
    return {r.status for r in reports}


# --- the docs' own example -----------------------------------------------------------------------


def test_the_worked_example_of_wire_format_md_verifies_and_a_tampered_one_does_not() -> None:
    doc = (REPO / "docs" / "wire-format.md").read_text(encoding="utf-8")
    vkey = re.search(r"the log's verifier key is\n\n```\n(.+)\n```", doc)
    note = re.search(r"the checkpoint for size 2 is\n\n```\n(.+?\n)```", doc, re.DOTALL)
    leaves = re.findall(r"leaf hash ([0-9a-f]{64})", doc)
    assert vkey and note and len(leaves) == 2
    key = LogKey.parse(vkey.group(1))
    checkpoint = verify_checkpoint(note.group(1), key)
    assert checkpoint.size == 2
    assert checkpoint.root.hex() == re.findall(r"has root\n`([0-9a-f]{64})`", doc)[0]
    first, second = (bytes.fromhex(h) for h in leaves)
    envelope = re.search(r"The envelope, 594 bytes.*?\n\n```\n([0-9a-f\n]+)```", doc, re.DOTALL)
    assert envelope and leaf_hash(bytes.fromhex(envelope.group(1).replace("\n", ""))) == first
    assert verify_inclusion(0, 2, first, [second], checkpoint.root)
    assert not verify_inclusion(0, 2, second, [first], checkpoint.root)
    with pytest.raises(NoteError, match="does not verify"):
        verify_checkpoint(note.group(1).replace("OTFBMSo7", "OTFBMSo8"), key)
    with pytest.raises(NoteError, match="no signature by the pinned log key"):
        verify_checkpoint(note.group(1).replace("OTFBMSo7", "OTFCMSo7"), key)  # key hash changed
    with pytest.raises(NoteError, match="does not verify"):
        verify_checkpoint(note.group(1).replace("\n2\n", "\n3\n"), key)


# --- an honest log -------------------------------------------------------------------------------


def test_an_honest_log_grows_consistently_and_the_project_agrees(lab: Lab, tmp_path: Path) -> None:
    saved, seen = tmp_path / "saved.note", tmp_path / "seen"
    monitor = lab.monitor()
    first = monitor.check()
    assert first.status == Status.FIRST, first.message
    assert lab.cli("log", "checkpoint", "--save", str(saved)).returncode == 0
    assert lab.cli("audit", "watch", "--dir", str(seen)).returncode == 0
    assert monitor.kept is not None and saved.read_text() == monitor.kept.note  # one checkpoint
    old = monitor.kept
    assert statuses(monitor.check_entries(range(old.size))) == {Status.ENTRY_OK}

    lab.submit(5)
    size = lab.store_size()
    lab.wait_checkpoint(size)
    grown = monitor.check()
    assert grown.status == Status.CONSISTENT, grown.message
    assert f"from size {old.size}" in grown.message and f"to size {size}" in grown.message
    assert monitor.kept.size == size
    # Every entry is in the new tree, and the old ones still in the tree that was kept first.
    assert statuses(monitor.check_entries(range(size))) == {Status.ENTRY_OK}
    assert statuses(monitor.check_entries(range(old.size), against=old)) == {Status.ENTRY_OK}
    assert monitor.check().status == Status.UNCHANGED

    proved = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert proved.returncode == 0, proved.stdout + proved.stderr
    watched = lab.cli("audit", "watch", "--dir", str(seen), "--json")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert json.loads(watched.stdout)["status"] == "consistent"
    index = lab.cli("log", "prove", "--index", str(size - 1))
    assert index.returncode == 0, index.stdout + index.stderr

    # The monitor's command line keeps its checkpoint in a file between runs.
    state = tmp_path / "monitor.note"
    assert monitor_main(lab, state, "--entry", "0") == 0
    assert state.read_text() == monitor.kept.note
    lab.submit(1)
    lab.wait_checkpoint(size + 1)
    assert monitor_main(lab, state, "--entry", str(size)) == 0
    assert verify_checkpoint(state.read_text(), LogKey.parse(lab.log_vkey)).size == size + 1


# --- the operator rewrites its log ---------------------------------------------------------------


def test_rewritten_entries_are_a_fork_for_the_monitor_and_the_project(
    lab: Lab, tmp_path: Path
) -> None:
    saved, seen = tmp_path / "saved.note", tmp_path / "seen"
    monitor = lab.monitor()
    assert monitor.check().status == Status.FIRST
    assert lab.cli("log", "checkpoint", "--save", str(saved)).returncode == 0
    assert lab.cli("audit", "watch", "--dir", str(seen)).returncode == 0
    kept = monitor.kept
    assert kept is not None
    state = tmp_path / "monitor.note"
    state.write_text(kept.note)

    # Two of the lab's attestations become benign findings, re-signed with the log key; the
    # tree is rebuilt and a checkpoint of the same size signed over the new root.
    lab.stop()
    rewrite_history(lab.files.store, load_private_key(lab.files.directory / "log.key"), ORIGIN,
                    [kept.size - 3, kept.size - 2])  # fmt: skip
    lab.start()
    lab.wait_checkpoint(kept.size)

    fork = monitor.check()
    assert fork.status == Status.FORK, fork.message
    assert monitor_main(lab, state) == 3
    assert f"two checkpoints of tree size {kept.size} with different roots" in fork.message
    assert monitor.kept is kept and monitor.evidence  # the old one kept, the new one as evidence
    rewritten = monitor.check_entries([kept.size - 3, kept.size - 2])
    assert statuses(rewritten) == {Status.ENTRY_MISMATCH}, [r.message for r in rewritten]
    assert "does not lead to the checkpoint's signed root" in rewritten[0].message
    # Alone, the rewritten checkpoint verifies: a monitor that kept nothing cannot tell.
    newcomer = lab.monitor()
    assert newcomer.check().status == Status.FIRST
    assert statuses(newcomer.check_entries(range(kept.size))) == {Status.ENTRY_OK}

    project = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert project.returncode == 3, project.stdout + project.stderr
    assert json.loads(project.stdout)["problem"] == "fork"
    watched = lab.cli("audit", "watch", "--dir", str(seen), "--json")
    assert watched.returncode == 3 and json.loads(watched.stdout)["status"] == "fork"

    # The forked log grows: no consistency proof reaches the kept root.
    lab.submit(2)
    lab.wait_checkpoint(kept.size + 2)
    grown = monitor.check()
    assert grown.status == Status.FORK, grown.message
    assert f"does not extend the kept checkpoint of size {kept.size}" in grown.message
    project = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert project.returncode == 3 and json.loads(project.stdout)["problem"] == "fork"
    # The newcomer, which kept the rewritten checkpoint, sees the same log grow consistently.
    assert newcomer.check().status == Status.CONSISTENT


def test_a_restored_backup_is_a_rollback_and_a_regrown_log_a_fork(lab: Lab, tmp_path: Path) -> None:
    saved, seen = tmp_path / "saved.note", tmp_path / "seen"
    backup = backup_store(lab.files.store, tmp_path / "backup.db")
    backed_up = len(lab.chain)
    lab.submit(4)
    size = lab.store_size()
    lab.wait_checkpoint(size)
    monitor = lab.monitor()
    assert monitor.check().status == Status.FIRST
    assert lab.cli("log", "checkpoint", "--save", str(saved)).returncode == 0
    assert lab.cli("audit", "watch", "--dir", str(seen)).returncode == 0
    kept = monitor.kept
    assert kept is not None and kept.size == size

    lab.stop()
    restore_store(backup, lab.files.store)
    lab.start()
    restored = lab.store_size()
    assert restored == size - 4
    lab.wait_checkpoint(restored)

    rollback = monitor.check()
    assert rollback.status == Status.ROLLBACK, rollback.message
    assert f"smaller than the kept checkpoint of size {size}" in rollback.message
    assert "4 entries have disappeared" in rollback.message
    project = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert project.returncode == 3, project.stdout + project.stderr
    assert json.loads(project.stdout)["problem"] == "rollback"
    watched = lab.cli("audit", "watch", "--dir", str(seen), "--json")
    assert watched.returncode == 3 and json.loads(watched.stdout)["status"] == "rollback"

    # The operator lets the restored log grow past the kept size with other windows (quieter
    # ones, which the node's chain accepts: its head is the backup's).
    lab.chain = lab.chain[:backed_up]
    lab.submit(6, busy_ms=1_000)
    regrown = lab.store_size()
    assert regrown > size
    lab.wait_checkpoint(regrown)
    fork = monitor.check()
    assert fork.status == Status.FORK, fork.message
    assert f"does not extend the kept checkpoint of size {size}" in fork.message
    replaced = monitor.check_entries(range(restored, size))
    assert statuses(replaced) == {Status.ENTRY_MISMATCH}, [r.message for r in replaced]
    project = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert project.returncode == 3, project.stdout + project.stderr
    assert json.loads(project.stdout)["problem"] == "fork"
    watched = lab.cli("audit", "watch", "--dir", str(seen), "--json")
    assert watched.returncode == 3, watched.stdout + watched.stderr
    assert json.loads(watched.stdout)["status"] == "fork"


def test_an_entry_whose_bytes_were_replaced_does_not_match_its_proof(
    lab: Lab, tmp_path: Path
) -> None:
    """A cruder edit: the operator changes an entry's bytes in place and leaves the tree."""
    monitor = lab.monitor()
    assert monitor.check().status == Status.FIRST
    seen = tmp_path / "seen"
    assert lab.cli("audit", "watch", "--dir", str(seen)).returncode == 0
    kept = monitor.kept
    assert kept is not None
    target = kept.size - 1
    lab.stop()
    db = sqlite3.connect(lab.files.store, timeout=30)
    try:
        (entry,) = db.execute("SELECT entry FROM log_entries WHERE idx = ?", (target,)).fetchone()
        forged = bytes(entry).replace(b"lab-a", b"lab-b", 1)
        assert forged != bytes(entry)
        with db:
            db.execute("UPDATE log_entries SET entry = ? WHERE idx = ?", (forged, target))
    finally:
        db.close()
    lab.start()

    again = monitor.check()
    assert again.status == Status.UNCHANGED, again.message  # the tree itself was not touched
    (report,) = monitor.check_entries([target])
    assert report.status == Status.ENTRY_MISMATCH, report.message
    assert "do not hash to the leaf hash sent with it" in report.message  # the stale leaf hash
    assert "does not lead to the checkpoint's signed root" in report.message
    assert statuses(monitor.check_entries(range(target))) == {Status.ENTRY_OK}
    project = lab.cli("log", "prove", "--index", str(target))
    assert project.returncode == 3, project.stdout + project.stderr
    # Checkpoints alone cannot see it: the project's watch, like the monitor, finds no change.
    watched = lab.cli("audit", "watch", "--dir", str(seen), "--json")
    assert watched.returncode == 0 and json.loads(watched.stdout)["status"] == "unchanged"


# --- checkpoints that must be refused ------------------------------------------------------------


class _TamperingMirror(audit_pb2_grpc.AuditServiceServicer):
    """Serves the verifier's checkpoint with its signature line altered, as a mirror or a
    network attacker could."""

    def __init__(self, upstream: audit_pb2_grpc.AuditServiceStub, alter: Any) -> None:
        self.upstream, self.alter = upstream, alter

    def GetCheckpoint(self, request: Any, context: Any) -> audit_pb2.GetCheckpointResponse:
        response = self.upstream.GetCheckpoint(request, timeout=10)
        response.signed_note = self.alter(response.signed_note)
        return response


def _alter_signature(note: str) -> str:
    """The note with its last signature line altered (inside the signature, past the key hash,
    still canonical base64)."""
    text, _, line = note.rstrip("\n").rpartition("\n")
    head, b64 = line.rsplit(" ", 1)
    middle = len(b64) // 2
    flipped = b64[:middle] + ("A" if b64[middle] != "A" else "B") + b64[middle + 1 :]
    return f"{text}\n{head} {flipped}\n"


@contextmanager
def tampering_mirror(lab: Lab) -> Iterator[str]:
    """A plaintext address that serves the verifier's checkpoint with its last signature line
    altered."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    with lab.channel() as upstream:
        servicer = _TamperingMirror(  # type: ignore[abstract]  # the other calls: UNIMPLEMENTED
            audit_pb2_grpc.AuditServiceStub(upstream), _alter_signature
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(None)


def test_an_altered_signature_line_and_a_wrong_pinned_key_are_refused(
    lab: Lab, tmp_path: Path
) -> None:
    with tampering_mirror(lab) as address:
        mirrored = LogMonitor(grpc.insecure_channel(address), LogKey.parse(lab.log_vkey))
        refused = mirrored.check()
        mirror = ["--verifier", address, "--insecure-no-tls"]
        project_refused = pausewatch("log", "checkpoint", *mirror, "--log-key", lab.log_vkey)
    assert refused.status == Status.BAD_CHECKPOINT, refused.message
    assert "does not verify" in refused.message and mirrored.kept is None
    assert project_refused.returncode == 3, project_refused.stdout + project_refused.stderr
    # The same note unaltered is accepted (the alteration is what is refused).
    honest = lab.monitor()
    assert honest.check().status == Status.FIRST and honest.kept is not None
    tampered = tmp_path / "tampered.note"
    tampered.write_text(_alter_signature(honest.kept.note))
    project = lab.cli("log", "prove", "--consistency-from", str(tampered))
    assert project.returncode == 3, project.stdout + project.stderr

    wrong_keys = [
        Ed25519NoteSigner(ORIGIN, fixed_private_key(7)).verifier().to_vkey(),  # same name
        Ed25519NoteSigner("other.example/log", load_private_key(lab.files.directory / "log.key"))
        .verifier()
        .to_vkey(),  # the right key under another name
    ]
    for wrong in wrong_keys:
        report = lab.monitor(wrong).check()
        assert report.status == Status.BAD_CHECKPOINT, (wrong, report.message)
        assert lab.cli("log", "checkpoint", log_key=wrong).returncode == 3


# --- witnesses -----------------------------------------------------------------------------------


def test_a_witness_cosigns_the_honest_log_and_not_the_rewritten_one(tmp_path: Path) -> None:
    directory = tmp_path / "v"
    write_verifier_files(directory)  # makes the log key, which the witness must know
    log_vkey = (
        Ed25519NoteSigner(ORIGIN, load_private_key(directory / "log.key")).verifier().to_vkey()
    )
    witness: RunningWitness = start_witness(
        tmp_path / "w", "witness.example/w1", seed=301, log_vkeys=[log_vkey]
    )
    try:
        lab = make_lab(
            directory, f'[[log.witnesses]]\nurl = "{witness.url}"\nkey = "{witness.vkey}"\n'
        )
        try:
            size = lab.store_size()
            lab.wait_checkpoint(size, witnesses=1)
            required = [WitnessKey.parse(witness.vkey)]
            monitor = lab.monitor(witnesses=required)
            first = monitor.check()
            assert first.status == Status.FIRST, first.message
            assert first.checkpoint is not None
            assert first.checkpoint.witnesses == ("witness.example/w1",)
            forged = _alter_signature(first.checkpoint.note)  # the last line: the cosignature
            with pytest.raises(NoteError, match=r"cosignature of witness\.example/w1"):
                verify_checkpoint(forged, LogKey.parse(log_vkey), required)
            assert verify_checkpoint(forged, LogKey.parse(log_vkey)).size == size  # not required
            # Served so, a forged cosignature refuses the checkpoint; it is not merely missing.
            with tampering_mirror(lab) as address:
                mirrored = LogMonitor(
                    grpc.insecure_channel(address), LogKey.parse(log_vkey), witnesses=required
                ).check()
                mirror = ["--verifier", address, "--insecure-no-tls", "--log-key", log_vkey]
                project = pausewatch("log", "checkpoint", *mirror, "--witness", witness.vkey)
                unrequired = pausewatch("log", "checkpoint", *mirror)
            assert mirrored.status == Status.BAD_CHECKPOINT, mirrored.message
            assert "cosignature of witness.example/w1 does not verify" in mirrored.message
            assert project.returncode == 3, project.stdout + project.stderr
            assert unrequired.returncode == 0, unrequired.stdout + unrequired.stderr

            lab.stop()
            rewrite_history(lab.files.store, load_private_key(directory / "log.key"), ORIGIN,
                            [size - 2])  # fmt: skip
            lab.start()
            lab.submit(1)
            lab.wait_checkpoint(size + 1)
            # A monitor that kept nothing, but requires the witness, refuses the forked log.
            newcomer = lab.monitor(witnesses=required).check()
            assert newcomer.status == Status.BAD_CHECKPOINT, newcomer.message
            assert "0 of the 1 witness cosignatures required" in newcomer.message
            project = lab.cli("log", "checkpoint", "--witness", witness.vkey)
            assert project.returncode == 3, project.stdout + project.stderr
            # Without the witness required, only the kept checkpoint shows the fork.
            forked = monitor.check()
            assert forked.status == Status.BAD_CHECKPOINT, forked.message
            unwitnessed = LogMonitor(lab.channel(), LogKey.parse(log_vkey), kept=monitor.kept)
            assert unwitnessed.check().status == Status.FORK
        finally:
            if lab.verifier.process is not None and lab.verifier.process.poll() is None:
                stop_process(lab.verifier, signal.SIGKILL)
    finally:
        stop_witness(witness, signal.SIGKILL)
