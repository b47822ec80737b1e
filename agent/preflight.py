"""Start-up checks: what must hold before the agent can produce evidence that counts, each with
the fix for an operator.

    results = local_checks(config, backend)           # files, key modes, state dir, enrolment
    results.append(verifier_check(config.verifier))   # the verifier, over the TLS it will use
    for r in results: print(r.status, r.name, r.detail, r.fix)

``pausewatch-agent run`` runs the local checks and exits 2 on the first failure, naming the fix,
instead of running for minutes logging failures that look like an outage (a missing CA file is a
mistake, not an outage). ``pausewatch-agent check`` runs them all plus the verifier check, which
opens a channel exactly as the shipper does and asks for a challenge.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import grpc
from cryptography import x509
from pausewatch.v1 import attestation_service_pb2 as api
from pausewatch.v1 import attestation_service_pb2_grpc as api_grpc

from agent.clock import NS_PER_MS
from agent.config import AgentConfig, VerifierConfig
from agent.failures import FailureKind, classify_rpc_error, rpc_error_text
from agent.sampler.base import Backend
from agent.tpm import Tpm2Tools, TpmDeviceError, tpm2_tools_available
from attest import keys
from attest.errors import ConfigError, KeyFileError, PausewatchError
from attest.ids import NodeId

MAX_CLOCK_SKEW_MS = 30_000
"""More than this between the node's clock and the verifier's fails ``check`` (the verifier's
default tolerance is 300 s: this warns well before windows are refused)."""
MIN_FREE_BYTES = 64 << 20
"""Below this much free disk in the state directory a check fails: the spool will not fit a day."""


class CheckStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: CheckStatus
    detail: str
    fix: str = ""
    heals: bool = False
    """A failure that waiting can fix (the verifier is down), not a mistake to correct."""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name:<18} {self.detail}"
        return text + (f"\n      fix: {self.fix}" if self.fix else "")


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, CheckStatus.OK, detail)


def _fail(name: str, detail: str, fix: str, *, heals: bool = False) -> CheckResult:
    return CheckResult(name, CheckStatus.FAIL, detail, fix, heals)


def _readable_file(name: str, path: Path, what: str, fix: str) -> CheckResult | None:
    """A failure if ``path`` is not a readable regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return _fail(name, f"{what} {path} does not exist", fix)
    except OSError as exc:
        return _fail(name, f"cannot reach {what} {path}: {exc.strerror}", fix)
    if not stat.S_ISREG(info.st_mode):
        return _fail(name, f"{what} {path} is not a regular file", fix)
    if not os.access(path, os.R_OK):
        return _fail(
            name,
            f"{what} {path} is not readable by this user (uid {os.getuid()})",
            f"chown or chmod it so the agent's user can read it: {fix}",
        )
    return None


def _certificate_file(name: str, path: Path, key: str) -> CheckResult:
    fix = f"put the PEM certificate at {path} or correct verifier.{key} in the config file"
    problem = _readable_file(name, path, f"verifier.{key}", fix)
    if problem is not None:
        return problem
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        return _fail(name, f"verifier.{key} {path} holds no PEM certificate", fix)
    return _ok(name, f"{path} ({len(certificates)} certificate(s))")


def _client_key_file(path: Path) -> CheckResult:
    fix = "put the client's PEM private key there or correct verifier.client_key"
    problem = _readable_file("verifier.client_key", path, "verifier.client_key", fix)
    if problem is not None:
        return problem
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return _fail(
            "verifier.client_key",
            f"{path} has mode {mode:04o}; others can read the TLS key",
            f"chmod 600 {path}",
        )
    return _ok("verifier.client_key", f"{path} ({mode:04o})")


def _node_key(config: AgentConfig) -> CheckResult:
    path = config.node.key_file
    try:
        private = keys.load_private_key(path)
    except KeyFileError as exc:
        fix = (
            f"chmod 600 {path}"
            if "mode" in exc.diagnostics()
            else f"run 'pausewatch-agent init' or correct node.key_file ({path})"
        )
        return _fail("node key", exc.diagnostics(), fix)
    public_path = path.with_suffix(".pub")
    try:
        public = keys.load_public_key(public_path)
    except PausewatchError as exc:
        return _fail("node key", exc.diagnostics(), f"restore {public_path} from the node key")
    if keys.raw_public_key(public) != keys.raw_public_key(private.public_key()):
        return _fail(
            "node key",
            f"{public_path} is not the public half of {path}",
            "restore the matching node.pub (status and enrolment read it)",
        )
    node_id = keys.key_id(private.public_key()).hex()
    return _ok("node key", f"{path} (0600), node id {node_id[:16]}...")


def _state_dir(config: AgentConfig) -> list[CheckResult]:
    path = config.node.state_dir
    if not path.is_dir():
        return [_fail("state dir", f"{path} is not a directory", "run 'pausewatch-agent init'")]
    if not os.access(path, os.W_OK | os.X_OK):
        return [
            _fail(
                "state dir",
                f"{path} is not writable by this user (uid {os.getuid()})",
                f"chown -R the agent's user {path}",
            )
        ]
    results = [_ok("state dir", f"{path} writable")]
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        results.append(
            _fail(
                "disk space",
                f"{free >> 20} MiB free under {path}",
                "free disk space (docs/agent.md, 'Disk sizing')",
            )
        )
    else:
        results.append(_ok("disk space", f"{free >> 20} MiB free"))
    return results


def _enrolment(config: AgentConfig, enrolled: Callable[[AgentConfig], bool]) -> CheckResult:
    try:
        is_enrolled = enrolled(config)
    except PausewatchError as exc:
        return _fail("enrolment", exc.diagnostics(), "see docs/agent.md, 'Exit codes and errors'")
    if not is_enrolled:
        return _fail(
            "enrolment",
            "this node is not enrolled (its windows would be rejected as from an unknown key)",
            "run 'pausewatch-agent enroll' (docs/agent.md, 'Enrol it')",
        )
    return _ok("enrolment", "enrolled")


def _sampler_input(config: AgentConfig, backend: Backend) -> CheckResult | None:
    if backend is Backend.SIM:
        path = config.sim.scenario
        if path is None:
            return _fail(
                "sim.scenario", "the sim backend needs a scenario", "set sim.scenario or --scenario"
            )
        problem = _readable_file("sim.scenario", path, "sim.scenario", "correct sim.scenario")
        return problem or _ok("sim.scenario", str(path))
    if backend is Backend.REPLAY:
        path = config.replay.file
        if path is None:
            return _fail("replay.file", "the replay backend needs a file", "set replay.file")
        problem = _readable_file("replay.file", path, "replay.file", "correct replay.file")
        return problem or _ok("replay.file", str(path))
    return None


def local_checks(
    config: AgentConfig,
    backend: Backend,
    *,
    enrolled: Callable[[AgentConfig], bool],
    sampler_file_given: bool = False,
) -> list[CheckResult]:
    """Everything that can be checked without the network, in the order an operator fixes it."""
    results = [_node_key(config), *_state_dir(config), _enrolment(config, enrolled)]
    verifier = config.verifier
    if verifier.insecure_no_tls:
        results.append(
            CheckResult(
                "verifier TLS",
                CheckStatus.WARN,
                "insecure_no_tls: plaintext to the verifier (tests on loopback only)",
            )
        )
    else:
        if verifier.ca_cert is not None:
            results.append(_certificate_file("verifier.ca_cert", verifier.ca_cert, "ca_cert"))
        else:
            results.append(_ok("verifier.ca_cert", "not set: the system's CA roots are used"))
        if verifier.client_cert is not None:
            results.append(
                _certificate_file("verifier.client_cert", verifier.client_cert, "client_cert")
            )
        if verifier.client_key is not None:
            results.append(_client_key_file(verifier.client_key))
    if not sampler_file_given:
        sampler = _sampler_input(config, backend)
        if sampler is not None:
            results.append(sampler)
    if config.tpm.tcti:
        results.append(tpm_check(config))
    return results


def tpm_check(config: AgentConfig) -> CheckResult:
    """The configured TPM answers and holds the attestation key. A warning, not a failure: without
    it the agent still attests, and the verifier logs each window's missing quote."""
    if not tpm2_tools_available():
        return CheckResult(
            "tpm",
            CheckStatus.WARN,
            "tpm.tcti is set but tpm2-tools is not installed: windows will carry no quote",
            "install the Debian package tpm2-tools",
        )
    try:
        has_ak = Tpm2Tools(config.tpm.tcti).has_attestation_key()
    except TpmDeviceError as exc:
        return CheckResult(
            "tpm",
            CheckStatus.WARN,
            f"the TPM at {config.tpm.tcti} does not answer ({exc.diagnostics()}): windows will "
            "carry no quote",
            "correct tpm.tcti (for example device:/dev/tpmrm0)",
        )
    if not has_ak:
        return CheckResult(
            "tpm",
            CheckStatus.WARN,
            "the TPM holds no attestation key: this node was not enrolled with it",
            "enrol with tpm.tcti set (docs/agent.md, 'TPM-rooted nodes')",
        )
    return _ok("tpm", f"{config.tpm.tcti}: attestation key present")


def verifier_check(
    config: VerifierConfig,
    node_id: NodeId,
    open_channel: Callable[[VerifierConfig], grpc.Channel],
    now_ns: Callable[[], int] = time.time_ns,
) -> CheckResult:
    """Open a channel as the shipper does (same TLS settings) and ask for a challenge."""
    name = "verifier"
    try:
        channel = open_channel(config)
    except ConfigError as exc:
        return _fail(name, exc.diagnostics(), FailureKind.CONFIG.fix)
    try:
        sent_ns = now_ns()
        response = api_grpc.AttestationServiceStub(channel).GetChallenge(
            api.GetChallengeRequest(node_id=node_id), timeout=config.rpc_timeout_ms / 1000
        )
        received_ns = now_ns()
    except grpc.RpcError as exc:
        code, details = rpc_error_text(exc)
        kind = classify_rpc_error(code, details)
        return _fail(
            name,
            f"{config.address}: {kind.value}: {code}: {details[:300]}",
            kind.fix,
            heals=kind.heals,
        )
    finally:
        channel.close()
    tls = "plaintext" if config.insecure_no_tls else "TLS"
    # The verifier's clock at the midpoint of the call against ours: windows are stamped with
    # this node's wall clock, and the verifier refuses windows too far from its own.
    skew_ms = ((sent_ns + received_ns) // 2 - response.verifier_time_ns) // NS_PER_MS
    if abs(skew_ms) > MAX_CLOCK_SKEW_MS:
        return _fail(
            "clock",
            f"this node's clock is {skew_ms / 1000:+.1f} s off the verifier's "
            f"(more than {MAX_CLOCK_SKEW_MS // 1000} s)",
            "synchronise the clock (timedatectl set-ntp true, or chrony/ntpd); the verifier "
            "rejects windows stamped too far from its own time",
        )
    return _ok(
        name,
        f"{config.address} answered a challenge over {tls}; clock skew {skew_ms / 1000:+.1f} s",
    )


def first_failure(results: list[CheckResult]) -> CheckResult | None:
    return next((r for r in results if r.status is CheckStatus.FAIL), None)
