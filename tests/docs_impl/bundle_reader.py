"""An offline evidence-bundle verifier written from the documentation alone.

Sources: docs/bundle-format.md, docs/wire-format.md, docs/auditing.md, docs/witness.md,
docs/policy.md ("The lab's acceptance"), docs/site-power.md ("Meter readings") and the messages in
protos/pausewatch/v1/. It must not import attest/, verifier/ or agent/, nor run the project's
commands: it exists to show that an outsider can re-verify a bundle from the docs.

It checks the file, the log key, the bundle's signature, the checkpoint (and witness
cosignatures), every entry's inclusion proof and signature, each node's chain, the logging times,
the verifier settings, the findings that claim failed evidence, and the parts of the report that
need no accounting arithmetic (which it lists in ``Result.skipped``).

    result = verify_bundle(path.read_bytes(), pinned_log_key="origin+1a2b3c4d+AQ...")
    assert result.ok, result.failures
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import audit_pb2, bundle_pb2, policy_pb2, site_pb2
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

_PREFIX = "application/vnd.pausewatch."
BUNDLE = _PREFIX + "bundle.v1+protobuf"
ATTESTATION = _PREFIX + "attestation.v1+protobuf"
ENROLLMENT = _PREFIX + "enrollment.v1+protobuf"
AUTHORIZATION = _PREFIX + "enrollment-authorization.v1+protobuf"
INVENTORY = _PREFIX + "inventory.v1+protobuf"
REVOCATION = _PREFIX + "revocation.v1+protobuf"
LAB = _PREFIX + "lab.v1+protobuf"
POLICY = _PREFIX + "policy.v1+protobuf"
FINDING = _PREFIX + "finding.v1+protobuf"
ACCEPTANCE = _PREFIX + "policy-acceptance.v1+protobuf"
SITE = _PREFIX + "site.v1+protobuf"
METER_READING = _PREFIX + "meter-reading.v1+protobuf"

ZERO = bytes(32)
DASH = "\u2014 "  # a signature line starts with an em dash and a space
BACKENDS = {apb.SAMPLER_BACKEND_NVML: "nvml", apb.SAMPLER_BACKEND_SIM: "sim"}
BACKENDS[apb.SAMPLER_BACKEND_REPLAY] = "replay"


class MalformedError(ValueError):
    """Bytes or text that do not follow the wire format."""


class _StopError(Exception):
    """A failure after which the check cannot go on."""


# --- wire-format.md §1-2: keys, envelopes ---------------------------------------------------


def key_id(raw_public_key: bytes) -> bytes:
    return hashlib.sha256(raw_public_key).digest()


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode("ascii")
    return b"PWSIGv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    key_id: bytes
    signature: bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def encode_envelope(envelope: Envelope) -> bytes:
    kind = envelope.payload_type.encode("ascii")
    return b"".join(
        (
            b"\x0a" + _varint(len(kind)) + kind,
            b"\x12" + _varint(len(envelope.payload)) + envelope.payload,
            b"\x1a\x20" + envelope.key_id,
            b"\x22\x40" + envelope.signature,
        )
    )


def sign_envelope(private_key: Ed25519PrivateKey, payload_type: str, payload: bytes) -> bytes:
    """For tests that re-sign what they tampered with."""
    raw = private_key.public_key().public_bytes_raw()
    signature = private_key.sign(pae(payload_type, payload))
    return encode_envelope(Envelope(payload_type, payload, key_id(raw), signature))


def parse_envelope(data: bytes) -> Envelope:
    """The canonical encoding only: four fields in order, minimal lengths, nothing else."""
    position = 0

    def field(tag: int) -> bytes:
        nonlocal position
        if data[position : position + 1] != bytes([tag]):
            raise MalformedError(f"expected field tag 0x{tag:02x} at byte {position}")
        position += 1
        length = shift = 0
        start = position
        while True:
            if position >= len(data) or shift > 28:
                raise MalformedError("truncated length")
            byte = data[position]
            position += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if data[start:position] != _varint(length):
            raise MalformedError("a length that is not minimal")
        value = data[position : position + length]
        if len(value) != length or length == 0:
            raise MalformedError("an empty or truncated field")
        position += length
        return value

    kind, payload, kid, signature = field(0x0A), field(0x12), field(0x1A), field(0x22)
    if position != len(data):
        raise MalformedError("bytes after the signature")
    if len(kind) > 128 or any(b < 0x21 or b > 0x7E for b in kind):
        raise MalformedError("payload type is not 1-128 printable ASCII characters")
    if len(kid) != 32 or len(signature) != 64:
        raise MalformedError("key id must be 32 bytes and signature 64")
    return Envelope(kind.decode("ascii"), payload, kid, signature)


def verifies(envelope: Envelope, raw_public_key: bytes) -> bool:
    """The envelope names the key's id and its signature over PAE verifies under the key."""
    if envelope.key_id != key_id(raw_public_key):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(raw_public_key).verify(
            envelope.signature, pae(envelope.payload_type, envelope.payload)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


# --- wire-format.md §5: the log, signed notes, checkpoints, cosignatures ----------------------


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 over leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(root_of(leaves[:split]), root_of(leaves[split:]))


def inclusion_verifies(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


@dataclass(frozen=True)
class NoteKey:
    """A signed-note verifier key: ``<name>+<key hash, 8 hex>+<base64(type || public key)>``."""

    name: str
    key_hash: bytes
    algorithm: int
    public_key: bytes

    @staticmethod
    def compute_hash(name: str, algorithm: int, public_key: bytes) -> bytes:
        return hashlib.sha256(name.encode() + b"\n" + bytes([algorithm]) + public_key).digest()[:4]

    @classmethod
    def parse(cls, text: str, algorithm: int = 0x01) -> NoteKey:
        name, _, rest = text.strip().partition("+")
        hash_hex, _, encoded = rest.partition("+")
        try:
            key = base64.b64decode(encoded, validate=True)
            key_hash = bytes.fromhex(hash_hex)
        except (binascii.Error, ValueError) as exc:
            raise MalformedError(f"not a signed-note verifier key: {text!r}") from exc
        canonical = (
            re.fullmatch(r"[0-9a-f]{8}", hash_hex) and base64.b64encode(key).decode() == encoded
        )
        if not canonical or not name or len(key) != 33 or key[0] != algorithm:
            raise MalformedError(
                f"not a signed-note verifier key of type {algorithm:#04x}: {text!r}"
            )
        if cls.compute_hash(name, algorithm, key[1:]) != key_hash:
            raise MalformedError(f"the key hash of {text!r} does not match its name and key")
        return cls(name, key_hash, algorithm, key[1:])

    @classmethod
    def make(cls, name: str, public_key: bytes, algorithm: int = 0x01) -> NoteKey:
        return cls(name, cls.compute_hash(name, algorithm, public_key), algorithm, public_key)

    def text(self) -> str:
        encoded = base64.b64encode(bytes([self.algorithm]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    text: str  # the signed text: every line before the blank line, final newline included
    signatures: tuple[tuple[str, bytes], ...]  # (name, decoded signature bytes) per line


def parse_checkpoint(note: str) -> Checkpoint:
    text, sep, lines = note.partition("\n\n")
    if not sep or not lines.endswith("\n"):
        raise MalformedError("not a signed note: no blank line, or no final newline")
    text += "\n"
    body = text.split("\n")[:-1]  # origin, size, root, then any extension lines (signed too)
    if len(body) < 3 or not re.fullmatch(r"0|[1-9][0-9]*", body[1]):
        raise MalformedError("a checkpoint's text starts with three lines: origin, size, root")
    try:
        root = base64.b64decode(body[2], validate=True)
        signatures = []
        for line in lines[:-1].split("\n"):
            name, _, encoded = line.removeprefix(DASH).partition(" ")
            if not line.startswith(DASH) or not name or " " in encoded:
                raise MalformedError(f"not a signature line: {line!r}")
            signatures.append((name, base64.b64decode(encoded, validate=True)))
    except binascii.Error as exc:
        raise MalformedError("bad base64 in the note") from exc
    if len(root) != 32 or base64.b64encode(root).decode() != body[2]:
        raise MalformedError("the root hash is not 32 bytes in canonical base64")
    return Checkpoint(body[0], int(body[1]), root, text, tuple(signatures))


def _ed25519_ok(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_by(checkpoint: Checkpoint, key: NoteKey) -> bool:
    """At least one line from ``key`` (its name and key hash), and every such line verifies."""
    lines = [s for n, s in checkpoint.signatures if n == key.name and s[:4] == key.key_hash]
    message = checkpoint.text.encode()
    return bool(lines) and all(
        len(s) == 68 and _ed25519_ok(key.public_key, s[4:], message) for s in lines
    )


def cosigned_by(checkpoint: Checkpoint, witness: NoteKey) -> bool | None:
    """None: no line names the witness; else whether one of its lines verifies."""
    lines = [s for n, s in checkpoint.signatures if n == witness.name and s[:4] == witness.key_hash]
    if not lines:
        return None
    for sig in lines:
        if len(sig) != 76:
            continue
        message = b"cosignature/v1\ntime %d\n" % int.from_bytes(sig[4:12], "big")
        if _ed25519_ok(witness.public_key, sig[12:], message + checkpoint.text.encode()):
            return True
    return False


# --- wire-format.md §3: body validation -----------------------------------------------------

_LAB_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MS = 1_000_000


def body_problem(body: apb.AttestationBody, envelope_key_id: bytes) -> str | None:
    """The first rule of wire-format.md §3's table the body breaks, or None."""
    window = body.window_end_ns - body.window_start_ns
    interval_ns = body.sample_interval_ms * MS
    checks: list[tuple[bool, str]] = [
        (body.format_version == 1, "format_version"),
        (_LAB_ID.fullmatch(body.lab_id) is not None, "lab_id"),
        (body.node_id == envelope_key_id, "node_id"),
        (0 < len(body.boot_id) <= 64 and 0 < len(body.agent_version) <= 64, "boot_id"),
        (len(body.agent_digest) == 32 and len(body.samples_merkle_root) == 32, "agent_digest"),
        (len(body.prev_digest) == 32 and (body.prev_digest == ZERO) == (body.seq == 0), "seq"),
        (body.window_start_ns > 0, "window_start_ns"),
        (100 * MS <= window <= 600_000 * MS, "window_end_ns"),
        (len(body.verifier_nonce) <= 64, "verifier_nonce"),
        (10 <= body.sample_interval_ms <= 60_000, "sample_interval_ms"),
        (body.sampler_backend in BACKENDS, "sampler_backend"),
        (len(body.driver_version) <= 64 and len(body.nvml_version) <= 64, "driver_version"),
        (len(body.gpus) <= 256, "gpus"),
        (len({g.uuid for g in body.gpus}) == len({g.index for g in body.gpus}) == len(body.gpus), "gpus"),
    ]  # fmt: skip
    for g in body.gpus:
        checks += [
            (0 < len(g.uuid) <= 96 and 0 < len(g.model) <= 96, "gpus.uuid"),
            (max(len(g.serial), len(g.board_part_number), len(g.pci_bus_id)) <= 96, "gpus.serial"),
            (g.presence != 0 and g.energy_counter_state != 0, "gpus.presence"),
            (g.samples_expected <= window // interval_ns + 2, "gpus.samples_expected"),
            (g.samples_taken <= g.samples_expected, "gpus.samples_taken"),
            (
                max(g.busy_ms, g.tensor_active_ms, g.sm_active_ms)
                <= window // MS + body.sample_interval_ms,
                "gpus.busy_ms",
            ),
            (
                g.energy_counter_state != apb.ENERGY_COUNTER_STATE_OK
                or g.energy_end_mj >= g.energy_start_mj,
                "gpus.energy_end_mj",
            ),
            (g.mean_power_mw <= g.max_power_mw, "gpus.mean_power_mw"),
            (
                all(m.metric != 0 and m.state != 0 and len(m.last_error) <= 64 for m in g.metric_status)
                and len({m.metric for m in g.metric_status}) == len(g.metric_status),
                "gpus.metric_status",
            ),
        ]  # fmt: skip
    checks.append((len(body.events) <= 256, "events"))
    checks += [
        (e.kind != 0 and len(e.detail) <= 256 and e.gap_end_ns >= e.gap_start_ns, "events")
        for e in body.events
    ]
    return next((name for ok, name in checks if not ok), None)


# --- bundle-format.md: the walk --------------------------------------------------------------


@dataclass
class Node:
    public_key: bytes
    name: str
    lab_id: str
    gpus: frozenset[str]
    enrolled_at_ns: int
    revoked_at_ns: int | None = None
    revocation_index: int | None = None
    head: tuple[int, bytes, int] | None = None  # seq, digest, window end
    accepted_at_seq: dict[int, bytes] = field(default_factory=dict)
    accepted: list[tuple[int, apb.AttestationBody]] = field(default_factory=list)
    forks: list[int] = field(default_factory=list)


@dataclass
class Result:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Report fields this implementation does not recompute (bundle-format.md, "Notes for an
    # independent implementation": say which were skipped).
    skipped: list[str] = field(default_factory=list)
    lab_id: str = ""
    entries: int = 0
    attestations: int = 0  # accepted ones: fork evidence is not counted
    fork_evidence: list[tuple[bytes, int]] = field(default_factory=list)
    witnesses: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


SKIPPED = [
    "rules",
    "coverage",
    "gaps",
    "totals",
    "series",
    "verdict",
    "reasons",
    "sites",
    "flagged",
    "nodes[].upper_bound_flop",
    "nodes[].rooting",
    "TPM evidence",
]


class _Walk:
    def __init__(self, bundle: bundle_pb2.EvidenceBundle, log_key: NoteKey, result: Result):
        self.b = bundle
        self.log_key = log_key
        self.r = result
        self.operator_keys: list[tuple[int, bytes]] = []
        self.lab_names: list[str] = []
        self.policies: list[tuple[int, policy_pb2.PolicyRecord]] = []
        self.acceptances: list[tuple[int, policy_pb2.PolicyAcceptance]] = []
        self.findings: dict[int, fpb.Finding] = {}
        self.pending: dict[bytes, rpb.NodeEnrollment] = {}
        self.nodes: dict[bytes, Node] = {}
        self.meter_keys: dict[str, set[bytes]] = {}  # meter id: every key any site declared
        self.readings: list[tuple[int, Envelope]] = []
        self.indices: set[int] = set()

    def fail(self, message: str) -> None:
        self.r.failures.append(message)

    def operator_key(self, log_index: int) -> bytes | None:
        earlier = [key for index, key in self.operator_keys if index < log_index]
        return earlier[-1] if earlier else None

    def run(self, checkpoint: Checkpoint) -> None:
        tree_size = self.b.server_report.tree_size
        previous: int | None = None
        last_logged = 0
        if not any(e.logged_at_ns for e in self.b.entries):
            self.r.warnings.append("the bundle states no logging times (an older verifier)")
        for position, entry in enumerate(self.b.entries):
            where = f"entry {position} (log index {entry.log_index})"
            if previous is not None and entry.log_index <= previous:
                self.fail(f"{where}: log index not above the previous entry's {previous}")
                continue
            if entry.log_index >= tree_size:
                self.fail(f"{where}: log index not below the report's tree size {tree_size}")
                continue
            proof = list(entry.inclusion_proof)
            if not inclusion_verifies(
                entry.log_index, checkpoint.size, leaf_hash(entry.envelope), proof, checkpoint.root
            ):
                self.fail(f"{where}: inclusion proof does not lead to the checkpoint's root")
                continue
            previous = entry.log_index
            self.indices.add(entry.log_index)
            if 0 < entry.logged_at_ns < last_logged:
                self.fail(f"{where}: logged at {entry.logged_at_ns}, before the previous entry")
            last_logged = max(last_logged, entry.logged_at_ns)
            try:
                envelope = parse_envelope(entry.envelope)
                problem = self.fold(entry, envelope)
            except (MalformedError, DecodeError) as exc:
                problem = f"malformed: {exc}"
            if problem:
                self.fail(f"{where}: {problem}")
        for payload in self.pending:
            self.fail(f"enrolment {key_id(payload).hex()[:16]}: no authorisation followed it")
        for index, env in self.readings:
            reading = site_pb2.MeterReadingBody.FromString(env.payload)
            keys = self.meter_keys.get(reading.meter_id, set())
            if reading.lab_id != self.b.lab_id or not any(verifies(env, k) for k in keys):
                self.fail(f"log index {index}: meter reading not signed by its declared meter key")

    def fold(self, entry: bundle_pb2.BundleEntry, env: Envelope) -> str | None:
        index, kind = entry.log_index, env.payload_type
        lab = self.b.lab_id
        if kind in (LAB, POLICY, FINDING, SITE):
            if not verifies(env, self.log_key.public_key):
                return f"{kind}: signature does not verify under the log key"
            if kind == LAB:
                record = policy_pb2.LabRecord.FromString(env.payload)
                if record.lab_id == lab:
                    self.operator_keys.append((index, record.operator_public_key))
                    self.lab_names.append(record.name)
            elif kind == POLICY:
                policy = policy_pb2.PolicyRecord.FromString(env.payload)
                if policy.lab_id == lab:
                    self.policies.append((index, policy))
            elif kind == FINDING:
                finding = fpb.Finding.FromString(env.payload)
                if finding.lab_id == lab:
                    self.findings[index] = finding
            else:
                site = site_pb2.SiteDeclaration.FromString(env.payload)
                if site.lab_id == lab:
                    for meter in site.meters:
                        self.meter_keys.setdefault(meter.meter_id, set()).add(meter.public_key)
            return None
        if kind == ENROLLMENT:
            enrollment = rpb.NodeEnrollment.FromString(env.payload)
            if not verifies(env, enrollment.node_public_key):
                return "enrolment: not signed by the node key it enrols"
            self.pending[env.payload] = enrollment
            return None
        if kind == METER_READING:  # checked once every site declaration is known
            self.readings.append((index, env))
            return None
        if kind in (AUTHORIZATION, INVENTORY, REVOCATION, ACCEPTANCE):
            operator = self.operator_key(index)
            if operator is None or not verifies(env, operator):
                return f"{kind}: not signed by the lab's operator key at this point of the log"
            return self.fold_operator_record(index, kind, env.payload)
        if kind == ATTESTATION:
            return self.fold_attestation(entry, env)
        return f"unexpected payload type {kind}"

    def fold_operator_record(self, index: int, kind: str, payload: bytes) -> str | None:
        lab = self.b.lab_id
        if kind == AUTHORIZATION:
            enrollment = self.pending.pop(payload, None)
            if enrollment is None:
                return "authorisation of an enrolment not seen before it"
            if enrollment.lab_id == lab:
                node_id = key_id(enrollment.node_public_key)
                gpus = frozenset(g.uuid for g in enrollment.gpus)
                self.nodes[node_id] = Node(
                    enrollment.node_public_key,
                    enrollment.node_name,
                    lab,
                    gpus,
                    enrollment.created_at_ns,
                )
            return None
        if kind == INVENTORY:
            declaration = rpb.InventoryDeclaration.FromString(payload)
            return None if declaration.lab_id == lab else "inventory of another lab"
        if kind == ACCEPTANCE:
            acceptance = policy_pb2.PolicyAcceptance.FromString(payload)
            if acceptance.lab_id != lab:
                return "policy acceptance of another lab"
            self.acceptances.append((index, acceptance))
            return None
        revocation = rpb.NodeRevocation.FromString(payload)
        node = self.nodes.get(revocation.node_id)
        if revocation.lab_id != lab or node is None:
            return "revocation of a node not registered in this lab"
        if node.revocation_index is None:
            node.revoked_at_ns, node.revocation_index = revocation.created_at_ns, index
        return None

    def fold_attestation(self, entry: bundle_pb2.BundleEntry, env: Envelope) -> str | None:
        node = self.nodes.get(env.key_id)
        if node is None:
            return "attestation by a key that is not a registered node"
        if not verifies(env, node.public_key):
            return "attestation: signature does not verify under the node key"
        body = apb.AttestationBody.FromString(env.payload)
        problem = body_problem(body, env.key_id)
        if problem:
            return f"attestation: invalid body ({problem})"
        if body.lab_id != self.b.lab_id:
            return "attestation of another lab"
        if node.revocation_index is not None and entry.log_index > node.revocation_index:
            return "attestation logged after the node's revocation"
        unknown = {g.uuid for g in body.gpus} - node.gpus
        if unknown:
            return f"attestation names GPUs the node never enrolled: {sorted(unknown)}"
        if 0 < entry.logged_at_ns < body.window_end_ns - self.b.max_clock_skew_ns:
            return "attestation logged before its window ended (less the clock skew)"
        digest = hashlib.sha256(encode_envelope(env)).digest()
        on_record = node.accepted_at_seq.get(body.seq)
        if on_record is not None:
            if on_record == digest:
                return "duplicate of an accepted attestation"
            return self.fork(node, entry.log_index)
        if node.head is not None:
            head_seq, head_digest, head_end = node.head
            if body.seq <= head_seq:
                return f"rollback: seq {body.seq} at or below the head {head_seq}"
            if body.seq == head_seq + 1 and body.prev_digest != head_digest:
                return self.fork(node, entry.log_index)
            if body.window_start_ns < head_end:
                return "window starts before the node's previous window ended"
        node.head = (body.seq, digest, body.window_end_ns)
        node.accepted_at_seq[body.seq] = digest
        node.accepted.append((entry.log_index, body))
        self.r.attestations += 1
        return None

    def fork(self, node: Node, log_index: int) -> str | None:
        """Fork evidence: remembered, the node flagged, nothing else (not a failure)."""
        node.forks.append(log_index)
        self.r.fork_evidence.append((key_id(node.public_key), log_index))
        return None

    # -- step 7 and the report ---------------------------------------------------------------

    def check_findings(self) -> None:
        equivocations = [
            (i, f) for i, f in self.findings.items() if f.kind == fpb.FINDING_KIND_EQUIVOCATION
        ]
        for node_id, index in self.r.fork_evidence:
            named = any(
                f.node_id == node_id and index in f.evidence_log_indices for _, f in equivocations
            )
            if not named:
                self.fail(f"fork evidence at log index {index}: no EQUIVOCATION finding names it")
        forks = set(self.r.fork_evidence)
        for i, f in equivocations:
            if not forks.intersection((f.node_id, e) for e in f.evidence_log_indices):
                self.fail(f"EQUIVOCATION finding at log index {i} names no fork evidence")
        for i, f in self.findings.items():
            node = self.nodes.get(f.node_id)
            if f.kind != fpb.FINDING_KIND_BAD_SIGNATURE or node is None:
                continue
            try:
                rejected: Envelope | None = parse_envelope(f.rejected_envelope)
            except MalformedError:
                rejected = None
            if rejected is not None and verifies(rejected, node.public_key):
                self.fail(f"BAD_SIGNATURE finding at log index {i}: the envelope verifies")

    def check_settings(self) -> None:
        """bundle-format.md, "Verifier settings": the report's must be the bundle's."""
        report, b = self.b.server_report, self.b
        if not report.HasField("verifier_settings"):
            self.r.warnings.append("the report states no verifier settings (an older verifier)")
            return
        s = report.verifier_settings
        stated = [s.gap_tolerance_ns, s.open_gap_grace_ns, s.max_clock_skew_ns]
        stated += [s.energy_mismatch_factor_ppm, s.idle_power_fraction_ppm]
        mine = [b.gap_tolerance_ns, b.open_gap_grace_ns, b.max_clock_skew_ns]
        mine += [b.energy_mismatch_factor_ppm, b.idle_power_fraction_ppm]
        if mine != stated:
            self.fail(f"report's verifier settings {stated} differ from the bundle's {mine}")
        for node in self.nodes.values():
            for index, body in node.accepted:
                if BACKENDS.get(body.sampler_backend) not in s.accept_backends:
                    self.fail(f"log index {index}: from a sampler backend the verifier refuses")
        if set(s.accept_backends) - {"nvml"}:
            self.r.warnings.append(f"the verifier accepts {sorted(s.accept_backends)}")

    def check_report(self) -> None:
        """The report's fields that need no accounting arithmetic (steps 8 and 9)."""
        report, b = self.b.server_report, self.b
        as_of = report.as_of_ns
        stated = (report.lab_id, report.period_start_ns, report.period_end_ns, report.bucket_ns)
        if stated != (b.lab_id, b.period_start_ns, b.period_end_ns, b.bucket_ns):
            self.fail(f"report is about lab, period and bucket {stated}: not the bundle's")
        if not b.period_start_ns <= as_of <= b.period_end_ns:
            self.fail(f"report's as_of {as_of} is outside the period")
        if self.lab_names and report.lab_name != self.lab_names[-1]:
            self.fail(f"report's lab name {report.lab_name!r} is not the latest lab record's")
        self.check_policy(report)
        # Findings: those of the lab whose period overlaps the report's, by log index.
        overlapping = [
            audit_pb2.LoggedFinding(log_index=i, finding=f)
            for i, f in sorted(self.findings.items())
            if f.period_end_ns >= b.period_start_ns and f.period_start_ns < b.period_end_ns
        ]
        if list(report.findings) != overlapping:
            self.fail("report's findings differ from the lab's findings in the bundle")
        cited = {i for rule in report.rules for i in rule.evidence_log_indices}
        for logged in report.findings:
            cited |= {logged.log_index, *logged.finding.evidence_log_indices}
        for missing in sorted(cited - self.indices):
            self.fail(f"the report cites log index {missing}, which the bundle does not hold")
        self.check_nodes(report)

    def check_policy(self, report: audit_pb2.ComplianceReport) -> None:
        """The policy in force at as_of (else the first), and the lab's acceptance of it."""
        if not self.policies:
            self.fail("no policy record for the lab")
            return
        in_force = [p for _, p in self.policies if p.effective_from_ns <= report.as_of_ns]
        policy = in_force[-1] if in_force else self.policies[0][1]
        digest = hashlib.sha256(policy.policy_toml).digest()
        expected = (policy.policy_id, policy.policy_version, digest)
        if (report.policy_id, report.policy_version, report.policy_digest) != expected:
            self.fail("report's policy is not the one in force in the bundle")
        accepted = [i for i, a in self.acceptances if a.policy_sha256 == digest]
        expected_acceptance = (bool(accepted), accepted[0] if accepted else 0)  # the first
        if (report.policy_accepted, report.policy_acceptance_log_index) != expected_acceptance:
            self.fail("report's policy acceptance differs from the bundle's")

    def check_nodes(self, report: audit_pb2.ComplianceReport) -> None:
        b, as_of = self.b, report.as_of_ns
        expected: dict[bytes, tuple[object, ...]] = {}
        for node_id, n in sorted(self.nodes.items()):
            if (
                n.enrolled_at_ns >= as_of
                or (n.revoked_at_ns or b.period_end_ns) < b.period_start_ns
            ):
                continue
            in_period = [x for _, x in n.accepted if b.period_start_ns <= x.window_start_ns < as_of]
            seqs = [x.seq for x in in_period]
            first, last = (min(seqs), max(seqs)) if seqs else (0, 0)
            expected[node_id] = (n.name, len(seqs), first, last, bool(n.forks))
            expected[node_id] += (n.revocation_index is not None, len(n.gpus))
        stated = {
            node.node_id: (
                *(node.node_name, node.attestations, node.first_seq, node.last_seq),
                *(node.flagged, node.revoked, node.enrolled_gpus),
            )
            for node in report.nodes
        }
        for node_id in sorted(expected.keys() | stated.keys()):
            if expected.get(node_id) != stated.get(node_id):
                self.fail(
                    f"node {node_id.hex()[:16]}: report says {stated.get(node_id)}, "
                    f"the bundle's entries give {expected.get(node_id)}"
                )


def verify_bundle(
    data: bytes,
    *,
    pinned_log_key: str | None = None,
    witnesses: Sequence[str] = (),
    witness_threshold: int | None = None,
) -> Result:
    """Every check of bundle-format.md, "Offline verification", that needs no accounting."""
    result = Result(skipped=list(SKIPPED))
    try:
        _verify(data, pinned_log_key, witnesses, witness_threshold, result)
    except _StopError as stop:
        result.failures.append(str(stop))
    return result


def _verify(
    data: bytes,
    pinned: str | None,
    witnesses: Sequence[str],
    threshold: int | None,
    result: Result,
) -> None:
    # 1. The file.
    try:
        outer = parse_envelope(data)
    except MalformedError as exc:
        raise _StopError(f"file: not a canonical envelope: {exc}") from exc
    if outer.payload_type != BUNDLE:
        raise _StopError(f"file: payload type {outer.payload_type!r} is not the bundle type")
    try:
        bundle = bundle_pb2.EvidenceBundle.FromString(outer.payload)
    except DecodeError as exc:
        raise _StopError("file: the payload is not an EvidenceBundle") from exc
    result.lab_id, result.entries = bundle.lab_id, len(bundle.entries)
    # 2. The log key.
    if pinned is None:
        result.warnings.append("log key not pinned: the bundle vouches for itself")
    try:
        log_key = NoteKey.parse(pinned if pinned is not None else bundle.log_verifier_key)
    except MalformedError as exc:
        raise _StopError(f"log key: {exc}") from exc
    if pinned is not None and bundle.log_verifier_key != pinned:
        result.failures.append("log key: the bundle names another key than the pinned one")
    # 3. The bundle's signature.
    if not verifies(outer, log_key.public_key):
        result.failures.append("bundle signature: does not verify under the log key")
    if bundle.format_version != 1:
        raise _StopError(f"format version {bundle.format_version} is not 1")
    # 4. The checkpoint.
    try:
        checkpoint = parse_checkpoint(bundle.checkpoint_note)
    except MalformedError as exc:
        raise _StopError(f"checkpoint: {exc}") from exc
    if checkpoint.origin != log_key.name or not signed_by(checkpoint, log_key):
        raise _StopError("checkpoint: no signature by the log key, or another origin")
    if bundle.server_report.tree_size > checkpoint.size:
        result.failures.append("checkpoint: smaller than the report's tree size")
    if bundle.bucket_ns <= 0 or bundle.gap_tolerance_ns < 0:
        raise _StopError("bucket_ns is not positive, or gap_tolerance_ns is negative")
    if bundle.energy_mismatch_factor_ppm < 1_000_000 or bundle.idle_power_fraction_ppm > 1_000_000:
        raise _StopError("no usable energy settings: the bundle cannot be re-verified")
    keys = [NoteKey.parse(w, algorithm=0x04) for w in witnesses]
    if keys:
        good = []
        for key in keys:
            verdict = cosigned_by(checkpoint, key)
            if verdict is False:
                result.failures.append(f"checkpoint: cosignature of {key.name} does not verify")
            if verdict:
                good.append(key.name)
        result.witnesses = good
        needed = len(keys) if threshold is None else threshold
        if len(good) < needed:
            missing = ", ".join(k.name for k in keys if k.name not in good)
            result.failures.append(
                f"checkpoint: {len(good)} of the {needed} witness cosignatures; missing: {missing}"
            )
    # 5-9.
    walk = _Walk(bundle, log_key, result)
    walk.run(checkpoint)
    walk.check_findings()
    walk.check_settings()
    walk.check_report()
