from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.testdata import REPO_ROOT

EU = REPO_ROOT / "docs" / "policies" / "eu-ai-act.toml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True, check=False
    )


def test_check_prints_id_version_digest_and_each_rule_in_words() -> None:
    result = run("policy", "check", str(EU))
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(EU.read_bytes()).hexdigest()
    lines = result.stdout.splitlines()
    assert lines[0] == "policy eu-ai-act-art51 version 1 for lab example-lab"
    assert lines[1] == f"sha256 {digest}"
    assert (
        "  cumulative-90d (cumulative_flop): at most 10000000000000000000000000 (1.00e25) FLOP"
        in (result.stdout)
    )
    assert "  max-gap (max_gap): no node unattested for longer than 15m" in lines
    assert lines[-1] == "valid"


def test_check_json() -> None:
    result = run("policy", "check", str(EU), "--json", "--bucket-seconds", "60")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["valid"] is True
    assert out["policy_id"] == "eu-ai-act-art51"
    assert out["digest"] == hashlib.sha256(EU.read_bytes()).hexdigest()
    assert out["bucket_seconds"] == 60
    assert [rule["kind"] for rule in out["rules"]] == [
        "cumulative_flop",
        "coverage",
        "max_gap",
        "training_signature",
    ]
    assert out["rules"][0]["limit_flop"] == str(10**25)


def test_invalid_policy_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(EU.read_text().replace('window = "90d"', 'window = "90x"'))
    result = run("policy", "check", str(path))
    assert result.returncode == 2
    assert f'{path}: rules[0].window: "90x" is not a duration' in result.stderr
    assert result.stdout == ""


def test_invalid_policy_with_json_prints_the_errors_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(EU.read_text().replace("min_busy_percent = 50", "min_busy_percent = 51"))
    result = run("policy", "check", str(path), "--json")
    assert result.returncode == 2
    out = json.loads(result.stdout)
    assert out["valid"] is False
    assert len(out["errors"]) == 1
    assert "rules[3].min_busy_percent: is 51" in out["errors"][0]


def test_windows_that_do_not_fit_the_buckets_exit_2() -> None:
    result = run("policy", "check", str(EU), "--bucket-seconds", "7")
    assert result.returncode == 2
    assert "rules[0].window: 90d is not a whole number of 7s buckets" in result.stderr
    assert "rules[3].min_duration: 6h is not a whole number of 7s buckets" in result.stderr


def test_missing_file_and_bad_option_exit_2(tmp_path: Path) -> None:
    missing = run("policy", "check", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "cannot read the policy file" in missing.stderr
    assert run("policy", "check", str(EU), "--bucket-seconds", "0").returncode == 2
