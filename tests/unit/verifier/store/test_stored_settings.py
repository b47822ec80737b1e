"""The ingest settings a store's accounts were made with are recorded in the store, and a verifier
configured with others is refused before it changes anything, on both engines."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from attest import merkle
from attest.errors import ConfigError
from tests.builders import fixed_private_key
from tests.stores import make_store
from verifier.config import IngestConfig, VerifierConfig
from verifier.store.base import EntryKind, NewEntry, Store
from verifier.store.core import NONCE_SECRET_KEY, VerifierCore
from verifier.store.settings import STORED_SETTINGS, check_stored_settings

S = 10**9
KEYS = [setting.key for setting in STORED_SETTINGS]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


def config_with(**ingest: int) -> VerifierConfig:
    return VerifierConfig(ingest=IngestConfig(**ingest), source="verifier.toml")  # type: ignore[arg-type]


DEFAULT = config_with()


def add_data(store: Store) -> None:
    """A log entry and a bucket row, as a verifier that ran before would have left."""
    raw = b"an accepted window"
    item = NewEntry(
        entry=raw,
        leaf_hash=merkle.leaf_hash(raw),
        digest=hashlib.sha256(raw).digest(),
        kind=EntryKind.ATTESTATION,
        lab_id="lab-a",
        node_id=b"\x01" * 32,
    )
    with store.transaction() as tx:
        tx.append_log([item], [(0, 0, item.leaf_hash)], 123)
        tx.put_buckets("lab-a", {120 * S: {"upper_bound_flop": "1000"}})


def stored_state(store: Store) -> tuple[object, ...]:
    return (
        [store.get_meta(key) for key in [*KEYS, "schema_version", NONCE_SECRET_KEY]],
        store.tree_size(),
        store.get_entry(0),
        store.buckets("lab-a", 0, 10**6 * S),
    )


def test_a_new_store_records_the_settings_and_starts_again_with_them(store: Store) -> None:
    check_stored_settings(store, DEFAULT)
    assert [store.get_meta(key) for key in KEYS] == [b"60000", b"5000", b"1250000", b"300000"]
    check_stored_settings(store, DEFAULT)  # the same config: no complaint, nothing rewritten
    assert [store.get_meta(key) for key in KEYS] == [b"60000", b"5000", b"1250000", b"300000"]


def test_another_bucket_width_is_refused_and_nothing_stored_changes(store: Store) -> None:
    check_stored_settings(store, DEFAULT)
    add_data(store)
    before = stored_state(store)
    with pytest.raises(ConfigError) as refused:
        check_stored_settings(store, config_with(bucket_ns=30 * S))
    assert str(refused.value) == (
        "verifier.toml: ingest.bucket_ms: the store records 60000, this config says 30000: the "
        "store's accounting buckets were made with ingest.bucket_ms = 60000, and read as buckets "
        "of another width every report would be wrong. Set ingest.bucket_ms = 60000 again, or give the new value "
        "a new store; the store was not changed"
    )
    assert stored_state(store) == before
    check_stored_settings(store, DEFAULT)  # control: the size it was made with still starts
    assert stored_state(store) == before


@pytest.mark.parametrize(
    ("changed", "key", "stored", "configured"),
    [
        ({"gap_tolerance_ns": 6 * S}, "ingest.gap_tolerance_ms", 5000, 6000),
        ({"energy_mismatch_factor_ppm": 2_000_000}, "ingest.energy_mismatch_factor_ppm", 1250000, 2000000),
        ({"idle_power_fraction_ppm": 200_000}, "ingest.idle_power_fraction_ppm", 300000, 200000),
    ],
)  # fmt: skip
def test_the_other_settings_folded_into_the_accounts_are_refused_too(
    store: Store, changed: dict[str, int], key: str, stored: int, configured: int
) -> None:
    check_stored_settings(store, DEFAULT)
    add_data(store)
    before = stored_state(store)
    with pytest.raises(ConfigError) as refused:
        check_stored_settings(store, config_with(**changed))
    message = str(refused.value)
    assert message.startswith(
        f"verifier.toml: {key}: the store records {stored}, this config says {configured}: "
    )
    assert "offline re-verification of a bundle would disagree" in message
    assert message.endswith(f"Set {key} = {stored} again, or give the new value a new store; "
                            "the store was not changed")  # fmt: skip
    assert stored_state(store) == before


def test_every_differing_setting_is_named_at_once(store: Store) -> None:
    check_stored_settings(store, DEFAULT)
    with pytest.raises(ConfigError) as refused:
        check_stored_settings(store, config_with(bucket_ns=120 * S, idle_power_fraction_ppm=1))
    lines = str(refused.value).splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "ingest.bucket_ms",
        "ingest.idle_power_fraction_ppm",
    ]


def test_settings_that_shape_nothing_stored_may_change(store: Store) -> None:
    """Control: the limits of what is accepted, and the report-time grace, are not recorded."""
    check_stored_settings(store, DEFAULT)
    check_stored_settings(
        store,
        config_with(
            max_clock_skew_ns=1 * S,
            open_gap_grace_ns=1 * S,
            late_after_ns=1 * S,
            nonce_lifetime_ns=1 * S,
        ),
    )
    assert store.get_meta("ingest.bucket_ms") == b"60000"


def test_a_store_from_before_the_record_takes_the_configured_settings_and_says_so(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    add_data(store)  # a store written by a verifier that recorded no settings
    assert [store.get_meta(key) for key in KEYS] == [None] * 4
    with caplog.at_level(logging.INFO, logger="verifier.store.settings"):
        check_stored_settings(store, config_with(bucket_ns=30 * S))
    assert store.get_meta("ingest.bucket_ms") == b"30000"
    (record,) = [r for r in caplog.records if r.name == "verifier.store.settings"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "the store had no record of the ingest settings its accounts were made with (written "
        "before verifiers recorded them): recorded this config's ingest.bucket_ms = 30000, "
        "ingest.gap_tolerance_ms = 5000, ingest.energy_mismatch_factor_ppm = 1250000, "
        "ingest.idle_power_fraction_ppm = 300000, taken to be those"
    )
    # From now on the recorded width holds.
    with pytest.raises(ConfigError, match=r"ingest\.bucket_ms: the store records 30000"):
        check_stored_settings(store, DEFAULT)


def test_a_store_missing_one_record_gets_it_and_keeps_the_others(store: Store) -> None:
    with store.transaction() as tx:
        tx.set_meta("ingest.bucket_ms", b"60000")
    with pytest.raises(ConfigError, match=r"ingest\.bucket_ms: the store records 60000"):
        check_stored_settings(store, config_with(bucket_ns=30 * S))
    assert store.get_meta("ingest.gap_tolerance_ms") is None  # refused: nothing recorded either
    check_stored_settings(store, DEFAULT)
    assert store.get_meta("ingest.gap_tolerance_ms") == b"5000"


def test_a_record_that_is_not_a_number_is_refused_and_left_alone(store: Store) -> None:
    check_stored_settings(store, DEFAULT)
    with store.transaction() as tx:
        tx.set_meta("ingest.bucket_ms", b"60s")
    before = stored_state(store)
    with pytest.raises(ConfigError) as refused:
        check_stored_settings(store, DEFAULT)
    assert str(refused.value) == (
        "verifier.toml: ingest.bucket_ms: the store records '60s', not a whole number (no "
        "verifier wrote that); refusing to start, the store was not changed"
    )
    assert stored_state(store) == before


def test_the_verifier_core_refuses_before_it_writes_anything(store: Store) -> None:
    """VerifierCore checks first: refused, it has not even created the nonce secret."""
    check_stored_settings(store, DEFAULT)
    assert store.get_meta(NONCE_SECRET_KEY) is None
    key = fixed_private_key(101)
    with pytest.raises(ConfigError, match=r"ingest\.bucket_ms: the store records 60000"):
        VerifierCore(config_with(bucket_ns=30 * S), store, key)
    assert store.get_meta(NONCE_SECRET_KEY) is None
    VerifierCore(dataclasses.replace(DEFAULT), store, key)  # control: the recorded settings start
    assert store.get_meta(NONCE_SECRET_KEY) is not None
