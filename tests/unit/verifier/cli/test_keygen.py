from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from attest import keys, note


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True, check=False
    )


def test_keygen_writes_a_usable_key_pair(tmp_path: Path) -> None:
    result = run(
        "keygen",
        "--out",
        str(tmp_path),
        "--name",
        "log",
        "--note-name",
        "example.org/log",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    private = keys.load_private_key(tmp_path / "log.key")
    assert stat.S_IMODE((tmp_path / "log.key").stat().st_mode) == 0o600
    assert out["key_id"] == keys.key_id(private.public_key()).hex()
    assert (
        keys.load_public_key(tmp_path / "log.pub").public_bytes_raw()
        == private.public_key().public_bytes_raw()
    )
    vkey = note.parse_verifier_key(out["note_verifier_key"])
    assert vkey.name == "example.org/log"
    assert "PRIVATE" not in result.stdout


def test_keygen_refuses_to_overwrite_and_exits_2(tmp_path: Path) -> None:
    assert run("keygen", "--out", str(tmp_path), "--name", "k").returncode == 0
    before = (tmp_path / "k.key").read_bytes()
    again = run("keygen", "--out", str(tmp_path), "--name", "k")
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert (tmp_path / "k.key").read_bytes() == before


def test_unknown_command_is_a_usage_error() -> None:
    result = run("no-such-command")
    assert result.returncode == 2


def test_keygen_checks_the_note_name_before_writing_anything(tmp_path: Path) -> None:
    result = run("keygen", "--out", str(tmp_path), "--name", "k", "--note-name", "has space")
    assert result.returncode == 2
    assert "--note-name" in result.stderr
    assert not (tmp_path / "k.key").exists()
