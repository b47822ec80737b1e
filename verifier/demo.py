"""``pausewatch demo``: a whole simulated lab, end to end, on one machine.

    pausewatch demo                     # writes everything under ./demo-out
    pausewatch demo --dir /tmp/demo --run-seconds 64

What it does, as real processes on loopback, with TLS:

1. makes the regulator's log key, the lab operator's key, a private CA and a verifier certificate,
   and a declared-threshold policy scaled down so that a minute of a small lab can break it;
2. starts ``pausewatch verifier serve``;
3. sets up four GPU nodes of eight simulated H100s each with ``pausewatch-agent init`` and
   ``enroll`` (the operator authorises each), and declares the lab's 32 GPUs;
4. runs the four agents. Three carry the lab's ordinary work, their GPU allocation replayed from an
   excerpt of a real cluster trace (Helios, SenseTime, 2020; one trace minute per second); the
   fourth runs one GPU-heavy job that breaks the thresholds. One background agent is killed for a
   while (SIGKILL) and restarted: a gap in the evidence. Another one lies: its sampler reports 20 %
   of the utilisation its GPUs really have, while their energy is real;
5. stops the agents; the site's meter gateway (simulated) signs the facility's readings: the
   simulated GPUs' energy, the site's other load and overhead, and eight hidden H100s that no
   agent reports and nobody declared, drawing power for a while;
6. audits: the compliance report (NON-COMPLIANT, with the violation and the
   gap, and the lying node's windows evaluated at what their energy allows), an HTML report with
   its chart, an evidence bundle exported and re-verified offline, and a
   tampered copy of the bundle that must fail.

It exits 0 only if every one of those came out as expected, and says which did not otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import click
import grpc
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import audit_pb2_grpc as apb_grpc
from pausewatch.v1 import registry_pb2 as rpb
from pausewatch.v1 import registry_pb2_grpc as rpb_grpc
from pausewatch.v1 import site_pb2, site_pb2_grpc

from attest import keys, meter
from attest.envelope import envelope_digest
from attest.errors import PausewatchError
from attest.ids import ZERO_DIGEST
from verifier.server.tlsgen import issue_client_cert, write_self_signed

S = 1_000_000_000
LAB = "frontier-lab"
SPIFFE = "spiffe://demo.pausewatch"
MARKER = ".pausewatch-demo"
WINDOW_S = 2
SAMPLE_MS = 200
GPUS_PER_NODE = 8
H100 = "NVIDIA H100 80GB HBM3"

# The timeline, in seconds from the agents' start.
HEAVY_FROM_S = 12
HEAVY_UNTIL_S = 52
KILL_AT_S = 22
RESTART_AT_S = 36
# Site power: the facility's meter (a simulated gateway) reads what the simulated GPUs drew (the
# energy their counters show), the site's other IT load and its overhead, and, for a stretch,
# eight hidden H100s that no agent reports and nobody declared.
METER_INTERVAL_S = 8
SITE_PUE_MILLI = 1_200
SITE_NON_GPU_W = 3_000
HIDDEN_GPUS = 8
HIDDEN_W = 700
HIDDEN_FOR_S = 16
"""The hidden GPUs run for this long, ending 8 s before the lab stops (40 s to 56 s of 64 s)."""
LYING_NODE = 1
"""This node's sampler reports 20 % of the utilisation its GPUs really have, while their power
and energy stay real: the energy cross-check must catch it."""

POLICY = """\
# The demo's declared thresholds. Real ones are of the order of 1e25 FLOP (EU AI Act) or 1e26
# (US EO 14110, California SB 53) over months; these are scaled to one minute of a 32-GPU lab so
# that the demo's one GPU-heavy job breaks them while the lab's ordinary work does not:
# the background (at most 6 busy H100s) does at most ~7e17 FLOP a minute and ~1.2e16 FLOP/s.
format_version = 1
policy_id = "frontier-lab-pause-demo"
version = 1
lab_id = "frontier-lab"
description = "Declared pause on frontier training (demo scale)"

[defaults]
figure = "upper_bound"

[[rules]]
id = "pause-compute-per-minute"
kind = "cumulative_flop"
window = "60s"
limit_flop = "8e17"

[[rules]]
id = "pause-sustained-rate"
kind = "sustained_rate"
interval = "10s"
limit_flop_per_s = "2e16"

[[rules]]
id = "training-run-shape"
kind = "training_signature"
min_gpus = 8
min_busy_percent = 90
min_duration = "10s"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "85%"

[[rules]]
id = "longest-gap"
kind = "max_gap"
max_gap = "6s"
"""


class DemoError(PausewatchError):
    """The demo could not run (as opposed to running and finding the wrong result)."""


@dataclass
class Node:
    name: str
    state_dir: Path
    scenario: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: bytes = b""
    log: IO[bytes] | None = None


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Demo:
    directory: Path
    run_seconds: int
    say: Callable[[str], None]
    env: dict[str, str] = field(default_factory=dict)
    verifier: subprocess.Popen[bytes] | None = None
    verifier_log: IO[bytes] | None = None
    port: int = 0
    nodes: list[Node] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    log_key: str = ""
    verdict: str = ""
    start_ns: int = 0
    end_ns: int = 0

    # -- helpers ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - our own commands, argv list
            list(argv),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.directory,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise DemoError(
                f"{' '.join(argv[2:4])} failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-800:]}"
            )
        return result

    def channel(self) -> grpc.Channel:
        """A channel as the regulator."""
        tls = self.directory / "tls"
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(tls / "ca.pem").read_bytes(),
            private_key=(tls / "regulator.key").read_bytes(),
            certificate_chain=(tls / "regulator.pem").read_bytes(),
        )
        return grpc.secure_channel(self.address, credentials)

    def ca_args(self) -> list[str]:
        return ["--verifier", self.address, "--ca-cert", str(self.directory / "tls" / "ca.pem")]

    def tls_args(self, who: str = "regulator") -> list[str]:
        """The CLI options to reach the verifier as ``who`` (regulator or operator)."""
        tls = self.directory / "tls"
        return [
            *self.ca_args(),
            "--client-cert",
            str(tls / f"{who}.pem"),
            "--client-key",
            str(tls / f"{who}.key"),
        ]

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(what, ok, detail))
        self.say(f"  [{'ok' if ok else 'FAILED'}] {what}{': ' + detail if detail else ''}")

    # -- set-up -----------------------------------------------------------------------------

    def prepare(self) -> None:
        d = self.directory
        if d.exists():
            if not (d / MARKER).exists() and any(d.iterdir()):
                raise DemoError(f"{d} exists and is not a demo directory; choose another --dir")
            shutil.rmtree(d)
        d.mkdir(parents=True)
        (d / MARKER).write_text("made by pausewatch demo; safe to delete\n", encoding="utf-8")
        keys_dir = d / "keys"
        keys_dir.mkdir()
        log_key = keys.generate_private_key()
        keys.save_private_key(keys_dir / "log.key", log_key)
        operator = keys.generate_private_key()
        keys.save_private_key(keys_dir / "operator.key", operator)
        keys.save_public_key(keys_dir / "operator.pub", operator.public_key())
        write_self_signed(d / "tls", ["127.0.0.1", "localhost"], keep_ca_key=True)
        # Roles on, as in production: the regulator's CLI, the lab operator's tool and each
        # node agent connect with a certificate whose SAN URI names who they are.
        issue_client_cert(d / "tls", "regulator", uri=f"{SPIFFE}/regulator")
        issue_client_cert(d / "tls", "operator", uri=f"{SPIFFE}/lab/{LAB}/operator")
        issue_client_cert(d / "tls", "gateway", uri=f"{SPIFFE}/lab/{LAB}/site/hq/gateway")
        gateway = keys.generate_private_key()
        keys.save_private_key(keys_dir / "gateway.key", gateway)
        (d / "site-hq.toml").write_text(
            f"""# The lab's one site, as the regulator declares it. See docs/site-power.md.
format_version = 1
site_id = "hq"
name = "Frontier Lab HQ (simulated)"
version = 1
pue = "{SITE_PUE_MILLI / 1000}"
non_gpu_load_kw = "{SITE_NON_GPU_W // 1000}"
tolerance_percent = "10"
nodes = "all"

[[meter]]
id = "hq-main"
source = "gateway"
public_key = "{keys.format_public_key(gateway.public_key())}"
""",
            encoding="utf-8",
        )
        (d / "policy.toml").write_text(POLICY, encoding="utf-8")
        trace = d / "helios_vchbv_excerpt.csv"
        data = resources.files("verifier").joinpath("demo_data")
        trace.write_bytes(data.joinpath("helios_vchbv_excerpt.csv").read_bytes())
        (d / "LICENSE-helios.txt").write_bytes(data.joinpath("LICENSE-helios.txt").read_bytes())
        (d / "verifier.toml").write_text(
            f"""# The demo's verifier. See docs/verifier.md.
[server]
listen = "127.0.0.1:0"
tls_cert = "tls/server.pem"
tls_key = "tls/server.key"
client_ca = "tls/ca.pem"          # mutual TLS: the client certificate decides the role
shutdown_grace_s = 5

[log]
origin = "demo.pausewatch/verifier"
signing_key = "keys/log.key"
checkpoint_interval_s = 2

[store]
path = "verifier.db"

[ingest]
accept_backends = ["sim"]        # a real deployment accepts "nvml" only
bucket_ms = {WINDOW_S * 1000}
gap_tolerance_ms = 1000
open_gap_grace_ms = 6000
max_clock_skew_s = 60
# Windows of 2 s: an agent poll that a busy machine delays by a second puts half a window's
# energy into the wrong window. The default (1.25x) assumes 60 s windows, where it is a few %.
energy_mismatch_factor_ppm = 2000000

[monitor]
interval_s = 5                   # breaches logged as findings within seconds (default 60)
late_s = 600

[access]                          # who may call what (docs/verifier.md, "Roles")
unauthenticated_role = "public"

[[access.identities]]
uri = "{SPIFFE}/regulator"
role = "regulator"

[[access.identities]]
uri = "{SPIFFE}/lab/{LAB}/operator"
role = "lab_operator"
lab = "{LAB}"

[[access.identities]]
uri = "{SPIFFE}/lab/{LAB}/site/hq/gateway"
role = "meter_gateway"

[[access.identities]]
uri_prefix = "{SPIFFE}/lab/{LAB}/node/"   # followed by the node id
role = "node_agent"
lab = "{LAB}"

[[labs]]
id = "{LAB}"
name = "Frontier Lab (simulated)"
operator_public_key = "keys/operator.pub"
policy = "policy.toml"
sites = ["site-hq.toml"]
""",
            encoding="utf-8",
        )
        self.log_key = keys_note_key(log_key, "demo.pausewatch/verifier")

    def start_verifier(self) -> None:
        d = self.directory
        self.verifier_log = (d / "verifier.log").open("ab")
        self.verifier = subprocess.Popen(  # noqa: S603 - our own command
            self.python(
                "verifier.cli",
                "verifier",
                "serve",
                "--config",
                str(d / "verifier.toml"),
                "--port-file",
                str(d / "verifier.port"),
            ),
            cwd=d,
            env=self.env,
            stdout=self.verifier_log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        port_file = d / "verifier.port"
        while not port_file.exists():
            if self.verifier.poll() is not None:
                raise DemoError(f"the verifier exited at start; see {d / 'verifier.log'}")
            if time.monotonic() > deadline:
                raise DemoError("the verifier did not start within 30 s")
            time.sleep(0.05)
        self.port = int(port_file.read_text(encoding="ascii"))
        self.say(f"verifier serving on {self.address} (TLS, log key {self.log_key[:40]}...)")

    def scenario(self, node: int, origin_s: int) -> str:
        base = f"""seed = {100 + node}
gpu_model = "{H100}"
gpu_count = {GPUS_PER_NODE}
gpm = true
start_unix_s = {origin_s}

[power]
idle_w = 70
max_w = 700

[utilization]
busy_pct = 95
idle_pct = 0
jitter_pct = 3
tensor_active_fraction = 0.6
{"reported_fraction = 0.2" if node == LYING_NODE else ""}
"""
        if node == 4:  # the GPU-heavy job
            return (
                base
                + f"""
[[phase]]
from_s = 0
busy_gpus = 0

[[phase]]
from_s = {HEAVY_FROM_S}
busy_gpus = {GPUS_PER_NODE}

[[phase]]
from_s = {HEAVY_UNTIL_S}
busy_gpus = 0
"""
            )
        return (
            base
            + f"""
[trace]
file = "{self.directory / "helios_vchbv_excerpt.csv"}"
running_column = "running_gpu_num"
total_column = "total_gpu_num"
seconds_per_row = 1.0
start_row = 0
"""
        )

    def setup_nodes(self, origin_s: int) -> None:
        d = self.directory
        operator_key = str(d / "keys" / "operator.key")
        for i in range(1, 5):
            name = f"gpu-node-{i}"
            state = d / "nodes" / name
            node = Node(name, state, state / "scenario.toml", d / "nodes" / f"{name}.log")
            init = self.run(
                self.python(
                    "agent.cli",
                    "init",
                    "--state-dir",
                    str(state),
                    "--lab",
                    LAB,
                    *self.ca_args(),
                    "--node-name",
                    name,
                    "--backend",
                    "sim",
                    "--json",
                )
            )
            node_hex = json.loads(init.stdout)["node_id"]
            cert, key = issue_client_cert(
                d / "tls", f"node-{i}", uri=f"{SPIFFE}/lab/{LAB}/node/{node_hex}"
            )
            node.scenario.write_text(self.scenario(i, origin_s), encoding="utf-8")
            (state / "config.toml").write_text(
                f"""[node]
lab_id = "{LAB}"
name = "{name}"

[sampling]
backend = "sim"
sample_interval_ms = {SAMPLE_MS}
window_s = {WINDOW_S}

[verifier]
address = "{self.address}"
ca_cert = "{d / "tls" / "ca.pem"}"
client_cert = "{cert}"
client_key = "{key}"
backoff_initial_ms = 200
backoff_max_ms = 2000

[logging]
level = "warning"
""",
                encoding="utf-8",
            )
            result = self.run(
                self.python(
                    "agent.cli",
                    "enroll",
                    "--state-dir",
                    str(state),
                    "--scenario",
                    str(node.scenario),
                    "--operator-key",
                    operator_key,
                    "--json",
                )
            )
            node.node_id = bytes.fromhex(json.loads(result.stdout)["node_id"])
            self.nodes.append(node)
        # The operator declares every GPU of the lab.
        with self.channel() as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            uuids: list[tuple[str, str]] = []
            for node in self.nodes:
                info = registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id), timeout=10).node
                uuids += [(gpu.uuid, gpu.model) for gpu in info.gpus]
        inventory = d / "inventory.toml"
        inventory.write_text(
            "".join(f'[[gpu]]\nuuid = "{u}"\nmodel = "{m}"\n\n' for u, m in uuids),
            encoding="utf-8",
        )
        self.run(
            self.python(
                "agent.cli",
                "operator",
                "declare-inventory",
                "--operator-key",
                operator_key,
                "--lab",
                LAB,
                "--inventory",
                str(inventory),
                "--version",
                "1",
                *self.tls_args("operator"),
            )
        )
        self.say(f"4 nodes enrolled, {len(uuids)} GPUs declared by the lab operator")

    def start_agent(self, node: Node) -> None:
        node.log = node.log_path.open("ab")
        node.process = subprocess.Popen(  # noqa: S603 - our own command
            self.python(
                "agent.cli",
                "run",
                "--state-dir",
                str(node.state_dir),
                "--backend",
                "sim",
                "--scenario",
                str(node.scenario),
            ),
            cwd=self.directory,
            env=self.env,
            stdout=node.log,
            stderr=subprocess.STDOUT,
        )

    # -- the run ----------------------------------------------------------------------------

    def progress(self, elapsed_s: float, note: str) -> None:
        with self.channel() as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            audit = apb_grpc.AuditServiceStub(channel)
            nodes = {
                n.node_id: n
                for n in registry.ListNodes(rpb.ListNodesRequest(lab_id=LAB), timeout=10).nodes
            }
            findings = audit.ListFindings(
                apb.ListFindingsRequest(lab_id=LAB, page_size=1000), timeout=10
            ).findings
            size = audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=10).tree_size
        parts = []
        for node in self.nodes:
            info = nodes.get(node.node_id)
            down = node.process is None or node.process.poll() is not None
            windows = info.head_seq + 1 if info is not None and info.has_head else 0
            parts.append(f"{node.name[-6:]} {'DOWN' if down else f'{windows:3d}w'}")
        self.say(
            f"[{elapsed_s:5.1f}s] "
            + " | ".join(parts)
            + f" | log {size} | findings {len(findings)}{' | ' + note if note else ''}"
        )

    def run_lab(self) -> None:
        for node in self.nodes:
            self.start_agent(node)
        begin = time.monotonic()
        killed = restarted = False
        last_progress = -10.0
        last_note = ""
        self.say(
            f"running the lab for {self.run_seconds} s: heavy job on gpu-node-4 from "
            f"{HEAVY_FROM_S} s to {HEAVY_UNTIL_S} s; gpu-node-3 killed at {KILL_AT_S} s, "
            f"restarted at {RESTART_AT_S} s"
        )
        while True:
            elapsed = time.monotonic() - begin
            if elapsed >= self.run_seconds:
                break
            note = ""
            if not killed and elapsed >= KILL_AT_S:
                victim = self.nodes[2]
                assert victim.process is not None
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait(timeout=10)
                killed = True
                note = "gpu-node-3 killed (SIGKILL)"
            if killed and not restarted and elapsed >= RESTART_AT_S:
                self.start_agent(self.nodes[2])
                restarted = True
                note = "gpu-node-3 restarted"
            if HEAVY_FROM_S <= elapsed < HEAVY_UNTIL_S and not note:
                note = "heavy job running on gpu-node-4"
            if note != last_note or elapsed - last_progress >= 4:
                last_note = note
                try:
                    self.progress(elapsed, note)
                except grpc.RpcError:
                    self.say(f"[{elapsed:5.1f}s] (verifier busy)")
                last_progress = elapsed
            time.sleep(0.25)
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    raise DemoError(f"{node.name}'s agent did not stop within 20 s") from None
        self.end_ns = time.time_ns()
        self.progress(time.monotonic() - begin, "agents stopped")

    # -- the site meter ---------------------------------------------------------------------

    def hidden_stretch_ns(self) -> tuple[int, int]:
        """When the hidden GPUs draw power."""
        until = self.start_ns + (self.run_seconds - 8) * S
        return until - HIDDEN_FOR_S * S, until

    def gateway_channel(self) -> grpc.Channel:
        """A channel as the site's meter gateway."""
        tls = self.directory / "tls"
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(tls / "ca.pem").read_bytes(),
            private_key=(tls / "gateway.key").read_bytes(),
            certificate_chain=(tls / "gateway.pem").read_bytes(),
        )
        return grpc.secure_channel(self.address, credentials)

    def meter_site(self) -> None:
        """The simulated gateway signs the site meter's readings for the run and sends them.

        What the meter measures is simulated: the energy the simulated GPUs drew (as their
        counters show: the simulation's truth), the declared non-GPU load, the hidden GPUs while
        they run, all times the PUE. The verifier knows only the readings."""
        first_bucket = -(-self.start_ns // (WINDOW_S * S)) * (WINDOW_S * S)
        period = ["--lab", LAB, "--since", _iso(first_bucket), "--until", _iso(self.end_ns)]
        run = self.run(
            self.python("verifier.cli", "audit", "report", *self.tls_args(), *period, "--json"),
            check=False,
        )
        report = json.loads(run.stdout) if run.stdout else {}
        gpu_mj = {
            int(p["bucket_start_ns"]): int(p.get("energy_mj", 0)) for p in report.get("series", [])
        }
        # A killed agent's GPUs still drew power: what their counters show across the gap.
        gaps = [
            (int(g["gap"]["gap_start_ns"]), int(g["gap"]["gap_end_ns"]), int(g["gap"]["energy_mj"]))
            for g in report.get("gaps", [])
            if g["gap"].get("energy_bounded") and int(g["gap"].get("energy_mj", 0))
        ]
        signer = keys.Ed25519Signer.from_private_key(
            keys.load_private_key(self.directory / "keys" / "gateway.key")
        )
        hidden_from, hidden_until = self.hidden_stretch_ns()
        raws: list[bytes] = []
        prev = ZERO_DIGEST
        start = first_bucket
        seq = 0
        while start + METER_INTERVAL_S * S <= self.end_ns:
            end = start + METER_INTERVAL_S * S
            gpus = sum(mj for bucket, mj in gpu_mj.items() if start <= bucket < end)
            gpus += sum(meter.prorated_mj(mj, g0, g1, start, end) for g0, g1, mj in gaps)
            hidden_ms = max(0, min(end, hidden_until) - max(start, hidden_from)) // 1_000_000
            it_mj = gpus + SITE_NON_GPU_W * METER_INTERVAL_S * 1_000
            it_mj += HIDDEN_GPUS * HIDDEN_W * hidden_ms
            body = meter.reading_body(
                lab_id=LAB,
                site_id="hq",
                meter_id="hq-main",
                seq=seq,
                prev_digest=prev,
                interval_start_ns=start,
                interval_end_ns=end,
                energy_mj=it_mj * SITE_PUE_MILLI // 1_000,
                source=site_pb2.METER_SOURCE_GATEWAY,
            )
            raw = meter.sign_reading(signer, body)
            raws.append(raw)
            prev = envelope_digest(raw)
            start, seq = end, seq + 1
        with self.gateway_channel() as channel:
            response = site_pb2_grpc.SiteServiceStub(channel).SubmitMeterReadings(
                site_pb2.SubmitMeterReadingsRequest(envelopes=raws), timeout=30
            )
        accepted = sum(1 for r in response.receipts if r.accepted)
        self.say(
            f"site meter hq-main: {accepted} of {len(raws)} readings of {METER_INTERVAL_S} s "
            f"accepted (eight hidden H100s drew power from {(hidden_from - self.start_ns) // S} s "
            f"to {(hidden_until - self.start_ns) // S} s, with no agent)"
        )
        if accepted != len(raws):
            raise DemoError(f"the verifier refused site meter readings: {response.receipts}")

    # -- the audit --------------------------------------------------------------------------

    def audit(self) -> None:
        d = self.directory
        since = str(self.start_ns // S * S)
        until = str((self.end_ns + S) // S * S)
        period = ["--lab", LAB, "--since", _iso(int(since)), "--until", _iso(int(until))]
        self.say("")
        self.say("$ pausewatch audit report --lab frontier-lab ... --html report.html")
        report_run = self.run(
            self.python(
                "verifier.cli",
                "audit",
                "report",
                *self.tls_args(),
                *period,
                "--html",
                str(d / "report.html"),
            ),
            check=False,
        )
        self.say(report_run.stdout.rstrip())
        json_run = self.run(
            self.python("verifier.cli", "audit", "report", *self.tls_args(), *period, "--json"),
            check=False,
        )
        report: dict[str, Any] = json.loads(json_run.stdout) if json_run.stdout else {}
        self.say("")
        self.say("checks:")
        self.check(
            "the audit command exits 1 (non-compliant)",
            report_run.returncode == 1,
            f"exit {report_run.returncode}",
        )
        verdict = self.verdict = report.get("verdict", "")
        self.check("the verdict is VIOLATION", verdict == "VERDICT_VIOLATION", verdict)
        violated = [
            r["rule_id"]
            for r in report.get("rules", [])
            if r.get("outcome") == "RULE_OUTCOME_VIOLATION"
        ]
        self.check(
            "the GPU-heavy job breaks the declared thresholds",
            "pause-compute-per-minute" in violated and "training-run-shape" in violated,
            ", ".join(violated) or "no rule violated",
        )
        node3 = self.nodes[2].node_id.hex()
        gaps = [
            g
            for g in report.get("gaps", [])
            if _b64hex(g.get("node_id", "")) == node3
            and int(g["gap"]["gap_end_ns"]) - int(g["gap"]["gap_start_ns"]) >= 6 * S
        ]
        self.check(
            "the killed agent's gap is reported",
            bool(gaps),
            f"{len(gaps)} gap(s) of 6 s or more on gpu-node-3",
        )
        sites = report.get("sites", [])
        excess = [
            (int(p["bucket_start_ns"]), int(p.get("excess_mj", 0)))
            for site in sites
            for p in site.get("series", [])
            if int(p.get("excess_mj", 0))
        ]
        slack_ns = METER_INTERVAL_S * S
        hidden_from, hidden_until = self.hidden_stretch_ns()
        inside = all(
            hidden_from - slack_ns <= start < hidden_until + slack_ns for start, _ in excess
        )
        self.check(
            "the site meter shows the hidden GPUs' energy, and nothing else unexplained",
            bool(excess) and inside,
            f"{sum(mj for _, mj in excess) // 1000} J unexplained past the tolerance in "
            f"{len(excess)} bucket(s), "
            + ("all" if inside else "NOT all")
            + f" within the hidden stretch; bound {sites[0].get('bound_flop', '0') if sites else 0}"
            " FLOP",
        )
        liar = self.nodes[LYING_NODE - 1].node_id.hex()
        mismatched = {
            _b64hex(item.get("node_id", ""))
            for item in report.get("flagged", [])
            if item.get("flag") == "WINDOW_FLAG_ENERGY_MISMATCH"
        }
        self.check(
            f"gpu-node-{LYING_NODE}'s under-reported utilisation is caught by its energy, and "
            "no honest node is flagged",
            mismatched == {liar},
            f"energy mismatches on {len(mismatched)} node(s)"
            + (f", {len(mismatched - {liar})} honest" if mismatched - {liar} else ""),
        )
        findings_run = self.run(
            self.python(
                "verifier.cli", "audit", "findings", *self.tls_args(), "--lab", LAB,
                "--kind", "threshold_exceeded", "--kind", "training_signature", "--json",
            ),
            check=False,
        )  # fmt: skip
        alarms = [json.loads(line) for line in findings_run.stdout.splitlines() if line.strip()]
        alarmed = sorted({a["finding"]["summary"].split(":")[0] for a in alarms})
        self.check(
            "the policy monitor logged the breach as findings while the lab ran",
            findings_run.returncode == 0
            and any(a["finding"].get("kind") == "FINDING_KIND_THRESHOLD_EXCEEDED" for a in alarms),
            ", ".join(alarmed) or "none",
        )
        html = d / "report.html"
        html_text = html.read_text(encoding="utf-8") if html.exists() else ""
        self.check(
            "the HTML report is written, with its chart",
            'id="compute-chart"' in html_text and 'class="gap"' in html_text,
            str(html),
        )
        bundle = d / "frontier-lab.pwbundle"
        self.say("")
        self.say("$ pausewatch audit export --lab frontier-lab ... --out frontier-lab.pwbundle")
        export_run = self.run(
            self.python(
                "verifier.cli", "audit", "export", *self.tls_args(), *period, "--out", str(bundle)
            ),
            check=False,
        )
        self.say(export_run.stdout.rstrip() or export_run.stderr.rstrip())
        self.check(
            "the evidence bundle is exported", export_run.returncode == 0 and bundle.exists()
        )
        self.say("$ pausewatch audit verify-bundle frontier-lab.pwbundle --log-key ...")
        verify_run = self.run(
            self.python(
                "verifier.cli",
                "audit",
                "verify-bundle",
                str(bundle),
                "--log-key",
                self.log_key,
                "--json",
            ),
            check=False,
        )
        verified: dict[str, Any] = json.loads(verify_run.stdout) if verify_run.stdout else {}
        self.check(
            "the bundle re-verifies offline and agrees with the server figure for figure",
            verified.get("ok") is True and verified.get("agrees_with_server") is True,
            f"exit {verify_run.returncode}, verdict {verified.get('verdict')}",
        )
        tampered = d / "frontier-lab.tampered.pwbundle"
        data = bytearray(bundle.read_bytes()) if bundle.exists() else bytearray()
        if data:
            data[len(data) // 2] ^= 0x01
        tampered.write_bytes(bytes(data))
        tamper_run = self.run(
            self.python(
                "verifier.cli",
                "audit",
                "verify-bundle",
                str(tampered),
                "--log-key",
                self.log_key,
                "--json",
            ),
            check=False,
        )
        caught: dict[str, Any] = json.loads(tamper_run.stdout) if tamper_run.stdout else {}
        first = (caught.get("failures") or caught.get("differences") or ["?"])[0]
        self.check(
            "a one-byte change to the bundle is caught (exit 3)",
            tamper_run.returncode == 3,
            f"exit {tamper_run.returncode}: {first}",
        )

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=10)
            if node.log is not None:
                node.log.close()
        if self.verifier is not None and self.verifier.poll() is None:
            self.verifier.send_signal(signal.SIGTERM)
            try:
                self.verifier.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.verifier.kill()
        if self.verifier_log is not None:
            self.verifier_log.close()


def keys_note_key(private: Any, origin: str) -> str:
    from attest.note import format_verifier_key

    return format_verifier_key(origin, private.public_key().public_bytes_raw())


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // S))


def _b64hex(value: str) -> str:
    import base64

    try:
        return base64.b64decode(value).hex()
    except ValueError:
        return ""


@dataclass(frozen=True)
class DemoResult:
    """How the demo came out (``pausewatch demo --json`` prints it)."""

    ok: bool
    seconds: int
    directory: Path
    verdict: str
    checks: tuple[Check, ...]
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": self.seconds,
            "directory": str(self.directory),
            "report_html": str(self.directory / "report.html"),
            "bundle": str(self.directory / f"{LAB}.pwbundle"),
            "verdict": self.verdict,
            "checks": [{"what": c.what, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "error": self.error,
        }


def run_demo(directory: Path, run_seconds: int, say: Callable[[str], None]) -> int:
    """Run the whole demo; returns the process exit code (0: everything as expected)."""
    return 0 if demo_result(directory, run_seconds, say).ok else 1


def demo_result(directory: Path, run_seconds: int, say: Callable[[str], None]) -> DemoResult:
    """Run the whole demo, telling the story through ``say``; returns how it came out."""
    started = time.monotonic()
    env = dict(os.environ)
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(
        [str(repo), str(repo / "protos"), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    demo = Demo(directory=directory.resolve(), run_seconds=run_seconds, say=say, env=env)
    try:
        say(f"pausewatch demo: a simulated lab of 4 nodes x 8 H100s, in {demo.directory}")
        demo.prepare()
        demo.start_verifier()
        origin_s = int(time.time()) + 3
        demo.setup_nodes(origin_s)
        while time.time() < origin_s:
            time.sleep(0.05)
        demo.start_ns = time.time_ns()
        demo.run_lab()
        demo.meter_site()
        demo.audit()
    except DemoError as exc:
        say(f"demo failed to run: {exc.diagnostics()}")
        return DemoResult(
            ok=False,
            seconds=round(time.monotonic() - started),
            directory=demo.directory,
            verdict=demo.verdict,
            checks=tuple(demo.checks),
            error=exc.diagnostics(),
        )
    finally:
        demo.stop()
    failed = [c.what for c in demo.checks if not c.ok]
    took = round(time.monotonic() - started)
    result = DemoResult(
        ok=not failed,
        seconds=took,
        directory=demo.directory,
        verdict=demo.verdict,
        checks=tuple(demo.checks),
    )
    say("")
    if failed:
        say(f"DEMO FAILED ({took} s): " + "; ".join(failed))
        return result
    say(
        f"demo complete in {took} s: every check as expected. Open "
        f"{demo.directory / 'report.html'} in a browser; the bundle is "
        f"{demo.directory / f'{LAB}.pwbundle'}."
    )
    return result


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Where to put keys, logs, the report and the bundle (replaced if a previous demo's).",
)
@click.option(
    "--run-seconds",
    type=click.IntRange(min=RESTART_AT_S + 10),
    default=64,
    show_default=True,
    help="How long the simulated lab runs.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the outcome as JSON on stdout (the story goes to stderr).",
)
@click.pass_context
def demo_command(ctx: click.Context, directory: Path, run_seconds: int, as_json: bool) -> None:
    """Run a whole simulated lab end to end and audit it (exit 0 if all came out as expected)."""
    if not as_json:
        ctx.exit(run_demo(directory, run_seconds, click.echo))
    result = demo_result(directory, run_seconds, lambda line: click.echo(line, err=True))
    click.echo(json.dumps(result.to_json(), indent=2))
    ctx.exit(0 if result.ok else 1)
