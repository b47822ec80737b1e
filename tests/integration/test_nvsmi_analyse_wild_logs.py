"""``pausewatch audit analyse`` of nvidia-smi logs as users bring them, as real processes.

A log the replay can read is analysed, and what it left out is in the analysis's notes; one it
cannot is refused with exit 2, naming the file once, the line and what to do, and nothing is
written: no page, nothing on stdout (tests/unit/agent/test_nvsmi_wild_logs.py has the parser's
side of each shape).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testdata import REPO_ROOT

POLICY = REPO_ROOT / "docs" / "policies" / "eu-ai-act.toml"
HEADER = "timestamp, index, uuid, name, utilization.gpu [%], power.draw [W], memory.used [MiB]"
H100 = "NVIDIA H100 80GB HBM3"


def docs_log(seconds: int = 120, gpus: int = 2) -> list[str]:
    """The docs' recording command's rows: every GPU each second, 50 %, 300 W."""
    rows = []
    for second in range(seconds):
        stamp = f"2024/05/01 12:{second // 60:02d}:{second % 60:02d}.123"
        for gpu in range(gpus):
            uuid = f"GPU-{gpu:08x}-1111-2222-3333-444455556666"
            rows.append(f"{stamp}, {gpu}, {uuid}, {H100}, 50 %, 300.00 W, 1000 MiB")
    return rows


def analyse(*inputs: Path, page: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "verifier.cli", "audit", "analyse", *map(str, inputs)),
            *("--policy", str(POLICY), "--html", str(page), "--json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_a_log_cut_short_is_analysed_and_the_line_left_out_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "node1.csv.gz"
    text = "\n".join([HEADER, *docs_log()]) + "\n" + docs_log(121)[-1][:30]
    path.write_bytes(gzip.compress(text.encode()))
    page = tmp_path / "what-if.html"
    run = analyse(path, page=page)
    assert run.returncode in (0, 1), run.stderr
    out = json.loads(run.stdout)
    (node,) = out["nodes"]
    assert node["gpus"] == 2 and node["recording"]["polls"] == 120
    assert (
        f"node1.csv ({path}): line 242: cut short (the recorder was stopped mid-line): left out"
        in out["analysis"]["notes"]
    )
    assert int(out["report"]["totals"]["busy_gpu_ms"]) == 2 * 120 * 500
    assert page.exists()


def _dst(path: Path) -> str:
    rows = [HEADER, *docs_log(3)]
    rows[5] = rows[5].replace("12:00:02", "11:00:02")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return "line 6: the time goes back 3599.000 s"


def _other_header(path: Path) -> str:
    rows = [HEADER, *docs_log(3), "timestamp, utilization.gpu [%]", "2024/05/01 12:01:00, 5 %"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return "line 8 is a header with other columns than line 1's"


def _latin1(path: Path) -> str:
    rows = [HEADER, *docs_log(3)]
    rows[2] = rows[2].replace(H100, "NVIDIA H100 80GB HBM3 \xe9")
    path.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    return "line 3: not UTF-8 text (byte 0xe9)"


def _noheader(path: Path) -> str:
    path.write_text("\n".join(docs_log(3)) + "\n", encoding="utf-8")
    return "line 1 is not a header (--format=csv,noheader leaves it out): add the header line"


def _pipe(path: Path) -> str:
    os.mkfifo(path)
    return "is not a regular file (a pipe or a device?)"


@pytest.mark.parametrize(
    "make", [_dst, _other_header, _latin1, _noheader, _pipe], ids=lambda f: f.__name__[1:]
)
def test_a_log_that_cannot_be_read_is_refused_naming_the_file_and_line_with_nothing_written(
    tmp_path: Path, make: object
) -> None:
    good = tmp_path / "node1.csv"
    good.write_text("\n".join([HEADER, *docs_log()]) + "\n", encoding="utf-8")
    bad = tmp_path / "node2.csv"
    expected = make(bad)  # type: ignore[operator]
    page = tmp_path / "what-if.html"
    run = analyse(good, bad, page=page)
    assert run.returncode == 2, run.stderr
    assert f"{bad}: {expected}" in run.stderr
    assert run.stderr.count(str(bad)) == 1, run.stderr
    assert "internal error" not in run.stderr
    assert not re.search(r"\w+(Error|Exception)\b|Traceback", run.stderr), run.stderr
    assert run.stdout == ""
    assert not page.exists()
