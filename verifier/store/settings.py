"""The ingest settings a store's accounts were made with, recorded in the store; a verifier whose
config says otherwise refuses to start.

    check_stored_settings(store, config)   # before anything else touches the store

Ingest folds every accepted window into per-bucket figures (keyed by the bucket's start) and gap
rows as it accepts it, with the settings of the moment; nothing recomputes them later. Read under
another bucket width, every report would be wrong; under another energy cross-check or gap
tolerance, the reports would state settings their figures were not made with, and an auditor's
offline re-verification (one value for the whole bundle) would disagree with them. So the first
start records these settings in the store's ``meta`` (keyed by their config names) and every later
start, of any verifier process over the store, must have the same. A store written before the
record existed gets the configured values, with a warning that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from attest.errors import ConfigError
from verifier.config import IngestConfig, VerifierConfig
from verifier.store.base import ReadView, Store

log = logging.getLogger(__name__)

NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class StoredSetting:
    """An ingest setting whose value shapes what the store keeps."""

    key: str
    """Its config key, also its key in the store's ``meta``."""
    value: Callable[[IngestConfig], int]
    """Its value, in the config's unit."""
    made: str
    """What in the store was made with it."""
    consequence: str


STORED_SETTINGS = (
    StoredSetting(
        "ingest.bucket_ms",
        lambda ingest: ingest.bucket_ns // NS_PER_MS,
        "the store's accounting buckets",
        "read as buckets of another width every report would be wrong",
    ),
    StoredSetting(
        "ingest.gap_tolerance_ms",
        lambda ingest: ingest.gap_tolerance_ns // NS_PER_MS,
        "the store's gaps and per-bucket figures (energy used outside the windows)",
        "reports would state a tolerance their gaps were not found with, and offline "
        "re-verification of a bundle would disagree with them",
    ),
    StoredSetting(
        "ingest.energy_mismatch_factor_ppm",
        lambda ingest: ingest.energy_mismatch_factor_ppm,
        "the store's per-bucket figures (evaluated upper bounds, energy flags)",
        "reports would state a factor their figures were not made with, and offline "
        "re-verification of a bundle would disagree with them",
    ),
    StoredSetting(
        "ingest.idle_power_fraction_ppm",
        lambda ingest: ingest.idle_power_fraction_ppm,
        "the store's per-bucket figures (evaluated upper bounds, energy flags)",
        "reports would state an allowance their figures were not made with, and offline "
        "re-verification of a bundle would disagree with them",
    ),
)


def _stored(view: ReadView, setting: StoredSetting, source: str) -> int | None:
    raw = view.get_meta(setting.key)
    if raw is None:
        return None
    text = bytes(raw).decode("ascii", "replace")
    if not text.isdigit():
        raise ConfigError(
            f"{source}: {setting.key}: the store records {text[:40]!r}, not a whole number "
            "(no verifier wrote that); refusing to start, the store was not changed"
        )
    return int(text)


def _problems(view: ReadView, config: VerifierConfig) -> tuple[list[str], list[StoredSetting]]:
    """The mismatches (as error lines) and the settings the store has no record of."""
    problems: list[str] = []
    missing: list[StoredSetting] = []
    for setting in STORED_SETTINGS:
        stored = _stored(view, setting, config.source)
        configured = setting.value(config.ingest)
        if stored is None:
            missing.append(setting)
        elif stored != configured:
            problems.append(
                f"{config.source}: {setting.key}: the store records {stored}, this config says "
                f"{configured}: {setting.made} were made with {setting.key} = {stored}, and "
                f"{setting.consequence}. Set {setting.key} = {stored} again, or give the new "
                "value a new store; the store was not changed"
            )
    return problems, missing


def check_stored_settings(store: Store, config: VerifierConfig) -> None:
    """Record the settings the store has no record of; raise :class:`ConfigError` (and change
    nothing) if the config differs from one it has."""
    problems, missing = _problems(store, config)
    if problems:
        raise ConfigError("\n".join(problems))
    if not missing:
        return
    with store.transaction() as tx:
        # Under the store's write lock: another process over a shared store may have recorded
        # them since.
        problems, missing = _problems(tx, config)
        if problems:
            raise ConfigError("\n".join(problems))
        recorded: list[str] = []
        for setting in missing:
            configured = setting.value(config.ingest)
            tx.set_meta(setting.key, str(configured).encode("ascii"))
            recorded.append(f"{setting.key} = {configured}")
        holds_data = tx.tree_size() > 0
    if not recorded:
        return
    if holds_data:
        log.warning(
            "the store had no record of the ingest settings its accounts were made with (written "
            "before verifiers recorded them): recorded this config's %s, taken to be those",
            ", ".join(recorded),
        )
    else:
        log.info("recorded in the new store: %s", ", ".join(recorded))
