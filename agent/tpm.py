"""The node's TPM through tpm2-tools: EK certificate, attestation key, activation, quotes.

    tpm = Tpm2Tools(tcti="device:/dev/tpmrm0")        # or "swtpm:host=127.0.0.1,port=2321"
    ak_public = tpm.ensure_attestation_key()           # TPMT_PUBLIC bytes, persistent across runs
    ek_cert = tpm.ek_certificate()                     # DER, from the TCG NV index
    secret = tpm.activate_credential(credential_file)  # proves the AK lives beside the EK
    quote = tpm.quote(qualifying_data, pcrs=DEFAULT_PCRS)  # boot PCRs 0-9 and IMA's PCR 10

Why tpm2-tools and not a Python binding: docs/adr/0005-tpm-backend.md. Every call is one
``tpm2_*`` process with ``TPM2TOOLS_TCTI`` set; files pass through a private temporary folder.
The EK and the AK are persistent objects (handles 0x81010001 and 0x81010002 by default), so that
a restart of the agent keeps the key the verifier enrolled; no transient object outlives a call
(a TPM without a resource manager, such as swtpm reached directly, holds only a few).

This module is the only one in the agent that talks to a TPM; the structures it returns are
parsed and checked by attest/tpm.py, on the verifier side as here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attest.errors import PausewatchError

log = logging.getLogger(__name__)

EK_CERT_NV_INDEX_RSA = 0x01C00002
DEFAULT_EK_HANDLE = 0x81010001
DEFAULT_AK_HANDLE = 0x81010002
DEFAULT_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
"""Measured boot (0-7; 8 and 9 for the boot loader's measurements on newer kernels) and IMA (10)."""
TOOL_TIMEOUT_S = 30


class TpmDeviceError(PausewatchError):
    """The TPM or tpm2-tools failed; the message names the tool and the TPM's error line."""


@dataclass(frozen=True, slots=True)
class Quote:
    """A quote as the TPM made it: TPMS_ATTEST, TPMT_SIGNATURE and the quoted PCR values."""

    attest: bytes
    signature: bytes
    pcr_values: tuple[bytes, ...]
    pcrs: tuple[int, ...]


def tpm2_tools_available() -> bool:
    """Whether the tpm2-tools commands this module runs are on PATH."""
    return all(
        shutil.which(tool) is not None
        for tool in ("tpm2_createek", "tpm2_createak", "tpm2_quote", "tpm2_activatecredential")
    )


class Tpm2Tools:
    """One TPM reached through tpm2-tools and a TCTI string."""

    def __init__(
        self,
        tcti: str,
        *,
        ek_handle: int = DEFAULT_EK_HANDLE,
        ak_handle: int = DEFAULT_AK_HANDLE,
    ) -> None:
        self.tcti = tcti
        self.ek_handle = ek_handle
        self.ak_handle = ak_handle

    def _run(self, *args: str, cwd: Path) -> bytes:
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        try:
            done = subprocess.run(  # noqa: S603 - fixed tool names, arguments built here
                list(args),
                cwd=cwd,
                env=env,
                capture_output=True,
                timeout=TOOL_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise TpmDeviceError(
                f"{args[0]} is not installed (Debian package tpm2-tools)"
            ) from None
        except subprocess.TimeoutExpired:
            raise TpmDeviceError(f"{args[0]} did not answer within {TOOL_TIMEOUT_S} s") from None
        if done.returncode != 0:
            lines = [
                ln for ln in done.stderr.decode(errors="replace").splitlines() if "ERROR" in ln
            ]
            detail = lines[0] if lines else f"exit status {done.returncode}"
            raise TpmDeviceError(f"{args[0]} failed: {detail}")
        return done.stdout

    def _persistent_handles(self, cwd: Path) -> set[int]:
        out = self._run("tpm2_getcap", "handles-persistent", cwd=cwd).decode()
        return {int(h, 16) for h in re.findall(r"0x[0-9a-fA-F]{8}", out)}

    def has_attestation_key(self) -> bool:
        """Whether the AK's persistent handle exists (the TPM answers, the node has enrolled)."""
        with tempfile.TemporaryDirectory(prefix="pw-tpm-") as tmp:
            return self.ak_handle in self._persistent_handles(Path(tmp))

    def ensure_attestation_key(self) -> bytes:
        """Create the EK and the AK as persistent objects if absent; return the AK's TPMT_PUBLIC."""
        with tempfile.TemporaryDirectory(prefix="pw-tpm-") as tmp:
            cwd = Path(tmp)
            handles = self._persistent_handles(cwd)
            if self.ek_handle not in handles:
                self._run("tpm2_createek", "-c", hex(self.ek_handle), "-G", "rsa", cwd=cwd)
                log.info("created the RSA endorsement key at %s", hex(self.ek_handle))
            if self.ak_handle not in handles:
                self._run(
                    "tpm2_createak",
                    "-C", hex(self.ek_handle),
                    "-c", "ak.ctx",
                    "-G", "rsa", "-g", "sha256", "-s", "rsassa",
                    cwd=cwd,
                )  # fmt: skip
                try:
                    self._run(
                        "tpm2_evictcontrol", "-C", "o", "-c", "ak.ctx", hex(self.ak_handle), cwd=cwd
                    )
                finally:
                    self._run("tpm2_flushcontext", "-t", cwd=cwd)
                log.info("created the attestation key at %s", hex(self.ak_handle))
            self._run(
                "tpm2_readpublic", "-c", hex(self.ak_handle), "-f", "tpmt", "-o", "ak.pub", cwd=cwd
            )
            return (cwd / "ak.pub").read_bytes()

    def ek_certificate(self) -> bytes:
        """The RSA EK certificate (DER) the manufacturer stored in NV index 0x01c00002."""
        with tempfile.TemporaryDirectory(prefix="pw-tpm-") as tmp:
            cwd = Path(tmp)
            self._run("tpm2_nvread", hex(EK_CERT_NV_INDEX_RSA), "-o", "ek.der", cwd=cwd)
            return _der_prefix((cwd / "ek.der").read_bytes())

    def activate_credential(self, credential_file: bytes) -> bytes:
        """ActivateCredential with the AK and the EK: the secret only this TPM can recover."""
        with tempfile.TemporaryDirectory(prefix="pw-tpm-") as tmp:
            cwd = Path(tmp)
            (cwd / "cred.in").write_bytes(credential_file)
            self._run("tpm2_startauthsession", "--policy-session", "-S", "session.ctx", cwd=cwd)
            try:
                self._run("tpm2_policysecret", "-S", "session.ctx", "-c", "e", cwd=cwd)
                self._run(
                    "tpm2_activatecredential",
                    "-c", hex(self.ak_handle),
                    "-C", hex(self.ek_handle),
                    "-i", "cred.in",
                    "-o", "secret.out",
                    "-P", "session:session.ctx",
                    cwd=cwd,
                )  # fmt: skip
            finally:
                self._run("tpm2_flushcontext", "session.ctx", cwd=cwd)
            return (cwd / "secret.out").read_bytes()

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int] = DEFAULT_PCRS) -> Quote:
        """A quote by the AK over the SHA-256 bank's ``pcrs`` with ``qualifying_data``."""
        selection = "sha256:" + ",".join(str(p) for p in sorted(pcrs))
        with tempfile.TemporaryDirectory(prefix="pw-tpm-") as tmp:
            cwd = Path(tmp)
            self._run(
                "tpm2_quote",
                "-c", hex(self.ak_handle),
                "-l", selection,
                "-q", qualifying_data.hex(),
                "-g", "sha256",
                "-m", "quote.msg",
                "-s", "quote.sig",
                "-o", "quote.pcrs",
                "-F", "values",
                cwd=cwd,
            )  # fmt: skip
            values = (cwd / "quote.pcrs").read_bytes()
            count = len(pcrs)
            if len(values) != 32 * count:
                raise TpmDeviceError(f"tpm2_quote returned {len(values)} bytes of PCR values")
            return Quote(
                attest=(cwd / "quote.msg").read_bytes(),
                signature=(cwd / "quote.sig").read_bytes(),
                pcr_values=tuple(values[i * 32 : (i + 1) * 32] for i in range(count)),
                pcrs=tuple(sorted(pcrs)),
            )

    def extend_pcr(self, pcr: int, sha256_digest: bytes) -> None:
        """Extend the SHA-256 bank of ``pcr`` (what the kernel does for IMA; used by tests)."""
        with tempfile.TemporaryDirectory(prefix="pw-tpm-") as tmp:
            self._run("tpm2_pcrextend", f"{pcr}:sha256={sha256_digest.hex()}", cwd=Path(tmp))


def _der_prefix(raw: bytes) -> bytes:
    """The DER SEQUENCE at the start of ``raw`` (NV indices may be padded after it)."""
    if len(raw) < 2 or raw[0] != 0x30:
        raise TpmDeviceError("the EK certificate NV index does not hold a DER certificate")
    first = raw[1]
    if first < 0x80:
        return raw[: 2 + first]
    n = first & 0x7F
    if n == 0 or n > 4 or len(raw) < 2 + n:
        raise TpmDeviceError("the EK certificate NV index does not hold a DER certificate")
    length = int.from_bytes(raw[2 : 2 + n], "big")
    if len(raw) < 2 + n + length:
        raise TpmDeviceError("the EK certificate in NV is truncated")
    return raw[: 2 + n + length]
