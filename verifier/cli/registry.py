"""The regulator's view of who is registered: labs, nodes, one node in detail, the verifier's
health, and one log entry decoded.

    pausewatch labs
    pausewatch nodes --lab lab-a
    pausewatch node gpu-node-1 --lab lab-a --since -1d
    pausewatch health
    pausewatch log entry --index 1234

Each prints a table (or ``--json``) and exits 0; a verifier that is not serving makes ``health``
exit 4. Times print in UTC unless ``--tz`` names a zone.
"""

from __future__ import annotations

import base64
from typing import Any

import click
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pausewatch.v1 import attestation_pb2, findings_pb2, policy_pb2, registry_pb2, site_pb2
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import audit_pb2_grpc as apb_grpc
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import registry_pb2_grpc as rpb_grpc

from attest import merkle
from attest.envelope import PayloadType, parse_envelope
from attest.errors import EnvelopeError, ProofError
from verifier.accounting.evaluation import rooting_text
from verifier.cli.client import VerifierTarget, open_channel
from verifier.cli.common import TIME, TZ, emit, format_time, verifier_options

RPC_TIMEOUT_S = 60

_PAYLOAD_MESSAGES: dict[str, type[Message]] = {
    PayloadType.ATTESTATION: attestation_pb2.AttestationBody,
    PayloadType.ENROLLMENT: registry_pb2.NodeEnrollment,
    PayloadType.ENROLLMENT_AUTHORIZATION: registry_pb2.NodeEnrollment,
    PayloadType.INVENTORY: registry_pb2.InventoryDeclaration,
    PayloadType.REVOCATION: registry_pb2.NodeRevocation,
    PayloadType.FINDING: findings_pb2.Finding,
    PayloadType.LAB: policy_pb2.LabRecord,
    PayloadType.POLICY: policy_pb2.PolicyRecord,
    PayloadType.METER_READING: site_pb2.MeterReadingBody,
    PayloadType.SITE: site_pb2.SiteDeclaration,
}


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _state(node: rpb.NodeInfo) -> str:
    return rpb.NodeState.Name(node.state).removeprefix("NODE_STATE_").lower()


@click.command("labs")
@verifier_options
@click.option("--json", "as_json", is_flag=True, help="Print the labs as JSON.")
def labs_command(*, target: VerifierTarget, as_json: bool) -> None:
    """List the registered labs, with each one's policy in force and its node count."""
    with open_channel(target) as channel:
        labs = (
            apb_grpc.AuditServiceStub(channel)
            .ListLabs(apb.ListLabsRequest(), timeout=RPC_TIMEOUT_S)
            .labs
        )
    rows = [["LAB", "NAME", "POLICY", "POLICY SHA-256", "NODES", "OPERATOR KEY"]]
    for lab in labs:
        rows.append(
            [
                lab.lab_id,
                lab.name,
                f"{lab.policy_id} v{lab.policy_version}" if lab.policy_id else "(none)",
                lab.policy_digest.hex()[:16] if lab.policy_digest else "-",
                str(lab.nodes),
                lab.operator_key_id.hex()[:16],
            ]
        )
    emit(
        {"labs": [_message_dict(lab) for lab in labs]},
        as_json,
        "\n".join(_table(rows)) if labs else "no labs are registered",
    )


@click.command("nodes")
@verifier_options
@click.option("--lab", required=True, help="The lab.")
@click.option("--tz", "zone", type=TZ, default=None, help="Print times in this zone (IANA name).")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
def nodes_command(*, target: VerifierTarget, lab: str, zone: Any, as_json: bool) -> None:
    """List a lab's enrolled nodes: state, GPUs, chain head and its latest window's end."""
    with open_channel(target) as channel:
        nodes = (
            rpb_grpc.RegistryServiceStub(channel)
            .ListNodes(rpb.ListNodesRequest(lab_id=lab), timeout=RPC_TIMEOUT_S)
            .nodes
        )
    rows = [["NODE", "ID", "STATE", "GPUS", "HEAD SEQ", "LAST WINDOW END"]]
    for node in nodes:
        rows.append(
            [
                node.node_name,
                node.node_id.hex()[:16],
                _state(node),
                str(len(node.gpus)),
                str(node.head_seq) if node.has_head else "-",
                format_time(node.head_window_end_ns, zone) if node.has_head else "-",
            ]
        )
    emit(
        {"nodes": [_message_dict(node) for node in nodes]},
        as_json,
        "\n".join(_table(rows)) if nodes else f"lab {lab} has no enrolled nodes",
    )


def _find_node(nodes: list[rpb.NodeInfo], wanted: str) -> rpb.NodeInfo:
    text = wanted.strip().lower()
    exact = [n for n in nodes if n.node_name == wanted or n.node_id.hex() == text]
    if len(exact) == 1:
        return exact[0]
    prefix = [n for n in nodes if len(text) >= 8 and n.node_id.hex().startswith(text)]
    if len(prefix) == 1:
        return prefix[0]
    if not exact and not prefix:
        raise click.BadParameter(f"no node of the lab is named or has the id {wanted!r}")
    raise click.BadParameter(f"{wanted!r} names more than one node; give its full id")


@click.command("node")
@verifier_options
@click.argument("wanted", metavar="NODE")
@click.option("--lab", required=True, help="The node's lab.")
@click.option("--since", type=TIME, default="-1d", show_default=True, help="Period start.")
@click.option("--until", type=TIME, default="now", show_default=True, help="Period end.")
@click.option("--tz", "zone", type=TZ, default=None, help="Print times in this zone (IANA name).")
@click.option("--json", "as_json", is_flag=True, help="Print the node as JSON.")
def node_command(
    *,
    target: VerifierTarget,
    wanted: str,
    lab: str,
    since: int,
    until: int,
    zone: Any,
    as_json: bool,
) -> None:
    """One node in detail (NODE: its name, id, or an id prefix of 8+ hex digits): its
    registration and GPUs, and from the lab's report over the period, its attestations, compute,
    evidence rooting and every gap."""
    if until <= since:
        raise click.UsageError("--until must be after --since")
    with open_channel(target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        nodes = list(
            registry.ListNodes(rpb.ListNodesRequest(lab_id=lab), timeout=RPC_TIMEOUT_S).nodes
        )
        node = _find_node(nodes, wanted)
        report = (
            apb_grpc.AuditServiceStub(channel)
            .GetComplianceReport(
                apb.GetComplianceReportRequest(
                    lab_id=lab, period_start_ns=since, period_end_ns=until
                ),
                timeout=RPC_TIMEOUT_S,
            )
            .report
        )
    summary = next((s for s in report.nodes if s.node_id == node.node_id), None)
    gaps = [g for g in report.gaps if g.node_id == node.node_id]
    lines = [
        f"node {node.node_name} of lab {node.lab_id}",
        f"id          {node.node_id.hex()}",
        f"state       {_state(node)}; enrolled at log index {node.enrollment_log_index}",
        "chain head  "
        + (
            f"seq {node.head_seq}, window ending {format_time(node.head_window_end_ns, zone)}"
            if node.has_head
            else "no window accepted yet"
        ),
        f"GPUs ({len(node.gpus)})",
    ]
    lines += [
        f"  {g.uuid}  {g.model}  serial {g.serial or '-'}  bus {g.pci_bus_id}" for g in node.gpus
    ]
    lines.append(
        f"in {format_time(report.period_start_ns, zone)} to "
        f"{format_time(report.period_end_ns, zone)}"
        + (" (provisional)" if report.provisional else "")
    )
    if summary is None:
        lines.append("  not active in the period")
    else:
        lines += [
            f"  attestations {summary.attestations}"
            + (f", seq {summary.first_seq}..{summary.last_seq}" if summary.attestations else ""),
            f"  upper bound  {summary.upper_bound_flop} FLOP",
            f"  state        {'flagged' if summary.flagged else 'not flagged'}"
            + (", revoked" if summary.revoked else ""),
            f"  rooting      {rooting_text(summary)}",
        ]
    lines.append(f"  gaps ({len(gaps)})")
    for item in gaps:
        gap = item.gap
        lines.append(
            f"    {format_time(gap.gap_start_ns, zone)} to {format_time(gap.gap_end_ns, zone)}"
            f" ({'open' if item.open else 'closed'})"
        )
    emit(
        {
            "node": _message_dict(node),
            "period_start_ns": report.period_start_ns,
            "period_end_ns": report.period_end_ns,
            "provisional": report.provisional,
            "summary": _message_dict(summary) if summary is not None else None,
            "gaps": [_message_dict(g) for g in gaps],
        },
        as_json,
        "\n".join(lines),
    )


@click.command("health")
@verifier_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def health_command(ctx: click.Context, *, target: VerifierTarget, as_json: bool) -> None:
    """Ask the verifier whether it is serving (gRPC health). Exit 0 if SERVING, 4 if not."""
    with open_channel(target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S
        )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    emit({"address": target.address, "status": status}, as_json, f"{target.address}: {status}")
    ctx.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else 4)


def _message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def decode_entry(raw: bytes) -> dict[str, Any]:
    """A log entry (a signed envelope) as a dict: its payload type, key id, signature and the
    payload decoded by its type (``payload_base64`` when the type is not one pausewatch knows).
    Nothing here verifies the signature: ``log prove`` ties the entry to a checkpoint."""
    try:
        envelope = parse_envelope(raw)
    except EnvelopeError as exc:
        raise EnvelopeError(f"the entry is not a signed envelope: {exc.diagnostics()}") from None
    out: dict[str, Any] = {
        "payload_type": envelope.payload_type,
        "key_id": envelope.key_id.hex(),
        "signature": envelope.signature.hex(),
    }
    message_class = _PAYLOAD_MESSAGES.get(envelope.payload_type)
    if message_class is None:
        out["payload_base64"] = base64.b64encode(envelope.payload).decode("ascii")
        return out
    message = message_class()
    try:
        message.ParseFromString(envelope.payload)
    except DecodeError:
        out["payload_base64"] = base64.b64encode(envelope.payload).decode("ascii")
        out["payload_error"] = f"not a valid {message_class.__name__}"
        return out
    out["payload_message"] = message_class.__name__
    out["payload"] = _message_dict(message)
    return out


@click.command("entry")
@verifier_options
@click.option("--index", type=click.IntRange(min=0), required=True, help="The log index.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
def entry_command(*, target: VerifierTarget, index: int, as_json: bool) -> None:
    """Fetch one log entry and decode it: payload type, signing key id and the payload's fields.
    The entry's bytes are checked against the leaf hash the verifier sent (exit 3 if they differ);
    prove it is in the log with ``log prove --index``."""
    with open_channel(target) as channel:
        response = apb_grpc.AuditServiceStub(channel).GetLogEntry(
            apb.GetLogEntryRequest(index=index), timeout=RPC_TIMEOUT_S
        )
    if merkle.leaf_hash(response.entry) != response.leaf_hash:
        raise ProofError("the entry does not hash to the leaf hash the verifier sent")
    decoded = decode_entry(response.entry)
    result = {"index": response.index, "leaf_hash": response.leaf_hash.hex(), **decoded}
    fields = decoded.get("payload")
    text = "\n".join(
        [
            f"log entry {response.index} (leaf hash {response.leaf_hash.hex()})",
            f"payload type  {decoded['payload_type']}",
            f"signed by key {decoded['key_id']}",
            f"payload       {decoded.get('payload_message', '(not decoded)')}",
        ]
        + (
            [f"  {name}: {value}" for name, value in sorted(fields.items())]
            if isinstance(fields, dict)
            else [f"  base64: {decoded.get('payload_base64', '')}"]
        )
    )
    emit(result, as_json, text)
