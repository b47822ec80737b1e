"""The verifier's shared state and its one write path.

    core = VerifierCore.open(config, store, log_private_key)
    with core.write() as w:                  # one transaction; the log and caches follow it
        index = w.append(PendingEntry(raw, EntryKind.ATTESTATION, lab_id, node_id))
        w.add_finding(finding)
    # committed: receipts may now name the indices

Every change to the store goes through :meth:`VerifierCore.write`, under one lock: the store
transaction, the in-memory Merkle tree and the node cache move together, so a failed commit leaves
no trace in any of them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pausewatch.v1 import findings_pb2, registry_pb2

from attest.envelope import Keyring, PayloadType, sign_envelope
from attest.ids import KeyId
from attest.keys import Ed25519Signer, public_key_from_raw
from attest.note import Ed25519NoteSigner
from verifier.config import VerifierConfig
from verifier.nonce import NonceIssuer
from verifier.store.base import EntryKind, FindingRow, NodeRow, Store, Transaction
from verifier.store.log import PendingEntry, TransparencyLog
from verifier.store.settings import check_stored_settings
from verifier.tpm import (
    TpmIdentity,
    TpmSettings,
    load_manufacturer_cas,
    read_ima_allowlist,
    tpm_identity,
)
from verifier.witness.pool import WitnessPool

log = logging.getLogger(__name__)

NONCE_SECRET_KEY = "nonce_secret"  # noqa: S105 - the meta row name, not a secret


@dataclass(frozen=True, slots=True)
class NodeHead:
    """The latest accepted attestation of a node."""

    seq: int
    digest: bytes
    log_index: int
    window_end_ns: int


@dataclass(frozen=True, slots=True)
class NodeState:
    """What ingest needs to know of an enrolled node, cached in memory."""

    node_id: bytes
    lab_id: str
    name: str
    public_key: Ed25519PublicKey
    state: int
    gpu_uuids: frozenset[str]
    enrolled_at_ns: int
    revoked_at_ns: int | None
    head: NodeHead | None
    tpm: TpmIdentity | None = None
    """The node's TPM, for a TPM-rooted node (its enrolment carried TpmEnrollment)."""

    @property
    def revoked(self) -> bool:
        return self.state == registry_pb2.NODE_STATE_REVOKED

    @classmethod
    def from_row(cls, row: NodeRow) -> NodeState:
        enrollment = registry_pb2.NodeEnrollment.FromString(row.enrollment_payload)
        head = None
        if row.head_seq is not None:
            assert row.head_digest is not None
            assert row.head_log_index is not None
            head = NodeHead(
                seq=row.head_seq,
                digest=row.head_digest,
                log_index=row.head_log_index,
                window_end_ns=row.head_window_end_ns or 0,
            )
        return cls(
            node_id=row.node_id,
            lab_id=row.lab_id,
            name=row.name,
            public_key=public_key_from_raw(row.public_key),
            state=row.state,
            gpu_uuids=frozenset(g.uuid for g in enrollment.gpus),
            enrolled_at_ns=row.enrolled_at_ns,
            revoked_at_ns=row.revoked_at_ns,
            head=head,
            tpm=tpm_identity(enrollment),
        )


class NodeKeyring:
    """The enrolled node keys (revoked ones included: revocation is checked separately)."""

    def __init__(self, nodes: dict[bytes, NodeState]) -> None:
        self._nodes = nodes

    def lookup(self, key_id: KeyId) -> Ed25519PublicKey | None:
        node = self._nodes.get(key_id)
        return None if node is None else node.public_key


@dataclass
class WriteContext:
    """What one transaction may do. Changes to the caches are staged and applied on commit."""

    core: VerifierCore
    tx: Transaction
    now_ns: int
    node_updates: dict[bytes, NodeState] = field(default_factory=dict)
    new_findings: list[int] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def append(self, *entries: PendingEntry) -> int:
        """Append entries to the log (written when the transaction ends); returns the first
        one's index."""
        return self.core.log.append(entries)

    def node(self, node_id: bytes) -> NodeState | None:
        staged = self.node_updates.get(node_id)
        return staged if staged is not None else self.core.nodes.get(node_id)

    def stage_node(self, node: NodeState) -> None:
        self.node_updates[node.node_id] = node

    def add_finding(self, finding: findings_pb2.Finding) -> int:
        """Sign a finding with the log key, append it and index it; returns its log index."""
        finding.format_version = 1
        if not finding.detected_at_ns:
            finding.detected_at_ns = self.now_ns
        payload = finding.SerializeToString(deterministic=True)
        raw = sign_envelope(self.core.envelope_signer, PayloadType.FINDING, payload)
        index = self.append(
            PendingEntry(raw, EntryKind.FINDING, finding.lab_id, bytes(finding.node_id))
        )
        self.tx.insert_findings(
            [
                FindingRow(
                    log_index=index,
                    lab_id=finding.lab_id,
                    node_id=bytes(finding.node_id),
                    kind=finding.kind,
                    period_start_ns=finding.period_start_ns,
                    period_end_ns=finding.period_end_ns,
                    finding=payload,
                )
            ]
        )
        self.new_findings.append(index)
        log.info(
            "finding kind=%s lab=%s node=%s index=%d",
            findings_pb2.FindingKind.Name(finding.kind),
            finding.lab_id,
            bytes(finding.node_id).hex()[:16],
            index,
        )
        return index


def _ignore_duration(_seconds: float) -> None:
    return None


def _ignore() -> None:
    return None


class VerifierCore:
    """Shared state: store, log, nonces, node cache, settings."""

    def __init__(
        self,
        config: VerifierConfig,
        store: Store,
        log_private_key: Ed25519PrivateKey,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        # First: a store whose accounts were made with other ingest settings is refused before
        # anything is written to it.
        check_stored_settings(store, config)
        self.config = config
        self.store = store
        self.clock_ns = clock_ns
        self.note_signer = Ed25519NoteSigner(config.log.origin, log_private_key)
        self.envelope_signer = Ed25519Signer.from_private_key(log_private_key)
        witnesses = WitnessPool.from_config(
            config.log.witnesses,
            self.note_signer.verifier(),
            timeout_s=config.log.witness_timeout_ms / 1000,
        )
        self.log = TransparencyLog(
            store,
            self.note_signer,
            clock_ns,
            witnesses,
            witness_retry_ns=config.log.checkpoint_interval_s * 10**9,
        )
        self._write_lock = threading.Lock()
        self.nodes: dict[bytes, NodeState] = {
            row.node_id: NodeState.from_row(row) for row in store.list_nodes()
        }
        self.keyring: Keyring = NodeKeyring(self.nodes)
        secret = store.get_meta(NONCE_SECRET_KEY)
        if secret is None:
            with store.transaction() as tx:
                secret = tx.get_meta(NONCE_SECRET_KEY)
                if secret is None:
                    secret = secrets.token_bytes(32)
                    tx.set_meta(NONCE_SECRET_KEY, secret)
        self.nonces = NonceIssuer(secret, clock_ns, config.ingest.nonce_lifetime_ns)
        self.tpm_settings = TpmSettings(
            manufacturer_cas=load_manufacturer_cas(config.tpm.manufacturer_cas),
            quote_nonce_max_age_ns=config.tpm.quote_nonce_max_age_ns,
            max_windows_without_quote=config.tpm.max_windows_without_quote,
        )
        self.ima_allowlists: dict[str, frozenset[tuple[str, bytes]]] = {
            lab.lab_id: read_ima_allowlist(lab.ima_allowlist)
            for lab in config.labs
            if lab.ima_allowlist is not None
        }
        self._finding_listeners: list[Callable[[list[int]], None]] = []
        self.observe_commit_s: Callable[[float], None] = _ignore_duration
        """Told how long each write's log flush and store commit took (the server's metrics)."""
        self.commit_failed: Callable[[], None] = _ignore
        """Told of each write whose log flush or store commit failed (the server's metrics)."""
        self._listeners_lock = threading.Lock()

    def node_enrolled_elsewhere(self, node_id: bytes) -> NodeState | None:
        """A node missing from the cache that another verifier process sharing the store has
        enrolled, now cached; ``None`` if there is none (or the store is not shared).

        Only the key and the revocation state of what this returns are used before the serial
        stage, whose transaction reloads the cache whenever another process wrote to the log."""
        if not self.store.shared:
            return None
        row = self.store.get_node(node_id)
        if row is None:
            return None
        return self.nodes.setdefault(row.node_id, NodeState.from_row(row))

    @contextmanager
    def write(self) -> Iterator[WriteContext]:
        """One transaction over the store, the log and the caches; all or nothing."""
        with self._write_lock:
            committing = False
            try:
                with self.store.transaction() as tx:
                    if self.log.begin(tx):
                        # Another verifier process wrote to the shared store: reload what we cache
                        # (in place: readers in other threads never see it empty).
                        fresh = {row.node_id: NodeState.from_row(row) for row in tx.list_nodes()}
                        self.nodes.update(fresh)
                        for gone in set(self.nodes) - set(fresh):
                            del self.nodes[gone]
                    ctx = WriteContext(core=self, tx=tx, now_ns=self.clock_ns())
                    yield ctx
                    commit_started = time.perf_counter()
                    committing = True
                    self.log.flush(tx, ctx.now_ns)
            except BaseException:
                self.log.rollback()
                if committing:
                    self.commit_failed()
                raise
            self.observe_commit_s(time.perf_counter() - commit_started)
            self.log.commit_succeeded()
            self.nodes.update(ctx.node_updates)
        for callback in ctx.after_commit:
            callback()
        if ctx.new_findings:
            self._notify_findings(ctx.new_findings)

    def on_findings(self, listener: Callable[[list[int]], None]) -> Callable[[], None]:
        """Call ``listener`` with the log indices of new findings after each commit; returns a
        function that removes it."""
        with self._listeners_lock:
            self._finding_listeners.append(listener)

        def remove() -> None:
            with self._listeners_lock:
                if listener in self._finding_listeners:
                    self._finding_listeners.remove(listener)

        return remove

    def _notify_findings(self, indices: list[int]) -> None:
        with self._listeners_lock:
            listeners = list(self._finding_listeners)
        for listener in listeners:
            try:
                listener(indices)
            except Exception:  # a watcher's failure must not break ingest
                log.exception("finding listener failed")

    @staticmethod
    def with_head(node: NodeState, head: NodeHead) -> NodeState:
        """``node`` with a new head (built directly: dataclasses.replace is slow on the hot
        path)."""
        return NodeState(
            node.node_id,
            node.lab_id,
            node.name,
            node.public_key,
            node.state,
            node.gpu_uuids,
            node.enrolled_at_ns,
            node.revoked_at_ns,
            head,
            node.tpm,
        )
