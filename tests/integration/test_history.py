"""One history for everyone, played against real processes: a verifier whose operator rewrites
its log (store edited, tree rebuilt, checkpoint re-signed with the log key) or rolls its store
back, auditors that remember checkpoints (`log prove --consistency-from FILE`, `audit watch`),
and two witness processes that cosign only a history consistent with what they cosigned."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from attest.checkpoint import CosignatureVerifier, parse_cosigner_key
from attest.envelope import envelope_digest
from attest.keys import load_private_key
from tests.builders import TestNode
from tests.history import (
    RunningWitness,
    backup_store,
    restore_store,
    rewrite_history,
    running_witnesses,
    start_witness,
    stop_witness,
)
from tests.verifier_harness import (
    RunningVerifier,
    VerifierFiles,
    pausewatch,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

pytestmark = pytest.mark.slow

ORIGIN = "test.example/verifier"
NO_MONITOR = "[monitor]\ninterval_s = 0\n"


@dataclass
class Lab:
    files: VerifierFiles
    verifier: RunningVerifier
    node: TestNode
    chain: list[bytes]
    log_key: str

    def submit(self, count: int) -> None:
        """Append ``count`` more windows of the node's chain."""
        start = len(self.chain)
        prev = envelope_digest(self.chain[-1]) if self.chain else None
        new: list[bytes] = []
        for seq in range(start, start + count):
            raw = self.node.sign_body(self.node.body(seq, prev))
            new.append(raw)
            prev = envelope_digest(raw)
        receipts = self.verifier.client().submit(new)
        assert all(r.status == 1 for r in receipts), receipts
        self.chain += new

    def tree_size(self) -> int:
        """The log's committed size, read from the store."""
        db = sqlite3.connect(self.files.store, timeout=30)
        try:
            return int(db.execute("SELECT COUNT(*) FROM log_entries").fetchone()[0])
        finally:
            db.close()

    def wait_checkpoint(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout_s: float = 60
    ) -> dict[str, Any]:
        """The latest checkpoint (as `log checkpoint --json` prints it), once ``predicate`` (if
        any) holds for it; polled, since checkpoints are signed every interval."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.cli("log", "checkpoint", "--json")
            assert out.returncode == 0, out.stderr
            result: dict[str, Any] = json.loads(out.stdout)
            if predicate is None or predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such checkpoint: {result}")
            time.sleep(0.2)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command, sub, *rest = args
        if sub in ("checkpoint", "prove", "watch"):
            return pausewatch(
                command, sub, *self.verifier.cli_target(), "--log-key", self.log_key, *rest
            )
        return pausewatch(*args)

    def restart(self, log_path: Path) -> None:
        assert stop_process(self.verifier) == 0
        self.verifier = start_verifier_process(self.files, log_path)


def make_lab(directory: Path, extra_config: str = NO_MONITOR) -> Lab:
    files = write_verifier_files(directory, extra_config=extra_config)
    verifier = start_verifier_process(files, directory / "verifier.log")
    from attest.note import Ed25519NoteSigner

    log_key = Ed25519NoteSigner(ORIGIN, load_private_key(files.directory / "log.key"))
    now = time.time_ns()
    node = TestNode.from_seed(90, t0_ns=now - now % 60_000_000_000 - 3_600_000_000_000)
    verifier.client().enroll(node, created_at_ns=node.t0_ns - 10**9)
    lab = Lab(files, verifier, node, [], log_key.verifier().to_vkey())
    lab.submit(6)
    return lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = make_lab(tmp_path / "v")
    try:
        yield lab
    finally:
        if lab.verifier.process is not None and lab.verifier.process.poll() is None:
            stop_process(lab.verifier, signal.SIGKILL)


def _size_is(size: int) -> Callable[[dict[str, Any]], bool]:
    return lambda result: result["tree_size"] == size


def test_a_rewritten_history_fails_both_auditor_checks(lab: Lab, tmp_path: Path) -> None:
    watch_dir = tmp_path / "seen"
    saved = tmp_path / "saved.note"
    size1 = lab.tree_size()
    lab.wait_checkpoint(_size_is(size1))
    assert lab.cli("log", "checkpoint", "--save", str(saved)).returncode == 0
    first = lab.cli("audit", "watch", "--dir", str(watch_dir), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "first"

    # Honest control: the log grows, and both checks say it extends what was seen.
    lab.submit(4)
    size2 = lab.tree_size()
    lab.wait_checkpoint(_size_is(size2))
    grown = lab.cli("audit", "watch", "--dir", str(watch_dir), "--json")
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert json.loads(grown.stdout)["status"] == "consistent"
    proved = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert proved.returncode == 0, proved.stdout + proved.stderr
    assert json.loads(proved.stdout)["size1"] == size1
    again = lab.cli("audit", "watch", "--dir", str(watch_dir), "--json")
    assert json.loads(again.stdout)["status"] == "unchanged"

    # The operator rewrites two early attestations behind the running verifier.
    rewrite_history(
        lab.files.store, load_private_key(lab.files.directory / "log.key"), ORIGIN, [3, 4]
    )
    # The rewritten checkpoint is validly signed: alone, it looks fine.
    assert lab.cli("log", "checkpoint").returncode == 0

    fork = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert fork.returncode == 3, fork.stdout + fork.stderr
    result = json.loads(fork.stdout)
    assert result["problem"] == "fork" and result["verified"] is False
    assert result["saved_tree_size"] == size1 and result["tree_size"] == size2
    assert "FORK" in result["error"] and "does not extend" in result["error"]
    text = lab.cli("log", "prove", "--consistency-from", str(saved))
    assert text.returncode == 3 and "FORK" in text.stdout

    watched = lab.cli("audit", "watch", "--dir", str(watch_dir), "--json")
    assert watched.returncode == 3, watched.stdout + watched.stderr
    report = json.loads(watched.stdout)
    assert report["status"] == "fork" and report["consistent"] is False
    assert f"two checkpoints of tree size {size2} with different roots" in report["error"]
    assert Path(report["kept"]).name.startswith("rejected-")
    assert "FORK" in watched.stderr  # for cron, which mails stderr even when stdout is dropped
    # What was seen before is kept, untouched, and every later run keeps failing.
    assert len(list(watch_dir.glob("checkpoint-*.note"))) == 2
    assert lab.cli("log", "watch", "--dir", str(watch_dir)).returncode == 3
    key_file = tmp_path / "log.vkey"
    key_file.write_text(lab.log_key + "\n")
    by_file = pausewatch(
        "audit", "watch", *lab.verifier.cli_target(), "--log-key-file", str(key_file),
        "--dir", str(watch_dir),
    )  # fmt: skip
    assert by_file.returncode == 3 and "FORK" in by_file.stderr
    unpinned = pausewatch("audit", "watch", *lab.verifier.cli_target(), "--dir", str(watch_dir))
    assert unpinned.returncode == 2 and "pin the log key" in unpinned.stderr


def test_a_rolled_back_store_fails_both_auditor_checks(lab: Lab, tmp_path: Path) -> None:
    watch_dir = tmp_path / "seen"
    saved = tmp_path / "saved.json"
    old = backup_store(lab.files.store, tmp_path / "old.db")
    lab.wait_checkpoint(_size_is(lab.tree_size()))
    lab.submit(5)
    size2 = lab.tree_size()
    lab.wait_checkpoint(_size_is(size2))
    checkpoint = lab.cli("log", "checkpoint", "--json")
    saved.write_text(checkpoint.stdout)  # the JSON form is accepted too
    assert lab.cli("audit", "watch", "--dir", str(watch_dir)).returncode == 0

    stop_process(lab.verifier)
    restore_store(old, lab.files.store)
    lab.verifier = start_verifier_process(lab.files, tmp_path / "verifier2.log")
    size1 = lab.tree_size()
    assert size1 < size2

    rolled = lab.cli("log", "prove", "--consistency-from", str(saved), "--json")
    assert rolled.returncode == 3, rolled.stdout + rolled.stderr
    result = json.loads(rolled.stdout)
    assert result["problem"] == "rollback"
    assert f"{size2 - size1} entries have disappeared" in result["error"]
    # A bare size beyond the log is a rollback too (it used to be a usage error, exit 2).
    bare = lab.cli("log", "prove", "--consistency-from", str(size2))
    assert bare.returncode == 3, bare.stdout + bare.stderr
    assert "ROLLBACK" in bare.stderr

    watched = lab.cli("audit", "watch", "--dir", str(watch_dir), "--json")
    assert watched.returncode == 3
    report = json.loads(watched.stdout)
    assert report["status"] == "rollback" and "ROLLBACK" in report["error"]
    assert report["previous_tree_size"] == size2 and report["tree_size"] == size1


def test_a_log_that_stops_growing_is_stalled_for_a_watch_that_asks(
    lab: Lab, tmp_path: Path
) -> None:
    """A forking verifier that cannot get its fork cosigned can only show a witness-requiring
    reader its last cosigned checkpoint, forever: --max-unchanged-s turns that freeze into exit 3."""
    watch_dir = tmp_path / "seen"
    lab.wait_checkpoint(_size_is(lab.tree_size()))
    assert lab.cli("audit", "watch", "--dir", str(watch_dir)).returncode == 0
    (kept,) = watch_dir.glob("checkpoint-*.note")
    os.utime(kept, (time.time() - 120, time.time() - 120))  # first seen two minutes ago
    calm = lab.cli("audit", "watch", "--dir", str(watch_dir), "--max-unchanged-s", "600", "--json")
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert json.loads(calm.stdout)["status"] == "unchanged"
    assert json.loads(calm.stdout)["unchanged_for_s"] >= 120
    stalled = lab.cli("audit", "watch", "--dir", str(watch_dir), "--max-unchanged-s", "60")
    assert stalled.returncode == 3
    assert "STALLED" in stalled.stderr and "for 12" in stalled.stderr
    # Honest control: the log grows, and the same watch passes again.
    lab.submit(1)
    size = lab.tree_size()
    lab.wait_checkpoint(_size_is(size))
    grown = lab.cli("audit", "watch", "--dir", str(watch_dir), "--max-unchanged-s", "60", "--json")
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert json.loads(grown.stdout)["status"] == "consistent"


def test_bad_saved_checkpoints_are_clear_errors(lab: Lab, tmp_path: Path) -> None:
    lab.wait_checkpoint(_size_is(lab.tree_size()))
    saved = tmp_path / "saved.note"
    assert lab.cli("log", "checkpoint", "--save", str(saved)).returncode == 0
    note = saved.read_text()
    # A note whose signature does not verify: exit 3, naming the file.
    tampered = tmp_path / "tampered.note"
    lines = note.split("\n")
    lines[1] = str(int(lines[1]) - 1)
    tampered.write_text("\n".join(lines))
    out = lab.cli("log", "prove", "--consistency-from", str(tampered))
    assert out.returncode == 3 and "saved checkpoint" in out.stderr
    # Not a note at all; JSON without the note: usage errors.
    junk = tmp_path / "junk.json"
    junk.write_text('{"tree_size": 3}')
    assert lab.cli("log", "prove", "--consistency-from", str(junk)).returncode == 2
    missing = lab.cli("log", "prove", "--consistency-from", str(tmp_path / "nope.note"))
    assert missing.returncode == 2
    # A checkpoint kept in the watch directory that no longer verifies stops the watch.
    watch_dir = tmp_path / "seen"
    assert lab.cli("audit", "watch", "--dir", str(watch_dir)).returncode == 0
    (kept,) = watch_dir.glob("checkpoint-*.note")
    kept.write_text(tampered.read_text())
    assert lab.cli("audit", "watch", "--dir", str(watch_dir)).returncode == 3


# --- witnesses ---------------------------------------------------------------------------------


def witness_config(witnesses: list[RunningWitness]) -> str:
    blocks = [f'[[log.witnesses]]\nurl = "{w.url}"\nkey = "{w.vkey}"\n' for w in witnesses]
    return "\n".join(blocks) + "\n" + NO_MONITOR


def witness_args(witnesses: list[RunningWitness], threshold: int | None = None) -> list[str]:
    args = [a for w in witnesses for a in ("--witness", w.vkey)]
    return args + ([] if threshold is None else ["--witness-threshold", str(threshold)])


def test_two_witnesses_cosign_an_honest_log_and_refuse_a_fork(tmp_path: Path) -> None:
    from attest.note import Ed25519NoteSigner

    directory = tmp_path / "v"
    write_verifier_files(directory)  # the log key, to give the witnesses
    log_vkey = (
        Ed25519NoteSigner(ORIGIN, load_private_key(directory / "log.key")).verifier().to_vkey()
    )
    with running_witnesses(tmp_path / "witnesses", 2, [log_vkey]) as witnesses:
        lab = make_lab(directory, extra_config=witness_config(witnesses))
        try:
            both = witness_args(witnesses, 2)
            size = lab.tree_size()
            cosigned = lab.wait_checkpoint(
                lambda r: r["tree_size"] == size and r["signed_note"].count("\u2014") == 3
            )
            assert lab.cli("log", "checkpoint", *both).returncode == 0
            # The log grows: both witnesses cosign again, with a consistency proof.
            lab.submit(3)
            size2 = lab.tree_size()
            lab.wait_checkpoint(
                lambda r: r["tree_size"] == size2 and r["signed_note"].count("\u2014") == 3
            )
            ok = lab.cli("log", "checkpoint", *both, "--json")
            assert ok.returncode == 0, ok.stderr
            # Bundles carry the cosignatures; an auditor requiring 2 of 2 accepts this one.
            bundle = tmp_path / "honest.pwbundle"
            exported = lab.cli(
                "audit", "export", *lab.verifier.cli_target(), "--lab", "lab-a",
                "--since", "-3h", "--until", "now", "--out", str(bundle),
            )  # fmt: skip
            assert exported.returncode == 0, exported.stderr
            checked = lab.cli(
                "audit", "verify-bundle", str(bundle), "--log-key", lab.log_key, *both, "--json"
            )
            assert checked.returncode in (0, 1), checked.stdout + checked.stderr
            assert sorted(json.loads(checked.stdout)["witnesses"]) == [w.name for w in witnesses]
            assert cosigned["tree_size"] == size

            # The log grows once more; both cosign.
            lab.submit(2)
            size3 = lab.tree_size()
            lab.wait_checkpoint(
                lambda r: r["tree_size"] == size3 and r["signed_note"].count("\u2014") == 3
            )
            # Witness 1 is killed with SIGKILL and restarted on its address just before the fork:
            # had it forgotten what it cosigned, it would cosign the fork from size 0.
            first = witnesses[0]
            assert stop_witness(first, signal.SIGKILL) == -signal.SIGKILL
            witnesses[0] = start_witness(
                tmp_path / "witnesses" / "w1",
                first.name,
                seed=301,
                log_vkeys=[log_vkey],
                port=int(first.url.rsplit(":", 1)[1]),
            )
            # The operator forks the log behind the running verifier: the lab's last window is
            # replaced by a quieter one, re-signed with the node's key (the lab colludes).
            last = len(lab.chain) - 1
            quieter = lab.node.sign_body(
                lab.node.body(last, envelope_digest(lab.chain[-2]), busy_ms=1_000)
            )
            rewrite_history(
                lab.files.store,
                load_private_key(directory / "log.key"),
                ORIGIN,
                [],
                {lab.tree_size() - 1: quieter},
            )
            # Within a few checkpoint intervals the verifier asks both witnesses again, and each
            # keeps the log-signed fork as evidence.
            deadline = time.monotonic() + 60
            while not all(list((w.state / "refused").glob("*.req")) for w in witnesses):
                assert time.monotonic() < deadline, [w.log_path.read_text() for w in witnesses]
                time.sleep(0.2)
            forked = lab.cli("log", "checkpoint", "--json")
            assert forked.returncode == 0  # validly signed by the log key...
            assert json.loads(forked.stdout)["signed_note"].count("\u2014") == 1  # ...no witness
            refused = lab.cli("log", "checkpoint", *both)
            assert refused.returncode == 3, refused.stdout + refused.stderr
            assert "0 of the 2 witness cosignatures required" in refused.stderr
            one = lab.cli("log", "checkpoint", *witness_args(witnesses, 1))
            assert one.returncode == 3
            # A bundle exported now carries no cosignature either.
            forked_bundle = tmp_path / "forked.pwbundle"
            assert lab.cli(
                "audit", "export", *lab.verifier.cli_target(), "--lab", "lab-a",
                "--since", "-3h", "--until", "now", "--out", str(forked_bundle),
            ).returncode == 0  # fmt: skip
            refused_bundle = lab.cli(
                "audit", "verify-bundle", str(forked_bundle), "--log-key", lab.log_key, *both
            )
            assert refused_bundle.returncode == 3
            assert "witness" in refused_bundle.stdout
            # Each witness kept the log-signed fork as evidence, and still holds the honest size.
            for witness in witnesses:
                assert list((witness.state / "refused").glob("*.req")), witness.log_path.read_text()
                assert "REFUSED" in witness.log_path.read_text()

            # The forked log keeps growing (a restarted verifier, new windows): each witness now
            # gets a consistency proof from the size it cosigned, which the fork cannot satisfy
            # (422), and still cosigns nothing.
            lab.restart(tmp_path / "verifier-2.log")
            lab.submit(2)
            size4 = lab.tree_size()
            grown = lab.wait_checkpoint(lambda r: r["tree_size"] == size4)
            deadline = time.monotonic() + 60
            while not all(list((w.state / "refused").glob("*-422-*.req")) for w in witnesses):
                assert time.monotonic() < deadline, [w.log_path.read_text() for w in witnesses]
                time.sleep(0.2)
            assert lab.cli("log", "checkpoint", "--json").returncode == 0
            latest = json.loads(lab.cli("log", "checkpoint", "--json").stdout)
            assert latest["tree_size"] == size4 == grown["tree_size"]
            assert latest["signed_note"].count("\u2014") == 1
            assert lab.cli("log", "checkpoint", *both).returncode == 3
        finally:
            if lab.verifier.process is not None and lab.verifier.process.poll() is None:
                stop_process(lab.verifier, signal.SIGKILL)


def test_a_witness_killed_with_sigkill_keeps_its_state(tmp_path: Path) -> None:
    """The witness is asked directly, as a log would: after SIGKILL it still refuses a rollback
    and a fork of what it cosigned, and cosigns the honest extension."""
    import urllib.error
    import urllib.request

    from attest import merkle
    from attest.checkpoint import Checkpoint, sign_checkpoint, verify_cosignatures
    from attest.note import Ed25519NoteSigner
    from attest.witness import AddCheckpointRequest
    from tests.builders import fixed_private_key

    signer = Ed25519NoteSigner("log.example/a", fixed_private_key(500))
    tree = merkle.MemoryTree()
    for i in range(20):
        tree.append_data(b"entry %d" % i)

    def note_at(size: int, *, forked: bool = False) -> str:
        root = tree.root(size)
        if forked:
            other = merkle.MemoryTree()
            for i in range(size):
                other.append_data(b"other %d" % i)
            root = other.root()
        return sign_checkpoint(Checkpoint("log.example/a", size, root), signer)

    def post(witness: RunningWitness, old: int, size: int, **kw: bool) -> tuple[int, str]:
        proof = tree.consistency_proof(old, size) if 0 < old < size else []
        body = AddCheckpointRequest(old, tuple(proof), note_at(size, **kw)).to_bytes()
        request = urllib.request.Request(witness.url + "/add-checkpoint", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    directory = tmp_path / "w"
    vkey = signer.verifier().to_vkey()
    witness = start_witness(directory, "witness.example/k", seed=401, log_vkeys=[vkey])
    try:
        status, body = post(witness, 0, 10)
        assert status == 200, body
        _, cosignatures = verify_cosignatures(
            note_at(10) + body, signer.verifier(), [witness_signer_verifier(witness)]
        )
        assert len(cosignatures) == 1
        assert stop_witness(witness, signal.SIGKILL) == -signal.SIGKILL
        witness = start_witness(directory, "witness.example/k", seed=401, log_vkeys=[vkey])
        # It remembers size 10: a client starting from 0 learns it (409, text/x.tlog.size).
        assert post(witness, 0, 12) == (409, "10\n")
        # A smaller tree (rollback) is refused; so is a fork at the same size or beyond.
        assert post(witness, 0, 8) == (409, "10\n")
        assert post(witness, 10, 8)[0] == 400
        assert post(witness, 10, 10, forked=True) == (409, "10\n")
        assert post(witness, 10, 14, forked=True)[0] == 422
        # The honest extension is cosigned.
        status, body = post(witness, 10, 15)
        assert status == 200, body
        assert stop_witness(witness, signal.SIGKILL) == -signal.SIGKILL
        witness = start_witness(directory, "witness.example/k", seed=401, log_vkeys=[vkey])
        assert post(witness, 0, 15) == (409, "15\n")
        # Garbage and unknown logs get clear refusals and change nothing.
        request = urllib.request.Request(
            witness.url + "/add-checkpoint", data=b"hello\n", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as garbage:
            urllib.request.urlopen(request, timeout=10)
        assert garbage.value.code == 400
        other = Ed25519NoteSigner("log.example/b", fixed_private_key(501))
        unknown = AddCheckpointRequest(
            0, (), sign_checkpoint(Checkpoint("log.example/b", 1, tree.root(1)), other)
        ).to_bytes()
        with pytest.raises(urllib.error.HTTPError) as not_found:
            urllib.request.urlopen(
                urllib.request.Request(witness.url + "/add-checkpoint", data=unknown), timeout=10
            )
        assert not_found.value.code == 404
        assert post(witness, 0, 16) == (409, "15\n")
    finally:
        if witness.process.poll() is None:
            stop_witness(witness, signal.SIGKILL)


def witness_signer_verifier(witness: RunningWitness) -> CosignatureVerifier:
    return parse_cosigner_key(witness.vkey)
