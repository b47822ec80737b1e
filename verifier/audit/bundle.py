"""Evidence bundles: export everything an audit rests on, and re-verify it offline.

    data = export_bundle(auditor, "lab-a", period_start_ns, period_end_ns)   # on the server
    result = verify_bundle(data, pinned_log_key=vkey)                        # anywhere, offline
    result.ok, result.failures, result.differences, result.offline_report.verdict

A bundle file is one Envelope (payload type ``application/vnd.pausewatch.bundle.v1+protobuf``)
signed by the verifier's log key, whose payload is an ``EvidenceBundle``: the log entries of the lab
(lab and policy records, enrolments, inventory declarations, revocations, the attestations of the
period and each node's last one before it, equivocation evidence, the findings), each with an
inclusion proof against one signed checkpoint, and the report the server computed.

Offline verification trusts nothing but the log key (pin it with ``pinned_log_key``): it checks the
bundle's signature, the checkpoint, every inclusion proof, every record's signature under the key
that may sign it (log key, lab operator key, node key), the node chains, then recomputes the
accounts, gaps and verdict with the same pure code the server uses (ADR 0001) and compares the
result with the server's report field by field. Every failure names what failed. See
docs/bundle-format.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import audit_pb2 as pb
from pausewatch.v1 import bundle_pb2 as bpb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import policy_pb2 as ppb
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import site_pb2

from attest import compute, merkle
from attest import tpm as attest_tpm
from attest.attestation import attestation_from_verified
from attest.chain import ChainHead, Link, classify
from attest.checkpoint import (
    Checkpoint,
    CosignatureVerifier,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignatures,
    verify_witness_quorum,
)
from attest.envelope import (
    Envelope,
    PayloadType,
    StaticKeyring,
    parse_envelope,
    sign_envelope,
    verify_parsed_envelope,
)
from attest.errors import (
    BodyError,
    ConfigError,
    EnvelopeError,
    KeyFileError,
    NoteError,
    PausewatchError,
    ProofError,
    SignatureError,
    TpmError,
    VerificationError,
)
from attest.ids import Digest, NodeId
from attest.keys import key_id_from_raw, public_key_from_raw
from attest.meter import MeterReading
from attest.note import Ed25519NoteVerifier, parse_verifier_key
from verifier import tpm as tpm_checks
from verifier.accounting import accounts, evaluation
from verifier.accounting.accounts import Bucket, WindowEdge
from verifier.accounting.policy import Policy, load_policy_bytes, record_in_force
from verifier.accounting.site import EnergySpan, SiteInputs
from verifier.audit.site_report import sites_in_force, verify_meter_entry, window_energy_span
from verifier.store.base import EntryKind, ReadView

if TYPE_CHECKING:  # the core for the type only: offline users of this module need none of it
    from verifier.store.core import VerifierCore

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_BUNDLE_BYTES = 2 * 1024**3

_LAB_KINDS = (
    EntryKind.LAB,
    EntryKind.POLICY,
    EntryKind.POLICY_ACCEPTANCE,
    EntryKind.ENROLLMENT,
    EntryKind.ENROLLMENT_AUTHORIZATION,
    EntryKind.INVENTORY,
    EntryKind.REVOCATION,
    EntryKind.FORK_EVIDENCE,
    EntryKind.SITE,
)


# --- export --------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, view: ReadView) -> None:
        self._view = view

    def node(self, level: int, index: int) -> bytes:
        return self._view.node_hash(level, index)


def select_entries(
    view: ReadView,
    lab_id: str,
    *,
    period_start_ns: int,
    period_end_ns: int,
    report: pb.ComplianceReport,
    bucket_ns: int,
) -> list[int]:
    """The log indices a bundle must hold so that the report can be recomputed from it."""
    size = report.tree_size
    indices: set[int] = {
        entry.index for entry in view.entries_of_kind_for_lab(lab_id, _LAB_KINDS, size)
    }
    # Equivocation evidence needs the accepted envelopes it conflicts with, and the one before.
    forks: set[int] = set()
    for entry in view.entries(sorted(indices)):
        if entry.kind is EntryKind.FORK_EVIDENCE:
            forks.add(entry.index)
            body = apb.AttestationBody.FromString(parse_envelope(entry.entry).payload)
            for seq in (body.seq - 1, body.seq):
                at = _attestation_at(view, entry.node_id, seq)
                if at is not None:
                    indices.add(at)
    # Every fork evidence entry is in the bundle, whatever the period, so its EQUIVOCATION finding
    # must be too: the offline check fails a bundle whose equivocation is not reported.
    if forks:
        indices.update(_equivocation_findings(view, lab_id, forks, size))
    # Every attestation counted in a bucket of the report (a window counts where it starts).
    first_bucket = accounts.bucket_start(period_start_ns, bucket_ns)
    for row in view.attestations_in(lab_id, first_bucket, period_end_ns):
        if row.log_index < size:
            indices.add(row.log_index)
    # Each node's last window starting before the period: the gap rule needs it.
    for node in view.list_nodes(lab_id):
        before = view.last_attestation_before(node.node_id, period_start_ns)
        if before is not None and before.log_index < size:
            indices.add(before.log_index)
    for finding in report.findings:
        indices.add(finding.log_index)
        indices.update(i for i in finding.finding.evidence_log_indices if i < size)
    # The meter readings each site's figures rest on.
    for summary in report.sites:
        indices.update(i for i in summary.reading_log_indices if i < size)
    return sorted(indices)


def _equivocation_findings(view: ReadView, lab_id: str, forks: set[int], size: int) -> set[int]:
    """The log indices of the EQUIVOCATION findings that cite any of ``forks``, and their
    evidence."""
    out: set[int] = set()
    after = -1
    while True:
        rows = view.findings(
            lab_id, after_index=after, kinds=(fpb.FINDING_KIND_EQUIVOCATION,), limit=1000
        )
        for row in rows:
            if row.log_index >= size:
                return out
            finding = fpb.Finding.FromString(row.finding)
            if forks.intersection(finding.evidence_log_indices):
                out.add(row.log_index)
                out.update(i for i in finding.evidence_log_indices if i < size)
        if len(rows) < 1000:
            return out
        after = rows[-1].log_index


def _attestation_at(view: ReadView, node_id: bytes, seq: int) -> int | None:
    if seq < 0:
        return None
    digest = view.attestation_digest_at(node_id, seq)
    if digest is None:
        return None
    found = view.entry_index_by_digest(digest)
    return None if found is None else found[0]


class BundleSource(Protocol):
    """What the export needs of the auditor (verifier.audit.auditor.Auditor), named here so that
    this module does not import the auditor's (which imports this one)."""

    core: VerifierCore

    def report_from(
        self,
        view: ReadView,
        lab_id: str,
        period_start_ns: int,
        period_end_ns: int,
        now_ns: int,
        *,
        compute_rules_only: bool = False,
    ) -> pb.ComplianceReport: ...


def export_bundle(
    auditor: BundleSource, lab_id: str, period_start_ns: int, period_end_ns: int
) -> bytes:
    """The signed bundle file for a lab and period."""
    core = auditor.core
    ingest = core.config.ingest
    now = core.clock_ns()
    with core.store.snapshot() as view:
        report = auditor.report_from(view, lab_id, period_start_ns, period_end_ns, now)
        size = report.tree_size
        entries = view.entries(
            select_entries(
                view,
                lab_id,
                period_start_ns=period_start_ns,
                period_end_ns=period_end_ns,
                report=report,
                bucket_ns=ingest.bucket_ns,
            )
        )
        reader = _Reader(view)
        snapshot_root = merkle.root_from(reader, size)
    # The proofs are against the log's latest checkpoint, which the witnesses cosign (the log
    # only grows, so it covers the report's tree size); the store's nodes are append-only, so
    # they can be read outside the snapshot.
    row = core.log.sign_checkpoint()
    if row.tree_size >= size and core.log.root_at(size) == snapshot_root:
        checkpoint_size, note = row.tree_size, row.note
    else:  # the log changed under us (it must not): fall back to the snapshot's own checkpoint
        log.error("the log is smaller than the report's tree size; exporting unwitnessed")
        checkpoint_size = size
        note = sign_checkpoint(
            Checkpoint(origin=core.note_signer.name, tree_size=size, root_hash=snapshot_root),
            core.note_signer,
        )
    bundle = bpb.EvidenceBundle(
        format_version=FORMAT_VERSION,
        lab_id=lab_id,
        period_start_ns=period_start_ns,
        period_end_ns=period_end_ns,
        created_at_ns=now,
        log_verifier_key=core.log.verifier_key,
        checkpoint_note=note,
        server_report=report,
        bucket_ns=ingest.bucket_ns,
        max_clock_skew_ns=ingest.max_clock_skew_ns,
        gap_tolerance_ns=ingest.gap_tolerance_ns,
        open_gap_grace_ns=ingest.open_gap_grace_ns,
        tpm_manufacturer_cas_pem=b"".join(
            cert.public_bytes(serialization.Encoding.PEM)
            for cert in core.tpm_settings.manufacturer_cas
        ),
        tpm_quote_nonce_max_age_ns=core.tpm_settings.quote_nonce_max_age_ns,
        tpm_max_windows_without_quote=core.tpm_settings.max_windows_without_quote,
        energy_mismatch_factor_ppm=ingest.energy_mismatch_factor_ppm,
        idle_power_fraction_ppm=ingest.idle_power_fraction_ppm,
    )
    allowlist = core.ima_allowlists.get(lab_id)
    if allowlist is not None:
        bundle.has_ima_allowlist = True
        bundle.ima_allowlist = "".join(
            f"{digest.hex()}  {path}\n" for path, digest in sorted(allowlist)
        )
    for entry in entries:
        bundle.entries.append(
            bpb.BundleEntry(
                log_index=entry.index,
                envelope=entry.entry,
                inclusion_proof=core.log.inclusion_proof(entry.index, checkpoint_size),
                logged_at_ns=entry.appended_at_ns,
            )
        )
    payload = bundle.SerializeToString(deterministic=True)
    data = sign_envelope(core.envelope_signer, PayloadType.BUNDLE, payload)
    log.info(
        "exported bundle lab=%s entries=%d bytes=%d tree_size=%d",
        lab_id,
        len(bundle.entries),
        len(data),
        size,
    )
    return data


# --- offline verification ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BundleExpectations:
    """What the auditor expects a bundle to be about (chain of custody): a bundle that verifies
    but is about another lab, another period or under another policy fails. None: not checked."""

    lab_id: str | None = None
    period: tuple[int, int] | None = None
    """``(period_start_ns, period_end_ns)``, exactly as exported."""
    policy_sha256: bytes | None = None
    """SHA-256 of the policy file in force for the report (32 bytes)."""


@dataclass
class BundleVerification:
    """What offline verification found. ``ok`` only if nothing failed and nothing differs."""

    failures: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lab_id: str = ""
    period: tuple[int, int] | None = None
    entries: int = 0
    attestations: int = 0
    log_key: str = ""
    checkpoint_size: int = 0
    checkpoint_root: bytes = b""
    log_key_pinned: bool = False
    witnesses: list[str] = field(default_factory=list)
    """The required witnesses whose valid cosignature the checkpoint carries."""
    server_report: pb.ComplianceReport | None = None
    offline_report: pb.ComplianceReport | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and not self.differences


@dataclass
class _Node:
    node_id: NodeId
    name: str
    public_key_raw: bytes
    enrolled_at_ns: int
    enrollment_index: int
    gpu_uuids: frozenset[str] = frozenset()
    gpu_models: tuple[str, ...] = ()
    revoked_at_ns: int | None = None
    revocation_index: int | None = None
    forks: int = 0
    windows: list[WindowEdge] = field(default_factory=list)
    folds: list[accounts.AttestationFold] = field(default_factory=list)
    head: ChainHead | None = None
    digests_by_seq: dict[int, bytes] = field(default_factory=dict)
    tpm: tpm_checks.TpmIdentity | None = None
    quote_state: tpm_checks.QuoteState | None = None
    quote_outcomes: dict[int, tuple[apb.AttestationBody, tpm_checks.QuoteOutcome]] = field(
        default_factory=dict
    )


@dataclass
class _State:
    """What the walk over the entries has learnt so far."""

    result: BundleVerification
    log_verifier: Ed25519NoteVerifier
    log_ring: StaticKeyring
    lab_id: str
    lab_name: str = ""
    acceptances: list[tuple[int, bytes]] = field(default_factory=list)
    """(log index, policy SHA-256) of each policy acceptance by the lab's operator key."""
    operator_keys: list[tuple[int, bytes]] = field(default_factory=list)
    policies: list[tuple[int, ppb.PolicyRecord]] = field(default_factory=list)
    inventory: list[tuple[int, evaluation.InventoryVersion]] = field(default_factory=list)
    nodes: dict[bytes, _Node] = field(default_factory=dict)
    pending_enrollments: dict[bytes, tuple[int, Envelope]] = field(default_factory=dict)
    findings: list[pb.LoggedFinding] = field(default_factory=list)
    buckets: dict[int, Bucket] = field(default_factory=dict)
    folds: list[accounts.AttestationFold] = field(default_factory=list)
    bucket_ns: int = 0
    forks_found: set[tuple[bytes, int]] = field(default_factory=set)
    tpm_settings: tpm_checks.TpmSettings = field(default_factory=tpm_checks.TpmSettings)
    ima_allowlist: frozenset[tuple[str, bytes]] | None = None
    site_versions: list[tuple[site_pb2.SiteDeclaration, int]] = field(default_factory=list)
    meter_entries: list[tuple[int, bytes]] = field(default_factory=list)
    window_energy: dict[bytes, list[EnergySpan]] = field(default_factory=dict)
    energy: accounts.EnergyCheck = accounts.DEFAULT_ENERGY_CHECK

    def fail(self, message: str) -> None:
        self.result.failures.append(message)

    def operator_at(self, index: int) -> bytes | None:
        current: bytes | None = None
        for logged_at, key in self.operator_keys:
            if logged_at < index:
                current = key
        return current


def _parse_message(message: Message, data: bytes, what: str) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise BodyError(f"{what} is not a valid message") from None


def verify_bundle(
    data: bytes,
    *,
    pinned_log_key: str | None = None,
    expect: BundleExpectations | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    witness_threshold: int = 0,
) -> BundleVerification:
    """Re-verify a bundle offline. Never raises for bad evidence: every problem is reported.

    ``expect`` adds the chain-of-custody checks: the bundle must be about that lab, period and
    policy, or it fails however well it verifies otherwise. With ``witnesses``, the bundle's
    checkpoint must carry valid cosignatures from at least ``witness_threshold`` of them."""
    result = BundleVerification()
    try:
        _verify(data, pinned_log_key, result, tuple(witnesses), witness_threshold)
    except PausewatchError as exc:
        result.failures.append(exc.diagnostics())
    if expect is not None:
        result.failures.extend(check_expectations(result, expect))
    return result


def check_expectations(result: BundleVerification, expect: BundleExpectations) -> list[str]:
    """How a verified bundle differs from what the auditor expected it to be about."""
    problems: list[str] = []
    server = result.server_report
    if expect.lab_id is not None:
        labs = {result.lab_id} | ({server.lab_id} if server is not None else set())
        if labs != {expect.lab_id}:
            found = " / ".join(sorted(repr(lab) for lab in labs))
            problems.append(f"the bundle is about lab {found}, not the expected {expect.lab_id!r}")
    if expect.period is not None:
        if server is None:
            problems.append("the bundle's period could not be read")
        else:
            found_period = (server.period_start_ns, server.period_end_ns)
            if found_period != expect.period or result.period != expect.period:
                problems.append(
                    f"the bundle covers {_period_words(result.period or found_period)}, not the "
                    f"expected {_period_words(expect.period)}"
                )
    if expect.policy_sha256 is not None:
        digests = {
            bytes(report.policy_digest)
            for report in (server, result.offline_report)
            if report is not None
        }
        if result.offline_report is None:
            problems.append("the policy in force could not be recomputed from the bundle")
        elif digests != {expect.policy_sha256}:
            found = " / ".join(sorted(d.hex() for d in digests))
            problems.append(
                f"the report is under policy sha256 {found}, not the expected "
                f"{expect.policy_sha256.hex()}"
            )
    return problems


def _period_words(period: tuple[int, int]) -> str:
    return f"{evaluation.format_time_ns(period[0])} to {evaluation.format_time_ns(period[1])}"


def _verify(
    data: bytes,
    pinned_log_key: str | None,
    result: BundleVerification,
    witnesses: tuple[CosignatureVerifier, ...],
    witness_threshold: int,
) -> None:
    # 1. The outer envelope: canonical, of the bundle type.
    try:
        outer = parse_envelope(data, max_size=MAX_BUNDLE_BYTES)
    except EnvelopeError as exc:
        raise EnvelopeError(f"bundle file: {exc.diagnostics()}") from None
    if outer.payload_type != PayloadType.BUNDLE:
        raise EnvelopeError(f"bundle file: payload type {outer.payload_type!r} is not a bundle")
    bundle = bpb.EvidenceBundle()
    try:
        bundle.ParseFromString(outer.payload)
    except DecodeError:
        raise BodyError("bundle file: the payload is not an EvidenceBundle") from None
    # 2. The log key: pinned, or the bundle's own (trust on first use, said so).
    key_text = pinned_log_key if pinned_log_key is not None else bundle.log_verifier_key
    try:
        log_verifier = parse_verifier_key(key_text)
    except KeyFileError:
        raise VerificationError("the log verifier key is malformed") from None
    if pinned_log_key is None:
        result.warnings.append(
            "the log key was taken from the bundle itself; pin it with --log-key to rule out a "
            "bundle made by someone else"
        )
    elif bundle.log_verifier_key != pinned_log_key:
        result.failures.append("the bundle names a log key other than the pinned one")
    result.log_key = key_text
    result.log_key_pinned = pinned_log_key is not None
    log_ring = StaticKeyring()
    log_key = public_key_from_raw(log_verifier.public_key)
    log_ring.add(log_key)
    # 3. The bundle's signature (by the log key).
    try:
        verify_parsed_envelope(outer, log_ring, payload_type=PayloadType.BUNDLE)
    except (SignatureError, VerificationError) as exc:
        result.failures.append(f"bundle signature: {exc.diagnostics()}")
    if bundle.format_version != FORMAT_VERSION:
        raise BodyError(f"bundle format_version {bundle.format_version} is not {FORMAT_VERSION}")
    result.lab_id = bundle.lab_id
    result.period = (bundle.period_start_ns, bundle.period_end_ns)
    result.entries = len(bundle.entries)
    result.server_report = bundle.server_report
    # 4. The checkpoint.
    try:
        checkpoint = verify_checkpoint(bundle.checkpoint_note, log_verifier)
    except NoteError as exc:
        raise NoteError(f"checkpoint: {exc.diagnostics()}") from None
    result.checkpoint_size = checkpoint.tree_size
    result.checkpoint_root = checkpoint.root_hash
    # 4b. Its witness cosignatures, if the reader requires some.
    if witnesses:
        try:
            _, cosignatures = verify_witness_quorum(
                bundle.checkpoint_note, log_verifier, witnesses, witness_threshold
            )
            result.witnesses = [c.name for c in cosignatures]
        except NoteError as exc:
            result.failures.append(f"checkpoint witnesses: {exc.diagnostics()}")
            try:
                _, found = verify_cosignatures(bundle.checkpoint_note, log_verifier, witnesses)
                result.witnesses = [c.name for c in found]
            except NoteError:
                pass
    if bundle.server_report.tree_size > checkpoint.tree_size:
        result.failures.append(
            f"the report was computed at tree size {bundle.server_report.tree_size}, beyond the "
            f"checkpoint's {checkpoint.tree_size}"
        )
    if bundle.bucket_ns <= 0:
        raise BodyError("the bundle's bucket width is not positive")
    if bundle.energy_mismatch_factor_ppm < 1_000_000 or bundle.idle_power_fraction_ppm > 1_000_000:
        raise BodyError(
            "the bundle does not state usable energy cross-check settings (factor "
            f"{bundle.energy_mismatch_factor_ppm} ppm, idle {bundle.idle_power_fraction_ppm} ppm); "
            "a bundle from a verifier older than them cannot be re-verified"
        )
    if bundle.gap_tolerance_ns < 0:
        raise BodyError("the bundle's gap tolerance is negative")
    state = _State(
        result=result,
        log_verifier=log_verifier,
        log_ring=log_ring,
        lab_id=bundle.lab_id,
        bucket_ns=bundle.bucket_ns,
        energy=accounts.EnergyCheck(
            factor_ppm=bundle.energy_mismatch_factor_ppm,
            idle_power_fraction_ppm=bundle.idle_power_fraction_ppm,
            gap_tolerance_ns=bundle.gap_tolerance_ns,
        ),
    )
    _tpm_settings_from(state, bundle)
    # 5. Every entry: included in the checkpoint, in log order, each verified and folded in.
    previous = -1
    _check_logged_times(state, bundle)
    for position, item in enumerate(bundle.entries):
        where = f"entry {position} (log index {item.log_index})"
        if item.log_index <= previous:
            state.fail(f"{where}: entries are not in increasing log order")
            continue
        previous = item.log_index
        if item.log_index >= bundle.server_report.tree_size:
            state.fail(f"{where}: beyond the tree size the report was computed at")
            continue
        try:
            merkle.verify_inclusion(
                item.log_index,
                checkpoint.tree_size,
                merkle.leaf_hash(item.envelope),
                list(item.inclusion_proof),
                checkpoint.root_hash,
            )
        except ProofError as exc:
            state.fail(f"{where}: inclusion proof: {exc.diagnostics()}")
            continue
        try:
            _fold_entry(state, item.log_index, item.envelope)
        except PausewatchError as exc:
            state.fail(f"{where}: {exc.diagnostics()}")
    if state.pending_enrollments:
        for index, _ in state.pending_enrollments.values():
            state.fail(f"log index {index}: an enrolment without its operator authorisation")
    _check_findings(state)
    _check_tpm_findings(state, bundle)
    _check_settings(state, bundle)
    # 6. Recompute the report and compare it with the server's.
    try:
        offline = _recompute(state, bundle)
    except (ConfigError, ValueError) as exc:
        text = exc.diagnostics() if isinstance(exc, PausewatchError) else str(exc)
        state.fail(f"recomputing the report: {text}")
        return
    result.offline_report = offline
    result.differences.extend(compare_reports(bundle.server_report, offline))


def _fold_entry(state: _State, index: int, raw: bytes) -> None:
    envelope = parse_envelope(raw, max_size=MAX_BUNDLE_BYTES)
    kind = envelope.payload_type
    if kind in (PayloadType.LAB, PayloadType.POLICY, PayloadType.FINDING):
        verified = verify_parsed_envelope(envelope, state.log_ring, payload_type=kind)
        if kind == PayloadType.LAB:
            lab = ppb.LabRecord()
            _parse_message(lab, verified.payload, "LabRecord")
            if lab.lab_id == state.lab_id:
                state.operator_keys.append((index, bytes(lab.operator_public_key)))
                state.lab_name = lab.name
        elif kind == PayloadType.POLICY:
            record = ppb.PolicyRecord()
            _parse_message(record, verified.payload, "PolicyRecord")
            if record.lab_id == state.lab_id:
                state.policies.append((record.effective_from_ns, record))
        else:
            finding = fpb.Finding()
            _parse_message(finding, verified.payload, "Finding")
            if finding.lab_id == state.lab_id:
                state.findings.append(pb.LoggedFinding(log_index=index, finding=finding))
        return
    if kind in (PayloadType.ENROLLMENT, PayloadType.ENROLLMENT_AUTHORIZATION):
        _fold_enrollment(state, index, envelope)
        return
    if kind == PayloadType.POLICY_ACCEPTANCE:
        operator = state.operator_at(index)
        if operator is None or envelope.key_id != key_id_from_raw(operator):
            raise SignatureError("a policy acceptance not signed by the lab's operator key")
        ring = StaticKeyring()
        ring.add(public_key_from_raw(operator))
        verified = verify_parsed_envelope(envelope, ring, payload_type=kind)
        acceptance = ppb.PolicyAcceptance()
        _parse_message(acceptance, verified.payload, "PolicyAcceptance")
        if acceptance.lab_id != state.lab_id:
            raise VerificationError("a policy acceptance of another lab")
        state.acceptances.append((index, bytes(acceptance.policy_sha256)))
        return
    if kind in (PayloadType.INVENTORY, PayloadType.REVOCATION):
        operator = state.operator_at(index)
        if operator is None:
            raise VerificationError("signed by an operator before any lab record")
        if envelope.key_id != key_id_from_raw(operator):
            raise SignatureError("not signed by the lab's operator key")
        ring = StaticKeyring()
        ring.add(public_key_from_raw(operator))
        verified = verify_parsed_envelope(envelope, ring, payload_type=kind)
        if kind == PayloadType.INVENTORY:
            declaration = rpb.InventoryDeclaration()
            _parse_message(declaration, verified.payload, "InventoryDeclaration")
            if declaration.lab_id != state.lab_id:
                raise VerificationError("an inventory declaration of another lab")
            state.inventory.append(
                (
                    index,
                    evaluation.InventoryVersion(
                        version=declaration.version,
                        effective_from_ns=declaration.effective_from_ns,
                        gpu_uuids=frozenset(g.uuid for g in declaration.gpus),
                    ),
                )
            )
        else:
            revocation = rpb.NodeRevocation()
            _parse_message(revocation, verified.payload, "NodeRevocation")
            if revocation.lab_id != state.lab_id:
                raise VerificationError("a revocation of another lab")
            node = state.nodes.get(bytes(revocation.node_id))
            if node is None:
                raise VerificationError("a revocation of a node with no enrolment in the bundle")
            if node.revoked_at_ns is None:
                node.revoked_at_ns = revocation.created_at_ns
                node.revocation_index = index
        return
    if kind == PayloadType.ATTESTATION:
        _fold_attestation(state, index, envelope)
        return
    if kind == PayloadType.SITE:
        verified = verify_parsed_envelope(envelope, state.log_ring, payload_type=kind)
        site = site_pb2.SiteDeclaration()
        _parse_message(site, verified.payload, "SiteDeclaration")
        if site.lab_id != state.lab_id:
            raise VerificationError("a site declaration of another lab")
        state.site_versions.append((site, index))
        return
    if kind == PayloadType.METER_READING:
        # Checked against the keys its meter was declared with when the sites are known.
        state.meter_entries.append((index, envelope.raw))
        return
    raise VerificationError(f"unexpected payload type {kind!r}")


def _fold_enrollment(state: _State, index: int, envelope: Envelope) -> None:
    if envelope.payload_type == PayloadType.ENROLLMENT:
        enrollment = rpb.NodeEnrollment()
        _parse_message(enrollment, envelope.payload, "NodeEnrollment")
        ring = StaticKeyring()
        ring.add(public_key_from_raw(enrollment.node_public_key))
        verify_parsed_envelope(envelope, ring)  # proof of possession
        state.pending_enrollments[envelope.payload] = (index, envelope)
        return
    pending = state.pending_enrollments.pop(envelope.payload, None)
    if pending is None:
        raise VerificationError("an operator authorisation with no enrolment before it")
    operator = state.operator_at(index)
    if operator is None or envelope.key_id != key_id_from_raw(operator):
        raise SignatureError("the enrolment is not authorised by the lab's operator key")
    ring = StaticKeyring()
    ring.add(public_key_from_raw(operator))
    verify_parsed_envelope(envelope, ring)
    enrollment = rpb.NodeEnrollment.FromString(envelope.payload)
    if enrollment.lab_id != state.lab_id:
        return
    node_id = key_id_from_raw(enrollment.node_public_key)
    identity = None
    if enrollment.HasField("tpm"):
        identity = _check_tpm_enrollment(state, pending[0], enrollment)
    state.nodes[node_id] = _Node(
        node_id=NodeId(node_id),
        name=enrollment.node_name,
        public_key_raw=bytes(enrollment.node_public_key),
        enrolled_at_ns=enrollment.created_at_ns,
        enrollment_index=pending[0],
        gpu_uuids=frozenset(gpu.uuid for gpu in enrollment.gpus),
        gpu_models=tuple(gpu.model for gpu in enrollment.gpus),
        tpm=identity,
    )


def _fold_attestation(state: _State, index: int, envelope: Envelope) -> None:
    node = state.nodes.get(envelope.key_id)
    if node is None:
        raise VerificationError("an attestation from a node with no enrolment in the bundle")
    ring = StaticKeyring()
    ring.add(public_key_from_raw(node.public_key_raw))
    att = attestation_from_verified(verify_parsed_envelope(envelope, ring))
    body = att.body
    if body.lab_id != state.lab_id:
        raise VerificationError("an attestation of another lab")
    if node.revocation_index is not None and index > node.revocation_index:
        raise VerificationError(
            f"attestation seq {body.seq} was logged after the node's revocation"
        )
    unknown = [gpu.uuid for gpu in body.gpus if gpu.uuid not in node.gpu_uuids]
    if unknown:
        raise VerificationError(
            f"attestation seq {body.seq} names a GPU not enrolled: {unknown[0]}"
        )
    stored = node.digests_by_seq.get(body.seq)
    link = classify(node.head, body.seq, body.prev_digest, att.digest, stored)
    if link is Link.FORK:
        node.forks += 1
        state.forks_found.add((bytes(node.node_id), index))
        return
    if link in (Link.ROLLBACK, Link.DUPLICATE):
        raise VerificationError(f"attestation seq {body.seq} is a {link.value}: never accepted")
    if node.head is not None and body.window_start_ns < node.head.window_end_ns:
        raise VerificationError(f"attestation seq {body.seq} goes back in time")
    node.head = ChainHead(body.seq, Digest(att.digest), body.window_end_ns)
    node.digests_by_seq[body.seq] = att.digest
    state.result.attestations += 1
    declared = _declared_at(state, index, body.window_start_ns)
    fold = accounts.fold_attestation(
        att,
        index,
        declared or frozenset(),
        state.buckets,
        state.bucket_ns,
        energy=state.energy,
        previous=node.windows[-1] if node.windows else None,
        declaration_in_force=declared is not None,
    )
    node.windows.append(fold.edge)
    node.folds.append(fold)
    state.folds.append(fold)
    state.window_energy.setdefault(bytes(node.node_id), []).append(window_energy_span(body))
    if node.tpm is not None:
        outcome = tpm_checks.check_window_quote(
            node.tpm.ak,
            body,
            node.quote_state,
            state.tpm_settings,
            state.ima_allowlist,
            history_known=body.seq == 0 or node.quote_state is not None,
        )
        node.quote_state = outcome.state
        node.quote_outcomes[index] = (body, outcome)


# --- TPM evidence, offline -----------------------------------------------------------------------


def _tpm_settings_from(state: _State, bundle: bpb.EvidenceBundle) -> None:
    cas: tuple[x509.Certificate, ...] = ()
    if bundle.tpm_manufacturer_cas_pem:
        try:
            cas = tuple(x509.load_pem_x509_certificates(bundle.tpm_manufacturer_cas_pem))
        except ValueError:
            state.fail("the bundle's TPM manufacturer CAs are not PEM certificates")
    state.tpm_settings = tpm_checks.TpmSettings(
        manufacturer_cas=cas,
        quote_nonce_max_age_ns=bundle.tpm_quote_nonce_max_age_ns,
        max_windows_without_quote=max(1, bundle.tpm_max_windows_without_quote),
    )
    if bundle.has_ima_allowlist:
        try:
            state.ima_allowlist = tpm_checks.load_ima_allowlist(
                bundle.ima_allowlist, "the bundle's IMA allowlist"
            )
        except ConfigError as exc:
            state.fail(exc.diagnostics())


def _check_tpm_enrollment(
    state: _State, index: int, enrollment: rpb.NodeEnrollment
) -> tpm_checks.TpmIdentity | None:
    """What of a TPM enrolment can be re-checked without the verifier's secret: the EK certificate
    against the bundle's manufacturer CAs, the AK, and the enrolment quote's signature, PCR
    digest and binding (the credential's secret is the verifier's to check)."""
    evidence = enrollment.tpm
    try:
        tpm_checks.verify_ek_certificate(
            evidence.ek_certificate, state.tpm_settings.manufacturer_cas, enrollment.created_at_ns
        )
        ak = attest_tpm.load_tpm_public(evidence.ak_public)
        attest_tpm.verify_attestation_key(ak)
        quote = attest_tpm.verify_quote(ak, evidence.quote_attest, evidence.quote_signature)
        attest_tpm.verify_pcr_digest(quote, list(evidence.pcr_values))
        expected = attest_tpm.enrollment_qualifying_data(
            enrollment.node_public_key, enrollment.verifier_nonce
        )
        if quote.extra_data != expected:
            raise TpmError("the enrolment quote does not bind the node key and nonce")
        return tpm_checks.tpm_identity(enrollment)
    except PausewatchError as exc:
        state.fail(f"log index {index}: TPM enrolment: {exc.diagnostics()}")
        return None


_TPM_FINDING_KINDS = frozenset(
    {fpb.FINDING_KIND_TPM_QUOTE_REFUSED, fpb.FINDING_KIND_TPM_QUOTE_MISSING}
)


def _check_tpm_findings(state: _State, bundle: bpb.EvidenceBundle) -> None:
    """Re-check every quote of the period and hold the server's TPM findings to it: a window whose
    quote fails offline must have its finding with the same reason, and a finding must not accuse
    a quote that verifies; with an allowlist, unknown measurements likewise."""
    start, end = bundle.period_start_ns, bundle.period_end_ns
    refused: dict[tuple[bytes, int], pb.LoggedFinding] = {}
    unknown: dict[tuple[bytes, int], pb.LoggedFinding] = {}
    for item in state.findings:
        finding = item.finding
        target = (
            refused
            if finding.kind in _TPM_FINDING_KINDS
            else unknown
            if finding.kind == fpb.FINDING_KIND_UNKNOWN_MEASUREMENT
            else None
        )
        if target is not None:
            for i in finding.evidence_log_indices:
                target[(bytes(finding.node_id), i)] = item
    for node in state.nodes.values():
        for index, (body, outcome) in sorted(node.quote_outcomes.items()):
            if body.window_end_ns < start or body.window_start_ns >= end:
                continue  # outside the period: its findings are not in the bundle
            if outcome.status == tpm_checks.UNCHECKED:
                continue
            key = (bytes(node.node_id), index)
            name = tpm_checks.status_name
            logged = refused.get(key)
            if outcome.refused and (
                logged is None or logged.finding.tpm_quote_status != outcome.status
            ):
                state.fail(
                    f"log index {index}: the TPM quote of seq {body.seq} fails offline "
                    f"({name(outcome.status)}: {outcome.detail}) but no finding says so"
                )
            elif not outcome.refused and logged is not None:
                state.fail(
                    f"finding at log index {logged.log_index}: it refuses the TPM quote of seq "
                    f"{body.seq}, which verifies offline"
                )
            if state.ima_allowlist is not None and bool(outcome.unknown) != (key in unknown):
                state.fail(
                    f"log index {index}: seq {body.seq} measures "
                    f"{len(outcome.unknown)} file(s) not in the allowlist offline, which the "
                    "findings do not match"
                )


def _check_logged_times(state: _State, bundle: bpb.EvidenceBundle) -> None:
    """The stated logging times must not go back along the log (an entry logged later cannot
    have been logged earlier), and no window can have been accepted before it ended (less the
    clock skew the verifier allows)."""
    if not any(item.logged_at_ns for item in bundle.entries):
        state.result.warnings.append("the bundle states no logging times (an older verifier)")
        return
    latest = 0
    for item in sorted(bundle.entries, key=lambda e: e.log_index):
        if item.logged_at_ns < latest:
            state.fail(
                f"log index {item.log_index}: logged at {item.logged_at_ns}, before an earlier "
                f"entry ({latest}): logging times go back"
            )
        latest = max(latest, item.logged_at_ns)
        try:
            envelope = parse_envelope(item.envelope, max_size=MAX_BUNDLE_BYTES)
        except EnvelopeError:
            continue  # the entry's own checks report it
        if envelope.payload_type != PayloadType.ATTESTATION:
            continue
        body = apb.AttestationBody()
        try:
            body.ParseFromString(envelope.payload)
        except DecodeError:
            continue
        if item.logged_at_ns + bundle.max_clock_skew_ns < body.window_end_ns:
            state.fail(
                f"log index {item.log_index}: said to be logged at {item.logged_at_ns}, before "
                f"its window ended ({body.window_end_ns}) less the allowed clock skew"
            )


def _check_settings(state: _State, bundle: bpb.EvidenceBundle) -> None:
    """The verifier's stated ingest settings must be the bundle's, and every attestation must
    come from a sampler backend they accept (sim and replay never pass for production)."""
    report = bundle.server_report
    if not report.HasField("verifier_settings"):
        state.result.warnings.append(
            "the report states no verifier settings (an older verifier): the accepted sampler "
            "backends cannot be checked"
        )
        return
    settings = report.verifier_settings
    for name, stated, used in (
        ("gap_tolerance_ns", settings.gap_tolerance_ns, bundle.gap_tolerance_ns),
        ("open_gap_grace_ns", settings.open_gap_grace_ns, bundle.open_gap_grace_ns),
        ("max_clock_skew_ns", settings.max_clock_skew_ns, bundle.max_clock_skew_ns),
        (
            "energy_mismatch_factor_ppm",
            settings.energy_mismatch_factor_ppm,
            bundle.energy_mismatch_factor_ppm,
        ),
        (
            "idle_power_fraction_ppm",
            settings.idle_power_fraction_ppm,
            bundle.idle_power_fraction_ppm,
        ),
    ):
        if stated != used:
            state.fail(f"the report's verifier settings say {name} {stated}, the bundle {used}")
    accepted = set(settings.accept_backends)
    for node in state.nodes.values():
        for edge in node.windows:
            name = accounts.backend_name(edge.sampler_backend)
            if name not in accepted:
                state.fail(
                    f"log index {edge.log_index}: node {node.name or node.node_id.hex()[:16]} "
                    f"attested from the {name!r} sampler backend, which the verifier says it does "
                    f"not accept ({', '.join(sorted(accepted)) or 'none'})"
                )
    simulated = sorted(accepted - {"nvml"})
    if simulated:
        state.result.warnings.append(
            f"this verifier accepts evidence from the {', '.join(simulated)} sampler backend(s), "
            "which are not real GPUs: check each node's sampler backends in the report"
        )


def _declared_at(state: _State, index: int, window_start_ns: int) -> frozenset[str] | None:
    """The inventory the server knew when it accepted entry ``index``, in force at the window
    (None: no declaration was)."""
    known = [version for logged_at, version in state.inventory if logged_at < index]
    current = evaluation.inventory_in_force(known, window_start_ns)
    return None if current is None else current.gpu_uuids


def _check_findings(state: _State) -> None:
    """Findings that claim failed evidence must be backed by the bundle."""
    reported_forks = {
        (bytes(item.finding.node_id), index)
        for item in state.findings
        if item.finding.kind == fpb.FINDING_KIND_EQUIVOCATION
        for index in item.finding.evidence_log_indices
    }
    for node_id, index in sorted(state.forks_found):
        if (node_id, index) not in reported_forks:
            state.fail(f"log index {index}: equivocation by node {node_id.hex()[:16]} not reported")
    for item in state.findings:
        finding = item.finding
        if finding.kind == fpb.FINDING_KIND_EQUIVOCATION:
            found = any(
                (bytes(finding.node_id), i) in state.forks_found
                for i in finding.evidence_log_indices
            )
            if not found:
                state.fail(
                    f"finding at log index {item.log_index}: equivocation with no conflicting "
                    "envelope in the bundle"
                )
        elif finding.kind == fpb.FINDING_KIND_BAD_SIGNATURE:
            node = state.nodes.get(bytes(finding.node_id))
            if node is None:
                continue
            ring = StaticKeyring()
            ring.add(public_key_from_raw(node.public_key_raw))
            try:
                verify_parsed_envelope(parse_envelope(finding.rejected_envelope), ring)
            except VerificationError:
                continue
            state.fail(
                f"finding at log index {item.log_index}: the 'bad' signature verifies after all"
            )


def _recompute(state: _State, bundle: bpb.EvidenceBundle) -> pb.ComplianceReport:
    server = bundle.server_report
    start, end, as_of = bundle.period_start_ns, bundle.period_end_ns, server.as_of_ns
    bucket_ns = bundle.bucket_ns
    if server.bucket_ns != bucket_ns:
        raise ValueError("the report's bucket width is not the bundle's")
    record = record_in_force(state.policies, as_of)
    if record is None:
        raise ConfigError("the bundle holds no policy for the lab")
    policy: Policy = load_policy_bytes(
        record.policy_toml, f"policy {record.policy_id} v{record.policy_version}"
    )
    buckets = state.buckets
    timelines: list[evaluation.NodeTimeline] = []
    for node in state.nodes.values():
        span = accounts.node_active_span(start, as_of, node.enrolled_at_ns, node.revoked_at_ns)
        if span is None:
            continue
        gaps = accounts.node_gaps_from_windows(
            node.node_id,
            span[0],
            span[1],
            node.windows,
            tolerance_ns=bundle.gap_tolerance_ns,
            grace_ns=bundle.open_gap_grace_ns,
            enrolled_gpu_models=node.gpu_models,
        )
        in_period = [w for w in node.windows if start <= w.window_start_ns < as_of]
        upper = sum(f.upper_bound_flop for f in node.folds if start <= f.window_start_ns < as_of)
        provenance = accounts.span_edges(node.windows, span[0], span[1])
        timelines.append(
            evaluation.NodeTimeline(
                node_id=node.node_id,
                node_name=node.name,
                enrolled_at_ns=node.enrolled_at_ns,
                revoked_at_ns=node.revoked_at_ns,
                flagged=node.forks > 0,
                revoked=node.revoked_at_ns is not None,
                attestations=len(in_period),
                first_seq=min((w.seq for w in in_period), default=0),
                last_seq=max((w.seq for w in in_period), default=0),
                upper_bound_flop=upper,
                gaps=tuple(gaps),
                provenance=provenance,
                tpm_id=node.tpm.tpm_id if node.tpm is not None else b"",
                enrolled_gpus=len(node.gpu_models),
            )
        )
    findings = [
        item
        for item in state.findings
        if item.finding.period_end_ns >= start and item.finding.period_start_ns < end
    ]
    return evaluation.evaluate(
        policy,
        lab_id=bundle.lab_id,
        period_start_ns=start,
        period_end_ns=end,
        as_of_ns=as_of,
        bucket_ns=bucket_ns,
        buckets=buckets,
        inventory=[version for _, version in state.inventory],
        nodes=timelines,
        findings=findings,
        evidence=evaluation.InMemoryEvidenceIndex.from_totals(
            (
                f.log_index,
                f.window_start_ns,
                f.upper_bound_flop,
                f.central_estimate_flop,
                f.energy_flop,
            )
            for f in state.folds
        ),
        tree_size=server.tree_size,
        table_version=compute.TABLE_VERSION,
        evaluated_at_ns=max(server.evaluated_at_ns, as_of),
        open_gap_grace_ns=bundle.open_gap_grace_ns,
        lab_name=state.lab_name,
        policy_acceptance_log_index=next(
            (index for index, digest in state.acceptances if digest == policy.digest), None
        ),
        verifier_settings=(
            server.verifier_settings if server.HasField("verifier_settings") else None
        ),
        site_inputs=_site_inputs(state, accounts.bucket_start(start, bucket_ns), as_of),
    )


def _site_inputs(state: _State, first_bucket_ns: int, as_of_ns: int) -> SiteInputs | None:
    """The sites' inputs from what the bundle holds (as :mod:`verifier.audit.site_report` gathers
    them from the store)."""
    if not state.site_versions:
        return None
    sites = sites_in_force(
        state.site_versions, lab_node_ids=frozenset(state.nodes), as_of_ns=as_of_ns
    )
    keys = {m: k for site in sites for m, k in site.meter_keys.items()}
    readings: dict[str, list[MeterReading]] = {}
    reading_log_index: dict[bytes, int] = {}
    for index, raw in state.meter_entries:
        envelope = parse_envelope(raw, max_size=MAX_BUNDLE_BYTES)
        candidates = [k for meter_keys in keys.values() for k in meter_keys]
        reading = verify_meter_entry(
            raw, [k for k in candidates if key_id_from_raw(k.public_bytes_raw()) == envelope.key_id]
        )
        if reading.lab_id != state.lab_id or reading.meter_id not in keys:
            raise VerificationError(f"entry {index}: a reading of a meter the sites do not declare")
        readings.setdefault(reading.meter_id, []).append(reading)
        reading_log_index[reading.digest] = index
    window_energy = {
        node_id: [s for s in spans if first_bucket_ns <= s.start_ns < as_of_ns]
        for node_id, spans in state.window_energy.items()
    }
    return SiteInputs(
        sites=tuple((s.params, s.declaration.version) for s in sites),
        readings=readings,
        reading_log_index=reading_log_index,
        window_energy=window_energy,
    )


def compare_reports(server: pb.ComplianceReport, offline: pb.ComplianceReport) -> list[str]:
    """Every field where two reports differ, as ``path: server X, offline Y``."""
    if server.SerializeToString(deterministic=True) == offline.SerializeToString(
        deterministic=True
    ):
        return []
    left = json_format.MessageToDict(server, preserving_proto_field_name=True)
    right = json_format.MessageToDict(offline, preserving_proto_field_name=True)
    out: list[str] = []
    _diff("report", left, right, out)
    return out or ["the reports differ in their encoding"]


def _diff(path: str, left: object, right: object, out: list[str], limit: int = 50) -> None:
    if len(out) >= limit:
        return
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            _diff(f"{path}.{key}", left.get(key), right.get(key), out, limit)
        return
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            out.append(f"{path}: server has {len(left)} items, offline {len(right)}")
        for i, (a, b) in enumerate(zip(left, right, strict=False)):
            _diff(f"{path}[{i}]", a, b, out, limit)
        return
    if left != right:
        out.append(f"{path}: server {left!r}, offline {right!r}")
