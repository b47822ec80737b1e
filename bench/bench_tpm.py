"""What a TPM quote costs the verifier per window, against the window's own verification.

    python bench/bench_tpm.py [--windows 100] [--ima-lines 10] [--rounds 5]

A swtpm (started here, with its own local CA) quotes ``--windows`` real window bodies of an
8-GPU node, each with ``--ima-lines`` new IMA entries extended into PCR 10. The baseline is
``attest.attestation`` verification of those windows' envelopes (canonical parse, Ed25519,
body parse and validation) with the quote stripped; the measured path is
``verifier.tpm.check_window_quote`` over the same windows in chain order (signature, binding,
nonce age, PCR digest, IMA replay, allowlist). It prints both per window and the ratio
quote-check / window-verify (lower is cheaper), and the agent's cost of one quote through
tpm2-tools (three processes) for information. Rounds alternate; medians are compared. No goal is
set: the figure says what turning on quotes adds to ingest. Skips (exit 0) without swtpm.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "protos"),
]

from agent.tpm import tpm2_tools_available  # noqa: E402
from agent.tpm_quotes import ImaLog, WindowQuoter  # noqa: E402
from attest import attestation, envelope, tpm  # noqa: E402
from tests.builders import TestNode  # noqa: E402
from tests.tpm_setup import SwtpmCa, measure, start_swtpm  # noqa: E402
from verifier.tpm import TpmSettings, check_window_quote  # noqa: E402

S = 10**9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--ima-lines", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("swtpm") is None or not tpm2_tools_available():
        print("bench_tpm: skipped (swtpm or tpm2-tools not installed)")
        return 0

    node = TestNode.from_seed(1, gpus=8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with start_swtpm(SwtpmCa.create(root / "ca"), root / "tpm") as device:
            tools = device.tools()
            ak = tpm.load_tpm_public(tools.ensure_attestation_key())
            ima_file = root / "ima"
            quoter = WindowQuoter(tools, ImaLog(ima_file))
            bodies, raws, allowed = [], [], set()
            prev = bytes(32)
            quote_s = []
            nonce = (node.t0_ns).to_bytes(8, "big") + bytes(16)
            for seq in range(args.windows):
                for line in range(args.ima_lines):
                    path = f"/opt/lab/bin/tool-{seq}-{line}"
                    digest = hashlib.sha256(path.encode()).digest()
                    measure(device, ima_file, path, digest)
                    allowed.add((path, digest))
                body = node.body(seq, prev, nonce=nonce)
                started = time.perf_counter()
                quoter.attach(body)
                quote_s.append(time.perf_counter() - started)
                bodies.append(body)
                stripped = type(body)()
                stripped.CopyFrom(body)
                stripped.ClearField("tpm_quote")
                raw = node.sign_body(body)
                raws.append(node.sign_body(stripped))
                prev = envelope.envelope_digest(raw)

    ring = envelope.StaticKeyring()
    ring.add(node.signer.public_key)
    settings = TpmSettings(quote_nonce_max_age_ns=10**6 * S)
    allowlist = frozenset(allowed)

    def verify_windows() -> float:
        started = time.perf_counter()
        for raw in raws:
            attestation.verify_attestation(raw, ring)
        return time.perf_counter() - started

    def check_quotes() -> float:
        started = time.perf_counter()
        state = None
        for body in bodies:
            outcome = check_window_quote(ak, body, state, settings, allowlist)
            if outcome.status != 1 or outcome.unknown:
                raise SystemExit(f"bench_tpm: a quote did not verify: {outcome}")
            state = outcome.state
        return time.perf_counter() - started

    base, quoted = [], []
    for _ in range(args.rounds):
        base.append(verify_windows())
        quoted.append(check_quotes())
    base_us = statistics.median(base) / args.windows * 1e6
    quoted_us = statistics.median(quoted) / args.windows * 1e6
    print(f"windows={args.windows} gpus=8 ima_lines_per_quote={args.ima_lines}")
    print(f"window verify (baseline)   {base_us:9.1f} us/window")
    print(f"quote check                {quoted_us:9.1f} us/window")
    print(f"ratio quote/window         {quoted_us / base_us:9.2f}")
    print(
        f"agent: one quote via tpm2-tools (swtpm)  median {statistics.median(quote_s) * 1e3:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
