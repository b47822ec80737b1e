"""attest/tpm.py against a real (software) TPM: what the verifier computes without a TPM must be
what the TPM computes, and every forgery must fail.

Credential activation is the proof that an attestation key lives in the TPM whose EK certificate
was shown: only that TPM opens a credential our pure-Python MakeCredential made for that EK and
that AK name. Quotes are checked under the AK; the IMA replay against the PCR 10 the TPM quoted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent.preflight import CheckStatus, local_checks, tpm_check
from agent.sampler.base import Backend
from agent.tpm import Tpm2Tools, TpmDeviceError
from attest import tpm
from attest.errors import TpmError
from tests.agent_setup import write_state_dir
from tests.tpm_setup import RunningSwtpm, SwtpmCa, require_swtpm, start_swtpm


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SwtpmCa:
    require_swtpm()
    return SwtpmCa.create(tmp_path_factory.mktemp("tpm-ca"))


@pytest.fixture(scope="module")
def tpm_a(ca: SwtpmCa, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSwtpm]:
    with start_swtpm(ca, tmp_path_factory.mktemp("tpm-a")) as running:
        yield running


@pytest.fixture(scope="module")
def tpm_b(ca: SwtpmCa, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSwtpm]:
    with start_swtpm(ca, tmp_path_factory.mktemp("tpm-b")) as running:
        yield running


def _ek_key(tools: Tpm2Tools) -> object:
    return x509.load_der_x509_certificate(tools.ek_certificate()).public_key()


def test_credential_made_in_python_opens_only_in_the_tpm_of_the_ek(
    tpm_a: RunningSwtpm, tpm_b: RunningSwtpm
) -> None:
    a, b = tpm_a.tools(), tpm_b.tools()
    ak_a = tpm.load_tpm_public(a.ensure_attestation_key())
    ak_b = tpm.load_tpm_public(b.ensure_attestation_key())
    tpm.verify_attestation_key(ak_a)
    secret = hashlib.sha256(b"challenge").digest()
    ek_a = _ek_key(a)
    assert isinstance(ek_a, tpm.rsa.RSAPublicKey)
    credential = tpm.make_credential(ek_a, ak_a.name, secret)
    assert a.activate_credential(credential.tpm2_tools_file()) == secret
    # The other TPM holds neither the EK's private key nor this AK: it cannot open it.
    with pytest.raises(TpmDeviceError, match="tpm2_activatecredential"):
        b.activate_credential(credential.tpm2_tools_file())
    # A credential for another AK's name does not open with this AK (the HMAC binds the name).
    wrong_name = tpm.make_credential(ek_a, ak_b.name, secret)
    with pytest.raises(TpmDeviceError, match="tpm2_activatecredential"):
        a.activate_credential(wrong_name.tpm2_tools_file())


def test_quote_verifies_under_its_ak_and_nothing_else(
    tpm_a: RunningSwtpm, tpm_b: RunningSwtpm
) -> None:
    a, b = tpm_a.tools(), tpm_b.tools()
    ak_a = tpm.load_tpm_public(a.ensure_attestation_key())
    ak_b = tpm.load_tpm_public(b.ensure_attestation_key())
    qualifying = hashlib.sha256(b"nonce").digest()
    quote = a.quote(qualifying)
    info = tpm.verify_quote(ak_a, quote.attest, quote.signature)
    assert info.extra_data == qualifying
    assert info.selections[0].pcrs == quote.pcrs
    tpm.verify_pcr_digest(info, quote.pcr_values)
    with pytest.raises(TpmError, match="does not verify"):
        tpm.verify_quote(ak_b, quote.attest, quote.signature)  # another TPM's key
    for i in range(len(quote.attest)):
        forged = bytearray(quote.attest)
        forged[i] ^= 0x01
        with pytest.raises(TpmError):
            tpm.verify_quote(ak_a, bytes(forged), quote.signature)
    lying = list(quote.pcr_values)
    lying[0] = bytes(32)[:-1] + b"\x01"
    with pytest.raises(TpmError, match="PCR digest"):
        tpm.verify_pcr_digest(info, lying)


def test_ima_replay_reaches_the_quoted_pcr10(tpm_a: RunningSwtpm, tmp_path: Path) -> None:
    a = tpm_a.tools()
    ak = tpm.load_tpm_public(a.ensure_attestation_key())
    before = tpm.verify_quote(ak, *_quote_pair(a))
    start = a.quote(b"x").pcr_values[-1]  # PCR 10 now
    entries = [
        tpm.ima_entry("/usr/bin/pausewatch-agent", hashlib.sha256(b"agent v1").digest()),
        tpm.ima_entry("/usr/lib/libnvidia-ml.so.1", hashlib.sha256(b"nvml").digest()),
    ]
    for entry in entries:
        a.extend_pcr(tpm.IMA_PCR, tpm.ima_extend_digest(entry))
    log_text = "\n".join(e.line() for e in entries) + "\n"
    (tmp_path / "ascii_runtime_measurements").write_text(log_text)
    parsed = tpm.load_ima_log((tmp_path / "ascii_runtime_measurements").read_text())
    assert parsed == entries
    quote = a.quote(b"after")
    info = tpm.verify_quote(ak, quote.attest, quote.signature)
    tpm.verify_pcr_digest(info, quote.pcr_values)
    assert tpm.replay_ima_log(parsed, start) == quote.pcr_values[-1]
    assert tpm.replay_ima_log(parsed[:1], start) != quote.pcr_values[-1]
    assert info.clock_ms >= before.clock_ms


def _quote_pair(tools: Tpm2Tools) -> tuple[bytes, bytes]:
    q = tools.quote(b"q")
    return q.attest, q.signature


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("10 abc ima-ng sha256:00 /x", "not an ima-ng entry"),
        ("11 " + "00" * 20 + " ima-ng sha256:" + "00" * 32 + " /x", "PCR 11"),
        ("10 " + "11" * 20 + " ima-ng sha256:" + "00" * 32 + " /x", "template hash"),
        ("10 " + "00" * 20 + " ima-ng sha256:" + "00" * 20 + " /x", "wrong size"),
        ("10 " + "00" * 20 + " ima-sig sha256:" + "00" * 32 + " /x", "not an ima-ng entry"),
    ],
)
def test_bad_ima_lines_are_refused_by_number(text: str, match: str) -> None:
    good = tpm.ima_entry("/ok", bytes(32)).line()
    with pytest.raises(TpmError, match="line 2") as info:
        tpm.load_ima_log(good + "\n" + text + "\n")
    assert match in str(info.value)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "truncated"),
        (b"\x00\x01\x00\x0b", "truncated"),
        (b"\x00\x99\x00\x0b" + bytes(8), "unsupported key type"),
        (b"\x00\x01\x00\x05" + bytes(8), "hash algorithm"),
        (bytes(5000), "larger than"),
    ],
)
def test_malformed_public_areas_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(TpmError, match=match):
        tpm.load_tpm_public(raw)


def test_trailing_bytes_after_a_quote_are_refused(tpm_a: RunningSwtpm) -> None:
    quote = tpm_a.tools().quote(b"t")
    tpm.load_quote(quote.attest)
    with pytest.raises(TpmError, match="trailing"):
        tpm.load_quote(quote.attest + b"\x00")


def test_kdfa_matches_the_tpm_via_activation_of_a_fixed_seed(tpm_a: RunningSwtpm) -> None:
    # A fixed seed gives the same blob twice; a different seed, a different blob that opens too.
    a = tpm_a.tools()
    ak = tpm.load_tpm_public(a.ensure_attestation_key())
    ek = _ek_key(a)
    assert isinstance(ek, tpm.rsa.RSAPublicKey)
    one = tpm.make_credential(ek, ak.name, b"s" * 16, seed=b"\x01" * 32)
    two = tpm.make_credential(ek, ak.name, b"s" * 16, seed=b"\x01" * 32)
    three = tpm.make_credential(ek, ak.name, b"s" * 16, seed=b"\x02" * 32)
    assert one.credential_blob == two.credential_blob
    assert one.credential_blob != three.credential_blob
    assert a.activate_credential(three.tpm2_tools_file()) == b"s" * 16
    with pytest.raises(TpmError, match="secret"):
        tpm.make_credential(ek, ak.name, b"s" * 33)


def test_the_agent_start_up_check_says_whether_its_tpm_answers_and_holds_the_ak(
    ca: SwtpmCa, tmp_path: Path
) -> None:
    with start_swtpm(ca, tmp_path / "fresh") as fresh:
        config = write_state_dir(tmp_path / "node", extra=f'[tpm]\ntcti = "{fresh.tcti}"\n')
        before = tpm_check(config)
        assert before.status is CheckStatus.WARN
        assert "no attestation key" in before.detail
        fresh.tools().ensure_attestation_key()
        assert tpm_check(config).status is CheckStatus.OK
    gone = tpm_check(config)  # the swtpm has stopped: nothing answers on its port
    assert gone.status is CheckStatus.WARN
    assert "does not answer" in gone.detail
    assert "tpm" in [r.name for r in local_checks(config, Backend.SIM, enrolled=lambda _c: True)]


def test_tpm_tests_skip_with_a_message_where_swtpm_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    with pytest.raises(pytest.skip.Exception, match="swtpm, swtpm-tools, tpm2-tools"):
        require_swtpm()
