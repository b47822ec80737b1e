"""TPM-rooted nodes against a real verifier process and software TPMs (swtpm with its own CA).

The lab has root on its nodes: it can run any agent, sign anything with the node key, drive the
TPM as it likes, and replay old quotes. What it cannot do is make another TPM's AK sign, make the
TPM quote PCRs it does not hold, or open a credential made for another TPM. Each test plays the
lab doing one of those things and checks what the verifier then says, next to an honest node.
"""

from __future__ import annotations

import datetime
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pausewatch.v1 import attestation_service_pb2 as spb
from pausewatch.v1 import audit_pb2 as audpb
from pausewatch.v1 import findings_pb2 as fpb
from pausewatch.v1 import registry_pb2 as rpb

from agent.tpm_quotes import ImaLog, WindowQuoter, tpm_enrollment
from attest import tpm
from attest.envelope import PayloadType, sign_envelope
from tests.builders import TestNode
from tests.tpm_setup import (
    Chain,
    RunningSwtpm,
    SwtpmCa,
    boot_aggregate,
    enroll_with_tpm,
    measure,
    require_swtpm,
    start_swtpm,
)
from tests.verifier_harness import (
    RunningVerifier,
    enroll_request,
    enrollment_for,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

AGENT = "/usr/bin/pausewatch-agent"
DRIVER = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
AGENT_V1 = hashlib.sha256(b"pausewatch-agent v1").digest()
DRIVER_V1 = hashlib.sha256(b"libnvidia-ml 550").digest()
S = 10**9


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    require_swtpm()
    return SwtpmCa.create(tmp_path_factory.mktemp("tpm-ca"))


@pytest.fixture(scope="module")
def verifier(ca: SwtpmCa, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningVerifier]:
    directory = tmp_path_factory.mktemp("verifier")
    # swtpm-localca makes its CA with the first EK certificate it signs.
    with start_swtpm(ca, tmp_path_factory.mktemp("first-tpm")):
        pass
    (directory / "ek-cas.pem").write_bytes(ca.root_pem + ca.intermediate_pem)
    (directory / "allowlist.txt").write_text(
        f"# the lab's measured files\n{AGENT_V1.hex()}  {AGENT}\n{DRIVER_V1.hex()}  {DRIVER}\n"
    )
    files = write_verifier_files(
        directory,
        extra_config='[tpm]\nmanufacturer_cas = ["ek-cas.pem"]\nquote_nonce_max_age_s = 600\n',
        extra_lab='ima_allowlist = "allowlist.txt"',
    )
    running = start_verifier_process(files, directory / "verifier.log")
    try:
        yield running
    finally:
        stop_process(running)


@pytest.fixture
def tpm_a(ca: SwtpmCa, tmp_path: Path) -> Iterator[RunningSwtpm]:
    with start_swtpm(ca, tmp_path / "tpm-a") as running:
        yield running


@pytest.fixture
def tpm_b(ca: SwtpmCa, tmp_path: Path) -> Iterator[RunningSwtpm]:
    with start_swtpm(ca, tmp_path / "tpm-b") as running:
        yield running


def _node(seed: int) -> TestNode:
    # Windows from now on: after the enrolment, and live for the nonce checks.
    return TestNode.from_seed(seed, t0_ns=time.time_ns() + 5 * 10**9)


def _tpm_id(device: RunningSwtpm) -> bytes:
    key = x509.load_der_x509_certificate(device.tools().ek_certificate()).public_key()
    assert isinstance(key, tpm.rsa.RSAPublicKey)
    return tpm.tpm_id_of(key)


def _findings(verifier: RunningVerifier, node: TestNode, kind: int) -> list[fpb.Finding]:
    response = verifier.client().audit.ListFindings(
        audpb.ListFindingsRequest(lab_id="lab-a", kinds=[kind], page_size=1000), timeout=10
    )  # type: ignore[list-item]
    return [f.finding for f in response.findings if f.finding.node_id == node.node_id]


def test_enrolment_with_ek_certificate_and_activated_ak(
    verifier: RunningVerifier, tpm_a: RunningSwtpm
) -> None:
    node = _node(1501)
    response = enroll_with_tpm(verifier, node, tpm_a)
    assert not response.already_enrolled
    info = verifier.client().registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id)).node
    assert info.tpm_id == _tpm_id(tpm_a)
    assert info.state == rpb.NODE_STATE_ACTIVE
    # A retry (a lost answer, say) with a fresh credential and quote is already enrolled.
    again = enroll_with_tpm(verifier, node, tpm_a)
    assert again.already_enrolled and again.log_index == response.log_index


def test_one_tpm_cannot_back_two_live_nodes(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tpm_b: RunningSwtpm
) -> None:
    first, second, honest = _node(1502), _node(1503), _node(1504)
    enroll_with_tpm(verifier, first, tpm_a)
    with pytest.raises(grpc.RpcError) as info:
        enroll_with_tpm(verifier, second, tpm_a)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already backs another live node" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as missing:
        verifier.client().registry.GetNode(rpb.GetNodeRequest(node_id=second.node_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    [conflict] = _findings(verifier, second, fpb.FINDING_KIND_ENROLLMENT_CONFLICT)
    assert "already backs another live node" in conflict.summary
    enroll_with_tpm(verifier, honest, tpm_b)  # the control: another TPM enrols


def test_a_secret_not_activated_by_the_tpm_is_refused(
    verifier: RunningVerifier, tpm_a: RunningSwtpm
) -> None:
    # Root on the node skips ActivateCredential (say the AK is a software key) and guesses.
    node = _node(1505)
    client = verifier.client()
    evidence = tpm_enrollment(
        client.channel, tpm_a.tools(), node.signer.public_key.public_bytes_raw(), timeout_s=10
    )
    enrollment = enrollment_for(node, nonce=evidence.nonce)
    enrollment.tpm.CopyFrom(evidence.enrollment)
    enrollment.tpm.activated_secret = bytes(32)
    with pytest.raises(grpc.RpcError) as info:
        client.registry.EnrollNode(enroll_request(enrollment, node, verifier.files.operator))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "activated secret" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as missing:
        client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # The honest enrolment of the same node and TPM goes through afterwards.
    enroll_with_tpm(verifier, node, tpm_a)


def test_an_ek_certificate_from_another_manufacturer_is_refused(
    verifier: RunningVerifier, tmp_path: Path
) -> None:
    other_ca = SwtpmCa.create(tmp_path / "other-ca")
    with (
        start_swtpm(other_ca, tmp_path / "tpm-x") as foreign,
        pytest.raises(grpc.RpcError) as info,
    ):
        enroll_with_tpm(verifier, _node(1506), foreign)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "manufacturer CA" in (info.value.details() or "")


def test_quotes_verify_on_a_real_stream_and_an_unknown_measurement_is_a_finding(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tmp_path: Path
) -> None:
    node = _node(1510)
    enroll_with_tpm(verifier, node, tpm_a)
    ima_file = tmp_path / "ascii_runtime_measurements"
    measure(tpm_a, ima_file, "boot_aggregate", boot_aggregate(tpm_a))
    measure(tpm_a, ima_file, AGENT, AGENT_V1)
    measure(tpm_a, ima_file, DRIVER, DRIVER_V1)
    chain = Chain(verifier, node, WindowQuoter(tpm_a.tools(), ImaLog(ima_file)))
    for _ in range(3):
        receipt = chain.send(chain.body())
        assert receipt.tpm_quote == fpb.TPM_QUOTE_STATUS_OK
    assert _findings(verifier, node, fpb.FINDING_KIND_TPM_QUOTE_REFUSED) == []
    # "boot_aggregate" is not in the allowlist either: one finding for the first quote.
    first = _findings(verifier, node, fpb.FINDING_KIND_UNKNOWN_MEASUREMENT)
    assert len(first) == 1 and "boot_aggregate" in first[0].measured

    # The lab swaps in a modified agent binary: IMA measures its new digest.
    modified = hashlib.sha256(b"pausewatch-agent v1, patched to under-report").digest()
    measure(tpm_a, ima_file, AGENT, modified)
    receipt = chain.send(chain.body())
    assert receipt.tpm_quote == fpb.TPM_QUOTE_STATUS_OK  # the quote is true: it shows the swap
    unknown = _findings(verifier, node, fpb.FINDING_KIND_UNKNOWN_MEASUREMENT)
    assert len(unknown) == 2
    assert f"{AGENT} sha256:{modified.hex()}" in unknown[-1].measured
    assert unknown[-1].severity == fpb.SEVERITY_CRITICAL

    # Hiding the swap: drop the line from the log. The replay no longer reaches PCR 10.
    measure(tpm_a, ima_file, AGENT, modified)
    lines = ima_file.read_text().splitlines()
    ima_file.write_text("\n".join(lines[:-1]) + "\n")
    receipt = chain.send(chain.body())
    assert receipt.tpm_quote == fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH
    refused = _findings(verifier, node, fpb.FINDING_KIND_TPM_QUOTE_REFUSED)
    assert [f.tpm_quote_status for f in refused] == [fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH]


def test_stale_nonce_other_tpm_and_replayed_quotes_are_refused_by_name(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tpm_b: RunningSwtpm, tmp_path: Path
) -> None:
    node = _node(1520)
    enroll_with_tpm(verifier, node, tpm_a)
    ima_file = tmp_path / "ima"
    measure(tpm_a, ima_file, AGENT, AGENT_V1)
    honest = WindowQuoter(tpm_a.tools(), ImaLog(ima_file))
    chain = Chain(verifier, node, honest)
    good = chain.body()
    assert chain.send(good).tpm_quote == fpb.TPM_QUOTE_STATUS_OK

    # Another TPM: the lab quotes on a machine it did not enrol (TPM B), correctly bound.
    foreign = chain.body()
    foreign.ClearField("tpm_quote")
    tpm_b.tools().ensure_attestation_key()
    WindowQuoter(tpm_b.tools(), ImaLog(tmp_path / "none")).attach(foreign)
    assert chain.send(foreign).tpm_quote == fpb.TPM_QUOTE_STATUS_OTHER_TPM

    # Replayed: the good quote of seq 0 copied into a later window.
    replay = chain.body()
    replay.tpm_quote.CopyFrom(good.tpm_quote)
    assert chain.send(replay).tpm_quote == fpb.TPM_QUOTE_STATUS_REPLAYED

    # The honest agent carries on: its next quote verifies.
    assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_OK

    # Stale nonce: a nonce fetched long before the window ends (700 s > the 600 s bound).
    old_nonce = verifier.client().nonce(node)
    stale = node.body(chain.seq, chain.prev, nonce=old_nonce, start_ns=time.time_ns() + 700 * S)
    honest.attach(stale)
    assert chain.send(stale).tpm_quote == fpb.TPM_QUOTE_STATUS_STALE_NONCE

    refused = _findings(verifier, node, fpb.FINDING_KIND_TPM_QUOTE_REFUSED)
    assert [f.tpm_quote_status for f in refused] == [
        fpb.TPM_QUOTE_STATUS_OTHER_TPM,
        fpb.TPM_QUOTE_STATUS_REPLAYED,
        fpb.TPM_QUOTE_STATUS_STALE_NONCE,
    ]
    assert "STALE_NONCE" in refused[-1].summary


def test_a_tpm_node_without_quotes_gets_missing_quote_findings(
    verifier: RunningVerifier, tpm_a: RunningSwtpm
) -> None:
    node = _node(1530)
    enroll_with_tpm(verifier, node, tpm_a)
    chain = Chain(verifier, node, None)  # the lab runs an agent that never quotes
    for _ in range(2):
        assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_MISSING
    missing = _findings(verifier, node, fpb.FINDING_KIND_TPM_QUOTE_MISSING)
    assert len(missing) == 2


def _self_signed_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "not a TPM")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _unrestricted(ak_public: bytes) -> bytes:
    attributes = int.from_bytes(ak_public[4:8], "big") & ~tpm.TPMA_RESTRICTED
    return ak_public[:4] + attributes.to_bytes(4, "big") + ak_public[8:]


def _rsa_fields(ak_public: bytes) -> tuple[int, int]:
    """Offsets of an RSA TPMT_PUBLIC's exponent (u32) and of its modulus bytes."""
    assert int.from_bytes(ak_public[0:2], "big") == tpm.TpmAlg.RSA
    pos = 8
    pos += 2 + int.from_bytes(ak_public[pos : pos + 2], "big")  # authPolicy
    pos += 2 if int.from_bytes(ak_public[pos : pos + 2], "big") == tpm.TpmAlg.NULL else 6
    pos += 2 if int.from_bytes(ak_public[pos : pos + 2], "big") == tpm.TpmAlg.NULL else 4
    pos += 2  # keyBits
    return pos, pos + 4 + 2


def _rsa_exponent(ak_public: bytes, exponent: int) -> bytes:
    at, _ = _rsa_fields(ak_public)
    return ak_public[:at] + exponent.to_bytes(4, "big") + ak_public[at + 4 :]


def _rsa_zero_modulus(ak_public: bytes) -> bytes:
    _, at = _rsa_fields(ak_public)
    size = int.from_bytes(ak_public[at - 2 : at], "big")
    return ak_public[:at] + bytes(size) + ak_public[at + size :]


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("empty EK certificate", grpc.StatusCode.INVALID_ARGUMENT, "ek_certificate must be"),
        ("garbage EK certificate", grpc.StatusCode.INVALID_ARGUMENT, "not a DER X.509"),
        ("oversized EK certificate", grpc.StatusCode.INVALID_ARGUMENT, "ek_certificate must be"),
        ("self-signed EK certificate", grpc.StatusCode.UNAUTHENTICATED, "manufacturer CA"),
        ("short node key", grpc.StatusCode.INVALID_ARGUMENT, "node_public_key"),
        ("garbage AK", grpc.StatusCode.INVALID_ARGUMENT, "ak_public"),
        ("unrestricted AK", grpc.StatusCode.INVALID_ARGUMENT, "ak_public: the attestation key"),
        ("RSA AK with n = 0", grpc.StatusCode.INVALID_ARGUMENT, "ak_public: TPMT_PUBLIC: the RSA"),
        ("RSA AK with e = 1", grpc.StatusCode.INVALID_ARGUMENT, "ak_public: TPMT_PUBLIC: the RSA"),
    ],
)
def test_hostile_credential_requests_get_clear_errors_and_change_nothing(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, case: str, code: grpc.StatusCode, message: str
) -> None:
    tools = tpm_a.tools()
    node = _node(1540)
    request = spb.GetTpmCredentialRequest(
        node_public_key=node.signer.public_key.public_bytes_raw(),
        ek_certificate=tools.ek_certificate(),
        ak_public=tools.ensure_attestation_key(),
    )
    match case:
        case "empty EK certificate":
            request.ek_certificate = b""
        case "garbage EK certificate":
            request.ek_certificate = b"\x30\x03\x02\x01\x01garbage"
        case "oversized EK certificate":
            request.ek_certificate = b"\x30" * 5000
        case "self-signed EK certificate":
            request.ek_certificate = _self_signed_der()
        case "short node key":
            request.node_public_key = b"\x01" * 31
        case "garbage AK":
            request.ak_public = b"\x00\x01\x00"
        case "unrestricted AK":
            request.ak_public = _unrestricted(request.ak_public)
        case "RSA AK with n = 0":
            request.ak_public = _rsa_zero_modulus(request.ak_public)
        case "RSA AK with e = 1":
            request.ak_public = _rsa_exponent(request.ak_public, 1)
    client = verifier.client()
    before = client.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-a")).nodes
    with pytest.raises(grpc.RpcError) as info:
        client.attestation.GetTpmCredential(request, timeout=10)
    assert info.value.code() == code
    assert message in (info.value.details() or "")
    assert "Traceback" not in (info.value.details() or "")
    assert client.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-a")).nodes == before


@pytest.mark.parametrize("forgery", ["quote binds another key", "PCR values", "AK swapped"])
def test_forged_tpm_enrolments_are_refused_and_nothing_is_stored(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tpm_b: RunningSwtpm, forgery: str
) -> None:
    node = _node(1550)
    client = verifier.client()
    evidence = tpm_enrollment(
        client.channel, tpm_a.tools(), node.signer.public_key.public_bytes_raw(), timeout_s=10
    )
    enrollment = enrollment_for(node, nonce=evidence.nonce)
    enrollment.tpm.CopyFrom(evidence.enrollment)
    match forgery:
        case "quote binds another key":
            other = tpm_a.tools().quote(
                tpm.enrollment_qualifying_data(b"\x02" * 32, evidence.nonce)
            )
            enrollment.tpm.quote_attest = other.attest
            enrollment.tpm.quote_signature = other.signature
            expected = "does not bind"
        case "PCR values":
            enrollment.tpm.pcr_values[0] = b"\x01" * 32
            expected = "PCR digest"
        case "AK swapped":  # the credential was opened with TPM A's AK; claim TPM B's AK
            enrollment.tpm.ak_public = tpm_b.tools().ensure_attestation_key()
            expected = "activated secret"
    with pytest.raises(grpc.RpcError) as info:
        client.registry.EnrollNode(enroll_request(enrollment, node, verifier.files.operator))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert expected in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as missing:
        client.registry.GetNode(rpb.GetNodeRequest(node_id=node.node_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("case", ["RSA AK with n = 0", "RSA AK with e = 2", "unrestricted AK"])
def test_an_enrolment_with_an_unusable_ak_is_invalid_argument_and_stores_nothing(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, case: str
) -> None:
    node = _node(1555)
    client = verifier.client()
    evidence = tpm_enrollment(
        client.channel, tpm_a.tools(), node.signer.public_key.public_bytes_raw(), timeout_s=10
    )
    enrollment = enrollment_for(node, nonce=evidence.nonce)
    enrollment.tpm.CopyFrom(evidence.enrollment)
    match case:
        case "RSA AK with n = 0":
            enrollment.tpm.ak_public = _rsa_zero_modulus(enrollment.tpm.ak_public)
        case "RSA AK with e = 2":
            enrollment.tpm.ak_public = _rsa_exponent(enrollment.tpm.ak_public, 2)
        case "unrestricted AK":
            enrollment.tpm.ak_public = _unrestricted(enrollment.tpm.ak_public)
    before = client.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-a")).nodes
    with pytest.raises(grpc.RpcError) as info:
        client.registry.EnrollNode(enroll_request(enrollment, node, verifier.files.operator))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("ak_public: ")
    assert client.registry.ListNodes(rpb.ListNodesRequest(lab_id="lab-a")).nodes == before


def test_a_revoked_node_frees_its_tpm_for_a_new_node(
    verifier: RunningVerifier, tpm_a: RunningSwtpm
) -> None:
    old, new = _node(1560), _node(1561)
    enroll_with_tpm(verifier, old, tpm_a)
    revocation = rpb.NodeRevocation(
        format_version=1,
        lab_id="lab-a",
        node_id=old.node_id,
        reason="machine reinstalled",
        created_at_ns=time.time_ns(),
    )
    verifier.client().registry.RevokeNode(
        rpb.RevokeNodeRequest(
            revocation_envelope=sign_envelope(
                verifier.files.operator,
                PayloadType.REVOCATION,
                revocation.SerializeToString(deterministic=True),
            )
        )
    )
    response = enroll_with_tpm(verifier, new, tpm_a)
    assert not response.already_enrolled


@pytest.mark.parametrize(
    ("damage", "status"),
    [
        ("truncated attest", fpb.TPM_QUOTE_STATUS_MALFORMED),
        ("oversized attest", fpb.TPM_QUOTE_STATUS_MALFORMED),
        ("garbage signature", fpb.TPM_QUOTE_STATUS_MALFORMED),
        ("too many PCR values", fpb.TPM_QUOTE_STATUS_MALFORMED),
        ("a PCR value changed", fpb.TPM_QUOTE_STATUS_PCR_MISMATCH),
        ("IMA log not ima-ng", fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH),
        ("IMA log continues nothing", fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH),
    ],
)
def test_damaged_quotes_are_refused_by_name_and_the_window_still_counts(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tmp_path: Path, damage: str, status: int
) -> None:
    node = _node(1570 + sum(damage.encode()))  # a node of its own per case
    enroll_with_tpm(verifier, node, tpm_a)
    chain = Chain(verifier, node, WindowQuoter(tpm_a.tools(), ImaLog(tmp_path / "none")))
    body = chain.body()
    q = body.tpm_quote
    match damage:
        case "truncated attest":
            q.attest = q.attest[:-3]
        case "oversized attest":
            q.attest = q.attest + bytes(5000)
        case "garbage signature":
            q.signature = b"\x00\x14"
        case "too many PCR values":
            q.pcr_values.extend([bytes(32)] * 30)
        case "a PCR value changed":
            q.pcr_values[0] = b"\x07" * 32
        case "IMA log not ima-ng":
            q.ima_log = "10 abc ima-sig x /y\n"
        case "IMA log continues nothing":
            q.ima_log_start = 7
    receipt = chain.send(body)  # accepted: the window counts, software-rooted
    assert receipt.tpm_quote == status
    [refused] = _findings(verifier, node, fpb.FINDING_KIND_TPM_QUOTE_REFUSED)
    assert refused.tpm_quote_status == status
    assert list(refused.evidence_log_indices) == [receipt.log_index]
    # The next honest window verifies: nothing of the damaged one was kept as quote state.
    assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_OK


def test_a_boot_aggregate_that_is_not_the_quoted_boot_pcrs_is_refused(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tmp_path: Path
) -> None:
    # A kernel that lies about the boot it came from: its boot_aggregate names an approved boot,
    # and it is extended into PCR 10 like any entry, so the log replays; PCRs 0-7 say otherwise.
    node = _node(1580)
    enroll_with_tpm(verifier, node, tpm_a)
    ima_file = tmp_path / "ima"
    measure(tpm_a, ima_file, "boot_aggregate", hashlib.sha256(b"an approved boot").digest())
    chain = Chain(verifier, node, WindowQuoter(tpm_a.tools(), ImaLog(ima_file)))
    assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH
    [refused] = _findings(verifier, node, fpb.FINDING_KIND_TPM_QUOTE_REFUSED)
    assert "boot_aggregate" in refused.summary


def test_an_edited_quote_state_row_holds_the_node_to_a_log_from_boot(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tmp_path: Path
) -> None:
    # The verifier's operator scribbles over a node's quote state in the store: ingest carries on;
    # a quote continuing the IMA log can no longer be replayed, one from boot can.
    node = _node(1590)
    enroll_with_tpm(verifier, node, tpm_a)
    ima_file = tmp_path / "ima"
    measure(tpm_a, ima_file, AGENT, AGENT_V1)
    quoter = WindowQuoter(tpm_a.tools(), ImaLog(ima_file))
    chain = Chain(verifier, node, quoter)
    assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_OK
    with sqlite3.connect(verifier.files.store) as db:
        changed = db.execute(
            "UPDATE meta SET value = ? WHERE key = ?",
            (b"{not json", f"tpm-quote-state:{node.node_id.hex()}"),
        ).rowcount
    assert changed == 1
    measure(tpm_a, ima_file, DRIVER, DRIVER_V1)
    body = chain.body()
    assert body.tpm_quote.ima_log_start == 1
    assert chain.send(body).tpm_quote == fpb.TPM_QUOTE_STATUS_IMA_LOG_MISMATCH
    restarted = WindowQuoter(tpm_a.tools(), ImaLog(ima_file))  # an agent restart: from boot
    chain.quoter = restarted
    assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_OK


def test_an_ima_log_too_big_for_one_envelope_leaves_the_window_unquoted_not_rejected(
    verifier: RunningVerifier, tpm_a: RunningSwtpm, tmp_path: Path
) -> None:
    node = _node(1595)
    enroll_with_tpm(verifier, node, tpm_a)
    ima_file = tmp_path / "ima"
    for i in range(3):
        measure(tpm_a, ima_file, f"/opt/tool-{i}", hashlib.sha256(bytes([i])).digest())
    small = WindowQuoter(tpm_a.tools(), ImaLog(ima_file), max_ima_log_bytes=200)
    chain = Chain(verifier, node, small)
    body = chain.body()
    assert not body.HasField("tpm_quote")
    assert chain.send(body).tpm_quote == fpb.TPM_QUOTE_STATUS_MISSING  # accepted, unquoted
    small.max_ima_log_bytes = 100_000
    assert chain.send(chain.body()).tpm_quote == fpb.TPM_QUOTE_STATUS_OK
