"""bench/gpu_check.py end to end without a GPU (--self-test: fake NVML, fake load), so the script
that runs on GPU machines does not rot between their visits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testdata import REPO_ROOT

ARGS = ["--self-test", "--seconds", "1.5", "--interval-ms", "100", "--window-s", "1",
        "--lead-s", "0.3", "--tail-s", "0.5"]  # fmt: skip


@pytest.mark.parametrize("lite", [False, True])
def test_gpu_check_self_test(tmp_path: Path, lite: bool) -> None:
    args = [sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py"), *ARGS]
    if lite:
        args.append("--lite")
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OUT": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-> PASS" in done.stdout
    assert "2 GPU(s) found" in done.stdout
    assert "gpm_tensor_active=NO (NVML_ERROR_NOT_SUPPORTED)" in done.stdout  # GPU 1 has no GPM
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["pass"] is True
    assert summary["path"] == ("lite" if lite else "full")
    assert summary["upper_bound_flop"] >= summary["workload"]["true_flop"]
