"""Site power in tests: a site file and a meter gateway's signed readings.

(directory / "dc1.toml").write_text(site_file(GATEWAY))
raws = gateway_readings(GATEWAY, t0_ns, it_power_w=2_700, quarters=4)
"""

from __future__ import annotations

from pausewatch.v1 import site_pb2 as pb

from attest import meter
from attest.envelope import envelope_digest
from attest.ids import ZERO_DIGEST
from attest.keys import Ed25519Signer, format_public_key

QUARTER_NS = 15 * 60 * 10**9
PUE_MILLI = 1_250
NON_GPU_W = 2_000

SITE_FILE = """
format_version = 1
site_id = "dc1"
name = "Test DC 1"
version = 1
pue = "1.25"
non_gpu_load_kw = "2"
tolerance_percent = "10"
nodes = "all"

[[meter]]
id = "main-1"
source = "gateway"
public_key = "{key}"
"""


def site_file(gateway: Ed25519Signer) -> str:
    """Site ``dc1`` of lab ``lab-a``: every node, PUE 1.25, 2 kW of non-GPU load, 10 % slack,
    one gateway meter ``main-1`` signed by ``gateway``."""
    return SITE_FILE.format(key=format_public_key(gateway.public_key))


def gateway_readings(
    gateway: Ed25519Signer,
    t0_ns: int,
    it_power_w: int,
    quarters: int = 4,
    skip: int | None = None,
) -> list[bytes]:
    """Chained 15-minute readings of meter ``main-1`` from ``t0_ns`` for a site drawing
    ``it_power_w`` of IT power (metered: x the PUE of 1.25); ``skip`` leaves one seq out."""
    out: list[bytes] = []
    prev = ZERO_DIGEST
    for seq in range(quarters):
        body = meter.reading_body(
            lab_id="lab-a",
            site_id="dc1",
            meter_id="main-1",
            seq=seq,
            prev_digest=prev,
            interval_start_ns=t0_ns + seq * QUARTER_NS,
            interval_end_ns=t0_ns + (seq + 1) * QUARTER_NS,
            energy_mj=it_power_w * PUE_MILLI * 15 * 60,  # W x 1.25 x 900 s, in mJ
            source=pb.METER_SOURCE_GATEWAY,
        )
        raw = meter.sign_reading(gateway, body)
        prev = envelope_digest(raw)
        if seq != skip:
            out.append(raw)
    return out
