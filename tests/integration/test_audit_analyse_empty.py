"""`audit analyse` of a recording with a header and no rows: a clear input error (exit 2) naming
the file, from the agent's replay as from the CLI, and no page written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sampler.replay import RecordingError, parse_recording
from tests.testdata import REPO_ROOT

POLICY = REPO_ROOT / "docs" / "policies" / "eu-ai-act.toml"
HEADERS = {
    "no identity column": "timestamp, utilization.gpu [%], power.draw [W]\n",
    "index column": "timestamp, index, name, utilization.gpu [%]\n",
}


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_a_header_without_rows_has_no_samples(header: str) -> None:
    with pytest.raises(
        RecordingError, match=r"^node\.csv: no samples: it has a header line and no rows$"
    ):
        parse_recording(header + "\n\n", "node.csv", gpu_model="NVIDIA H100 80GB HBM3")


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_analyse_of_a_header_only_csv_is_an_input_error(tmp_path: Path, header: str) -> None:
    recording = tmp_path / "node1.csv"
    recording.write_text(header, encoding="utf-8")
    page = tmp_path / "what-if.html"
    model = [] if "name" in header else ["--gpu-model", "NVIDIA H100 80GB HBM3"]
    run = subprocess.run(
        [
            *(sys.executable, "-m", "verifier.cli", "audit", "analyse", str(recording)),
            *("--policy", str(POLICY), "--html", str(page), *model),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert f"{recording}: no samples: it has a header line and no rows" in run.stderr
    assert run.stderr.count(str(recording)) == 1, run.stderr  # named once
    assert "internal error" not in run.stderr
    assert not re.search(r"\w+(Error|Exception)\b", run.stderr), run.stderr
    assert run.stdout == ""
    assert not page.exists()
    assert recording.read_text(encoding="utf-8") == header
