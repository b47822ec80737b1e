"""What the lab operator signs: enrolment authorisations, the lab's GPU inventory, revocations.

    declaration = sign_inventory(operator, lab_id="lab-a", version=3, gpus=gpus, ...)
    declare_inventory(channel, declaration, timeout_s=10)
    revocation = sign_revocation(operator, lab_id="lab-a", node_id=node, reason="decommissioned")
    revoke_node(channel, revocation, timeout_s=10)

An inventory file is TOML, one ``[[gpu]]`` table per GPU::

    [[gpu]]
    uuid = "GPU-5f3c0c6e-..."
    model = "NVIDIA H100 80GB HBM3"
    serial = "1650123456789"            # optional
    pci_bus_id = "00000000:18:00.0"     # optional
    board_part_number = "692-2G520-..." # optional

The operator key never needs to be on a GPU node: ``operator authorize`` works offline on a
request file, and the other commands only need the verifier's address.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from pausewatch.v1 import registry_pb2 as reg
from pausewatch.v1 import registry_pb2_grpc as reg_grpc

from agent.config import TomlTable, read_toml
from attest.envelope import PayloadType, sign_envelope
from attest.errors import ConfigError
from attest.ids import NodeId
from attest.keys import Signer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_INVENTORY_GPUS = 1_000_000


def load_inventory(path: Path) -> list[reg.GpuIdentity]:
    """Read an inventory file; errors name the key (``gpu[3].uuid``)."""
    root = TomlTable(read_toml(path, "inventory file"), "", str(path))
    gpus: list[reg.GpuIdentity] = []
    seen: set[str] = set()
    for table in root.tables("gpu"):
        uuid = table.string("uuid", max_len=96)
        if not uuid:
            raise table.error("uuid", "is empty")
        if uuid in seen:
            raise table.error("uuid", f"{uuid} is listed twice")
        seen.add(uuid)
        gpus.append(
            reg.GpuIdentity(
                uuid=uuid,
                model=table.string("model", "", max_len=96),
                serial=table.string("serial", "", max_len=96),
                pci_bus_id=table.string("pci_bus_id", "", max_len=96),
                board_part_number=table.string("board_part_number", "", max_len=96),
            )
        )
        table.finish()
    root.finish()
    if not gpus:
        raise ConfigError(f"{path}: no [[gpu]] tables")
    if len(gpus) > MAX_INVENTORY_GPUS:
        raise ConfigError(f"{path}: more than {MAX_INVENTORY_GPUS} GPUs")
    return gpus


@dataclass(frozen=True, slots=True)
class EnrolledGpus:
    """The GPUs the verifier holds for a lab's live (not revoked) nodes."""

    gpus: list[reg.GpuIdentity]
    nodes: int
    revoked_nodes_skipped: int


def enrolled_gpus(channel: grpc.Channel, lab_id: str, *, timeout_s: float) -> EnrolledGpus:
    """Every GPU enrolled with the lab's live nodes (``RegistryService.ListNodes``), each once,
    in enrolment order. Enrolment needed the operator's signature, so this is the set of GPUs
    the operator has already authorised; revoked nodes are left out."""
    stub = reg_grpc.RegistryServiceStub(channel)
    response = stub.ListNodes(reg.ListNodesRequest(lab_id=lab_id), timeout=timeout_s)
    gpus: dict[str, reg.GpuIdentity] = {}
    live = revoked = 0
    for node in response.nodes:
        if node.lab_id != lab_id:
            raise ConfigError(f"the verifier listed a node of lab {node.lab_id!r} for {lab_id!r}")
        if node.state == reg.NODE_STATE_REVOKED:
            revoked += 1
            continue
        live += 1
        for gpu in node.gpus:
            gpus.setdefault(gpu.uuid, gpu)
    return EnrolledGpus(list(gpus.values()), live, revoked)


def render_inventory(gpus: list[reg.GpuIdentity], *, header: str) -> str:
    """An inventory file (what :func:`load_inventory` reads) for these GPUs."""
    lines = [f"# {line}" for line in header.splitlines()]
    for gpu in gpus:
        lines += ["", "[[gpu]]", f"uuid = {json.dumps(gpu.uuid)}"]
        for key in ("model", "serial", "pci_bus_id", "board_part_number"):
            value = getattr(gpu, key)
            if value:
                lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def merge_inventories(
    existing: list[reg.GpuIdentity], enrolled: list[reg.GpuIdentity]
) -> list[reg.GpuIdentity]:
    """The existing inventory, then every enrolled GPU it does not list (the file wins)."""
    known = {g.uuid for g in existing}
    return [*existing, *(g for g in enrolled if g.uuid not in known)]


def sign_inventory(
    operator: Signer,
    *,
    lab_id: str,
    version: int,
    gpus: list[reg.GpuIdentity],
    effective_from_ns: int,
    created_at_ns: int,
) -> bytes:
    """An InventoryDeclaration envelope signed by the operator."""
    declaration = reg.InventoryDeclaration(
        format_version=FORMAT_VERSION,
        lab_id=lab_id,
        version=version,
        gpus=gpus,
        effective_from_ns=effective_from_ns,
        created_at_ns=created_at_ns,
    )
    return sign_envelope(
        operator, PayloadType.INVENTORY, declaration.SerializeToString(deterministic=True)
    )


def sign_revocation(
    operator: Signer, *, lab_id: str, node_id: NodeId, reason: str, created_at_ns: int
) -> bytes:
    """A NodeRevocation envelope signed by the operator."""
    revocation = reg.NodeRevocation(
        format_version=FORMAT_VERSION,
        lab_id=lab_id,
        node_id=node_id,
        reason=reason,
        created_at_ns=created_at_ns,
    )
    return sign_envelope(
        operator, PayloadType.REVOCATION, revocation.SerializeToString(deterministic=True)
    )


def declare_inventory(
    channel: grpc.Channel, declaration: bytes, *, timeout_s: float
) -> reg.DeclareInventoryResponse:
    """Call ``RegistryService.DeclareInventory``."""
    stub = reg_grpc.RegistryServiceStub(channel)
    response = stub.DeclareInventory(
        reg.DeclareInventoryRequest(declaration_envelope=declaration), timeout=timeout_s
    )
    log.info("inventory declared version=%d log_index=%d", response.version, response.log_index)
    return response


def revoke_node(
    channel: grpc.Channel, revocation: bytes, *, timeout_s: float
) -> reg.RevokeNodeResponse:
    """Call ``RegistryService.RevokeNode``."""
    stub = reg_grpc.RegistryServiceStub(channel)
    response = stub.RevokeNode(
        reg.RevokeNodeRequest(revocation_envelope=revocation), timeout=timeout_s
    )
    log.info(
        "node revoked log_index=%d already_revoked=%s", response.log_index, response.already_revoked
    )
    return response
