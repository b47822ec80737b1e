"""What opening a store refuses, in words: a SQLite store another user owns."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from attest.errors import ConfigError
from verifier.store.sqlite import SqliteStore


def _another_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every file look owned by someone else (the verifier runs as another user)."""
    real = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real + 1)


def test_a_private_store_directory_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "store"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    _another_uid(monkeypatch)
    with pytest.raises(ConfigError, match=rf"the store directory {directory} .*another user"):
        SqliteStore.open(directory / "verifier.db")
    assert list(directory.iterdir()) == []  # nothing created in it


def test_a_private_store_file_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "store"
    SqliteStore.open(directory / "verifier.db").close()
    owner = directory.stat().st_uid
    # The directory is ours; the database (0600) belongs to another user.
    monkeypatch.setattr(
        Path,
        "stat",
        _stat_with_uid(directory / "verifier.db", owner + 1),
    )
    with pytest.raises(ConfigError, match=r"the store file .*verifier\.db is mode 0600 .*another"):
        SqliteStore.open(directory / "verifier.db")


def _stat_with_uid(target: Path, uid: int) -> Callable[..., os.stat_result]:
    real_stat = Path.stat

    def fake(self: Path, *, follow_symlinks: bool = True) -> os.stat_result:
        info = real_stat(self, follow_symlinks=follow_symlinks)
        if self != target:
            return info
        fields = list(info)
        fields[stat.ST_UID] = uid
        return os.stat_result(fields)

    return fake
