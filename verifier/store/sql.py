"""The SQL shared by the SQLite and PostgreSQL backends: schema, queries and writes.

    class MyStore(SqlQueries): ...            # reads
    SqlTransaction(conn, placeholder="%s")    # writes inside an open transaction

Written once in the SQL both engines accept (``ON CONFLICT`` upserts, no engine-specific
functions); the schema template only varies the binary and integer column types. FLOP figures
that can exceed 64 bits are stored as decimal text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pausewatch.v1 import attestation_pb2 as apb

from attest.attestation import window_energy_mj
from attest.envelope import parse_envelope
from verifier.store.base import (
    AttestationRow,
    CheckpointRow,
    EntryKind,
    FindingRow,
    GapRow,
    InventoryRow,
    LabRow,
    LogEntry,
    MeterReadingRow,
    NewEntry,
    NodeRow,
    PolicyRow,
    SiteRow,
    iter_chunks,
)

SCHEMA_VERSION = 3
"""1: the first release. 2: adds ``node_hours`` (built from the attestations on upgrade)."""
FLOP_KEY_DIGITS = 40  # zero-padded decimal, so text order is numeric order
NODE_HOUR_NS = 3_600 * 10**9
"""The width of a ``node_hours`` rollup: a node's figures for a report come from whole hours
plus the attestation rows of the two partial hours at the period's edges."""
_LOW_32 = (1 << 32) - 1

SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS log_entries (
    idx {bigint} PRIMARY KEY,
    leaf_hash {blob} NOT NULL,
    entry {blob} NOT NULL,
    digest {blob} NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    lab_id TEXT NOT NULL,
    node_id {blob} NOT NULL,
    appended_at_ns {bigint} NOT NULL
);
CREATE INDEX IF NOT EXISTS log_entries_lab_kind ON log_entries(lab_id, kind, idx);
CREATE TABLE IF NOT EXISTS tree_nodes (
    level {bigint} NOT NULL, idx {bigint} NOT NULL, hash {blob} NOT NULL,
    PRIMARY KEY (level, idx)
) {without_rowid};
CREATE TABLE IF NOT EXISTS checkpoints (
    tree_size {bigint} PRIMARY KEY, root_hash {blob} NOT NULL, note TEXT NOT NULL,
    signed_at_ns {bigint} NOT NULL
);
CREATE TABLE IF NOT EXISTS labs (
    lab_id TEXT PRIMARY KEY, name TEXT NOT NULL, operator_public_key {blob} NOT NULL,
    record_log_index {bigint} NOT NULL
);
CREATE TABLE IF NOT EXISTS policies (
    lab_id TEXT NOT NULL, version {bigint} NOT NULL, policy_id TEXT NOT NULL,
    digest {blob} NOT NULL,
    policy_toml {blob} NOT NULL, effective_from_ns {bigint} NOT NULL, log_index {bigint} NOT NULL,
    PRIMARY KEY (lab_id, version)
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id {blob} PRIMARY KEY, lab_id TEXT NOT NULL, public_key {blob} NOT NULL,
    name TEXT NOT NULL,
    state {bigint} NOT NULL, enrolled_at_ns {bigint} NOT NULL, enrollment_digest {blob} NOT NULL,
    enrollment_log_index {bigint} NOT NULL, enrollment_payload {blob} NOT NULL,
    revoked_at_ns {bigint}, head_seq {bigint}, head_digest {blob}, head_log_index {bigint},
    head_window_end_ns {bigint}
);
CREATE INDEX IF NOT EXISTS nodes_lab ON nodes(lab_id, enrollment_log_index);
CREATE TABLE IF NOT EXISTS gpu_owners (uuid TEXT PRIMARY KEY, node_id {blob} NOT NULL);
CREATE TABLE IF NOT EXISTS inventory (
    lab_id TEXT NOT NULL, version {bigint} NOT NULL, effective_from_ns {bigint} NOT NULL,
    gpu_uuids TEXT NOT NULL, log_index {bigint} NOT NULL, PRIMARY KEY (lab_id, version)
);
CREATE TABLE IF NOT EXISTS attestations (
    node_id {blob} NOT NULL, seq {bigint} NOT NULL, digest {blob} NOT NULL,
    log_index {bigint} NOT NULL,
    lab_id TEXT NOT NULL, window_start_ns {bigint} NOT NULL, window_end_ns {bigint} NOT NULL,
    upper_key TEXT NOT NULL, central_key TEXT NOT NULL, energy_key TEXT NOT NULL,
    energy_mj {bigint} NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, seq)
) {without_rowid};
CREATE INDEX IF NOT EXISTS attestations_lab_start ON attestations(lab_id, window_start_ns);
CREATE INDEX IF NOT EXISTS attestations_node_end ON attestations(node_id, window_end_ns);
CREATE INDEX IF NOT EXISTS attestations_node_start ON attestations(node_id, window_start_ns);
CREATE TABLE IF NOT EXISTS node_hours (
    node_id {blob} NOT NULL, hour_start_ns {bigint} NOT NULL, attestations {bigint} NOT NULL,
    min_seq {bigint} NOT NULL, max_seq {bigint} NOT NULL,
    upper_high {bigint} NOT NULL, upper_low {bigint} NOT NULL,
    PRIMARY KEY (node_id, hour_start_ns)
) {without_rowid};
CREATE TABLE IF NOT EXISTS fork_evidence (
    digest {blob} PRIMARY KEY, node_id {blob} NOT NULL, seq {bigint} NOT NULL,
    log_index {bigint} NOT NULL
);
CREATE INDEX IF NOT EXISTS fork_evidence_node ON fork_evidence(node_id);
CREATE TABLE IF NOT EXISTS findings (
    log_index {bigint} PRIMARY KEY, lab_id TEXT NOT NULL, node_id {blob} NOT NULL,
    kind {bigint} NOT NULL, period_start_ns {bigint} NOT NULL, period_end_ns {bigint} NOT NULL,
    finding {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_lab ON findings(lab_id, log_index);
CREATE TABLE IF NOT EXISTS gaps (
    node_id {blob} NOT NULL, start_ns {bigint} NOT NULL, end_ns {bigint} NOT NULL,
    seq_before {bigint} NOT NULL, seq_after {bigint} NOT NULL, before_log_index {bigint} NOT NULL,
    after_log_index {bigint} NOT NULL, energy_bounded {bigint} NOT NULL,
    energy_mj {bigint} NOT NULL,
    energy_bound_flop TEXT NOT NULL, time_bound_flop TEXT NOT NULL, finding_log_index {bigint},
    gpu_models TEXT NOT NULL,
    PRIMARY KEY (node_id, start_ns)
);
CREATE TABLE IF NOT EXISTS buckets (
    lab_id TEXT NOT NULL, start_ns {bigint} NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (lab_id, start_ns)
) {without_rowid};
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, until_ns {bigint} NOT NULL);
CREATE TABLE IF NOT EXISTS sites (
    lab_id TEXT NOT NULL, site_id TEXT NOT NULL, version {bigint} NOT NULL,
    effective_from_ns {bigint} NOT NULL, declaration {blob} NOT NULL, log_index {bigint} NOT NULL,
    PRIMARY KEY (lab_id, site_id, version)
);
CREATE TABLE IF NOT EXISTS meter_readings (
    lab_id TEXT NOT NULL, meter_id TEXT NOT NULL, seq {bigint} NOT NULL, digest {blob} NOT NULL,
    log_index {bigint} NOT NULL, site_id TEXT NOT NULL, interval_start_ns {bigint} NOT NULL,
    interval_end_ns {bigint} NOT NULL, energy_mj {bigint} NOT NULL,
    PRIMARY KEY (lab_id, meter_id, seq)
) {without_rowid};
CREATE INDEX IF NOT EXISTS meter_readings_end ON meter_readings(lab_id, meter_id, interval_end_ns);
"""


def flop_key(flop: int) -> str:
    """Zero-padded decimal, so that comparing keys as text compares the numbers."""
    if flop < 0:
        raise ValueError("FLOP figures are never negative")
    return str(flop).zfill(FLOP_KEY_DIGITS)


_FIGURE_COLUMNS = {
    "upper_bound": "upper_key",
    "central_estimate": "central_key",
    "energy": "energy_key",
}


_LOG_ENTRY_COLUMNS = (
    ("idx", "bigint"),
    ("leaf_hash", "bytea"),
    ("entry", "bytea"),
    ("digest", "bytea"),
    ("kind", "text"),
    ("lab_id", "text"),
    ("node_id", "bytea"),
    ("appended_at_ns", "bigint"),
)
_TREE_NODE_COLUMNS = (("level", "bigint"), ("idx", "bigint"), ("hash", "bytea"))
_ATTESTATION_COLUMNS = (
    ("node_id", "bytea"),
    ("seq", "bigint"),
    ("digest", "bytea"),
    ("log_index", "bigint"),
    ("lab_id", "text"),
    ("window_start_ns", "bigint"),
    ("window_end_ns", "bigint"),
    ("upper_key", "text"),
    ("central_key", "text"),
    ("energy_key", "text"),
    ("energy_mj", "bigint"),
)


class SqlQueries:
    """Read queries, written once in SQL that SQLite and PostgreSQL both accept.

    Statements use ``?`` placeholders; a backend whose driver wants ``%s`` sets
    ``_placeholder``. Subclasses say which connection to use.
    """

    _placeholder = "?"

    def _conn(self) -> Any:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn().execute(self._sql(sql), args)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._conn().cursor().executemany(self._sql(sql), rows)

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._exec(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return list(self._exec(sql, args).fetchall())

    def tree_size(self) -> int:
        row = self._one("SELECT MAX(idx) FROM log_entries")
        return 0 if row[0] is None else int(row[0]) + 1

    def node_hash(self, level: int, index: int) -> bytes:
        row = self._one("SELECT hash FROM tree_nodes WHERE level = ? AND idx = ?", (level, index))
        if row is None:
            raise KeyError(f"no tree node at level {level} index {index}")
        return bytes(row[0])

    @staticmethod
    def _entry(row: Any) -> LogEntry:
        return LogEntry(
            index=row[0],
            entry=bytes(row[1]),
            leaf_hash=bytes(row[2]),
            digest=bytes(row[3]),
            kind=EntryKind(row[4]),
            lab_id=row[5],
            node_id=bytes(row[6]),
            appended_at_ns=int(row[7]),
        )

    _ENTRY_COLUMNS = "idx, entry, leaf_hash, digest, kind, lab_id, node_id, appended_at_ns"

    def get_entry(self, index: int) -> LogEntry | None:
        row = self._one(f"SELECT {self._ENTRY_COLUMNS} FROM log_entries WHERE idx = ?", (index,))
        return None if row is None else self._entry(row)

    def entries(self, indices: Sequence[int]) -> list[LogEntry]:
        out: list[LogEntry] = []
        for chunk in iter_chunks(sorted(set(indices)), 500):
            marks = ",".join("?" * len(chunk))
            out += [
                self._entry(r)
                for r in self._all(
                    f"SELECT {self._ENTRY_COLUMNS} FROM log_entries WHERE idx IN ({marks})", chunk
                )
            ]
        out.sort(key=lambda e: e.index)
        return out

    def entry_index_by_digest(self, digest: bytes) -> tuple[int, EntryKind] | None:
        row = self._one("SELECT idx, kind FROM log_entries WHERE digest = ?", (digest,))
        return None if row is None else (int(row[0]), EntryKind(row[1]))

    def latest_checkpoint(self) -> CheckpointRow | None:
        row = self._one(
            "SELECT tree_size, root_hash, note, signed_at_ns FROM checkpoints "
            "ORDER BY tree_size DESC LIMIT 1"
        )
        return None if row is None else CheckpointRow(row[0], bytes(row[1]), row[2], row[3])

    def get_lab(self, lab_id: str) -> LabRow | None:
        row = self._one(
            "SELECT lab_id, name, operator_public_key, record_log_index FROM labs WHERE lab_id = ?",
            (lab_id,),
        )
        return None if row is None else LabRow(row[0], row[1], bytes(row[2]), row[3])

    def list_labs(self) -> list[LabRow]:
        rows = self._all(
            "SELECT lab_id, name, operator_public_key, record_log_index FROM labs ORDER BY lab_id"
        )
        return [LabRow(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def policies(self, lab_id: str) -> list[PolicyRow]:
        rows = self._all(
            "SELECT lab_id, version, policy_id, digest, policy_toml, effective_from_ns, log_index "
            "FROM policies WHERE lab_id = ? ORDER BY version",
            (lab_id,),
        )
        return [PolicyRow(r[0], r[1], r[2], bytes(r[3]), bytes(r[4]), r[5], r[6]) for r in rows]

    _NODE_COLUMNS = (
        "node_id, lab_id, public_key, name, state, enrolled_at_ns, enrollment_digest, "
        "enrollment_log_index, enrollment_payload, revoked_at_ns, head_seq, head_digest, "
        "head_log_index, head_window_end_ns"
    )

    @staticmethod
    def _node(r: Any) -> NodeRow:
        return NodeRow(
            node_id=bytes(r[0]),
            lab_id=r[1],
            public_key=bytes(r[2]),
            name=r[3],
            state=r[4],
            enrolled_at_ns=r[5],
            enrollment_digest=bytes(r[6]),
            enrollment_log_index=r[7],
            enrollment_payload=bytes(r[8]),
            revoked_at_ns=r[9],
            head_seq=r[10],
            head_digest=None if r[11] is None else bytes(r[11]),
            head_log_index=r[12],
            head_window_end_ns=r[13],
        )

    def get_node(self, node_id: bytes) -> NodeRow | None:
        row = self._one(f"SELECT {self._NODE_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,))
        return None if row is None else self._node(row)

    def list_nodes(self, lab_id: str | None = None) -> list[NodeRow]:
        if lab_id is None:
            rows = self._all(
                f"SELECT {self._NODE_COLUMNS} FROM nodes ORDER BY enrollment_log_index"
            )
        else:
            rows = self._all(
                f"SELECT {self._NODE_COLUMNS} FROM nodes WHERE lab_id = ? "
                "ORDER BY enrollment_log_index",
                (lab_id,),
            )
        return [self._node(r) for r in rows]

    def gpu_owner(self, uuid: str) -> bytes | None:
        row = self._one("SELECT node_id FROM gpu_owners WHERE uuid = ?", (uuid,))
        return None if row is None else bytes(row[0])

    def inventory(self, lab_id: str) -> list[InventoryRow]:
        rows = self._all(
            "SELECT lab_id, version, effective_from_ns, gpu_uuids, log_index FROM inventory "
            "WHERE lab_id = ? ORDER BY version",
            (lab_id,),
        )
        return [InventoryRow(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4]) for r in rows]

    def inventory_version(self, lab_id: str) -> int:
        row = self._one("SELECT MAX(version) FROM inventory WHERE lab_id = ?", (lab_id,))
        return 0 if row is None or row[0] is None else int(row[0])

    def attestation_digest_at(self, node_id: bytes, seq: int) -> bytes | None:
        row = self._one(
            "SELECT digest FROM attestations WHERE node_id = ? AND seq = ?", (node_id, seq)
        )
        return None if row is None else bytes(row[0])

    _ATT_COLUMNS = ", ".join(name for name, _ in _ATTESTATION_COLUMNS if name != "energy_mj")

    @staticmethod
    def _att(r: Any) -> AttestationRow:
        return AttestationRow(
            node_id=bytes(r[0]),
            seq=r[1],
            digest=bytes(r[2]),
            log_index=r[3],
            lab_id=r[4],
            window_start_ns=r[5],
            window_end_ns=r[6],
            upper_bound_flop=int(r[7]),
            central_estimate_flop=int(r[8]),
            energy_flop=int(r[9]),
        )

    def attestations_in(
        self, lab_id: str, start_ns: int, end_ns: int, *, limit: int | None = None
    ) -> list[AttestationRow]:
        sql = (
            f"SELECT {self._ATT_COLUMNS} FROM attestations WHERE lab_id = ? "
            "AND window_start_ns >= ? AND window_start_ns < ? ORDER BY log_index"
        )
        args: list[Any] = [lab_id, start_ns, end_ns]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._att(r) for r in self._all(sql, args)]

    def top_contributors(
        self, lab_id: str, start_ns: int, end_ns: int, figure: str, limit: int
    ) -> list[int]:
        column = _FIGURE_COLUMNS[figure]
        rows = self._all(
            f"SELECT log_index FROM attestations WHERE lab_id = ? AND window_start_ns >= ? "
            f"AND window_start_ns < ? AND {column} > ? ORDER BY {column} DESC, log_index ASC "
            "LIMIT ?",
            (lab_id, start_ns, end_ns, flop_key(0), limit),
        )
        return [int(r[0]) for r in rows]

    def first_window_ending_after(self, node_id: bytes, t_ns: int) -> AttestationRow | None:
        row = self._one(
            f"SELECT {self._ATT_COLUMNS} FROM attestations WHERE node_id = ? AND window_end_ns > ? "
            "ORDER BY window_end_ns ASC LIMIT 1",
            (node_id, t_ns),
        )
        return None if row is None else self._att(row)

    def last_window_starting_before(self, node_id: bytes, t_ns: int) -> AttestationRow | None:
        row = self._one(
            f"SELECT {self._ATT_COLUMNS} FROM attestations WHERE node_id = ? "
            "AND window_start_ns < ? ORDER BY window_start_ns DESC LIMIT 1",
            (node_id, t_ns),
        )
        return None if row is None else self._att(row)

    def last_attestation_before(self, node_id: bytes, t_ns: int) -> AttestationRow | None:
        row = self._one(
            f"SELECT {self._ATT_COLUMNS} FROM attestations WHERE node_id = ? "
            "AND window_start_ns < ? ORDER BY seq DESC LIMIT 1",
            (node_id, t_ns),
        )
        return None if row is None else self._att(row)

    def node_attestation_stats(
        self, node_id: bytes, start_ns: int, end_ns: int
    ) -> tuple[int, int | None, int | None, int]:
        # Whole hours from the rollups, the partial hours at either edge from the rows: the cost
        # is the period's hours plus at most two hours of attestations, whatever the period.
        first_hour = -(-start_ns // NODE_HOUR_NS) * NODE_HOUR_NS
        last_hour = end_ns - end_ns % NODE_HOUR_NS
        if first_hour >= last_hour:
            return self._node_rows_stats(node_id, start_ns, end_ns)
        row = self._one(
            "SELECT SUM(attestations), MIN(min_seq), MAX(max_seq), SUM(upper_high), "
            "SUM(upper_low) FROM node_hours WHERE node_id = ? AND hour_start_ns >= ? "
            "AND hour_start_ns < ?",
            (node_id, first_hour, last_hour),
        )
        count = 0 if row[0] is None else int(row[0])
        hours = (
            count,
            None if row[1] is None else int(row[1]),
            None if row[2] is None else int(row[2]),
            0 if row[3] is None else (int(row[3]) << 32) + int(row[4]),
        )
        parts = [
            self._node_rows_stats(node_id, start_ns, first_hour),
            hours,
            self._node_rows_stats(node_id, last_hour, end_ns),
        ]
        lows = [p[1] for p in parts if p[1] is not None]
        highs = [p[2] for p in parts if p[2] is not None]
        return (
            sum(p[0] for p in parts),
            min(lows) if lows else None,
            max(highs) if highs else None,
            sum(p[3] for p in parts),
        )

    def _node_rows_stats(
        self, node_id: bytes, start_ns: int, end_ns: int
    ) -> tuple[int, int | None, int | None, int]:
        if start_ns >= end_ns:
            return 0, None, None, 0
        rows = self._all(
            "SELECT seq, upper_key FROM attestations WHERE node_id = ? AND window_start_ns >= ? "
            "AND window_start_ns < ?",
            (node_id, start_ns, end_ns),
        )
        if not rows:
            return 0, None, None, 0
        seqs = [int(r[0]) for r in rows]
        return len(rows), min(seqs), max(seqs), sum(int(r[1]) for r in rows)

    @staticmethod
    def _gap(r: Any) -> GapRow:
        return GapRow(
            node_id=bytes(r[0]),
            start_ns=r[1],
            end_ns=r[2],
            seq_before=r[3],
            seq_after=r[4],
            before_log_index=r[5],
            after_log_index=r[6],
            energy_bounded=bool(r[7]),
            energy_mj=r[8],
            energy_bound_flop=int(r[9]),
            time_bound_flop=int(r[10]),
            finding_log_index=r[11],
            gpu_models=tuple(json.loads(r[12])),
        )

    def gaps_overlapping(self, node_id: bytes, start_ns: int, end_ns: int) -> list[GapRow]:
        rows = self._all(
            "SELECT node_id, start_ns, end_ns, seq_before, seq_after, before_log_index, "
            "after_log_index, energy_bounded, energy_mj, energy_bound_flop, time_bound_flop, "
            "finding_log_index, gpu_models FROM gaps WHERE node_id = ? AND start_ns < ? "
            "AND end_ns > ? "
            "ORDER BY start_ns",
            (node_id, end_ns, start_ns),
        )
        return [self._gap(r) for r in rows]

    def buckets(self, lab_id: str, start_ns: int, end_ns: int) -> dict[int, dict[str, object]]:
        rows = self._all(
            "SELECT start_ns, row FROM buckets WHERE lab_id = ? AND start_ns >= ? AND start_ns < ? "
            "ORDER BY start_ns",
            (lab_id, start_ns, end_ns),
        )
        return {int(r[0]): json.loads(r[1]) for r in rows}

    def findings(
        self,
        lab_id: str,
        *,
        after_index: int = -1,
        kinds: Sequence[int] = (),
        since_ns: int = 0,
        until_ns: int = 0,
        limit: int = 100,
    ) -> list[FindingRow]:
        sql = (
            "SELECT log_index, lab_id, node_id, kind, period_start_ns, period_end_ns, finding "
            "FROM findings WHERE lab_id = ? AND log_index > ?"
        )
        args: list[Any] = [lab_id, after_index]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += list(kinds)
        if since_ns:
            sql += " AND period_end_ns >= ?"
            args.append(since_ns)
        if until_ns:
            sql += " AND period_start_ns < ?"
            args.append(until_ns)
        sql += " ORDER BY log_index LIMIT ?"
        args.append(limit)
        return [
            FindingRow(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], bytes(r[6]))
            for r in self._all(sql, args)
        ]

    def fork_evidence_count(self, node_id: bytes) -> int:
        return int(self._one("SELECT COUNT(*) FROM fork_evidence WHERE node_id = ?", (node_id,))[0])

    def entries_of_kind_for_lab(
        self, lab_id: str, kinds: Sequence[EntryKind], up_to_index: int
    ) -> list[LogEntry]:
        marks = ",".join("?" * len(kinds))
        rows = self._all(
            f"SELECT {self._ENTRY_COLUMNS} FROM log_entries WHERE lab_id = ? "
            f"AND kind IN ({marks}) AND idx < ? ORDER BY idx",
            (lab_id, *[k.value for k in kinds], up_to_index),
        )
        return [self._entry(r) for r in rows]

    def get_meta(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else bytes(row[0])

    def sites(self, lab_id: str) -> list[SiteRow]:
        rows = self._all(
            "SELECT lab_id, site_id, version, effective_from_ns, declaration, log_index FROM sites "
            "WHERE lab_id = ? ORDER BY site_id, version",
            (lab_id,),
        )
        return [SiteRow(r[0], r[1], int(r[2]), int(r[3]), bytes(r[4]), int(r[5])) for r in rows]

    _METER_COLUMNS = (
        "lab_id, meter_id, seq, digest, log_index, site_id, interval_start_ns, interval_end_ns, "
        "energy_mj"
    )

    @staticmethod
    def _meter_row(r: Any) -> MeterReadingRow:
        return MeterReadingRow(
            r[0], r[1], int(r[2]), bytes(r[3]), int(r[4]), r[5], int(r[6]), int(r[7]), int(r[8])
        )

    def meter_readings(
        self, lab_id: str, meter_id: str, start_ns: int, end_ns: int
    ) -> list[MeterReadingRow]:
        rows = self._all(
            f"SELECT {self._METER_COLUMNS} FROM meter_readings WHERE lab_id = ? AND meter_id = ? "
            "AND interval_end_ns > ? AND interval_start_ns < ? ORDER BY seq",
            (lab_id, meter_id, start_ns, end_ns),
        )
        return [self._meter_row(r) for r in rows]

    def meter_reading_at(self, lab_id: str, meter_id: str, seq: int) -> MeterReadingRow | None:
        row = self._one(
            f"SELECT {self._METER_COLUMNS} FROM meter_readings "
            "WHERE lab_id = ? AND meter_id = ? AND seq = ?",
            (lab_id, meter_id, seq),
        )
        return None if row is None else self._meter_row(row)

    def window_energy(
        self, node_ids: Sequence[bytes], start_ns: int, end_ns: int
    ) -> list[tuple[bytes, int, int, int]]:
        out: list[tuple[bytes, int, int, int]] = []
        for node_id in node_ids:
            rows = self._all(
                "SELECT window_start_ns, window_end_ns, energy_mj FROM attestations "
                "WHERE node_id = ? AND window_start_ns >= ? AND window_start_ns < ? "
                "ORDER BY window_start_ns",
                (node_id, start_ns, end_ns),
            )
            out += [(node_id, int(r[0]), int(r[1]), int(r[2])) for r in rows]
        return out

    def meter_head(self, lab_id: str, meter_id: str) -> MeterReadingRow | None:
        row = self._one(
            f"SELECT {self._METER_COLUMNS} FROM meter_readings WHERE lab_id = ? AND meter_id = ? "
            "ORDER BY seq DESC LIMIT 1",
            (lab_id, meter_id),
        )
        return None if row is None else self._meter_row(row)


class SqlTransaction(SqlQueries):
    """Writes (and reads) through one connection inside an open database transaction.

    ``array_inserts``: the database takes a batch of rows as one statement over column arrays
    (PostgreSQL's ``unnest``), instead of one execution per row: a batch of a fleet's windows is
    several thousand rows, and each execution costs the server a round of its own.
    """

    def __init__(self, conn: Any, placeholder: str = "?", *, array_inserts: bool = False) -> None:
        self._c = conn
        self._placeholder = placeholder
        self._array_inserts = array_inserts

    def _conn(self) -> Any:
        return self._c

    def _insert(
        self, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert ``rows`` into ``table``; ``columns`` are (name, SQL type: bigint, bytea or
        text), the type naming the array the rows travel in where the backend takes arrays."""
        if not rows:
            return
        names = ", ".join(name for name, _ in columns)
        if not self._array_inserts:
            marks = ", ".join("?" for _ in columns)
            self._many(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
            return
        # psycopg's %b sends the arrays in binary: a bytea array in text is escaped byte by byte.
        arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
        self._c.execute(
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})",
            [list(column) for column in zip(*rows, strict=True)],
        )

    def append_log(
        self,
        entries: Sequence[NewEntry],
        nodes: Sequence[tuple[int, int, bytes]],
        appended_at_ns: int,
        first_index: int | None = None,
    ) -> int:
        # The caller may know the position (the log keeps the tree's size); a wrong one fails on
        # the primary key rather than overwrite anything.
        first = self.tree_size() if first_index is None else first_index
        self._insert(
            "log_entries",
            _LOG_ENTRY_COLUMNS,
            [
                (
                    first + i,
                    e.leaf_hash,
                    e.entry,
                    e.digest,
                    e.kind.value,
                    e.lab_id,
                    e.node_id,
                    appended_at_ns,
                )
                for i, e in enumerate(entries)
            ],
        )
        self._insert("tree_nodes", _TREE_NODE_COLUMNS, nodes)
        return first

    def save_checkpoint(self, row: CheckpointRow) -> None:
        self._exec(
            "INSERT INTO checkpoints (tree_size, root_hash, note, signed_at_ns) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (tree_size) DO NOTHING",
            (row.tree_size, row.root_hash, row.note, row.signed_at_ns),
        )

    def update_checkpoint_note(self, tree_size: int, note: str) -> None:
        self._exec("UPDATE checkpoints SET note = ? WHERE tree_size = ?", (note, tree_size))

    def put_lab(self, row: LabRow) -> None:
        self._exec(
            "INSERT INTO labs (lab_id, name, operator_public_key, record_log_index) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(lab_id) DO UPDATE SET name = excluded.name, "
            "operator_public_key = excluded.operator_public_key, "
            "record_log_index = excluded.record_log_index",
            (row.lab_id, row.name, row.operator_public_key, row.record_log_index),
        )

    def put_policy(self, row: PolicyRow) -> None:
        self._exec(
            "INSERT INTO policies (lab_id, version, policy_id, digest, policy_toml, "
            "effective_from_ns, log_index) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.lab_id,
                row.version,
                row.policy_id,
                row.digest,
                row.policy_toml,
                row.effective_from_ns,
                row.log_index,
            ),
        )

    def insert_node(self, row: NodeRow, gpu_uuids: Sequence[str]) -> None:
        self._exec(
            f"INSERT INTO nodes ({self._NODE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.node_id,
                row.lab_id,
                row.public_key,
                row.name,
                row.state,
                row.enrolled_at_ns,
                row.enrollment_digest,
                row.enrollment_log_index,
                row.enrollment_payload,
                row.revoked_at_ns,
                row.head_seq,
                row.head_digest,
                row.head_log_index,
                row.head_window_end_ns,
            ),
        )
        self._many(
            "INSERT INTO gpu_owners (uuid, node_id) VALUES (?, ?) "
            "ON CONFLICT(uuid) DO UPDATE SET node_id = excluded.node_id",
            [(uuid, row.node_id) for uuid in gpu_uuids],
        )

    def release_gpus(self, node_id: bytes) -> None:
        self._exec("DELETE FROM gpu_owners WHERE node_id = ?", (node_id,))

    def set_node_state(self, node_id: bytes, state: int, revoked_at_ns: int | None = None) -> None:
        self._exec(
            "UPDATE nodes SET state = ?, revoked_at_ns = COALESCE(?, revoked_at_ns) "
            "WHERE node_id = ?",
            (state, revoked_at_ns, node_id),
        )

    def set_node_heads(self, heads: Sequence[tuple[bytes, int, bytes, int, int]]) -> None:
        self._many(
            "UPDATE nodes SET head_seq = ?, head_digest = ?, head_log_index = ?, "
            "head_window_end_ns = ? WHERE node_id = ?",
            [
                (seq, digest, log_index, window_end_ns, node_id)
                for node_id, seq, digest, log_index, window_end_ns in heads
            ],
        )

    def put_inventory(self, row: InventoryRow) -> None:
        self._exec(
            "INSERT INTO inventory (lab_id, version, effective_from_ns, gpu_uuids, log_index) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                row.lab_id,
                row.version,
                row.effective_from_ns,
                json.dumps(list(row.gpu_uuids)),
                row.log_index,
            ),
        )

    def insert_attestations(self, rows: Sequence[AttestationRow]) -> None:
        self._insert(
            "attestations",
            _ATTESTATION_COLUMNS,
            [
                (
                    r.node_id,
                    r.seq,
                    r.digest,
                    r.log_index,
                    r.lab_id,
                    r.window_start_ns,
                    r.window_end_ns,
                    flop_key(r.upper_bound_flop),
                    flop_key(r.central_estimate_flop),
                    flop_key(r.energy_flop),
                    r.energy_mj,
                )
                for r in rows
            ],
        )
        self._add_node_hours(
            (r.node_id, r.seq, r.window_start_ns, r.upper_bound_flop) for r in rows
        )

    def _add_node_hours(self, rows: Iterable[tuple[bytes, int, int, int]]) -> None:
        """Add attestations, as (node id, seq, window start, upper bound FLOP), to the
        ``node_hours`` rollups, in this transaction."""
        hours: dict[tuple[bytes, int], list[int]] = {}
        for node_id, seq, window_start_ns, upper in rows:
            key = (node_id, window_start_ns - window_start_ns % NODE_HOUR_NS)
            sums = hours.get(key)
            if sums is None:
                hours[key] = [1, seq, seq, upper >> 32, upper & _LOW_32]
            else:
                sums[0] += 1
                sums[1] = min(sums[1], seq)
                sums[2] = max(sums[2], seq)
                sums[3] += upper >> 32
                sums[4] += upper & _LOW_32
        # Each part of the upper bound stays far below 2**63 (an hour holds at most 36,000
        # windows of a node, each figure below 2**64), so SQL sums of them are exact.
        self._many(
            "INSERT INTO node_hours (node_id, hour_start_ns, attestations, min_seq, max_seq, "
            "upper_high, upper_low) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(node_id, hour_start_ns) DO UPDATE SET "
            "attestations = node_hours.attestations + excluded.attestations, "
            "min_seq = CASE WHEN excluded.min_seq < node_hours.min_seq "
            "THEN excluded.min_seq ELSE node_hours.min_seq END, "
            "max_seq = CASE WHEN excluded.max_seq > node_hours.max_seq "
            "THEN excluded.max_seq ELSE node_hours.max_seq END, "
            "upper_high = node_hours.upper_high + excluded.upper_high, "
            "upper_low = node_hours.upper_low + excluded.upper_low",
            [(node, hour, *sums) for (node, hour), sums in hours.items()],
        )

    def insert_fork_evidence(self, node_id: bytes, seq: int, digest: bytes, log_index: int) -> None:
        self._exec(
            "INSERT INTO fork_evidence (digest, node_id, seq, log_index) VALUES (?, ?, ?, ?)",
            (digest, node_id, seq, log_index),
        )

    def insert_findings(self, rows: Sequence[FindingRow]) -> None:
        self._many(
            "INSERT INTO findings (log_index, lab_id, node_id, kind, period_start_ns, "
            "period_end_ns, finding) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.log_index,
                    r.lab_id,
                    r.node_id,
                    r.kind,
                    r.period_start_ns,
                    r.period_end_ns,
                    r.finding,
                )
                for r in rows
            ],
        )

    def insert_gaps(self, rows: Sequence[GapRow]) -> None:
        self._many(
            "INSERT INTO gaps (node_id, start_ns, end_ns, seq_before, seq_after, "
            "before_log_index, after_log_index, energy_bounded, energy_mj, energy_bound_flop, "
            "time_bound_flop, finding_log_index, gpu_models) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.node_id,
                    r.start_ns,
                    r.end_ns,
                    r.seq_before,
                    r.seq_after,
                    r.before_log_index,
                    r.after_log_index,
                    int(r.energy_bounded),
                    r.energy_mj,
                    str(r.energy_bound_flop),
                    str(r.time_bound_flop),
                    r.finding_log_index,
                    json.dumps(list(r.gpu_models)),
                )
                for r in rows
            ],
        )

    def put_buckets(self, lab_id: str, rows: dict[int, dict[str, object]]) -> None:
        self._many(
            "INSERT INTO buckets (lab_id, start_ns, row) VALUES (?, ?, ?) "
            "ON CONFLICT(lab_id, start_ns) DO UPDATE SET row = excluded.row",
            [(lab_id, start, json.dumps(row, sort_keys=True)) for start, row in rows.items()],
        )

    def add_column_if_missing(self, table: str, column: str, definition: str) -> None:
        """Add a column to a table written by an older verifier (schema upgrades only; the names
        are constants of this module, never input)."""
        if self._placeholder == "?":  # SQLite: no ADD COLUMN IF NOT EXISTS
            names = {row[1] for row in self._conn().execute(f"PRAGMA table_info({table})")}
            if column not in names:
                self._conn().execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        else:
            self._exec(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}")

    def set_meta(self, key: str, value: bytes) -> None:
        self._exec(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def put_site(self, row: SiteRow) -> None:
        self._exec(
            "INSERT INTO sites (lab_id, site_id, version, effective_from_ns, declaration, "
            "log_index) VALUES (?, ?, ?, ?, ?, ?)",
            (
                row.lab_id,
                row.site_id,
                row.version,
                row.effective_from_ns,
                row.declaration,
                row.log_index,
            ),
        )

    def insert_meter_reading(self, row: MeterReadingRow) -> None:
        self._exec(
            f"INSERT INTO meter_readings ({self._METER_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.lab_id,
                row.meter_id,
                row.seq,
                row.digest,
                row.log_index,
                row.site_id,
                row.interval_start_ns,
                row.interval_end_ns,
                row.energy_mj,
            ),
        )

    def claim_once(self, key: str, until_ns: int, now_ns: int) -> bool:
        row = self._one("SELECT until_ns FROM claims WHERE key = ?", (key,))
        if row is not None and row[0] > now_ns:
            return False
        self._exec(
            "INSERT INTO claims (key, until_ns) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET until_ns = excluded.until_ns",
            (key, until_ns),
        )
        return True


def upgrade_schema(tx: SqlTransaction, found: int) -> None:
    """Bring a store written at schema version ``found`` to :data:`SCHEMA_VERSION`, inside the
    caller's transaction (the schema's new tables already exist, empty)."""
    if found == 1:  # node_hours: roll up every attestation already stored
        cursor = tx._exec("SELECT node_id, seq, window_start_ns, upper_key FROM attestations")
        while chunk := cursor.fetchmany(10_000):
            tx._add_node_hours(
                (bytes(node_id), int(seq), int(start), int(key))
                for node_id, seq, start, key in chunk
            )
        found = 2
    if found == 2:  # attestations.energy_mj: each window's attested GPU energy (site power)
        tx.add_column_if_missing("attestations", "energy_mj", "BIGINT NOT NULL DEFAULT 0")
        after: tuple[bytes, int] = (b"", -1)
        while True:  # in key order, a chunk at a time: never the whole table in memory
            rows = tx._all(
                "SELECT a.node_id, a.seq, e.entry FROM attestations a "
                "JOIN log_entries e ON e.idx = a.log_index "
                "WHERE a.node_id > ? OR (a.node_id = ? AND a.seq > ?) "
                "ORDER BY a.node_id, a.seq LIMIT 5000",
                (after[0], after[0], after[1]),
            )
            if not rows:
                break
            tx._many(
                "UPDATE attestations SET energy_mj = ? WHERE node_id = ? AND seq = ?",
                [
                    (_stored_window_energy_mj(bytes(raw)), bytes(node_id), int(seq))
                    for node_id, seq, raw in rows
                ],
            )
            after = (bytes(rows[-1][0]), int(rows[-1][1]))
        found = 3
    if found != SCHEMA_VERSION:
        raise RuntimeError(f"schema version {found} cannot be upgraded to {SCHEMA_VERSION}")
    tx.set_meta("schema_version", str(SCHEMA_VERSION).encode())


def _stored_window_energy_mj(raw: bytes) -> int:
    """The attested GPU energy of a stored attestation envelope (verified when it was accepted)."""
    return window_energy_mj(apb.AttestationBody.FromString(parse_envelope(raw).payload))
