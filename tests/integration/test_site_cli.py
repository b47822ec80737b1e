"""``pausewatch site import`` and ``site head`` against a real verifier process: the regulator's
interval file lands as chained, signed readings; a second run adds nothing; a bad file or a key no
meter is declared with is refused by name, and nothing is stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attest.keys import Ed25519Signer, format_public_key, save_private_key
from tests.builders import fixed_private_key
from tests.verifier_harness import (
    RunningVerifier,
    pausewatch,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

S = 10**9
IMPORT_KEY = fixed_private_key(321)

SITE = """
format_version = 1
site_id = "dc1"
version = 1
pue = "1.2"
nodes = "all"

[[meter]]
id = "utility-feed"
source = "regulator_import"
public_key = "{key}"
"""


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[RunningVerifier]:
    directory = tmp_path / "v"
    directory.mkdir()
    key = format_public_key(Ed25519Signer.from_private_key(IMPORT_KEY).public_key)
    (directory / "dc1.toml").write_text(SITE.format(key=key), encoding="utf-8")
    files = write_verifier_files(directory, extra_lab='sites = ["dc1.toml"]')
    running = start_verifier_process(files, tmp_path / "verifier.log")
    try:
        yield running
    finally:
        stop_process(running)


def utc(t_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_ns // S))


def interval_file(path: Path, t0: int, rows: int, first: int = 0) -> Path:
    quarter = 15 * 60 * S
    lines = ["meter_id,interval_start,interval_end,energy_kwh"]
    for i in range(first, first + rows):
        lines.append(f"utility-feed,{utc(t0 + i * quarter)},{utc(t0 + (i + 1) * quarter)},812.5")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def head(verifier: RunningVerifier) -> dict[str, object]:
    run = pausewatch(
        "site",
        "head",
        *verifier.cli_target(),
        "--lab",
        "lab-a",
        "--meter",
        "utility-feed",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def test_import_is_chained_resumable_and_refuses_by_name(
    verifier: RunningVerifier, tmp_path: Path
) -> None:
    now = time.time_ns()
    t0 = now - now % (900 * S) - 24 * 3600 * S
    key_file = tmp_path / "import.key"
    save_private_key(key_file, IMPORT_KEY)
    target = verifier.cli_target()
    assert head(verifier)["has_head"] is False

    first = interval_file(tmp_path / "nov.csv", t0, 4)
    args = ["--lab", "lab-a", "--site", "dc1", "--key", str(key_file), "--json"]
    run = pausewatch("site", "import", *target, str(first), *args)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"accepted": 4, "skipped": 0, "refused": []}
    assert head(verifier)["seq"] == 3

    # Run again, with two more intervals: the four already held are skipped, the chain goes on.
    more = interval_file(tmp_path / "nov2.csv", t0, 6)
    again = pausewatch("site", "import", *target, str(more), *args)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"accepted": 2, "skipped": 4, "refused": []}
    assert head(verifier)["seq"] == 5

    # A file that does not parse: a usage error naming the line; nothing sent.
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "meter_id,interval_start,interval_end,energy_kwh\n"
        f"utility-feed,{utc(t0 + 7 * 900 * S)[:-1]},{utc(t0 + 8 * 900 * S)},1\n",
        encoding="utf-8",
    )
    refused = pausewatch("site", "import", *target, str(bad), *args)
    assert refused.returncode == 2
    assert "bad.csv:2" in refused.stderr and "no UTC offset" in refused.stderr
    assert head(verifier)["seq"] == 5

    # A key the meter is not declared with: every interval refused, exit 3, nothing stored.
    stranger = tmp_path / "stranger.key"
    save_private_key(stranger, fixed_private_key(322))
    later = interval_file(tmp_path / "dec.csv", t0, 1, first=6)
    forged = pausewatch(
        "site", "import", *target, str(later), *args[:4], "--key", str(stranger), "--json"
    )
    assert forged.returncode == 3, forged.stderr
    result = json.loads(forged.stdout)
    assert result["accepted"] == 0
    assert [r["reason"] for r in result["refused"]] == ["METER_REJECT_REASON_UNKNOWN_METER"]
    assert result["refused"][0]["line"] == "dec.csv:2"
    assert head(verifier)["seq"] == 5
