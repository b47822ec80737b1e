"""The registry: labs and their policies (configured by the regulator), and the signed enrolments,
inventory declarations and revocations of lab operators.

    registry = Registry(core)
    registry.sync_labs(config.labs)                        # at start: log new labs and policies
    node_id, again, index = registry.enroll(enrollment_raw, authorization_raw)

Every accepted change is appended to the log. A node identity, once enrolled, is immutable: a
retry of its enrolment (new creation time and nonce, nothing else changed) is answered as already
enrolled; the same node id with other content, or a GPU already enrolled under another (not
revoked) key, is refused, and the attempt is recorded as an ENROLLMENT_CONFLICT finding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf.message import DecodeError
from pausewatch.v1 import findings_pb2, policy_pb2, registry_pb2

from attest.envelope import (
    PayloadType,
    StaticKeyring,
    VerifiedEnvelope,
    envelope_digest,
    parse_envelope,
    sign_envelope,
    verify_parsed_envelope,
)
from attest.errors import ConfigError, EnvelopeError, PausewatchError
from attest.ids import is_valid_lab_id
from attest.keys import key_id_from_raw, public_key_from_raw
from verifier.accounting.policy import Policy, load_policy, validate_for_buckets
from verifier.accounting.policy_acceptance import verify_acceptance
from verifier.config import LabConfig, ServerConfig
from verifier.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from verifier.nonce import NonceStatus
from verifier.store.base import EntryKind, InventoryRow, LabRow, NodeRow, PolicyRow
from verifier.store.core import NodeState, VerifierCore, WriteContext
from verifier.store.log import PendingEntry
from verifier.tpm import TpmIdentity, tpm_identity, verify_tpm_enrollment

log = logging.getLogger(__name__)

MAX_GPUS_PER_NODE = 256
MAX_INVENTORY_GPUS = 1_000_000


def inventory_envelope_limit(server: ServerConfig) -> int:
    """The size limit of an inventory declaration's envelope: the whole request message's, not
    one envelope's (a fleet of 100,000 GPUs declares about 5 MB of UUIDs; an attestation's
    256 KiB limit would cap a declaration near 5,000 GPUs)."""
    return max(server.max_envelope_bytes, server.max_message_bytes)


HOUR_NS = 3_600 * 10**9


@dataclass(frozen=True, slots=True)
class EnrollResult:
    node_id: bytes
    already_enrolled: bool
    log_index: int


def _parse(raw: bytes, what: str, max_size: int) -> None:
    if not raw:
        raise InvalidRequestError(f"{what} is empty")
    if len(raw) > max_size:
        raise InvalidRequestError(f"{what} is larger than {max_size} bytes")


def _validate_gpus(gpus: Sequence[registry_pb2.GpuIdentity], limit: int) -> list[str]:
    if not gpus:
        raise InvalidRequestError("the GPU list is empty")
    if len(gpus) > limit:
        raise InvalidRequestError(f"more than {limit} GPUs")
    uuids: list[str] = []
    for gpu in gpus:
        if not gpu.uuid or len(gpu.uuid) > 96:
            raise InvalidRequestError("a GPU uuid is empty or longer than 96 characters")
        if len(gpu.model) > 96 or len(gpu.serial) > 96 or len(gpu.pci_bus_id) > 96:
            raise InvalidRequestError(f"GPU {gpu.uuid} has a field longer than 96 characters")
        uuids.append(gpu.uuid)
    if len(set(uuids)) != len(uuids):
        raise InvalidRequestError("a GPU uuid appears twice")
    return uuids


def _is_retry(stored_payload: bytes, enrollment: registry_pb2.NodeEnrollment) -> bool:
    """Whether ``enrollment`` repeats the stored enrolment but for its creation time and nonce:
    an agent retrying ``enroll`` (after a lost answer, say) with the same key, lab, name, agent
    and GPUs. The retry is answered as already enrolled; nothing about it is logged, and the node
    keeps its first enrolment (and its enrolment time). For a TPM enrolment the TPM (EK
    certificate, AK) must be the same; its proof (secret, quote) is bound to the nonce, and was
    verified afresh before this is asked."""
    stored = registry_pb2.NodeEnrollment()
    try:
        stored.ParseFromString(stored_payload)
    except DecodeError:
        return False
    again = registry_pb2.NodeEnrollment()
    again.CopyFrom(enrollment)
    for message in (stored, again):
        message.ClearField("created_at_ns")
        message.ClearField("verifier_nonce")
        if message.HasField("tpm"):
            for name in ("activated_secret", "quote_attest", "quote_signature", "pcr_values"):
                message.tpm.ClearField(name)
    return stored.SerializeToString(deterministic=True) == again.SerializeToString(
        deterministic=True
    )


class Registry:
    """Registry operations over the core's write path."""

    def __init__(self, core: VerifierCore) -> None:
        self.core = core

    # -- labs and policies ------------------------------------------------------------------

    def _log_acceptance(
        self, lab_id: str, path: Path, operator_public_key: bytes, policy: Policy | None
    ) -> None:
        """Log the lab operator's acceptance of its policy (once), after checking it."""
        if policy is None:
            raise ConfigError(f"lab {lab_id}: policy_acceptance is set but no policy is")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read policy acceptance {path}: {exc.strerror}") from None
        verify_acceptance(raw, operator_public_key, policy, source=str(path))
        with self.core.write() as w:
            if w.tx.entry_index_by_digest(envelope_digest(raw)) is not None:
                return
            index = w.append(PendingEntry(raw, EntryKind.POLICY_ACCEPTANCE, lab_id))
        log.info("logged the lab's policy acceptance lab=%s index=%d", lab_id, index)

    def sync_labs(self, labs: Sequence[LabConfig]) -> None:
        """Log every lab and policy of the config that the log does not hold yet.

        A changed policy file must carry a higher ``version`` than the last one logged."""
        for lab in labs:
            policy = load_policy(lab.policy_path) if lab.policy_path is not None else None
            if policy is not None and policy.lab_id != lab.lab_id:
                raise ConfigError(
                    f"{lab.policy_path}: lab_id is {policy.lab_id!r} but the config registers "
                    f"it for lab {lab.lab_id!r}"
                )
            if policy is not None:
                problems = validate_for_buckets(policy, self.core.config.ingest.bucket_ns)
                if problems:  # each names the policy file already
                    raise ConfigError(
                        "; ".join(problems) + f" (lab {lab.lab_id}; set by ingest.bucket_ms): "
                        "the verifier does not start with a policy it cannot evaluate"
                    )
            with self.core.write() as w:
                existing = w.tx.get_lab(lab.lab_id)
                if (
                    existing is None
                    or existing.operator_public_key != lab.operator_public_key
                    or existing.name != lab.name
                ):
                    record = policy_pb2.LabRecord(
                        format_version=1,
                        lab_id=lab.lab_id,
                        name=lab.name,
                        operator_public_key=lab.operator_public_key,
                        recorded_at_ns=w.now_ns,
                    )
                    raw = self._sign(PayloadType.LAB, record.SerializeToString(deterministic=True))
                    index = w.append(PendingEntry(raw, EntryKind.LAB, lab.lab_id))
                    w.tx.put_lab(LabRow(lab.lab_id, lab.name, lab.operator_public_key, index))
                    log.info("logged lab record lab=%s index=%d", lab.lab_id, index)
                if policy is not None:
                    policies = w.tx.policies(lab.lab_id)
                    latest = policies[-1] if policies else None
                    if latest is None or latest.digest != policy.digest:
                        if latest is not None and policy.version <= latest.version:
                            raise ConfigError(
                                f"{lab.policy_path}: the policy changed but its version "
                                f"{policy.version} is not above the logged version "
                                f"{latest.version}; bump version"
                            )
                        record_p = policy_pb2.PolicyRecord(
                            format_version=1,
                            lab_id=lab.lab_id,
                            policy_id=policy.policy_id,
                            policy_version=policy.version,
                            policy_toml=policy.raw,
                            effective_from_ns=w.now_ns,
                            recorded_at_ns=w.now_ns,
                        )
                        raw = self._sign(
                            PayloadType.POLICY, record_p.SerializeToString(deterministic=True)
                        )
                        index = w.append(PendingEntry(raw, EntryKind.POLICY, lab.lab_id))
                        w.tx.put_policy(
                            PolicyRow(
                                lab_id=lab.lab_id,
                                version=policy.version,
                                policy_id=policy.policy_id,
                                digest=policy.digest,
                                policy_toml=policy.raw,
                                effective_from_ns=w.now_ns,
                                log_index=index,
                            )
                        )
                        log.info(
                            "logged policy lab=%s version=%d index=%d",
                            lab.lab_id,
                            policy.version,
                            index,
                        )
            if lab.policy_acceptance is not None:
                self._log_acceptance(
                    lab.lab_id, lab.policy_acceptance, lab.operator_public_key, policy
                )
            for path in lab.inventory_declarations:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise ConfigError(f"cannot read inventory declaration {path}: {exc}") from exc
                try:
                    self.declare_inventory(data)
                except ConflictError:
                    log.info("inventory declaration %s is older than the one in force", path)
                except PausewatchError as exc:
                    raise ConfigError(
                        f"inventory declaration {path}: {exc.diagnostics()}"
                    ) from None

    def _sign(self, payload_type: PayloadType, payload: bytes) -> bytes:
        return sign_envelope(self.core.envelope_signer, payload_type, payload)

    def _operator(self, lab_id: str) -> tuple[LabRow, StaticKeyring]:
        if not is_valid_lab_id(lab_id):
            raise InvalidRequestError("lab_id is not a valid lab id")
        lab = self.core.store.get_lab(lab_id)
        if lab is None:
            raise NotFoundError(f"lab {lab_id!r} is not registered with this verifier")
        ring = StaticKeyring()
        ring.add(public_key_from_raw(lab.operator_public_key))
        return lab, ring

    def _verify_operator(
        self, raw: bytes, payload_type: PayloadType, lab_id_of: type, max_size: int | None = None
    ) -> tuple[VerifiedEnvelope, LabRow]:
        """Parse an operator-signed envelope, find its lab, verify it under the lab's key.
        ``max_size``: the envelope's limit (``server.max_envelope_bytes`` unless given)."""
        if max_size is None:
            max_size = self.core.config.server.max_envelope_bytes
        _parse(raw, "the envelope", max_size)
        envelope = parse_envelope(raw, max_size=max_size)
        if envelope.payload_type != payload_type:
            raise InvalidRequestError(f"payload type is not {payload_type}")
        message = lab_id_of()
        try:
            message.ParseFromString(envelope.payload)
        except DecodeError:
            raise InvalidRequestError("the payload is not a valid message") from None
        lab, ring = self._operator(message.lab_id)
        if envelope.key_id != key_id_from_raw(lab.operator_public_key):
            raise PermissionDeniedError(f"the signer is not the operator key of lab {lab.lab_id}")
        return verify_parsed_envelope(envelope, ring, payload_type=payload_type), lab

    def _check_time(self, created_at_ns: int, what: str, now_ns: int) -> None:
        skew = self.core.config.ingest.max_clock_skew_ns
        if abs(created_at_ns - now_ns) > skew:
            raise InvalidRequestError(
                f"{what} created_at_ns is outside the accepted clock skew of "
                f"{skew // 10**9} s from the verifier's clock"
            )

    # -- enrolment --------------------------------------------------------------------------

    def enroll(self, enrollment_raw: bytes, authorization_raw: bytes) -> EnrollResult:
        """Enrol a node (see the module docstring)."""
        max_size = self.core.config.server.max_envelope_bytes
        _parse(enrollment_raw, "enrollment_envelope", max_size)
        _parse(authorization_raw, "authorization_envelope", max_size)
        try:
            pop = parse_envelope(enrollment_raw, max_size=max_size)
            auth = parse_envelope(authorization_raw, max_size=max_size)
        except EnvelopeError as exc:
            raise InvalidRequestError(exc.diagnostics()) from None
        if pop.payload_type != PayloadType.ENROLLMENT:
            raise InvalidRequestError(
                f"enrollment_envelope payload type is not {PayloadType.ENROLLMENT}"
            )
        if auth.payload_type != PayloadType.ENROLLMENT_AUTHORIZATION:
            raise InvalidRequestError(
                f"authorization_envelope payload type is not {PayloadType.ENROLLMENT_AUTHORIZATION}"
            )
        if pop.payload != auth.payload:
            raise InvalidRequestError("the two envelopes do not sign the same enrollment bytes")
        enrollment = registry_pb2.NodeEnrollment()
        try:
            enrollment.ParseFromString(pop.payload)
        except DecodeError:
            raise InvalidRequestError("the payload is not a valid NodeEnrollment") from None
        if enrollment.format_version != 1:
            raise InvalidRequestError("NodeEnrollment format_version must be 1")
        try:
            node_key = public_key_from_raw(enrollment.node_public_key)
        except ValueError:
            raise InvalidRequestError("node_public_key is not a 32-byte Ed25519 key") from None
        node_id = key_id_from_raw(enrollment.node_public_key)
        if pop.key_id != node_id:
            raise InvalidRequestError("enrollment_envelope is not signed by the enrolling node key")
        node_ring = StaticKeyring()
        node_ring.add(node_key)
        verify_parsed_envelope(pop, node_ring)  # proof of possession
        lab, operator_ring = self._operator(enrollment.lab_id)
        if auth.key_id != key_id_from_raw(lab.operator_public_key):
            raise PermissionDeniedError(
                f"authorization_envelope is not signed by the operator key of lab {lab.lab_id}"
            )
        verify_parsed_envelope(auth, operator_ring)
        uuids = _validate_gpus(enrollment.gpus, MAX_GPUS_PER_NODE)
        if len(enrollment.node_name) > 128 or len(enrollment.agent_version) > 64:
            raise InvalidRequestError("node_name or agent_version is too long")
        now = self.core.clock_ns()
        self._check_time(enrollment.created_at_ns, "NodeEnrollment", now)
        ingest = self.core.config.ingest
        identity: TpmIdentity | None = None
        if enrollment.HasField("tpm"):
            identity = verify_tpm_enrollment(
                self.core.nonces, self.core.tpm_settings, enrollment, now, ingest.max_clock_skew_ns
            )
        if ingest.require_nonce or enrollment.verifier_nonce:
            status = self.core.nonces.check(
                enrollment.verifier_nonce, node_id, now, ingest.max_clock_skew_ns
            )
            if status is not NonceStatus.OK:
                raise InvalidRequestError(
                    f"verifier_nonce is {status.value}: get a fresh one with GetChallenge"
                )

        conflict: str | None = None
        with self.core.write() as w:
            existing = w.tx.get_node(node_id)
            if existing is not None:
                if existing.enrollment_digest == pop.digest or _is_retry(
                    existing.enrollment_payload, enrollment
                ):
                    return EnrollResult(node_id, True, existing.enrollment_log_index)
                conflict = "this node key is already enrolled with other content"
            else:
                conflict = _tpm_conflict(w, identity, node_id)
                for uuid in uuids if conflict is None else ():
                    owner = w.tx.gpu_owner(uuid)
                    if owner is None or owner == node_id:
                        continue
                    owner_row = w.tx.get_node(owner)
                    if owner_row is not None and owner_row.state == registry_pb2.NODE_STATE_REVOKED:
                        continue
                    conflict = f"GPU {uuid} is already enrolled under another node key"
                    break
            if conflict is not None:
                if w.tx.claim_once(
                    f"enroll-conflict:{pop.digest.hex()}", w.now_ns + HOUR_NS, w.now_ns
                ):
                    w.add_finding(
                        findings_pb2.Finding(
                            kind=findings_pb2.FINDING_KIND_ENROLLMENT_CONFLICT,
                            severity=findings_pb2.SEVERITY_WARNING,
                            lab_id=lab.lab_id,
                            node_id=node_id,
                            period_start_ns=w.now_ns,
                            period_end_ns=w.now_ns,
                            summary=f"enrolment refused: {conflict}",
                            rejected_envelope=enrollment_raw,
                        )
                    )
            else:
                first = w.append(
                    PendingEntry(enrollment_raw, EntryKind.ENROLLMENT, lab.lab_id, node_id),
                    PendingEntry(
                        authorization_raw, EntryKind.ENROLLMENT_AUTHORIZATION, lab.lab_id, node_id
                    ),
                )
                row = NodeRow(
                    node_id=node_id,
                    lab_id=lab.lab_id,
                    public_key=enrollment.node_public_key,
                    name=enrollment.node_name,
                    state=registry_pb2.NODE_STATE_ACTIVE,
                    enrolled_at_ns=enrollment.created_at_ns,
                    enrollment_digest=pop.digest,
                    enrollment_log_index=first,
                    enrollment_payload=pop.payload,
                    revoked_at_ns=None,
                    head_seq=None,
                    head_digest=None,
                    head_log_index=None,
                    head_window_end_ns=None,
                )
                w.tx.insert_node(row, uuids)
                if identity is not None:
                    w.tx.set_meta(_tpm_owner_key(identity.tpm_id), node_id)
                w.stage_node(NodeState.from_row(row))
                log.info(
                    "enrolled node=%s lab=%s gpus=%d", node_id.hex()[:16], lab.lab_id, len(uuids)
                )
                return EnrollResult(node_id, False, first)
        raise ConflictError(conflict)

    # -- inventory --------------------------------------------------------------------------

    def declare_inventory(self, raw: bytes) -> tuple[int, int]:
        """Accept an operator-signed inventory declaration; returns (version, log index)."""
        verified, lab = self._verify_operator(
            raw,
            PayloadType.INVENTORY,
            registry_pb2.InventoryDeclaration,
            max_size=inventory_envelope_limit(self.core.config.server),
        )
        declaration = registry_pb2.InventoryDeclaration.FromString(verified.payload)
        if declaration.format_version != 1:
            raise InvalidRequestError("InventoryDeclaration format_version must be 1")
        if declaration.version < 1:
            raise InvalidRequestError("InventoryDeclaration version must be at least 1")
        uuids = _validate_gpus(declaration.gpus, MAX_INVENTORY_GPUS)
        with self.core.write() as w:
            seen = w.tx.entry_index_by_digest(verified.digest)
            if seen is not None:
                return declaration.version, seen[0]
            skew = self.core.config.ingest.max_clock_skew_ns
            self._check_time(declaration.created_at_ns, "InventoryDeclaration", w.now_ns)
            if declaration.effective_from_ns < w.now_ns - skew:
                raise InvalidRequestError(
                    "effective_from_ns lies in the past: a declaration cannot be back-dated"
                )
            versions = w.tx.inventory(lab.lab_id)
            if versions and declaration.version <= versions[-1].version:
                raise ConflictError(
                    f"inventory version {declaration.version} is not above the version in "
                    f"force ({versions[-1].version})"
                )
            index = w.append(PendingEntry(raw, EntryKind.INVENTORY, lab.lab_id))
            w.tx.put_inventory(
                InventoryRow(
                    lab_id=lab.lab_id,
                    version=declaration.version,
                    effective_from_ns=declaration.effective_from_ns,
                    gpu_uuids=tuple(uuids),
                    log_index=index,
                )
            )
            log.info(
                "inventory lab=%s version=%d gpus=%d", lab.lab_id, declaration.version, len(uuids)
            )
            return declaration.version, index

    # -- revocation -------------------------------------------------------------------------

    def revoke(self, raw: bytes) -> tuple[int, bool]:
        """Accept an operator-signed revocation; returns (log index, already revoked)."""
        verified, lab = self._verify_operator(
            raw, PayloadType.REVOCATION, registry_pb2.NodeRevocation
        )
        revocation = registry_pb2.NodeRevocation.FromString(verified.payload)
        if revocation.format_version != 1:
            raise InvalidRequestError("NodeRevocation format_version must be 1")
        if len(revocation.reason) > 512:
            raise InvalidRequestError("reason is longer than 512 characters")
        with self.core.write() as w:
            seen = w.tx.entry_index_by_digest(verified.digest)
            if seen is not None:
                return seen[0], True
            node = w.node(bytes(revocation.node_id))
            if node is None or node.lab_id != lab.lab_id:
                raise NotFoundError("no such node in this lab")
            self._check_time(revocation.created_at_ns, "NodeRevocation", w.now_ns)
            index = w.append(
                PendingEntry(raw, EntryKind.REVOCATION, lab.lab_id, bytes(revocation.node_id))
            )
            already = node.revoked
            if not already:
                w.tx.set_node_state(
                    node.node_id, registry_pb2.NODE_STATE_REVOKED, revocation.created_at_ns
                )
                w.tx.release_gpus(node.node_id)
                w.stage_node(
                    replace(
                        node,
                        state=registry_pb2.NODE_STATE_REVOKED,
                        revoked_at_ns=revocation.created_at_ns,
                    )
                )
                log.info("revoked node=%s lab=%s", node.node_id.hex()[:16], lab.lab_id)
            return index, already

    # -- queries ----------------------------------------------------------------------------

    def node_info(self, node_id: bytes) -> registry_pb2.NodeInfo:
        row = self.core.store.get_node(node_id)
        if row is None:
            raise NotFoundError("no such node")
        return _node_info(row)

    def list_nodes(self, lab_id: str) -> list[registry_pb2.NodeInfo]:
        if not is_valid_lab_id(lab_id):
            raise InvalidRequestError("lab_id is not a valid lab id")
        if self.core.store.get_lab(lab_id) is None:
            raise NotFoundError(f"lab {lab_id!r} is not registered with this verifier")
        return [_node_info(row) for row in self.core.store.list_nodes(lab_id)]


def _tpm_owner_key(tpm_id: bytes) -> str:
    return f"tpm-owner:{tpm_id.hex()}"


def _tpm_conflict(w: WriteContext, identity: TpmIdentity | None, node_id: bytes) -> str | None:
    """One TPM backs at most one live node: a TPM already backing a node not revoked is refused."""
    if identity is None:
        return None
    owner = w.tx.get_meta(_tpm_owner_key(identity.tpm_id))
    if owner is None or owner == node_id:
        return None
    owner_row = w.tx.get_node(owner)
    if owner_row is not None and owner_row.state == registry_pb2.NODE_STATE_REVOKED:
        return None
    return f"TPM {identity.tpm_id.hex()[:16]} already backs another live node"


def _node_info(row: NodeRow) -> registry_pb2.NodeInfo:
    enrollment = registry_pb2.NodeEnrollment.FromString(row.enrollment_payload)
    info = registry_pb2.NodeInfo(
        node_id=row.node_id,
        lab_id=row.lab_id,
        node_name=row.name,
        state=row.state,  # type: ignore[arg-type]
        gpus=list(enrollment.gpus),
        enrollment_log_index=row.enrollment_log_index,
    )
    identity = tpm_identity(enrollment)
    if identity is not None:
        info.tpm_id = identity.tpm_id
    if row.head_seq is not None:
        info.has_head = True
        info.head_seq = row.head_seq
        info.head_digest = row.head_digest or b""
        info.head_window_end_ns = row.head_window_end_ns or 0
    return info


def flag_node(w: WriteContext, node: NodeState) -> NodeState:
    """Mark a node as caught equivocating (unless revoked, which stays)."""
    if node.state == registry_pb2.NODE_STATE_ACTIVE:
        w.tx.set_node_state(node.node_id, registry_pb2.NODE_STATE_FLAGGED)
        node = replace(node, state=registry_pb2.NODE_STATE_FLAGGED)
        w.stage_node(node)
    return node
