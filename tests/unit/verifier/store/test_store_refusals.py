"""What opening a store refuses, in words: a SQLite store another user owns, and a PostgreSQL DSN
that does not parse or a database that cannot be reached, without the DSN's password."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from attest.errors import ConfigError, PausewatchError
from attest.exitcodes import ExitCode, exit_code_for
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_postgres_store_is_named_without_its_password() -> None:
    from verifier.store.postgres import PostgresStore

    dsn = f"postgresql://verifier:S3cretPW@127.0.0.1:{_free_port()}/pausewatch"
    with pytest.raises(PausewatchError) as caught:
        PostgresStore.open(dsn)
    message = caught.value.diagnostics()
    assert "cannot connect to the PostgreSQL store" in message
    assert "postgresql://verifier:***@127.0.0.1" in message
    assert "S3cretPW" not in message
    assert exit_code_for(caught.value) == ExitCode.INTERNAL


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 user=verifier password S3cretPW dbname=pausewatch",
        "postgresql://verifier:S3cretPW@127.0.0.1:notaport/pausewatch",
    ],
)
def test_a_malformed_postgres_dsn_is_a_config_error_without_its_password(dsn: str) -> None:
    from verifier.store.postgres import PostgresStore

    with pytest.raises(PausewatchError) as caught:
        PostgresStore.open(dsn)
    message = caught.value.diagnostics()
    assert "store.dsn" in message
    assert "S3cretPW" not in message


def test_redact_dsn_hides_passwords_in_both_forms() -> None:
    from verifier.store.postgres import redact_dsn

    assert redact_dsn("postgresql://u:S3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_dsn("postgresql://u@db/x") == "postgresql://u@db/x"
    assert redact_dsn("host=db password=S3cret dbname=x") == "host=db password=*** dbname=x"
    assert redact_dsn("host=db password = 'a b' dbname=x") == "host=db password = *** dbname=x"
