"""A real pausewatch-agent with a (software) TPM, enrolled and shipping to a real verifier process.

``pausewatch-agent enroll`` with ``[tpm] tcti`` set enrols with the EK certificate and an activated
AK; ``run`` quotes every window with the IMA entries since the last quote. The test plays the
kernel (it writes the IMA list and extends PCR 10 of the swtpm) and then the lab swapping the
agent binary: the verifier reports the new measurement.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from attest import keys
from tests.agent_process import AgentProcess, wait_until
from tests.agent_setup import write_state_dir
from tests.builders import fixed_private_key
from tests.cli_runner import run_agent_cli
from tests.tpm_setup import SwtpmCa, measure, require_swtpm, start_swtpm
from tests.verifier_harness import start_verifier_process, stop_process, write_verifier_files

AGENT = "/usr/bin/pausewatch-agent"
AGENT_V1 = hashlib.sha256(b"agent v1").digest()


@pytest.mark.slow
def test_a_real_agent_enrols_with_its_tpm_and_quotes_every_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_swtpm()
    ca = SwtpmCa.create(tmp_path / "ca")
    with start_swtpm(ca, tmp_path / "tpm") as device:
        directory = tmp_path / "verifier"
        directory.mkdir()
        (directory / "ek-cas.pem").write_bytes(ca.root_pem + ca.intermediate_pem)
        (directory / "allowlist.txt").write_text(f"{AGENT_V1.hex()}  {AGENT}\n")
        files = write_verifier_files(
            directory,
            extra_config='[tpm]\nmanufacturer_cas = ["ek-cas.pem"]\n',
            extra_lab='ima_allowlist = "allowlist.txt"',
        )
        verifier = start_verifier_process(files, directory / "verifier.log")
        agent: AgentProcess | None = None
        try:
            ima = tmp_path / "ascii_runtime_measurements"
            measure(device, ima, AGENT, AGENT_V1)
            config = write_state_dir(
                tmp_path / "node",
                address=verifier.address,
                window_s="1",
                interval_ms=200,
                seed=1701,
                extra=f'[tpm]\ntcti = "{device.tcti}"\nima_log = "{ima}"\n',
            )
            operator_key = tmp_path / "operator.key"
            keys.save_private_key(operator_key, fixed_private_key(100))
            state = config.node.state_dir
            code, out, err = run_agent_cli(
                capsys, "enroll", "--state-dir", str(state), "--operator-key", str(operator_key)
            )
            assert code == 0, out + err
            client = verifier.client()
            node_id = keys.key_id_from_raw(
                keys.raw_public_key(keys.load_private_key(state / "node.key").public_key())
            )
            info = client.registry.GetNode(rpb.GetNodeRequest(node_id=node_id)).node
            assert len(info.tpm_id) == 32

            agent = AgentProcess.start(state, tmp_path / "agent.log")

            def report() -> apb.ComplianceReport:
                now = time.time_ns()
                return client.audit.GetComplianceReport(
                    apb.GetComplianceReportRequest(
                        lab_id="lab-a", period_start_ns=now - 3_600 * 10**9, period_end_ns=now
                    ),
                    timeout=30,
                ).report

            def rooted() -> int:
                nodes = [n for n in report().nodes if bytes(n.node_id) == node_id]
                return nodes[0].tpm_rooted_windows if nodes else 0

            wait_until(lambda: rooted() >= 3, 60, "three TPM-rooted windows")

            def findings(kind: int) -> list[fpb.Finding]:
                return [
                    item.finding
                    for item in report().findings
                    if item.finding.kind == kind and bytes(item.finding.node_id) == node_id
                ]

            # Only windows signed before the agent's first challenge (no nonce to bind) may lack
            # a good quote; nothing else was refused.
            refused = findings(fpb.FINDING_KIND_TPM_QUOTE_REFUSED)
            assert {f.tpm_quote_status for f in refused} <= {fpb.TPM_QUOTE_STATUS_STALE_NONCE}
            assert findings(fpb.FINDING_KIND_UNKNOWN_MEASUREMENT) == []

            patched = hashlib.sha256(b"agent v1, patched").digest()
            measure(device, ima, AGENT, patched)
            wait_until(
                lambda: bool(findings(fpb.FINDING_KIND_UNKNOWN_MEASUREMENT)),
                60,
                "an unknown-measurement finding",
            )
            [unknown] = findings(fpb.FINDING_KIND_UNKNOWN_MEASUREMENT)
            assert patched.hex() in unknown.measured
            assert findings(fpb.FINDING_KIND_TPM_QUOTE_MISSING) == []

            # Hiding the swap by editing the measurement list: the log no longer replays to
            # PCR 10, the verifier refuses the quotes, and the agent's log says so.
            lines = ima.read_text().splitlines()
            ima.write_text("\n".join(lines[:-1]) + "\n")

            def mismatched() -> bool:
                return any(
                    f.tpm_quote_status == fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH
                    for f in findings(fpb.FINDING_KIND_TPM_QUOTE_REFUSED)
                )

            wait_until(mismatched, 60, "an IMA_LOG_MISMATCH finding")
            wait_until(lambda: "status=IMA_LOG_MISMATCH" in agent.log(), 30, "the agent's warning")
            assert "TPM quote not accepted" in agent.log()
        finally:
            if agent is not None:
                agent.stop()
            stop_process(verifier)
