"""`audit analyse --json`: its top level (analysis, nodes, report), and a recording without a name
column read as such (has_names false, the --gpu-model note shown), as docs/auditing.md says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.testdata import REPO_ROOT

POLICY = REPO_ROOT / "docs" / "policies" / "eu-ai-act.toml"
S = 10**9
START_NS = 1_793_491_200 * S  # 2026-11-01T00:00:00Z


def recording(path: Path, *, names: bool) -> None:
    header = "timestamp, " + ("name, " if names else "") + "utilization.gpu [%], power.draw [W]"
    lines = [header]
    for second in range(300):
        stamp = f"2026/11/01 00:{second // 60:02d}:{second % 60:02d}.000"
        name = "NVIDIA H100 80GB HBM3, " if names else ""
        lines.append(f"{stamp}, {name}90 %, 500.00 W")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def analyse(*args: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "verifier.cli", "audit", "analyse", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode in (0, 1), run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_the_json_top_level_and_a_file_without_names(tmp_path: Path) -> None:
    unnamed = tmp_path / "node1.csv"
    recording(unnamed, names=False)
    out = analyse(str(unnamed), "--policy", str(POLICY), "--gpu-model", "NVIDIA H100 80GB HBM3")
    assert sorted(out) == ["analysis", "nodes", "report"]
    (node,) = out["nodes"]
    assert node["recording"]["has_names"] is False
    assert node["recording"]["first_ns"] == START_NS  # an integer here, unlike in "report"
    assert len(node["node_id"]) == 64  # hex here; base64 in "report"
    notes = out["analysis"]["notes"]
    assert any("no name column; GPUs taken to be NVIDIA H100 80GB HBM3" in n for n in notes)


def test_a_file_with_a_name_column_has_names(tmp_path: Path) -> None:
    named = tmp_path / "node2.csv"
    recording(named, names=True)
    out = analyse(str(named), "--policy", str(POLICY))
    (node,) = out["nodes"]
    assert node["recording"]["has_names"] is True
    notes = out["analysis"]["notes"]
    assert not any("no name column" in n for n in notes)
