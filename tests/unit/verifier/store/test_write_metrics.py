"""What VerifierCore.write tells the server's metrics: the duration of each write it kept, and each
write whose log flush or commit failed (which keeps nothing); a write whose own work raised
before the commit is neither."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import fixed_private_key
from tests.stores import make_store
from verifier.config import VerifierConfig
from verifier.store.base import Store
from verifier.store.core import VerifierCore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = make_store("sqlite", tmp_path)
    yield s
    s.close()


class Told:
    def __init__(self, core: VerifierCore) -> None:
        self.kept: list[float] = []
        self.failed = 0
        core.observe_commit_s = self.kept.append
        core.commit_failed = self.fail

    def fail(self) -> None:
        self.failed += 1


def test_a_failed_commit_is_counted_and_keeps_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = VerifierCore(VerifierConfig(source="verifier.toml"), store, fixed_private_key(101))
    told = Told(core)
    with core.write():
        pass  # control: a write that commits
    assert (len(told.kept), told.failed) == (1, 0)
    size = store.tree_size()

    def broken_flush(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(core.log, "flush", broken_flush)
    with pytest.raises(OSError, match="disk full"), core.write():
        pass
    assert (len(told.kept), told.failed) == (1, 1)
    assert store.tree_size() == size


def test_a_write_whose_own_work_fails_is_not_a_commit_failure(store: Store) -> None:
    core = VerifierCore(VerifierConfig(source="verifier.toml"), store, fixed_private_key(101))
    told = Told(core)
    with pytest.raises(ValueError, match="a bad envelope"), core.write():
        raise ValueError("a bad envelope")
    assert (len(told.kept), told.failed) == (0, 0)
