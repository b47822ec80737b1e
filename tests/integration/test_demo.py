"""The demo end to end, as README's first command runs it (a shorter run of the lab)."""

from __future__ import annotations

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
        [sys.executable, "-m", "verifier.cli", "demo", "--dir", str(out), "--run-seconds", "48"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "every check as expected" in run.stdout
    assert "[FAILED]" not in run.stdout
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "frontier-lab.pwbundle").exists()
    assert "VIOLATION" in run.stdout


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
