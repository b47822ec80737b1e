"""Envelope verification throughput against raw Ed25519 verification, in the same run.

    python bench/bench_envelope.py [--envelopes 2000] [--rounds 7]

The baseline is `cryptography`'s Ed25519 verify over the exact signed message with a preloaded
public key: the floor no library can go under. The library path is `attest.envelope.
verify_envelope` on the received bytes (size check, canonical parse, digest, payload type, key
lookup, signature). The goal is a ratio >= 0.90: the library adds almost nothing on top of the
signature check. Rounds alternate between the two so machine noise hits both alike; the median
round of each is compared. A line for full attestation verification (body parse and validation
too) is printed for information.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "protos"),
]

from attest import attestation, envelope  # noqa: E402
from tests.builders import TestNode  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envelopes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    node = TestNode.from_seed(1, gpus=8)
    raws = [node.sign_body(node.body(seq)) for seq in range(args.envelopes)]
    ring = envelope.StaticKeyring()
    ring.add(node.signer.public_key)
    public_key = node.signer.public_key
    parsed = [envelope.parse_envelope(raw) for raw in raws]
    signed = [(p.signature, envelope.pae(p.payload_type.encode(), p.payload)) for p in parsed]
    atype = envelope.PayloadType.ATTESTATION

    def raw_ed25519() -> None:
        verify = public_key.verify
        for signature, message in signed:
            verify(signature, message)

    def library() -> None:
        verify = envelope.verify_envelope
        for raw in raws:
            verify(raw, ring, payload_type=atype)

    def full_attestation() -> None:
        verify = attestation.verify_attestation
        for raw in raws:
            verify(raw, ring)

    timings: dict[str, list[float]] = {"raw": [], "library": [], "attestation": []}
    for _ in range(args.rounds):
        for name, fn in (
            ("raw", raw_ed25519),
            ("library", library),
            ("attestation", full_attestation),
        ):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)

    n = args.envelopes
    rate = {name: n / statistics.median(values) for name, values in timings.items()}
    size = statistics.mean(len(r) for r in raws)
    print(f"envelopes: {n} x {args.rounds} rounds, {size:.0f} bytes each (8-GPU attestation)")
    print(f"raw Ed25519 verify:         {rate['raw']:10.0f} /s")
    print(f"verify_envelope:            {rate['library']:10.0f} /s")
    print(f"verify_attestation (+body): {rate['attestation']:10.0f} /s")
    ratio = rate["library"] / rate["raw"]
    print(f"ratio verify_envelope / raw Ed25519: {ratio:.3f} (goal >= 0.90)")
    full = rate["attestation"] / rate["raw"]
    print(f"ratio verify_attestation / raw Ed25519: {full:.3f} (information)")
    return 0 if ratio >= 0.90 else 1


if __name__ == "__main__":
    sys.exit(main())
