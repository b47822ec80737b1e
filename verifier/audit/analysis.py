"""Offline what-if analysis: a policy evaluated over recorded nvidia-smi logs or a node's spool.

    sources = [AnalysisSource.for_path(Path("node7.csv")), AnalysisSource.for_path(state_dir)]
    analysis = analyse(sources, policy, gpus=8, gpu_model="NVIDIA H100 80GB HBM3")
    analysis.report                     # a ComplianceReport, as the verifier would compute it
    analysis.notes                      # what the evidence is worth (unattested, inferred, ...)

For a regulator sizing a policy against a lab's history, or a lab checking itself before a pause.
Nothing here is evidence: no verifier saw these windows when they were made, no nonce binds them
to a time, and a recording is signed by a throwaway key. Every output says so
(:data:`UNATTESTED`).

How: each input is turned into signed windows by ``pausewatch-agent export-windows`` run as a
process (``python -m agent.cli``), exactly as a running agent makes them; the verifier package
never imports the agent's. Then the verifier's own pure code does the rest, as offline bundle
verification does (ADR 0001): each envelope is verified under its export's key and validated,
each node's chain checked, the windows folded into accounts
(:func:`verifier.accounting.accounts.fold_attestation`), each node's gaps found, and the policy
evaluated (:func:`verifier.accounting.evaluation.evaluate`). The declared inventory of an analysis
is every GPU the windows name, each node's from its first window on: coverage is against the
recorded GPUs, not a declaration. The period runs from the first window's bucket to the end of the
last window's bucket, with evidence up to the last window's end (``as_of``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pausewatch.v1 import audit_pb2 as pb

from attest import compute
from attest.attestation import VerifiedAttestation, attestation_from_verified
from attest.chain import ChainHead, Link, classify
from attest.envelope import StaticKeyring, parse_envelope, verify_parsed_envelope
from attest.errors import ConfigError, PausewatchError, VerificationError
from attest.exitcodes import ExitCode
from attest.ids import Digest, NodeId
from attest.keys import key_id_from_raw, public_key_from_raw
from verifier.accounting import accounts, evaluation
from verifier.accounting.policy import Policy, validate_for_buckets
from verifier.config import IngestConfig

log = logging.getLogger(__name__)

UNATTESTED = (
    "UNATTESTED ANALYSIS: a what-if evaluation of recorded data, not evidence. No verifier "
    "received these windows when they were made, and recordings are signed by a throwaway key."
)
EXPORT_FORMAT = "pausewatch.windows.v1"
EXPORT_TIMEOUT_S = 600
"""The time an input may take to export, plus a second for every EXPORT_BYTES_PER_S of it."""
EXPORT_BYTES_PER_S = 100_000
"""A tenth of the rate a recording is read at on a slow machine (a week of eight GPUs at 1 s,
185 MB, took under 3 minutes on two cores)."""
COMPRESSION_RATIO = 10
"""How much larger a compressed recording (gzip, xz, bzip2) is taken to be, for its time."""
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh")
MAX_EXPORT_BYTES = 1 << 31
_REPLAY_LOGGER = "agent.sampler.replay"


class AnalysisError(ConfigError):
    """An input cannot be analysed; the message names the file and the fix (exit 2)."""


class AnalysisInternalError(PausewatchError):
    """Exporting an input's windows failed for no fault of the input (exit 4, internal)."""


class AnalysisEvidenceError(VerificationError):
    """An input's windows fail verification: a bad signature, a broken chain, time going back
    (exit 3, like any evidence that fails a check)."""


@dataclass(frozen=True, slots=True)
class AnalysisSource:
    """One input: an nvidia-smi CSV recording (a file) or a node's state directory (a spool)."""

    path: Path
    node_name: str

    @classmethod
    def for_path(cls, path: Path, node_name: str = "") -> AnalysisSource:
        return cls(path=path, node_name=node_name or path.stem or path.name)

    @property
    def is_spool(self) -> bool:
        return self.path.is_dir()


@dataclass(slots=True)
class _Node:
    node_id: NodeId
    name: str
    source: str
    windows: list[accounts.WindowEdge] = field(default_factory=list)
    folds: list[accounts.AttestationFold] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    recording: dict[str, object] = field(default_factory=dict)
    attested: bool = False
    warnings: list[str] = field(default_factory=list)
    """What reading the recording left out (a line cut short, a duplicated line)."""


@dataclass(frozen=True, slots=True)
class Analysis:
    """An analysis's report and what its evidence is worth."""

    report: pb.ComplianceReport
    notes: tuple[str, ...]
    nodes: tuple[dict[str, object], ...]

    def to_dict(self) -> dict[str, object]:
        from google.protobuf import json_format

        return {
            "analysis": {"unattested": True, "notice": UNATTESTED, "notes": list(self.notes)},
            "nodes": list(self.nodes),
            "report": json_format.MessageToDict(self.report, preserving_proto_field_name=True),
        }


def export_timeout_s(path: Path) -> int:
    """The time ``export-windows`` may take for ``path``: EXPORT_TIMEOUT_S, and more for a large
    recording (a week-long log takes minutes to read)."""
    size = 0  # a state directory, a pipe or unreadable: the export says why
    try:
        if path.is_file():  # never opens a pipe (that would wait for a writer)
            with path.open("rb") as file:
                compressed = file.read(6).startswith(_COMPRESSED_MAGIC)
                size = path.stat().st_size * (COMPRESSION_RATIO if compressed else 1)
    except OSError:
        pass
    return EXPORT_TIMEOUT_S + size // EXPORT_BYTES_PER_S


def export_windows(
    source: AnalysisSource,
    out: Path,
    *,
    lab_id: str,
    gpus: int | None,
    gpu_model: str,
    window_s: int,
) -> list[str]:
    """Run ``pausewatch-agent export-windows`` for ``source``; AnalysisError with its message.
    Returns what the replay warned of (lines it left out), each without the file's name."""
    if source.is_spool:
        argv = ["--state-dir", str(source.path)]
    else:
        argv = ["--replay", str(source.path), "--lab", lab_id, "--node-name", source.node_name]
        if gpus is not None:
            argv += ["--gpus", str(gpus)]
        if gpu_model:
            argv += ["--gpu-model", gpu_model]
    command = [
        sys.executable,
        "-m",
        "agent.cli",
        "--log-format",
        "json",
        "export-windows",
        *argv,
        "--window-s",
        str(window_s),
        "--out",
        str(out),
    ]
    timeout_s = export_timeout_s(source.path)
    try:
        done = subprocess.run(  # noqa: S603 - our own command, an argv list
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise AnalysisError(
            f"{source.path}: reading it took longer than the {timeout_s} s allowed for its size; "
            "is it on a slow or hung file system? copy it to a local disk and try again"
        ) from None
    if done.returncode == ExitCode.INTERNAL:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        rerun = " ".join(["pausewatch-agent --debug export-windows", *argv, "--out", "FILE"])
        raise AnalysisInternalError(
            f"{source.path}: exporting its windows failed with an internal error "
            f"({lines[-1] if lines else 'no message'}); `{rerun}` shows the details: please "
            "report it"
        )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else f"exit status {done.returncode}"
        message = message.removeprefix("error: ").removeprefix("Error: ")
        # The reader's own errors name the file already; name it once.
        if not message.startswith(f"{source.path}:"):
            message = f"{source.path}: {message}"
        raise AnalysisError(message)
    return _replay_warnings(done.stderr, source.path)


def _replay_warnings(stderr: str, path: Path) -> list[str]:
    """The replay's warnings among ``export-windows``'s JSON log lines."""
    warnings: list[str] = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(entry, dict)
            and entry.get("logger") == _REPLAY_LOGGER
            and entry.get("level") == "warning"
            and isinstance(entry.get("msg"), str)
        ):
            warnings.append(entry["msg"].removeprefix(f"{path}: "))
    return warnings


def load_export(path: Path, source: AnalysisSource) -> dict[str, object]:
    """Read an ``export-windows`` output file (untrusted shape: every field is checked)."""
    try:
        if path.stat().st_size > MAX_EXPORT_BYTES:
            raise AnalysisError(f"{source.path}: its windows exceed {MAX_EXPORT_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AnalysisError(f"{source.path}: its windows could not be read ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise AnalysisError(f"{source.path}: its windows are not in the {EXPORT_FORMAT} format")
    return data


def _node_from_export(
    data: dict[str, object], source: AnalysisSource, lab_id: str, bucket_ns: int
) -> tuple[_Node, list[VerifiedAttestation]]:
    key_hex = data.get("node_public_key")
    envelopes = data.get("envelopes")
    if not isinstance(key_hex, str) or not isinstance(envelopes, list):
        raise AnalysisError(f"{source.path}: the windows lack a key or envelopes")
    try:
        raw_key = bytes.fromhex(key_hex)
        public = public_key_from_raw(raw_key)
        blobs = [base64.b64decode(e, validate=True) for e in envelopes if isinstance(e, str)]
    except (ValueError, binascii.Error, PausewatchError) as exc:
        raise AnalysisError(f"{source.path}: a malformed key or envelope ({exc})") from None
    if len(blobs) != len(envelopes):
        raise AnalysisError(f"{source.path}: an envelope is not a string")
    ring = StaticKeyring()
    ring.add(public)
    node_id = NodeId(key_id_from_raw(raw_key))
    name = data.get("node_name")
    recording = data.get("recording")
    node = _Node(
        node_id=node_id,
        name=name if isinstance(name, str) and name else source.node_name,
        source=str(source.path),
        recording=recording if isinstance(recording, dict) else {},
        attested=data.get("attested") is True,
    )
    verified: list[VerifiedAttestation] = []
    head: ChainHead | None = None
    for position, blob in enumerate(blobs):
        try:
            att = attestation_from_verified(verify_parsed_envelope(parse_envelope(blob), ring))
        except VerificationError as exc:
            raise AnalysisEvidenceError(
                f"{source.path}: window {position} fails verification: {exc.diagnostics()}"
            ) from None
        body = att.body
        if body.lab_id != lab_id:
            raise AnalysisError(
                f"{source.path}: its windows are for lab {body.lab_id!r}, the policy's lab is "
                f"{lab_id!r}"
            )
        link = classify(head, body.seq, body.prev_digest, att.digest, None)
        if link is not Link.NEXT and not (head is None and link is Link.GAP):
            raise AnalysisEvidenceError(
                f"{source.path}: window seq {body.seq} does not follow the chain ({link.value})"
            )
        if head is not None and body.window_start_ns < head.window_end_ns:
            raise AnalysisEvidenceError(f"{source.path}: window seq {body.seq} goes back in time")
        head = ChainHead(body.seq, Digest(att.digest), body.window_end_ns)
        for gpu in body.gpus:
            node.models.setdefault(gpu.uuid, gpu.model)
        verified.append(att)
    if not verified:
        raise AnalysisError(f"{source.path}: no windows to analyse")
    return node, verified


def analyse(
    sources: Sequence[AnalysisSource],
    policy: Policy,
    *,
    gpus: int | None = None,
    gpu_model: str = "",
    window_s: int = 60,
    settings: IngestConfig | None = None,
) -> Analysis:
    """Evaluate ``policy`` over ``sources`` (module docs). Raises AnalysisError naming the input."""
    if not sources:
        raise AnalysisError("nothing to analyse: give at least one recording or state directory")
    ingest = settings or IngestConfig()
    bucket_ns = ingest.bucket_ns
    problems = validate_for_buckets(policy, bucket_ns)
    if problems:
        raise AnalysisError(f"the policy does not suit {bucket_ns // 10**9} s buckets: {problems}")
    loaded: list[tuple[_Node, list[VerifiedAttestation]]] = []
    with tempfile.TemporaryDirectory(prefix="pausewatch-analyse-") as scratch:
        for number, source in enumerate(sources):
            if not source.path.exists():
                raise AnalysisError(f"{source.path} does not exist")
            out = Path(scratch) / f"{number}.json"
            warnings = export_windows(
                source,
                out,
                lab_id=policy.lab_id,
                gpus=gpus,
                gpu_model=gpu_model,
                window_s=window_s,
            )
            data = load_export(out, source)
            node, verified = _node_from_export(data, source, policy.lab_id, bucket_ns)
            node.warnings = warnings
            loaded.append((node, verified))
    seen: dict[bytes, str] = {}
    for node, _ in loaded:
        other = seen.get(bytes(node.node_id))
        if other is not None:
            raise AnalysisError(f"{node.source} and {other} are the same node: give each once")
        seen[bytes(node.node_id)] = node.source
    return _evaluate(loaded, policy, ingest)


def _evaluate(
    loaded: list[tuple[_Node, list[VerifiedAttestation]]], policy: Policy, ingest: IngestConfig
) -> Analysis:
    bucket_ns = ingest.bucket_ns
    first_ns = min(atts[0].body.window_start_ns for _, atts in loaded)
    last_ns = max(atts[-1].body.window_end_ns for _, atts in loaded)
    start = first_ns - first_ns % bucket_ns
    end = -(-last_ns // bucket_ns) * bucket_ns
    all_gpus = frozenset(uuid for node, _ in loaded for uuid in node.models)
    # Each node's GPUs are declared from its first window on (a version per node start).
    inventory: list[evaluation.InventoryVersion] = []
    declared: set[str] = set()
    for node, atts in sorted(loaded, key=lambda pair: pair[1][0].body.window_start_ns):
        declared |= set(node.models)
        from_ns = atts[0].body.window_start_ns
        if inventory and inventory[-1].effective_from_ns == from_ns:
            inventory.pop()
        inventory.append(
            evaluation.InventoryVersion(len(inventory) + 1, from_ns, frozenset(declared))
        )
    buckets: dict[int, accounts.Bucket] = {}
    index = 0
    timelines: list[evaluation.NodeTimeline] = []
    for node, atts in loaded:
        for att in atts:
            fold = accounts.fold_attestation(att, index, all_gpus, buckets, bucket_ns)
            node.windows.append(fold.edge)
            node.folds.append(fold)
            index += 1
        node_start = atts[0].body.window_start_ns
        gaps = accounts.node_gaps_from_windows(
            node.node_id,
            max(start, node_start),
            last_ns,
            node.windows,
            tolerance_ns=ingest.gap_tolerance_ns,
            grace_ns=ingest.open_gap_grace_ns,
            enrolled_gpu_models=tuple(node.models.values()),
        )
        timelines.append(
            evaluation.NodeTimeline(
                node_id=node.node_id,
                node_name=node.name,
                enrolled_at_ns=node_start,
                revoked_at_ns=None,
                flagged=False,
                revoked=False,
                attestations=len(atts),
                first_seq=atts[0].body.seq,
                last_seq=atts[-1].body.seq,
                upper_bound_flop=sum(f.upper_bound_flop for f in node.folds),
                gaps=tuple(gaps),
                enrolled_gpus=len(node.models),
            )
        )
    folds = [fold for node, _ in loaded for fold in node.folds]
    report = evaluation.evaluate(
        policy,
        lab_id=policy.lab_id,
        period_start_ns=start,
        period_end_ns=end,
        as_of_ns=last_ns,
        bucket_ns=bucket_ns,
        buckets=buckets,
        inventory=inventory,
        nodes=timelines,
        findings=[],
        evidence=evaluation.InMemoryEvidenceIndex.from_totals(
            (
                f.log_index,
                f.window_start_ns,
                f.upper_bound_flop,
                f.central_estimate_flop,
                f.energy_flop,
            )
            for f in folds
        ),
        tree_size=index,
        table_version=compute.TABLE_VERSION,
    )
    nodes = tuple(_node_dict(node) for node, _ in loaded)
    return Analysis(report=report, notes=tuple(_notes(loaded)), nodes=nodes)


def _node_dict(node: _Node) -> dict[str, object]:
    models = sorted(set(node.models.values()))
    return {
        "node_id": bytes(node.node_id).hex(),
        "node_name": node.name,
        "source": node.source,
        "attested": node.attested,
        "gpus": len(node.models),
        "models": models,
        "windows": len(node.folds),
        "recording": node.recording,
    }


def _notes(loaded: list[tuple[_Node, list[VerifiedAttestation]]]) -> list[str]:
    """What a reader must know about the inputs, beside the report's own data-quality warnings."""
    notes: list[str] = []
    for node, _ in loaded:
        rec = node.recording
        what = f"{node.name} ({node.source})"
        if not rec:
            notes.append(
                f"{what}: {len(node.folds)} windows from a node's spool, signed by its node key "
                "but never received by a verifier"
            )
            continue
        count_source = rec.get("gpu_count_source")
        how = {
            "row cycle": "read from the rows' cycle (no index or uuid column)",
            "--gpus": "as given with --gpus",
            "identity": "from the index, uuid or pci.bus_id column",
        }.get(str(count_source), str(count_source))
        stalls = rec.get("stalls")
        notes.append(
            f"{what}: {rec.get('gpus')} GPUs {how}; one poll every {rec.get('cadence_ms')} ms "
            f"(measured), {stalls} stall{'' if stalls == 1 else 's'} left as gaps"
        )
        notes += [f"{what}: {warning}" for warning in node.warnings]
        if not rec.get("has_names"):
            model = rec.get("gpu_model")
            notes.append(
                f"{what}: no name column; GPUs taken to be {model!s} (--gpu-model)"
                if model
                else f"{what}: no name column and no --gpu-model: the GPUs' model is unknown and "
                "their upper bound uses the table's highest peak"
            )
    return notes
