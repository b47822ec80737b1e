"""Disk use of the agent's spool: bytes per window and per GPU, per day, and at the default
retention, measured on a spool the real daemon writes.

    python bench/bench_spool_size.py [--gpus 8] [--hours 2]

The daemon (agent.daemon.Daemon) runs over the sim backend with a fake clock (so hours take
seconds), 1 Hz samples, 60 s windows, no shipping; every window is signed and stored as in
production (envelope, raw samples, SQLite WAL). Reported: the envelope and the raw samples per
window (summed from the spool's own rows), the database file per window after a checkpoint (so
SQLite's pages and indexes count), and from those the bytes per day and at the default retention
(samples kept ``samples_retention_days``, acknowledged envelopes ``acked_retention_days``).
docs/agent.md, "Disk sizing", quotes a run of this script.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "protos"),
]

from agent.config import load_config  # noqa: E402
from agent.daemon import Daemon, DaemonOptions, spool_path  # noqa: E402
from agent.sampler.sim import SimSampler, load_scenario  # noqa: E402
from attest import keys  # noqa: E402
from tests.fakes import FakeClock  # noqa: E402

S = 1_000_000_000
T0_NS = 1_764_403_200_000_000_000
WINDOWS_PER_DAY = 1440


class StopAfter:
    def __init__(self, inner: SimSampler, polls: int) -> None:
        self.inner = inner
        self.polls = polls
        self.count = 0
        self.daemon: Daemon | None = None
        self.backend = inner.backend
        self.sample_interval_ms = inner.sample_interval_ms
        self.realtime = inner.realtime

    def open(self, now_ns: int | None = None) -> None:
        self.inner.open(now_ns)

    def inventory(self):  # type: ignore[no-untyped-def]
        return self.inner.inventory()

    def close(self) -> None:
        self.inner.close()

    def poll(self, now_ns: int):  # type: ignore[no-untyped-def]
        self.count += 1
        if self.count >= self.polls and self.daemon is not None:
            self.daemon.stop()
        return self.inner.poll(now_ns)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch)
        private = keys.generate_private_key()
        keys.save_private_key(state / "node.key", private)
        keys.save_public_key(state / "node.pub", private.public_key())
        (state / "scenario.toml").write_text(
            f'seed = 3\ngpu_model = "NVIDIA H100 80GB HBM3"\ngpu_count = {args.gpus}\n'
            "gpm = true\n[[phase]]\nfrom_s = 0\nbusy_gpus = 2\n"
        )
        (state / "config.toml").write_text(
            f'[node]\nlab_id = "lab-bench"\nstate_dir = "{state}"\n'
            '[sampling]\nbackend = "sim"\nsample_interval_ms = 1000\nwindow_s = 60\n'
            '[verifier]\naddress = "127.0.0.1:1"\ninsecure_no_tls = true\n'
            '[sim]\nscenario = "scenario.toml"\n'
        )
        config = load_config(state / "config.toml")
        assert config.sim.scenario is not None
        sim = SimSampler(load_scenario(config.sim.scenario), sample_interval_ms=1000,
                         boot_time_ns=T0_NS - 3600 * S)  # fmt: skip
        polls = int(args.hours * 3600)
        sampler = StopAfter(sim, polls)
        signer = keys.Ed25519Signer.from_private_key(private)
        daemon = Daemon(config, sampler, signer, clock=FakeClock(T0_NS),  # type: ignore[arg-type]
                        options=DaemonOptions(ship=False))  # fmt: skip
        sampler.daemon = daemon
        daemon.run()
        path = spool_path(config)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            windows, envelope_bytes = db.execute(
                "SELECT COUNT(*), SUM(LENGTH(envelope)) FROM envelopes WHERE seq > 0"
            ).fetchone()
            (sample_bytes,) = db.execute(
                "SELECT SUM(LENGTH(encoded)) FROM samples WHERE seq > 0"
            ).fetchone()
            db.execute("VACUUM")
        file_bytes = path.stat().st_size
    # seq 0 is the partial first window: left out of the per-window figures.
    envelope_w = envelope_bytes / windows
    samples_w = sample_bytes / windows
    file_w = file_bytes / (windows + 1)
    overhead = file_w / (envelope_w + samples_w)
    day_envelopes = envelope_w * WINDOWS_PER_DAY * overhead
    day_samples = samples_w * WINDOWS_PER_DAY * overhead
    samples_days = config.spool.samples_retention_days
    acked_days = config.spool.acked_retention_days
    retained = day_samples * samples_days + day_envelopes * acked_days
    mb = 1e6
    print(f"sim, {args.gpus} GPUs, 1 Hz, 60 s windows, {windows + 1} windows signed by the daemon")
    print(
        f"envelope per window:         {envelope_w:10.0f} B  ({envelope_w / args.gpus:7.0f} B/GPU)"
    )
    print(f"raw samples per window:      {samples_w:10.0f} B  ({samples_w / args.gpus:7.0f} B/GPU)")
    print(f"spool file per window:       {file_w:10.0f} B  ({file_w / args.gpus:7.0f} B/GPU),"
          f" SQLite overhead x{overhead:.2f}")  # fmt: skip
    print(
        f"per day (1440 windows):      {(day_envelopes + day_samples) / mb:10.1f} MB"
        f"  (envelopes {day_envelopes / mb:.1f} MB, samples {day_samples / mb:.1f} MB)"
    )
    print(f"at the default retention ({samples_days} d samples, {acked_days} d envelopes): "
          f"{retained / mb:8.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
