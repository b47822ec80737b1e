from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import verifier.config
from verifier.cli.main import cli
from verifier.server import process
from verifier.server.server import VerifierServer


@pytest.fixture
def restore_collector() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_the_thresholds_are_raised_and_the_start_up_heap_frozen(restore_collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()

    previous = process.tune_garbage_collector()

    assert previous == (700, 10, 10)
    assert gc.get_threshold() == process.GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
    # An object that lives one agent interval must die in the middle generation: the middle
    # collection comes only after this many young ones.
    assert process.GC_THRESHOLDS[1] >= 20


def test_serve_tunes_the_collector_before_the_server_is_built(
    restore_collector: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gc.set_threshold(700, 10, 10)
    seen: list[tuple[int, int, int]] = []

    class StopHereError(Exception):
        pass

    def from_config(_config: object) -> VerifierServer:
        seen.append(gc.get_threshold())
        raise StopHereError

    monkeypatch.setattr(verifier.config, "load_config", lambda _path: object())
    monkeypatch.setattr(VerifierServer, "from_config", staticmethod(from_config))

    result = CliRunner().invoke(
        cli, ["verifier", "serve", "--config", str(tmp_path / "verifier.toml")]
    )

    assert isinstance(result.exception, StopHereError)
    assert seen == [process.GC_THRESHOLDS]
