"""``operator inventory-from-enrolled``: the enrolled GPUs become the operator's inventory file,
declared with ``declare-inventory``; a real verifier then finds no undeclared GPU for those
nodes, while a node enrolled after the declaration still raises UNDECLARED_GPU (the check is
live, the tool only saves writing the file by hand)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest.keys import save_private_key
from tests.builders import T0_NS, TestNode, fixed_private_key
from tests.cli_runner import run_agent_cli
from tests.verifier_harness import RunningVerifier, running_verifier

S = 10**9


def undeclared_gpu_nodes(v: RunningVerifier) -> set[bytes]:
    with sqlite3.connect(v.files.store) as db:
        rows = db.execute("SELECT kind, node_id FROM findings").fetchall()
    return {bytes(node) for kind, node in rows if int(kind) == fpb.FINDING_KIND_UNDECLARED_GPU}


def test_enrolled_gpus_become_the_declared_inventory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operator_key = tmp_path / "operator.key"
    save_private_key(operator_key, fixed_private_key(100))  # the harness's lab-a operator
    a, b, late = (TestNode.from_seed(s) for s in (610, 611, 612))
    revoked = TestNode.from_seed(613)
    with running_verifier(tmp_path / "v") as v:
        client = v.client()
        for node in (a, b, revoked):
            client.enroll(node)
        code, _, err = run_agent_cli(
            capsys, "operator", "revoke", "--operator-key", str(operator_key), "--lab", "lab-a",
            "--node-id", revoked.node_id.hex(), "--reason", "test", *v.cli_target(),
        )  # fmt: skip
        assert code == 0, err
        inventory = tmp_path / "gpus.toml"
        code, out, err = run_agent_cli(
            capsys, "operator", "inventory-from-enrolled", "--lab", "lab-a",
            "--out", str(inventory), *v.cli_target(), "--json",
        )  # fmt: skip
        assert code == 0, err
        result = json.loads(out)
        assert (result["gpus"], result["nodes"], result["revoked_nodes_skipped"]) == (4, 2, 1)
        text = inventory.read_text()
        for node in (a, b):
            assert f'uuid = "{node.gpu_uuid(0)}"' in text and f'uuid = "{node.gpu_uuid(1)}"' in text
        assert revoked.gpu_uuid(0) not in text
        assert 'model = "NVIDIA H100 80GB HBM3"' in text
        # Never overwritten.
        code, _, err = run_agent_cli(
            capsys, "operator", "inventory-from-enrolled", "--lab", "lab-a",
            "--out", str(inventory), *v.cli_target(),
        )  # fmt: skip
        assert code == 2 and "already exists" in err and inventory.read_text() == text
        code, _, err = run_agent_cli(
            capsys, "operator", "declare-inventory", "--operator-key", str(operator_key),
            "--lab", "lab-a", "--inventory", str(inventory), "--version", "1",
            "--effective-from-unix-s", str(T0_NS // S - 86_400), *v.cli_target(),
        )  # fmt: skip
        assert code == 0, err
        client.enroll(late)  # enrolled after the declaration: its GPUs are undeclared
        for node in (a, b, late):
            receipts = client.submit(node.chain(3))
            assert all(r.status == 1 for r in receipts), receipts  # accepted
        assert undeclared_gpu_nodes(v) == {late.node_id}
        # --merge keeps a hand-written file's entries and adds what is enrolled and missing.
        merged = tmp_path / "merged.toml"
        code, out, err = run_agent_cli(
            capsys, "operator", "inventory-from-enrolled", "--lab", "lab-a", "--merge",
            str(inventory), "--out", str(merged), *v.cli_target(), "--json",
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["added_from_enrolled"] == 2  # the late node's two GPUs
        assert merged.read_text().count("[[gpu]]") == 6
        node_info = client.registry.GetNode(rpb.GetNodeRequest(node_id=late.node_id)).node
        assert all(g.uuid in merged.read_text() for g in node_info.gpus)
