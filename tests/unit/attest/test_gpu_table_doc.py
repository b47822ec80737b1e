"""docs/gpu-table.md is generated from attest/compute.py and is current (the same check that
`make check` runs as scripts/gen_gpu_table.py --check)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from attest import compute

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "gen_gpu_table.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_gpu_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_published_table_is_the_code_table() -> None:
    text = (ROOT / "docs" / "gpu-table.md").read_text(encoding="utf-8")
    assert _generator().render() == text, "run: python scripts/gen_gpu_table.py"
    assert f"Table version **{compute.TABLE_VERSION}**" in text
    for spec in compute.GPU_TABLE:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{spec.key}` |"))
        assert f"| {spec.board_power_w:,} |" in row
        assert f"| {spec.fastest_precision.value} |" in row


def test_exact_peaks_are_printed_with_every_digit() -> None:
    tera = _generator()._tera
    assert tera(1_979_000_000_000_000) == "1,979"
    assert tera(494_500_000_000_000) == "494.5"
    assert tera(1_388_888_888_889) == "1.388888888889"
    assert tera(None) == "—"


def test_check_mode_fails_on_drift(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    module = _generator()
    stale = tmp_path / "gpu-table.md"
    stale.write_text(module.render().replace("| 1,979 |", "| 1,978 |", 1), encoding="utf-8")
    module.OUT = stale
    module.ROOT = tmp_path
    sys.argv = ["gen_gpu_table.py", "--check"]
    assert module.main() == 1
