"""Operating the real agent: start-up checks, ``check``, ``status`` exit codes, one agent per state
directory; each played against real processes and a real TLS verifier on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import example_scenario
from agent.config import AgentConfig, load_config
from agent.daemon import spool_path
from agent.preflight import CheckStatus, verifier_check
from agent.shipper import open_channel
from agent.spool import Spool
from attest import keys
from attest.attestation import parse_attestation_body
from attest.envelope import parse_envelope
from attest.ids import NodeId
from tests.agent_process import AgentProcess, agent_env, wait_until
from tests.agent_setup import write_state_dir
from tests.cli_runner import run_agent_cli
from tests.fake_verifier import FakeVerifier
from tests.tls import TestPki
from tests.unit.agent.test_systemd_unit import NotifySocket


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.create()


@pytest.fixture
def operator(tmp_path: Path) -> tuple[Path, keys.Ed25519PublicKey]:  # type: ignore[name-defined]
    private = keys.generate_private_key()
    path = tmp_path / "operator.key"
    keys.save_private_key(path, private)
    return path, private.public_key()


@pytest.fixture
def tls_verifier(pki: TestPki, operator: tuple[Path, object]) -> Iterator[FakeVerifier]:
    server = FakeVerifier(
        operator_keys={"lab-a": operator[1]},  # type: ignore[dict-item]
        tls=(pki.server_key_pem, pki.server_cert_pem),
    )
    server.start()
    yield server
    server.stop()


def tls_state_dir(tmp_path: Path, pki: TestPki, port: int, window_s: str = "0.4") -> AgentConfig:
    config = write_state_dir(
        tmp_path, address=f"localhost:{port}", window_s=window_s, interval_ms=100,
        extra="[logging]\nlevel = 'info'\n",
    )  # fmt: skip
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca_pem)
    path = config.node.state_dir / "config.toml"
    path.write_text(path.read_text().replace("insecure_no_tls = true", f'ca_cert = "{ca}"'))
    return load_config(path)


def enrol(capsys: pytest.CaptureFixture[str], config: AgentConfig, operator_key: Path) -> None:
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", str(config.node.state_dir),
        "--operator-key", str(operator_key),
    )  # fmt: skip
    assert code == 0, out + err


def spool_snapshot(config: AgentConfig) -> tuple[object, ...]:
    spool = Spool.open(spool_path(config))
    try:
        return (spool.head(), len(spool.envelopes()), spool.get_text("enrollment"))
    finally:
        spool.close()


@pytest.mark.slow
def test_a_missing_ca_file_fails_at_start_with_exit_2_and_the_fix(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    enrol(capsys, config, operator[0])
    before = spool_snapshot(config)
    ca = config.verifier.ca_cert
    assert ca is not None
    ca.unlink()
    agent = AgentProcess.start(config.node.state_dir, tmp_path / "agent.log")
    assert agent.process.wait(timeout=60) == 2, agent.log()
    log = agent.log()
    assert f"verifier.ca_cert {ca} does not exist" in log
    assert "fix: put the PEM certificate at" in log
    assert spool_snapshot(config) == before  # nothing signed, nothing half-written
    # check says the same, and names every problem at once
    config.node.key_file.chmod(0o640)
    code, out, err = run_agent_cli(capsys, "check", "--state-dir", str(config.node.state_dir))
    assert code == 2, out + err
    assert "fail  verifier.ca_cert" in out
    assert "fail  node key" in out and f"fix: chmod 600 {config.node.key_file}" in out
    # The honest control: the file restored, the same agent starts and ships over TLS.
    config.node.key_file.chmod(0o600)
    ca.write_bytes(pki.ca_pem)
    code, out, _ = run_agent_cli(capsys, "check", "--state-dir", str(config.node.state_dir))
    assert code == 0, out
    assert "answered a challenge over TLS" in out
    agent = AgentProcess.start(config.node.state_dir, tmp_path / "agent2.log")
    try:
        wait_until(lambda: tls_verifier.batches > 0, 30, "the agent ships")
    finally:
        assert agent.stop() == 0, agent.log()


def test_check_tells_a_wrong_ca_from_an_outage(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    enrol(capsys, config, operator[0])
    state = str(config.node.state_dir)
    assert config.verifier.ca_cert is not None
    config.verifier.ca_cert.write_bytes(TestPki.create().ca_pem)  # a CA that did not sign it
    code, out, _ = run_agent_cli(capsys, "check", "--state-dir", state, "--json")
    assert code == 2
    verdict = {c["name"]: c for c in json.loads(out)["checks"]}["verifier"]
    assert verdict["status"] == "fail"
    assert ": tls: " in verdict["detail"]
    assert "verifier.ca_cert" in verdict["fix"]
    config.verifier.ca_cert.write_bytes(pki.ca_pem)
    tls_verifier.stop()  # an outage: not a mistake, exit 4
    code, out, _ = run_agent_cli(capsys, "check", "--state-dir", state, "--json")
    assert code == 4
    verdict = {c["name"]: c for c in json.loads(out)["checks"]}["verifier"]
    assert ": refused: " in verdict["detail"]


def test_check_before_enrolment_names_enroll(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: TestPki, tls_verifier: FakeVerifier
) -> None:
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    code, out, _ = run_agent_cli(
        capsys, "check", "--state-dir", str(config.node.state_dir), "--no-verifier"
    )
    assert code == 2
    assert "fail  enrolment" in out
    assert "pausewatch-agent enroll" in out
    code, _, _ = run_agent_cli(capsys, "status", "--state-dir", str(config.node.state_dir))
    assert code == 10  # not enrolled


@pytest.mark.slow
def test_status_exit_codes_and_a_second_agent_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    enrol(capsys, config, operator[0])
    state = str(config.node.state_dir)
    agent = AgentProcess.start(config.node.state_dir, tmp_path / "agent.log")
    try:

        def status() -> tuple[int, dict[str, object]]:
            code, out, _ = run_agent_cli(capsys, "status", "--state-dir", state, "--json")
            return code, json.loads(out)

        wait_until(lambda: status()[0] == 0, 30, "a healthy status")
        assert status()[1]["problems"] == []
        second = AgentProcess.start(config.node.state_dir, tmp_path / "second.log")
        assert second.process.wait(timeout=60) == 2, second.log()
        assert "another pausewatch-agent is running" in second.log()
        tls_verifier.stop()  # nothing ships from now on
        wait_until(
            lambda: run_agent_cli(
                capsys, "status", "--state-dir", state, "--max-unshipped-age-s", "1"
            )[0] == 13,
            30,
            "status reports not shipping",
        )  # fmt: skip
    finally:
        assert agent.stop() == 0, agent.log()
    code, result = status()
    assert code == 11  # stopped
    assert result["problems"][0]["problem"] == "not_running"


@pytest.mark.slow
def test_json_log_of_a_real_agent_has_keys_journald_priorities_and_no_raw_grpc_lines(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    enrol(capsys, config, operator[0])
    assert config.verifier.ca_cert is not None
    config.verifier.ca_cert.write_bytes(TestPki.create().ca_pem)  # gRPC core logs the handshake
    log_path = tmp_path / "agent.log"
    log_path.touch()
    info = os.stat(log_path)
    env = agent_env(JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}", GRPC_VERBOSITY="INFO")
    agent = AgentProcess.start(config.node.state_dir, log_path, log_format="json", env=env)
    try:
        wait_until(lambda: "grpc.core" in agent.log() and "window signed" in agent.log(), 30)
        wait_until(lambda: agent.log().count('"kind": "tls"') >= 2, 30)
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]
    entries = []
    for line in agent.log().splitlines():
        assert line[0] == "<" and line[2] == ">", line  # a priority journald understands
        entry = json.loads(line[3:])  # every line is JSON: no raw "I1206 ..." line
        entries.append((int(line[1]), entry))
    node_id = config_node_id(config)
    assert all(e["node_id"] == node_id for _, e in entries)
    signed = [e for _, e in entries if e["event"] == "window signed"]
    assert signed and all(isinstance(e["seq"], int) for e in signed)
    failures = [(p, e) for p, e in entries if e["event"] == "shipping failed"]
    assert failures and all(p == 3 and e["kind"] == "tls" for p, e in failures)
    assert all("verifier.ca_cert" in e["fix"] for _, e in failures)
    native = [e for _, e in entries if e["logger"] == "grpc.core"]
    assert all(e["event"] == "grpc core log" for e in native)
    assert any("ssl_transport_security" in e["source"] for e in native)


def config_node_id(config: AgentConfig) -> str:
    public = keys.load_public_key(config.node.key_file.with_suffix(".pub"))
    return bytes(keys.key_id(public)).hex()


@pytest.mark.slow
def test_a_real_agent_notifies_systemd(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    enrol(capsys, config, operator[0])
    listener = NotifySocket(tmp_path / "notify")
    env = agent_env(NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="1000000")
    agent = AgentProcess.start(config.node.state_dir, tmp_path / "agent.log", env=env)
    try:
        wait_until(lambda: listener.messages.count("WATCHDOG=1") >= 3, 30, "watchdog pings")
    finally:
        assert agent.stop() == 0, agent.log()
    messages = listener.close()
    assert messages[0].startswith("READY=1\n")
    assert any(m.startswith("STOPPING=1") for m in messages)


@pytest.mark.slow
def test_init_with_the_sim_backend_uses_the_shipped_example_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], operator: tuple[Path, object]
) -> None:
    server = FakeVerifier(operator_keys={"lab-a": operator[1]})  # type: ignore[dict-item]
    server.start()
    state = tmp_path / "state"
    try:
        code, out, err = run_agent_cli(
            capsys, "init", "--state-dir", str(state), "--lab", "lab-a", "--verifier",
            server.address, "--insecure-no-tls", "--backend", "sim",
        )  # fmt: skip
        assert code == 0, err
        config = load_config(state / "config.toml")
        assert config.sim.scenario == state / "scenario.toml"
        assert config.sim.scenario.read_bytes() == example_scenario().read_bytes()
        assert "example-8xh100.toml" in str(example_scenario())  # installed in the package
        code, out, err = run_agent_cli(
            capsys, "enroll", "--state-dir", str(state), "--operator-key", str(operator[0]),
            "--json",
        )  # fmt: skip
        assert code == 0, err
        assert len(json.loads(out)["gpus"]) == 8  # the example node's eight H100s
        code, out, _ = run_agent_cli(capsys, "check", "--state-dir", str(state))
        assert code == 0, out
        assert "ok    sim.scenario" in out
        # Short windows so that the test sees one soon (the operator's file, edited).
        path = state / "config.toml"
        path.write_text(path.read_text().replace("window_s = 60", "window_s = 2"))
        agent = AgentProcess.start(state, tmp_path / "agent.log")
        try:
            wait_until(lambda: "window signed" in agent.log(), 30, "a window is signed")
        finally:
            assert agent.stop() == 0, agent.log()
        spool = Spool.open(spool_path(config))
        try:
            envelopes = spool.envelopes()
        finally:
            spool.close()
        assert envelopes, agent.log()
        body = parse_attestation_body(parse_envelope(envelopes[0].envelope).payload)
        assert len(body.gpus) == 8
    finally:
        server.stop()


def test_check_names_a_clock_far_from_the_verifiers(
    tmp_path: Path, pki: TestPki, tls_verifier: FakeVerifier
) -> None:
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    node = NodeId(bytes(32))
    honest = verifier_check(config.verifier, node, open_channel)
    assert honest.status is CheckStatus.OK and "clock skew" in honest.detail
    # This node's clock two minutes ahead (an NTP daemon that never ran).
    ahead = verifier_check(
        config.verifier, node, open_channel, now_ns=lambda: time.time_ns() + 120 * 10**9
    )
    assert ahead.status is CheckStatus.FAIL and ahead.name == "clock"
    assert "+120" in ahead.detail and "timedatectl set-ntp true" in ahead.fix


def test_check_keeps_grpc_core_lines_off_the_terminal(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
) -> None:
    """`check` against a verifier whose CA is wrong: the verdict names the TLS failure, and what
    the gRPC C core writes to fd 2 (`I1206 ... ssl_transport_security.cc:...] Handshake failed`)
    is read back as a log record, never printed as a raw line (docs/agent.md, 'Logs')."""
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    enrol(capsys, config, operator[0])
    assert config.verifier.ca_cert is not None
    config.verifier.ca_cert.write_bytes(TestPki.create().ca_pem)  # a CA that did not sign it
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "--state-dir", str(config.node.state_dir)],
        env=agent_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "fail  verifier" in result.stdout and ": tls: " in result.stdout
    raw = [line for line in result.stderr.splitlines() if re.match(r"[IWEF]\d{4} ", line)]
    assert raw == [], result.stderr
    assert "ssl_transport_security" not in result.stderr


# -- status on a disk the agent cannot write ------------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points made by a test, taken down afterwards; skips where this user cannot mount."""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"pausewatch-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (OSError, subprocess.CalledProcessError):
        probe.rmdir()
        pytest.skip("needs root with mount (a read-only or full file system for the spool)")
    subprocess.run(["umount", str(probe)], check=True, timeout=30)
    probe.rmdir()
    made: list[Path] = []
    yield made
    for path in reversed(made):
        subprocess.run(["umount", str(path)], check=False, timeout=30)


def _files(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.name.startswith("spool")}


def _signing_agent(
    capsys: pytest.CaptureFixture[str], config: AgentConfig, operator_key: Path, log: Path
) -> AgentProcess:
    """Enrol the node, start a real agent on it and wait for its first signed window."""
    enrol(capsys, config, operator_key)
    agent = AgentProcess.start(config.node.state_dir, log)
    try:
        wait_until(lambda: spool_snapshot(config)[0] is not None, 30, "a signed window")
    except BaseException:
        agent.stop()
        raise
    return agent


@pytest.mark.slow
def test_status_reads_a_spool_on_a_read_only_file_system(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
    mounts: list[Path],
) -> None:
    """Files the operator's user cannot write (here: a read-only mount of the state directory)
    used to make ``status`` fail with exit 4; it only reads, so it reports the node."""
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    state = config.node.state_dir
    agent = _signing_agent(capsys, config, operator[0], tmp_path / "agent.log")
    assert agent.stop() == 0, agent.log()
    code, out, _ = run_agent_cli(capsys, "status", "--state-dir", str(state), "--json")
    assert code == 11, out
    before = json.loads(out)
    files = _files(state)
    _mount("--bind", str(state), str(state))
    mounts.append(state)
    _mount("-o", "remount,ro,bind", str(state))
    with pytest.raises(OSError, match="Read-only file system"):
        (state / "probe").write_bytes(b"")  # the mount is read-only, root included
    code, out, err = run_agent_cli(capsys, "status", "--state-dir", str(state), "--json")
    assert code == 11, out + err  # not running: the verdict it gave before, not an internal error
    after = json.loads(out)
    assert after["head"] == before["head"] and after["head"] is not None
    assert after["enrolled"] is True
    assert after["spool"]["pending"] == before["spool"]["pending"]
    assert after["acknowledged"] == before["acknowledged"]
    assert _files(state) == files


@pytest.mark.slow
def test_status_reports_a_running_agent_whose_disk_is_full(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pki: TestPki,
    tls_verifier: FakeVerifier,
    operator: tuple[Path, object],
    mounts: list[Path],
) -> None:
    """A full disk under a running agent: windows can no longer be spooled, and ``status`` still
    answers (it reads through the agent's shared memory) with the head the agent last wrote."""
    state = tmp_path / "state"
    state.mkdir()
    _mount("-t", "tmpfs", "-o", "size=72m", "tmpfs", str(state))  # start-up wants 64 MiB free
    mounts.append(state)
    config = tls_state_dir(tmp_path, pki, tls_verifier.port)
    agent = _signing_agent(capsys, config, operator[0], tmp_path / "agent.log")
    try:
        filler = os.open(state / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # fill the disk to its last byte
            for chunk in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while os.write(filler, b"\0" * chunk):
                        pass
        finally:
            os.close(filler)
        wait_until(lambda: "window not attested" in agent.log(), 30, "a window not spooled")
        code, out, err = run_agent_cli(capsys, "status", "--state-dir", str(state), "--json")
        assert code in (0, 12, 13), out + err  # a verdict on the node, not an internal error
        result = json.loads(out)
        assert result["agent_running"] is True
        assert result["enrolled"] is True
        assert result["head"] is not None
    finally:
        agent.stop()
