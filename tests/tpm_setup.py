"""Software TPMs for tests: swtpm manufactured with its own local CA, started and stopped here.

    ca = SwtpmCa.create(tmp_path / "ca")        # a manufacturer CA of our own (swtpm-localca)
    with start_swtpm(ca, tmp_path / "tpm1") as tpm:
        tpm.tcti                                # "swtpm:host=127.0.0.1,port=..."
        ca.root_pem                             # what a verifier is configured to trust

Each TPM gets an RSA EK certificate in NV (swtpm_setup --create-ek-cert --create-platform-cert)
signed by the CA's intermediate, which the root signs, as a manufacturer's would be. Tests call
:func:`require_swtpm` first: where swtpm or tpm2-tools is missing they skip with a message
(``make test`` installs them on Debian: scripts/ensure_swtpm.sh).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import registry_pb2 as rpb

from agent.tpm import Tpm2Tools, tpm2_tools_available
from agent.tpm_quotes import WindowQuoter, tpm_enrollment
from attest import tpm
from attest.envelope import envelope_digest
from attest.ids import ZERO_DIGEST
from tests.builders import TestNode
from tests.verifier_harness import RunningVerifier, enroll_request, enrollment_for

_TOOLS = ("swtpm", "swtpm_setup", "swtpm_localca")


def require_swtpm() -> None:
    """Skip the calling test, saying why, where swtpm or tpm2-tools is not installed."""
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing or not tpm2_tools_available():
        pytest.skip(
            "software TPM not installed (Debian packages swtpm, swtpm-tools, tpm2-tools; "
            f"`make test` installs them as root); missing: {', '.join(missing) or 'tpm2-tools'}"
        )


@dataclass(frozen=True, slots=True)
class SwtpmCa:
    """A swtpm-localca state folder: the manufacturer CA that signs EK certificates."""

    folder: Path

    @classmethod
    def create(cls, folder: Path) -> SwtpmCa:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "localca.conf").write_text(
            f"statedir = {folder}\n"
            f"signingkey = {folder}/signkey.pem\n"
            f"issuercert = {folder}/issuercert.pem\n"
            f"certserial = {folder}/certserial\n"
        )
        (folder / "localca.options").write_text(
            "--platform-manufacturer pausewatch-tests\n--platform-version 2.1\n"
            "--platform-model swtpm\n"
        )
        (folder / "swtpm_setup.conf").write_text(
            "create_certs_tool = /usr/bin/swtpm_localca\n"
            f"create_certs_tool_config = {folder}/localca.conf\n"
            f"create_certs_tool_options = {folder}/localca.options\n"
            "active_pcr_banks = sha256\n"
        )
        return cls(folder)

    @property
    def root_pem(self) -> bytes:
        """The root certificate (PEM); swtpm-localca creates it with the first EK certificate."""
        return (self.folder / "swtpm-localca-rootca-cert.pem").read_bytes()

    @property
    def intermediate_pem(self) -> bytes:
        """The intermediate that signs EK certificates (PEM)."""
        return (self.folder / "issuercert.pem").read_bytes()


@dataclass(frozen=True, slots=True)
class RunningSwtpm:
    """A swtpm process serving one TPM on loopback."""

    port: int
    state: Path

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def tools(self) -> Tpm2Tools:
        return Tpm2Tools(self.tcti)


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
        if port >= 65535:
            continue
        with contextlib.suppress(OSError), socket.socket() as b:
            b.bind(("127.0.0.1", port + 1))
            return port
    raise RuntimeError("no two consecutive free ports on loopback")


def manufacture(ca: SwtpmCa, state: Path) -> None:
    """Create a TPM's state with an EK, its certificate and a platform certificate."""
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "swtpm_setup", "--tpm2", "--tpm-state", str(state),
            "--create-ek-cert", "--create-platform-cert",
            "--config", str(ca.folder / "swtpm_setup.conf"), "--overwrite",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@contextlib.contextmanager
def start_swtpm(ca: SwtpmCa, state: Path, *, manufactured: bool = False) -> Iterator[RunningSwtpm]:
    """Manufacture (unless already done) and serve a TPM; stop it on exit."""
    if not manufactured:
        manufacture(ca, state)
    port = _free_port_pair()
    proc = subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"swtpm did not start: {err.strip()[-300:]}")
            time.sleep(0.05)
        yield RunningSwtpm(port, state)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


# --- a TPM node's side, for tests ---------------------------------------------------------


def enroll_with_tpm(
    verifier: RunningVerifier, node: TestNode, device: RunningSwtpm
) -> rpb.EnrollNodeResponse:
    client = verifier.client()
    evidence = tpm_enrollment(
        client.channel, device.tools(), node.signer.public_key.public_bytes_raw(), timeout_s=10
    )
    enrollment = enrollment_for(node, nonce=evidence.nonce)
    enrollment.tpm.CopyFrom(evidence.enrollment)
    return client.registry.EnrollNode(
        enroll_request(enrollment, node, verifier.files.operator), timeout=10
    )


def measure(device: RunningSwtpm, log_file: Path, path: str, digest: bytes) -> None:
    """What the kernel does when IMA measures a file: log it and extend PCR 10."""
    entry = tpm.ima_entry(path, digest)
    device.tools().extend_pcr(tpm.IMA_PCR, tpm.ima_extend_digest(entry))
    with log_file.open("a") as f:
        f.write(entry.line() + "\n")


def boot_aggregate(device: RunningSwtpm) -> bytes:
    """What the kernel logs as IMA's first entry: SHA-256 over the boot PCRs 0-7 as they are."""
    quote = device.tools().quote(b"boot-aggregate", tuple(range(8)))
    return hashlib.sha256(b"".join(quote.pcr_values)).digest()


class Chain:
    """An agent's chain: bodies with the verifier's nonce, quoted by the real WindowQuoter."""

    def __init__(self, verifier: RunningVerifier, node: TestNode, quoter: WindowQuoter | None):
        self.verifier = verifier
        self.node = node
        self.quoter = quoter
        self.seq = 0
        self.prev = bytes(ZERO_DIGEST)

    def body(self, nonce: bytes | None = None) -> apb.AttestationBody:
        if nonce is None:
            nonce = self.verifier.client().nonce(self.node)
        body = self.node.body(self.seq, self.prev, nonce=nonce)
        if self.quoter is not None:
            self.quoter.attach(body)
        return body

    def send(self, body: apb.AttestationBody) -> spb.Receipt:
        raw = self.node.sign_body(body)
        (receipt,) = self.verifier.client().submit([raw])
        assert receipt.status == spb.RECEIPT_STATUS_ACCEPTED, receipt
        self.seq += 1
        self.prev = envelope_digest(raw)
        return receipt
