"""The demo end to end, as README's first command runs it (a shorter run of the lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.verifier_harness import REPO


@pytest.mark.slow
def test_demo_runs_and_every_check_holds(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]))
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "verifier.cli", "demo", "--dir", str(out), "--run-seconds", "48",
         "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # The story on stderr, as `make demo` shows it on the terminal; the outcome as JSON on stdout.
    assert "every check as expected" in run.stderr
    assert "[FAILED]" not in run.stderr
    result = json.loads(run.stdout)
    assert result["ok"] and result["error"] == ""
    assert result["verdict"] == "VERDICT_VIOLATION"
    assert len(result["checks"]) >= 8
    assert all(check["ok"] for check in result["checks"]), result["checks"]
    assert Path(result["report_html"]).stat().st_size > 10_000
    assert Path(result["bundle"]) == out.resolve() / "frontier-lab.pwbundle"
    assert Path(result["bundle"]).exists()


def test_demo_refuses_a_directory_that_is_not_its_own(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")]))
    run = subprocess.run(
        [sys.executable, "-m", "verifier.cli", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "not a demo directory" in run.stdout + run.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    as_json = subprocess.run(
        [sys.executable, "-m", "verifier.cli", "demo", "--dir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert as_json.returncode == 1
    result = json.loads(as_json.stdout)
    assert result["ok"] is False and "not a demo directory" in result["error"]
    assert result["checks"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
