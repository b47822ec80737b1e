"""write_new_file: whole or nothing, never over an existing file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from attest.errors import OutputFileError
from attest.exitcodes import ExitCode, exit_code_for
from attest.files import write_new_file


def test_writes_the_bytes_with_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    write_new_file(path, b"\x00evidence" * 1000, mode=0o640)
    assert path.read_bytes() == b"\x00evidence" * 1000
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_refuses_an_existing_file_and_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputFileError, match="already exists") as info:
        write_new_file(path, b"new", mode=0o644)
    assert exit_code_for(info.value) == ExitCode.USAGE
    assert path.read_bytes() == b"keep me"
    with pytest.raises(OutputFileError, match="does not exist"):
        write_new_file(tmp_path / "nowhere" / "out.bin", b"new", mode=0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
