"""Output files of the auditor's commands: written whole or not at all, and a file that cannot be
written is the user's error (OutputFileError, exit 2) naming it, never an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from attest.errors import OutputFileError
from attest.exitcodes import ExitCode, exit_code_for
from verifier.cli.audit import _check_output, _write_atomically


def test_a_file_in_a_missing_directory_is_an_output_error_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    target = tmp_path / "missing" / "report.html"
    with pytest.raises(OutputFileError, match=f"cannot write {target}: No such file") as caught:
        _write_atomically(target, b"page")
    assert exit_code_for(caught.value) == ExitCode.USAGE
    assert list(tmp_path.iterdir()) == []


def test_the_check_before_any_work_names_the_option_and_the_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputFileError, match=r"--csv .*: the directory .*missing does not exist"):
        _check_output(tmp_path / "missing" / "a.csv", "--csv")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(OutputFileError, match=r"--out .*: the directory .*file is not a directory"):
        _check_output(tmp_path / "file" / "b.pwbundle", "--out")
    _check_output(tmp_path / "ok.html", "--html")  # a writable directory: no error
    _check_output(None, "--html")


def test_an_existing_file_is_kept_when_overwriting_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "b.pwbundle"
    target.write_bytes(b"first")
    with pytest.raises(OutputFileError, match="already exists"):
        _write_atomically(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pwbundle"]
