"""TPM evidence from the agent: the enrolment proof, and a quote on every Nth window's body.

    evidence = tpm_enrollment(channel, tpm, node_public_key, timeout_s=10)   # before enrolling
    quoter = WindowQuoter(tpm, ImaLog(Path("/sys/kernel/security/ima/ascii_runtime_measurements")))
    quoter.attach(body)       # in the spool's signing step, once seq, prev_digest, nonce are set

A window's quote binds SHA-256("pausewatch-tpm-quote-v1" 0x00 || nonce || prev_digest || seq)
(attest.tpm.window_qualifying_data), and carries the IMA entries added since the previous quote.
The kernel may append entries between the quote and the read of its list, so the list is read
after quoting and cut where its replay reaches the quoted PCR 10. After a restart the agent sends
the list from the start (``ima_log_start`` 0), which the verifier replays from zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from pausewatch.v1 import attestation_pb2 as apb
from pausewatch.v1 import attestation_service_pb2 as api
from pausewatch.v1 import attestation_service_pb2_grpc as api_grpc
from pausewatch.v1 import registry_pb2 as reg

from agent.tpm import DEFAULT_PCRS, Tpm2Tools, TpmDeviceError
from attest import tpm
from attest.errors import TpmError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TpmEvidence:
    """What GetTpmCredential and the TPM gave for an enrolment."""

    nonce: bytes
    enrollment: reg.TpmEnrollment


def tpm_enrollment(
    channel: grpc.Channel, device: Tpm2Tools, node_public_key: bytes, *, timeout_s: float
) -> TpmEvidence:
    """Ask the verifier for a credential, open it in the TPM, and quote over the node key."""
    ak_public = device.ensure_attestation_key()
    ek_certificate = device.ek_certificate()
    stub = api_grpc.AttestationServiceStub(channel)
    response = stub.GetTpmCredential(
        api.GetTpmCredentialRequest(
            node_public_key=node_public_key, ek_certificate=ek_certificate, ak_public=ak_public
        ),
        timeout=timeout_s,
    )
    credential = tpm.Credential(response.credential_blob, response.encrypted_secret)
    secret = device.activate_credential(credential.tpm2_tools_file())
    quote = device.quote(tpm.enrollment_qualifying_data(node_public_key, response.nonce))
    return TpmEvidence(
        nonce=bytes(response.nonce),
        enrollment=reg.TpmEnrollment(
            ek_certificate=ek_certificate,
            ak_public=ak_public,
            activated_secret=secret,
            quote_attest=quote.attest,
            quote_signature=quote.signature,
            pcr_values=list(quote.pcr_values),
        ),
    )


class ImaLog:
    """The kernel's IMA measurement list (ascii_runtime_measurements), or a file like it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[tpm.ImaEntry]:
        """Every entry since boot; an absent list is an empty one (no IMA on this kernel)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return tpm.load_ima_log(text)


MAX_IMA_LOG_BYTES = 160 * 1024
"""The most IMA log text one body carries: with the rest of an 8-GPU body it stays under the
verifier's default max_envelope_bytes (256 KiB), so a long list never gets a window rejected."""


class WindowQuoter:
    """Adds a quote to every ``every_windows``-th body (by seq), with the IMA entries since."""

    def __init__(
        self,
        device: Tpm2Tools,
        ima: ImaLog,
        *,
        every_windows: int = 1,
        max_ima_log_bytes: int = MAX_IMA_LOG_BYTES,
    ) -> None:
        self.device = device
        self.ima = ima
        self.every_windows = every_windows
        self.max_ima_log_bytes = max_ima_log_bytes
        self._sent = 0
        self._pcr10: bytes = bytes(32)

    def attach(self, body: apb.AttestationBody) -> None:
        """Quote for ``body`` if due; a TPM failure is logged and the body goes without."""
        if body.seq % self.every_windows:
            return
        qualifying = tpm.window_qualifying_data(body.verifier_nonce, body.prev_digest, body.seq)
        try:
            quote = self.device.quote(qualifying, DEFAULT_PCRS)
            entries = self.ima.entries()
        except (TpmDeviceError, TpmError) as exc:
            log.error("no TPM quote for seq=%d: %s", body.seq, exc.diagnostics())  # noqa: TRY400
            return
        pcr10 = quote.pcr_values[quote.pcrs.index(tpm.IMA_PCR)]
        start, base = self._sent, self._pcr10
        if start > len(entries) or tpm.replay_ima_log(entries[:start], bytes(32)) != base:
            start, base = 0, bytes(32)  # restarted, rebooted, or lost our place: from boot
        new = _prefix_reaching(entries[start:], base, pcr10)
        text = "".join(e.line() + "\n" for e in new)
        if len(text.encode()) > self.max_ima_log_bytes:
            # Too big for one envelope: the window goes without a quote (a finding at the
            # verifier) rather than being rejected as too large.
            log.error(
                "no TPM quote for seq=%d: %d new IMA entries exceed %d bytes",
                body.seq,
                len(new),
                self.max_ima_log_bytes,
            )
            return
        body.tpm_quote.CopyFrom(
            apb.TpmQuote(
                attest=quote.attest,
                signature=quote.signature,
                pcr_values=list(quote.pcr_values),
                ima_log=text,
                ima_log_start=start,
            )
        )
        self._sent = start + len(new)
        self._pcr10 = tpm.replay_ima_log(new, base)


def _prefix_reaching(
    entries: list[tpm.ImaEntry], start: bytes, target: bytes
) -> list[tpm.ImaEntry]:
    """The shortest prefix of ``entries`` that replays from ``start`` to ``target``; all of them
    if none does (the verifier will then say the log does not match)."""
    value = start
    if value == target:
        return []
    for i, entry in enumerate(entries):
        value = tpm.replay_ima_log([entry], value)
        if value == target:
            return entries[: i + 1]
    return entries
