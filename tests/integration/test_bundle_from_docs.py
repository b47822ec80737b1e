"""An evidence bundle made by the real processes re-verifies with a verifier written from the docs
alone (tests/docs_impl/bundle_reader.py), and every tampered copy that `pausewatch audit
verify-bundle` refuses, it refuses too.

The lab: a verifier with one witness process; node A attests 8 minutes with seq 4 missing (a gap)
and sends one window with a broken signature (a BAD_SIGNATURE finding); node B attests 4 minutes,
then signs a second seq 2 (fork evidence, an EQUIVOCATION finding) and is revoked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import bundle_pb2
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from tests.builders import TestNode, fixed_private_key
from tests.docs_impl import bundle_reader as br
from tests.history import RunningWitness, start_witness, stop_witness
from tests.verifier_harness import REPO, pausewatch, running_verifier, write_verifier_files

S = 10**9
MINUTE = 60 * S
ORIGIN = "test.example/verifier"  # tests.verifier_harness's log origin


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Exported:
    directory: Path
    data: bytes  # from the first window on
    later: bytes  # from A's seq 5 on
    log_private: Ed25519PrivateKey
    log_key: str  # pinned out of band: made here from the key file, as `pausewatch log key` does
    witness_key: str
    node_a: bytes
    node_b: bytes


def _wait_cosigned(client_audit: Any, witness_name: str) -> None:
    """Until the latest checkpoint carries the witness's cosignature and the log stands still."""
    deadline = time.monotonic() + 60
    last = None
    while True:
        response = client_audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=10)
        cosigned = f"\u2014 {witness_name} " in response.signed_note
        if cosigned and last == response.tree_size:
            return
        last = response.tree_size if cosigned else None
        assert time.monotonic() < deadline, response.signed_note
        time.sleep(1.2)  # a checkpoint interval


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    directory = tmp_path_factory.mktemp("bundle-docs")
    files = write_verifier_files(directory / "v")  # the log key, to give the witness
    pem = (files.directory / "log.key").read_bytes()
    log_private = load_pem_private_key(pem, password=None)
    assert isinstance(log_private, Ed25519PrivateKey)
    log_key = br.NoteKey.make(ORIGIN, log_private.public_key().public_bytes_raw()).text()
    witness: RunningWitness = start_witness(
        directory / "w", "witness.example/docs", seed=311, log_vkeys=[log_key]
    )
    try:
        config = f'[[log.witnesses]]\nurl = "{witness.url}"\nkey = "{witness.vkey}"\n'
        with running_verifier(
            directory / "v", extra_config=config + "[monitor]\ninterval_s = 0\n"
        ) as verifier:
            client = verifier.client()
            now = time.time_ns()
            t0 = now - now % MINUTE - 60 * MINUTE
            a = TestNode.from_seed(1001, t0_ns=t0)
            b = TestNode.from_seed(1002, t0_ns=t0)
            for node in (a, b):
                client.enroll(node, created_at_ns=t0 - S)
            client.declare_inventory(
                [n.gpu_uuid(i) for n in (a, b) for i in range(2)], effective_from_ns=t0 - MINUTE
            )

            def chain(node: TestNode, seqs: range, **kw: Any) -> list[bytes]:
                out, prev = [], None
                for seq in seqs:
                    out.append(node.sign_body(node.body(seq, prev, **kw)))
                    prev = sha256(out[-1])
                return out

            a_chain = chain(a, range(9))
            b_chain = chain(b, range(4))
            honest = [*a_chain[:4], *a_chain[5:8], *b_chain]  # A's seq 4 never arrives
            assert all(r.status == 1 for r in client.submit(honest))
            fork = b.sign_body(b.body(2, sha256(b_chain[1]), busy_ms=1_000))
            broken = a_chain[8][:-1] + bytes([a_chain[8][-1] ^ 1])
            client.submit([fork])
            client.submit([broken])
            revocation = rpb.NodeRevocation(
                format_version=1, lab_id="lab-a", node_id=b.node_id, reason="retired",
                created_at_ns=time.time_ns(),
            )  # fmt: skip
            envelope = br.sign_envelope(
                fixed_private_key(100), br.REVOCATION, revocation.SerializeToString()
            )
            client.registry.RevokeNode(
                rpb.RevokeNodeRequest(revocation_envelope=envelope), timeout=10
            )
            _wait_cosigned(client.audit, witness.name)
            # Up to now: the bad signature's finding is about the time it arrived. The later
            # period starts at A's seq 5: the bundle holds both chains from the middle.
            bundles = []
            for start in (t0, t0 + 5 * MINUTE):
                out = directory / f"lab-a-{start}.pwbundle"
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start // S))
                run = pausewatch(
                    "audit", "export", *verifier.cli_target(), "--lab", "lab-a",
                    "--since", since, "--until", "now", "--out", str(out),
                )  # fmt: skip
                assert run.returncode == 0, run.stderr
                bundles.append(out.read_bytes())
        yield Exported(
            directory,
            bundles[0],
            bundles[1],
            log_private,
            log_key,
            witness.vkey,
            a.node_id,
            b.node_id,
        )
    finally:
        stop_witness(witness, signal.SIGKILL)


# --- reading and re-signing a bundle, as a dishonest exporter holding the log key could -----


def open_bundle(data: bytes) -> bundle_pb2.EvidenceBundle:
    return bundle_pb2.EvidenceBundle.FromString(br.parse_envelope(data).payload)


def seal(bundle: bundle_pb2.EvidenceBundle, key: Ed25519PrivateKey) -> bytes:
    return br.sign_envelope(key, br.BUNDLE, bundle.SerializeToString(deterministic=True))


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> str:
    note_key = br.NoteKey.make(name, key.public_key().public_bytes_raw())
    signature = base64.b64encode(note_key.key_hash + key.sign(text.encode())).decode()
    return f"{text}\n\u2014 {name} {signature}\n"


def payload_type(entry: bundle_pb2.BundleEntry) -> str:
    return br.parse_envelope(entry.envelope).payload_type


def in_period_attestation(bundle: bundle_pb2.EvidenceBundle, node_id: bytes) -> int:
    """Position of a mid-period accepted attestation of ``node_id`` (its third entry)."""
    positions = [
        i
        for i, e in enumerate(bundle.entries)
        if payload_type(e) == br.ATTESTATION and br.parse_envelope(e.envelope).key_id == node_id
    ]
    return positions[2]


def _flip_signature(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    entry = b.entries[in_period_attestation(b, ex.node_a)]
    entry.envelope = entry.envelope[:-1] + bytes([entry.envelope[-1] ^ 0x01])
    return seal(b, ex.log_private)


def _change_body(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    from pausewatch.v1 import attestation_pb2

    entry = b.entries[in_period_attestation(b, ex.node_a)]
    env = br.parse_envelope(entry.envelope)
    body = attestation_pb2.AttestationBody.FromString(env.payload)
    body.gpus[0].busy_ms = 1_000  # less compute than was signed
    payload = body.SerializeToString(deterministic=True)
    entry.envelope = br.encode_envelope(
        br.Envelope(env.payload_type, payload, env.key_id, env.signature)
    )
    return seal(b, ex.log_private)


def _drop_entry(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    del b.entries[in_period_attestation(b, ex.node_a)]
    return seal(b, ex.log_private)


def _reorder(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    i = in_period_attestation(b, ex.node_a)
    first, second = bundle_pb2.BundleEntry(), bundle_pb2.BundleEntry()
    first.CopyFrom(b.entries[i])
    second.CopyFrom(b.entries[i + 1])
    b.entries[i].CopyFrom(second)
    b.entries[i + 1].CopyFrom(first)
    return seal(b, ex.log_private)


def _checkpoint(
    ex: Exported, b: bundle_pb2.EvidenceBundle, *, size: int = 0, root: bytes = b""
) -> bytes:
    checkpoint = br.parse_checkpoint(b.checkpoint_note)
    text = "\n".join(
        (
            checkpoint.origin,
            str(size or checkpoint.size),
            base64.b64encode(root or checkpoint.root).decode(),
        )
    )
    b.checkpoint_note = sign_note(text + "\n", ORIGIN, ex.log_private)
    return seal(b, ex.log_private)


def _other_log_key(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    checkpoint = br.parse_checkpoint(b.checkpoint_note)
    b.checkpoint_note = sign_note(checkpoint.text, ORIGIN, Ed25519PrivateKey.generate())
    return seal(b, ex.log_private)


def _not_resigned(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    outer = br.parse_envelope(ex.data)
    b.server_report.coverage.attested_gpu_ms += 60_000
    payload = b.SerializeToString(deterministic=True)
    return br.encode_envelope(
        br.Envelope(outer.payload_type, payload, outer.key_id, outer.signature)
    )


def _hide_equivocation(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    """The EQUIVOCATION finding taken out of the entries and the report: the fork stays."""
    findings = {
        e.log_index: fpb.Finding.FromString(br.parse_envelope(e.envelope).payload)
        for e in b.entries
        if payload_type(e) == br.FINDING
    }
    hidden = {i for i, f in findings.items() if f.kind == fpb.FINDING_KIND_EQUIVOCATION}
    assert hidden
    kept = [e for e in b.entries if e.log_index not in hidden]
    del b.entries[:]
    b.entries.extend(kept)
    reported = [f for f in b.server_report.findings if f.log_index not in hidden]
    del b.server_report.findings[:]
    b.server_report.findings.extend(reported)
    return seal(b, ex.log_private)


def _logging_time_goes_back(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    entry = b.entries[in_period_attestation(b, ex.node_a)]
    entry.logged_at_ns = b.entries[0].logged_at_ns - 1  # before the lab record, logged first
    return seal(b, ex.log_private)


def _laxer_gap_tolerance(ex: Exported, b: bundle_pb2.EvidenceBundle) -> bytes:
    b.gap_tolerance_ns += 120 * S  # the report's verifier settings still say 5 s
    return seal(b, ex.log_private)


TAMPERS: dict[str, Callable[[Exported, bundle_pb2.EvidenceBundle], bytes]] = {
    "envelope-signature-flipped": _flip_signature,
    "window-body-changed": _change_body,
    "entry-dropped": _drop_entry,
    "entries-reordered": _reorder,
    "checkpoint-root-altered": lambda ex, b: _checkpoint(ex, b, root=sha256(b"another root")),
    "checkpoint-size-altered": lambda ex, b: _checkpoint(
        ex, b, size=br.parse_checkpoint(b.checkpoint_note).size + 1
    ),
    "checkpoint-by-another-key": _other_log_key,
    "bundle-not-resigned": _not_resigned,
    "equivocation-hidden": _hide_equivocation,
    "logging-time-goes-back": _logging_time_goes_back,
    "gap-tolerance-laxer": _laxer_gap_tolerance,
}


@dataclass
class Checked:
    ours: br.Result
    cli: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def checked(exported: Exported) -> dict[str, Checked]:
    """Each copy, checked by both verifiers (the CLI runs two at a time)."""
    copies = {"honest": exported.data, "honest-later-period": exported.later}
    copies |= {
        name: tamper(exported, open_bundle(exported.data)) for name, tamper in TAMPERS.items()
    }
    assert len(set(copies.values())) == len(copies)  # each tamper changed something
    paths = {}
    for name, data in copies.items():
        paths[name] = exported.directory / f"{name}.pwbundle"
        paths[name].write_bytes(data)

    def cli(name: str) -> subprocess.CompletedProcess[str]:
        args = ["--log-key", exported.log_key, "--json"]
        return pausewatch("audit", "verify-bundle", str(paths[name]), *args)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(copies, pool.map(cli, copies), strict=True))
    return {
        name: Checked(br.verify_bundle(data, pinned_log_key=exported.log_key), runs[name])
        for name, data in copies.items()
    }


def test_the_honest_bundle_verifies_from_the_docs_alone(
    exported: Exported, checked: dict[str, Checked]
) -> None:
    ours, cli = checked["honest"].ours, checked["honest"].cli
    assert ours.ok, ours.failures
    assert cli.returncode in (0, 1), cli.stdout[-2000:] + cli.stderr[-2000:]
    theirs = json.loads(cli.stdout)
    assert theirs["ok"] and theirs["agrees_with_server"] and theirs["log_key_pinned"]
    assert theirs["failures"] == [] and theirs["differences"] == []
    # The lab as built: both nodes, the gap, the bad signature, the fork and its finding.
    bundle = open_bundle(exported.data)
    assert ours.lab_id == bundle.lab_id == "lab-a"
    assert [n.node_id for n in bundle.server_report.nodes] == sorted(
        (exported.node_a, exported.node_b)
    )
    assert [node for node, _ in ours.fork_evidence] == [exported.node_b]
    kinds = {f.finding.kind for f in bundle.server_report.findings}
    assert {
        fpb.FINDING_KIND_GAP,
        fpb.FINDING_KIND_EQUIVOCATION,
        fpb.FINDING_KIND_BAD_SIGNATURE,
    } <= kinds
    assert theirs["verdict"] == "VERDICT_INVALID"  # the equivocation decides it
    assert theirs["attestations"] == ours.attestations == 11  # accepted: A 7, B 4, not the fork


def test_a_bundle_holding_chains_from_the_middle_verifies(checked: dict[str, Checked]) -> None:
    """A's windows from seq 3 (its last before the period), B's seq 1 to 3 (around its fork)."""
    ours, cli = checked["honest-later-period"].ours, checked["honest-later-period"].cli
    assert ours.ok, ours.failures
    assert cli.returncode in (0, 1), cli.stdout[-2000:] + cli.stderr[-2000:]
    theirs = json.loads(cli.stdout)
    assert theirs["ok"] and theirs["agrees_with_server"]
    assert theirs["attestations"] == ours.attestations == 7  # A's 3, 5, 6, 7 and B's 1, 2, 3
    assert len(ours.fork_evidence) == 1


def _bad_cosignature(ex: Exported) -> bytes:
    """The witness's cosignature line with its signature's last byte flipped (re-sealed)."""
    bundle = open_bundle(ex.data)
    lines = bundle.checkpoint_note.split("\n")
    name = br.NoteKey.parse(ex.witness_key, algorithm=0x04).name
    (at,) = [i for i, line in enumerate(lines) if line.startswith(f"\u2014 {name} ")]
    raw = bytearray(base64.b64decode(lines[at].rsplit(" ", 1)[1]))
    raw[-1] ^= 0x01
    lines[at] = f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}"
    bundle.checkpoint_note = "\n".join(lines)
    return seal(bundle, ex.log_private)


def test_both_require_the_witness_and_pin_the_log_key(exported: Exported) -> None:
    absent = br.NoteKey.make("witness.example/absent", bytes(range(32)), algorithm=0x04).text()
    other_log = br.NoteKey.make(ORIGIN, bytes(range(1, 33))).text()
    bad = exported.directory / "bad-cosignature.pwbundle"
    bad.write_bytes(_bad_cosignature(exported))
    honest = exported.directory / "honest.pwbundle"
    cases = {  # name: (file, log key, witnesses, accepted)
        "cosigned": (honest, exported.log_key, [exported.witness_key], True),
        "witness-absent": (honest, exported.log_key, [absent], False),
        "another-log-key": (honest, other_log, [], False),
        "bad-cosignature": (bad, exported.log_key, [exported.witness_key], False),
        "bad-cosignature-not-required": (bad, exported.log_key, [], True),
    }

    def cli(case: str) -> subprocess.CompletedProcess[str]:
        path, key, witnesses, _ = cases[case]
        extra = [a for w in witnesses for a in ("--witness", w)]
        return pausewatch("audit", "verify-bundle", str(path), "--log-key", key, *extra, "--json")

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(cases, pool.map(cli, cases), strict=True))
    for case, (path, key, witnesses, accepted) in cases.items():
        ours = br.verify_bundle(path.read_bytes(), pinned_log_key=key, witnesses=witnesses)
        assert ours.ok is accepted, (case, ours.failures)
        assert (runs[case].returncode in (0, 1)) is accepted, (case, runs[case].stdout[-2000:])
        if case == "cosigned":
            assert ours.witnesses == ["witness.example/docs"]
            assert json.loads(runs[case].stdout)["witnesses"] == ours.witnesses
    # Unpinned, the bundle vouches for itself: accepted with a warning, as the docs say.
    unpinned = br.verify_bundle(exported.data)
    assert unpinned.ok and unpinned.warnings


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_a_tampered_bundle_is_refused_by_both(name: str, checked: dict[str, Checked]) -> None:
    ours, cli = checked[name].ours, checked[name].cli
    assert not ours.ok, f"{name}: the docs' verifier accepted it"
    assert cli.returncode == 3, (name, cli.stdout[-2000:], cli.stderr[-2000:])
    assert not json.loads(cli.stdout)["ok"]


def test_the_worked_example_of_the_wire_format_reads_as_documented() -> None:
    """docs/wire-format.md §6, block by block: keys, envelope, digest, log, checkpoint."""
    text = (REPO / "docs" / "wire-format.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", text[text.index("## 6. Worked example") :], re.S)
    seed, ids, _, _, envelope0, hashes0, body1, hashes1, vkey, note = blocks
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed.strip()))
    public = private.public_key().public_bytes_raw()
    assert ids.split() == [public.hex(), br.key_id(public).hex()]
    raw0 = bytes.fromhex("".join(envelope0.split()))
    assert br.verifies(br.parse_envelope(raw0), public)
    assert hashes0.split() == [
        "digest",
        sha256(raw0).hex(),
        "leaf",
        "hash",
        br.leaf_hash(raw0).hex(),
    ]
    raw1 = br.sign_envelope(private, br.ATTESTATION, bytes.fromhex("".join(body1.split())))
    assert hashes1.split() == [
        "digest",
        sha256(raw1).hex(),
        "leaf",
        "hash",
        br.leaf_hash(raw1).hex(),
    ]
    leaves = [br.leaf_hash(raw0), br.leaf_hash(raw1)]
    root = br.root_of(leaves)
    assert br.inclusion_verifies(0, 2, leaves[0], [leaves[1]], root)
    assert not br.inclusion_verifies(0, 3, leaves[0], [leaves[1]], root)
    key = br.NoteKey.parse(vkey.strip())
    checkpoint = br.parse_checkpoint(note)
    assert (checkpoint.origin, checkpoint.size, checkpoint.root) == (key.name, 2, root)
    assert br.signed_by(checkpoint, key)
    with pytest.raises(br.MalformedError):
        br.parse_envelope(raw0 + b"\x00")
