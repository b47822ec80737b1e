"""The storage interface every verifier backend implements, and the rows it deals in.

    with store.transaction() as tx:          # all of one batch's effects, or none
        first = tx.append_log(entries, nodes)
        tx.insert_attestation(row)
    store.get_entry(17)                       # reads outside a transaction see committed data

The ingest pipeline, registry, log and audits talk only to these Protocols, so a backend
(SQLite, the embedded default; PostgreSQL for several verifier processes over one database) can be
added without touching them. A transaction that raises is rolled back whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class EntryKind(StrEnum):
    """What a log entry is, for indexing (the entry itself says so too, signed)."""

    ATTESTATION = "attestation"
    FORK_EVIDENCE = "fork_evidence"
    ENROLLMENT = "enrollment"
    ENROLLMENT_AUTHORIZATION = "enrollment_authorization"
    INVENTORY = "inventory"
    REVOCATION = "revocation"
    LAB = "lab"
    POLICY = "policy"
    POLICY_ACCEPTANCE = "policy_acceptance"
    FINDING = "finding"
    SITE = "site"
    METER_READING = "meter_reading"


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A log entry about to be appended."""

    entry: bytes
    leaf_hash: bytes
    digest: bytes
    kind: EntryKind
    lab_id: str = ""
    node_id: bytes = b""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A stored log entry."""

    index: int
    entry: bytes
    leaf_hash: bytes
    digest: bytes
    kind: EntryKind
    lab_id: str
    node_id: bytes
    appended_at_ns: int = 0
    """The verifier's clock when it logged the entry (for an attestation: its ingest time)."""


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    tree_size: int
    root_hash: bytes
    note: str
    signed_at_ns: int


@dataclass(frozen=True, slots=True)
class LabRow:
    lab_id: str
    name: str
    operator_public_key: bytes
    record_log_index: int


@dataclass(frozen=True, slots=True)
class PolicyRow:
    lab_id: str
    version: int
    policy_id: str
    digest: bytes
    policy_toml: bytes
    effective_from_ns: int
    log_index: int


@dataclass(frozen=True, slots=True)
class NodeRow:
    node_id: bytes
    lab_id: str
    public_key: bytes
    name: str
    state: int  # pausewatch.v1.NodeState
    enrolled_at_ns: int
    enrollment_digest: bytes
    enrollment_log_index: int
    enrollment_payload: bytes
    revoked_at_ns: int | None
    head_seq: int | None
    head_digest: bytes | None
    head_log_index: int | None
    head_window_end_ns: int | None


@dataclass(frozen=True, slots=True)
class InventoryRow:
    lab_id: str
    version: int
    effective_from_ns: int
    gpu_uuids: tuple[str, ...]
    log_index: int


@dataclass(frozen=True, slots=True)
class AttestationRow:
    node_id: bytes
    seq: int
    digest: bytes
    log_index: int
    lab_id: str
    window_start_ns: int
    window_end_ns: int
    upper_bound_flop: int
    central_estimate_flop: int
    energy_flop: int
    energy_mj: int = 0
    """GPU energy the window attests: its GPUs' counters where they were usable (site power)."""


@dataclass(frozen=True, slots=True)
class FindingRow:
    log_index: int
    lab_id: str
    node_id: bytes
    kind: int  # pausewatch.v1.FindingKind
    period_start_ns: int
    period_end_ns: int
    finding: bytes  # serialized pausewatch.v1.Finding


@dataclass(frozen=True, slots=True)
class GapRow:
    """An unattested stretch between two consecutive accepted windows of a node."""

    node_id: bytes
    start_ns: int
    end_ns: int
    seq_before: int
    seq_after: int
    before_log_index: int
    after_log_index: int
    energy_bounded: bool
    energy_mj: int
    energy_bound_flop: int
    time_bound_flop: int
    finding_log_index: int | None
    gpu_models: tuple[str, ...] = ()
    """Models of the GPUs of the window before the gap (to re-bound a part of it by time)."""


@dataclass(frozen=True, slots=True)
class SiteRow:
    """One version of a site's declaration (a serialized pausewatch.v1.SiteDeclaration)."""

    lab_id: str
    site_id: str
    version: int
    effective_from_ns: int
    declaration: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class MeterReadingRow:
    """An accepted meter reading; its envelope is the log entry at ``log_index``."""

    lab_id: str
    meter_id: str
    seq: int
    digest: bytes
    log_index: int
    site_id: str
    interval_start_ns: int
    interval_end_ns: int
    energy_mj: int


class ReadView(Protocol):
    """Queries, inside or outside a transaction."""

    def tree_size(self) -> int: ...

    def node_hash(self, level: int, index: int) -> bytes: ...

    def get_entry(self, index: int) -> LogEntry | None: ...

    def entries(self, indices: Sequence[int]) -> list[LogEntry]: ...

    def entry_index_by_digest(self, digest: bytes) -> tuple[int, EntryKind] | None: ...

    def latest_checkpoint(self) -> CheckpointRow | None: ...

    def get_lab(self, lab_id: str) -> LabRow | None: ...

    def list_labs(self) -> list[LabRow]: ...

    def policies(self, lab_id: str) -> list[PolicyRow]: ...

    def get_node(self, node_id: bytes) -> NodeRow | None: ...

    def list_nodes(self, lab_id: str | None = None) -> list[NodeRow]: ...

    def gpu_owner(self, uuid: str) -> bytes | None: ...

    def inventory(self, lab_id: str) -> list[InventoryRow]: ...

    def inventory_version(self, lab_id: str) -> int:
        """The lab's latest inventory version (0 if it declared none)."""
        ...

    def attestation_digest_at(self, node_id: bytes, seq: int) -> bytes | None: ...

    def attestations_in(
        self, lab_id: str, start_ns: int, end_ns: int, *, limit: int | None = None
    ) -> list[AttestationRow]: ...

    def top_contributors(
        self, lab_id: str, start_ns: int, end_ns: int, figure: str, limit: int
    ) -> list[int]: ...

    def first_window_ending_after(self, node_id: bytes, t_ns: int) -> AttestationRow | None: ...

    def last_window_starting_before(self, node_id: bytes, t_ns: int) -> AttestationRow | None: ...

    def last_attestation_before(self, node_id: bytes, t_ns: int) -> AttestationRow | None: ...

    def node_attestation_stats(
        self, node_id: bytes, start_ns: int, end_ns: int
    ) -> tuple[int, int | None, int | None, int]: ...

    def gaps_overlapping(self, node_id: bytes, start_ns: int, end_ns: int) -> list[GapRow]: ...

    def buckets(self, lab_id: str, start_ns: int, end_ns: int) -> dict[int, dict[str, object]]: ...

    def findings(
        self,
        lab_id: str,
        *,
        after_index: int = -1,
        kinds: Sequence[int] = (),
        since_ns: int = 0,
        until_ns: int = 0,
        limit: int = 100,
    ) -> list[FindingRow]: ...

    def fork_evidence_count(self, node_id: bytes) -> int: ...

    def entries_of_kind_for_lab(
        self, lab_id: str, kinds: Sequence[EntryKind], up_to_index: int
    ) -> list[LogEntry]: ...

    def get_meta(self, key: str) -> bytes | None: ...

    def sites(self, lab_id: str) -> list[SiteRow]:
        """Every version of every site of the lab, by site and version."""
        ...

    def meter_readings(
        self, lab_id: str, meter_id: str, start_ns: int, end_ns: int
    ) -> list[MeterReadingRow]:
        """The meter's readings whose interval overlaps [start, end), by seq."""
        ...

    def meter_reading_at(self, lab_id: str, meter_id: str, seq: int) -> MeterReadingRow | None: ...

    def meter_head(self, lab_id: str, meter_id: str) -> MeterReadingRow | None:
        """The meter's accepted reading with the highest seq."""
        ...

    def window_energy(
        self, node_ids: Sequence[bytes], start_ns: int, end_ns: int
    ) -> list[tuple[bytes, int, int, int]]:
        """(node id, window start, window end, energy mJ) of the nodes' accepted windows that
        start in [start, end)."""
        ...


class Transaction(ReadView, Protocol):
    """Writes; only valid inside ``Store.transaction()``."""

    def append_log(
        self,
        entries: Sequence[NewEntry],
        nodes: Sequence[tuple[int, int, bytes]],
        appended_at_ns: int,
        first_index: int | None = None,
    ) -> int:
        """Append entries at the current tree size (or at ``first_index``, which must be it) and
        the perfect nodes they complete. Returns the index of the first entry."""
        ...

    def save_checkpoint(self, row: CheckpointRow) -> None: ...

    def update_checkpoint_note(self, tree_size: int, note: str) -> None:
        """Replace a saved checkpoint's note by the same note with witness cosignatures added."""
        ...

    def put_lab(self, row: LabRow) -> None: ...

    def put_policy(self, row: PolicyRow) -> None: ...

    def insert_node(self, row: NodeRow, gpu_uuids: Sequence[str]) -> None: ...

    def release_gpus(self, node_id: bytes) -> None: ...

    def set_node_state(
        self, node_id: bytes, state: int, revoked_at_ns: int | None = None
    ) -> None: ...

    def set_node_heads(self, heads: Sequence[tuple[bytes, int, bytes, int, int]]) -> None:
        """Each (node id, seq, digest, log index, window end ns): the node's new head."""
        ...

    def put_inventory(self, row: InventoryRow) -> None: ...

    def insert_attestations(self, rows: Sequence[AttestationRow]) -> None: ...

    def insert_fork_evidence(
        self, node_id: bytes, seq: int, digest: bytes, log_index: int
    ) -> None: ...

    def insert_findings(self, rows: Sequence[FindingRow]) -> None: ...

    def insert_gaps(self, rows: Sequence[GapRow]) -> None: ...

    def put_buckets(self, lab_id: str, rows: dict[int, dict[str, object]]) -> None: ...

    def set_meta(self, key: str, value: bytes) -> None: ...

    def put_site(self, row: SiteRow) -> None: ...

    def insert_meter_reading(self, row: MeterReadingRow) -> None: ...

    def claim_once(self, key: str, until_ns: int, now_ns: int) -> bool:
        """True the first time ``key`` is claimed, or when its last claim has expired; used to
        keep repeated findings (one per node per hour) from flooding the log."""
        ...


class Store(ReadView, Protocol):
    """A storage backend."""

    shared: bool
    """Whether other verifier processes may write to the same store (then what a process caches
    can lag behind the store, and a cache miss is worth a look in the store)."""

    def transaction(self) -> AbstractContextManager[Transaction]: ...

    def snapshot(self) -> AbstractContextManager[ReadView]:
        """A consistent read-only view of the committed state (for reports and bundles)."""
        ...

    def close(self) -> None: ...

    def stored_bytes(self) -> int:
        """Bytes the backend uses on disk (for benchmarks and operators)."""
        ...


def iter_chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    """Split a long list of ids into chunks a single SQL statement can take."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
