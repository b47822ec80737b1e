"""The verifier's meter ingest and site declarations, over a real store (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import site_pb2 as pb

from attest import meter
from attest.errors import ConfigError
from attest.ids import ZERO_DIGEST
from attest.keys import Ed25519Signer, format_public_key, load_private_key
from tests.builders import fixed_private_key
from tests.verifier_harness import write_verifier_files
from verifier.config import load_config
from verifier.server.meters import SiteRegistry
from verifier.server.registry import Registry
from verifier.store.core import VerifierCore
from verifier.store.sqlite import SqliteStore

GATEWAY = Ed25519Signer.from_private_key(fixed_private_key(41))
STRANGER = Ed25519Signer.from_private_key(fixed_private_key(42))
T0_NS = 1_700_000_000 * 10**9
MIN_NS = 60 * 10**9
KWH_MJ = meter.MJ_PER_KWH

SITE_FILE = """
format_version = 1
site_id = "dc1"
name = "DC 1"
version = {version}
pue = "1.25"
non_gpu_load_kw = "{non_gpu}"
tolerance_percent = "5"
nodes = "all"

[[meter]]
id = "main-1"
source = "gateway"
public_key = "{key}"
"""


def write_site(directory: Path, version: int = 1, non_gpu: str = "100") -> None:
    text = SITE_FILE.format(
        version=version, non_gpu=non_gpu, key=format_public_key(GATEWAY.public_key)
    )
    (directory / "dc1.toml").write_text(text, encoding="utf-8")


class Setup:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        write_site(directory)
        files = write_verifier_files(
            directory, extra_lab='sites = ["dc1.toml"]', max_clock_skew_s=300
        )
        self.config = load_config(files.config)
        self.store = SqliteStore.open(directory / "verifier.db")
        self.core = VerifierCore(
            self.config,
            self.store,
            load_private_key(directory / "log.key"),
            clock_ns=lambda: T0_NS + 10 * 60 * MIN_NS,
        )
        Registry(self.core).sync_labs(self.config.labs)
        self.sites = SiteRegistry(self.core)
        self.sites.sync(self.config.labs)

    def findings(self, kind: int) -> list[fpb.Finding]:
        rows = self.store.findings("lab-a", kinds=[kind], limit=100)
        return [fpb.Finding.FromString(r.finding) for r in rows]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    s.store.close()


def reading(
    seq: int,
    prev: bytes,
    start_min: int,
    *,
    signer: Ed25519Signer = GATEWAY,
    kwh: int = 300,
    minutes: int = 15,
    meter_id: str = "main-1",
) -> bytes:
    body = meter.reading_body(
        lab_id="lab-a",
        site_id="dc1",
        meter_id=meter_id,
        seq=seq,
        prev_digest=prev,
        interval_start_ns=T0_NS + start_min * MIN_NS,
        interval_end_ns=T0_NS + (start_min + minutes) * MIN_NS,
        energy_mj=kwh * KWH_MJ,
        source=pb.METER_SOURCE_GATEWAY,
    )
    return meter.sign_reading(signer, body)


def chain(count: int) -> list[bytes]:
    out: list[bytes] = []
    prev = ZERO_DIGEST
    for seq in range(count):
        raw = reading(seq, prev, 15 * seq)
        out.append(raw)
        prev = meter.verify_reading(raw, GATEWAY.public_key).digest
    return out


def test_a_chain_of_readings_is_logged(setup: Setup) -> None:
    size_before = setup.store.tree_size()
    receipts = setup.sites.submit(chain(3))
    assert [r.accepted for r in receipts] == [True, True, True]
    assert [r.log_index for r in receipts] == [size_before, size_before + 1, size_before + 2]
    head = setup.sites.head("lab-a", "main-1")
    assert head is not None and head.seq == 2
    assert head.interval_end_ns == T0_NS + 45 * MIN_NS
    rows = setup.store.meter_readings("lab-a", "main-1", T0_NS, T0_NS + 60 * MIN_NS)
    assert [r.energy_mj for r in rows] == [300 * KWH_MJ] * 3
    # A resend is answered with the same index and writes nothing.
    again = setup.sites.submit(chain(3)[1:2])
    assert again[0].accepted and again[0].log_index == receipts[1].log_index
    assert setup.store.tree_size() == size_before + 3


def test_a_second_reading_for_a_seq_is_a_fork(setup: Setup) -> None:
    first = chain(2)
    setup.sites.submit(first)
    prev = meter.verify_reading(first[0], GATEWAY.public_key).digest
    lower = reading(1, prev, 15, kwh=10)  # the same seq, less energy: hiding consumption
    [receipt] = setup.sites.submit([lower])
    assert not receipt.accepted
    assert receipt.reason == pb.METER_REJECT_REASON_CHAIN
    [fork] = setup.findings(fpb.FINDING_KIND_METER_FORK)
    assert fork.rejected_envelope == lower
    rows = setup.store.meter_readings("lab-a", "main-1", T0_NS, T0_NS + 60 * MIN_NS)
    assert [r.energy_mj for r in rows] == [300 * KWH_MJ] * 2  # nothing replaced


def test_overlap_rollback_and_gap(setup: Setup) -> None:
    first = chain(2)
    setup.sites.submit(first)
    head = meter.verify_reading(first[1], GATEWAY.public_key).digest
    overlapping = reading(2, head, 25)  # starts 5 minutes before the head's end
    [r1] = setup.sites.submit([overlapping])
    assert (r1.accepted, r1.reason) == (False, pb.METER_REJECT_REASON_OVERLAP)
    [r2] = setup.sites.submit([reading(0, ZERO_DIGEST, 0, kwh=1)])
    assert (r2.accepted, r2.reason) == (False, pb.METER_REJECT_REASON_CHAIN)
    later = reading(2, head, 60)  # 30 minutes with no reading
    [r3] = setup.sites.submit([later])
    assert r3.accepted
    [gap] = setup.findings(fpb.FINDING_KIND_METER_GAP)
    assert (gap.period_start_ns, gap.period_end_ns) == (T0_NS + 30 * MIN_NS, T0_NS + 60 * MIN_NS)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", pb.METER_REJECT_REASON_MALFORMED),
        (b"\x0a\x03abc", pb.METER_REJECT_REASON_MALFORMED),
        (reading(0, ZERO_DIGEST, 0, signer=STRANGER), pb.METER_REJECT_REASON_UNKNOWN_METER),
        (reading(0, ZERO_DIGEST, 0, meter_id="other"), pb.METER_REJECT_REASON_UNKNOWN_METER),
        (reading(0, ZERO_DIGEST, 24 * 60), pb.METER_REJECT_REASON_TIME),
    ],
    ids=["empty", "garbage", "stranger-key", "undeclared-meter", "future"],
)
def test_bad_readings_are_refused_and_nothing_is_stored(
    setup: Setup, raw: bytes, reason: int
) -> None:
    size_before = setup.store.tree_size()
    [receipt] = setup.sites.submit([raw])
    assert (receipt.accepted, receipt.reason) == (False, reason)
    assert receipt.detail
    assert setup.store.tree_size() == size_before
    assert setup.sites.head("lab-a", "main-1") is None


def test_a_tampered_signature_is_refused(setup: Setup) -> None:
    raw = bytearray(chain(1)[0])
    raw[-1] ^= 0x01
    [receipt] = setup.sites.submit([bytes(raw)])
    assert (receipt.accepted, receipt.reason) == (False, pb.METER_REJECT_REASON_BAD_SIGNATURE)


def test_site_declarations_are_logged_once_and_versioned(setup: Setup) -> None:
    [row] = setup.store.sites("lab-a")
    assert row.version == 1
    size = setup.store.tree_size()
    setup.sites.sync(setup.config.labs)  # unchanged: not logged again
    assert setup.store.tree_size() == size
    write_site(setup.directory, version=1, non_gpu="50")
    with pytest.raises(ConfigError, match="bump version"):
        setup.sites.sync(setup.config.labs)
    assert setup.store.tree_size() == size
    write_site(setup.directory, version=2, non_gpu="50")
    setup.sites.sync(setup.config.labs)
    rows = setup.store.sites("lab-a")
    assert [r.version for r in rows] == [1, 2]
    assert pb.SiteDeclaration.FromString(rows[1].declaration).non_gpu_load_mw == 50_000_000
    entry = setup.store.get_entry(rows[1].log_index)
    assert entry is not None and entry.kind == "site"
