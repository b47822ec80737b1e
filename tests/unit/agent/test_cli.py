"""The pausewatch-agent command line: init, enroll (one and two steps), run, status, operator."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pausewatch.v1 import envelope_pb2, registry_pb2

from agent.daemon import spool_path
from agent.spool import Spool
from attest import keys
from attest.envelope import PayloadType, sign_envelope
from tests.agent_setup import write_state_dir
from tests.cli_runner import run_agent_cli
from tests.fake_verifier import FakeVerifier


@pytest.fixture
def operator_keys(tmp_path: Path) -> tuple[Path, keys.Ed25519PublicKey]:  # type: ignore[name-defined]
    private = keys.generate_private_key()
    path = tmp_path / "operator.key"
    keys.save_private_key(path, private)
    return path, private.public_key()


@pytest.fixture
def verifier(operator_keys: tuple[Path, object]) -> Iterator[FakeVerifier]:
    server = FakeVerifier(operator_keys={"lab-a": operator_keys[1]})  # type: ignore[dict-item]
    server.start()
    yield server
    server.stop()


def test_init_writes_key_config_and_refuses_to_run_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    code, out, _ = run_agent_cli(
        capsys,
        "init", "--state-dir", str(state), "--lab", "lab-a", "--verifier", "v.example:443",
        "--node-name", "gpu-01", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    key = state / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = keys.load_public_key(state / "node.pub")
    assert result["node_id"] == keys.key_id(public).hex()
    config = (state / "config.toml").read_text()
    assert 'address = "v.example:443"' in config
    assert "insecure_no_tls" not in config  # TLS unless asked otherwise
    before = key.read_bytes()
    code, _, err = run_agent_cli(
        capsys, "init", "--state-dir", str(state), "--lab", "lab-a", "--verifier", "v:1"
    )
    assert code == 2
    assert "already exists" in err
    assert key.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lab", "Lab A", "--verifier", "v:1"], "--lab"),
        (["--lab", "lab-a", "--verifier", "no-port"], "verifier.address"),
        (["--lab", "lab-a", "--verifier", "v:1", "--insecure-no-tls", "--ca-cert", "x"], "exclude"),
    ],
)
def test_init_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    state = tmp_path / "state"
    code, _, err = run_agent_cli(capsys, "init", "--state-dir", str(state), *args)
    assert code == 2
    assert message in err
    assert not state.exists()


def test_one_step_enrolment_run_refusal_and_status(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator_keys: tuple[Path, object],
) -> None:
    config = write_state_dir(tmp_path, address=verifier.address)
    state = str(config.node.state_dir)
    code, _, err = run_agent_cli(capsys, "run", "--state-dir", state)
    assert code == 2
    assert "not enrolled" in err
    code, out, _ = run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--operator-key", str(operator_keys[0]), "--json"
    )
    assert code == 0, out
    result = json.loads(out)
    node = verifier.node(bytes.fromhex(result["node_id"]))
    assert len(node.gpus) == 2
    assert result["gpus"] == node.gpus
    code, out, _ = run_agent_cli(capsys, "status", "--state-dir", state, "--json")
    assert code == 11  # enrolled, but no agent runs: unhealthy (docs/agent.md)
    status = json.loads(out)
    assert [p["problem"] for p in status["problems"]] == ["not_running", "not_signing"]
    assert status["enrolled"] is True
    assert status["enrollment"]["log_index"] == node.log_index
    assert status["head"] is None
    assert status["agent_running"] is False
    assert status["spool"]["pending"] == 0
    code, out, _ = run_agent_cli(capsys, "status", "--state-dir", state)
    assert "enrolled      yes" in out


def test_enrolment_with_the_wrong_operator_key_is_refused_and_not_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verifier: FakeVerifier
) -> None:
    config = write_state_dir(tmp_path, address=verifier.address)
    impostor = tmp_path / "impostor.key"
    keys.save_private_key(impostor, keys.generate_private_key())
    code, _, err = run_agent_cli(
        capsys, "enroll", "--state-dir", str(config.node.state_dir), "--operator-key", str(impostor)
    )
    assert code == 3
    assert "PERMISSION_DENIED" in err
    assert verifier.nodes == {}
    spool = Spool.open(spool_path(config)) if spool_path(config).exists() else None
    assert spool is None or spool.get_text("enrollment") is None


def test_two_step_enrolment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator_keys: tuple[Path, object],
) -> None:
    config = write_state_dir(tmp_path, address=verifier.address)
    state = str(config.node.state_dir)
    request = tmp_path / "request.env"
    authorization = tmp_path / "authorization.env"
    code, out, _ = run_agent_cli(capsys, "enroll", "--state-dir", state, "--prepare", str(request))
    assert code == 0, out
    code, out, _ = run_agent_cli(
        capsys, "operator", "authorize", "--operator-key", str(operator_keys[0]),
        str(request), str(authorization), "--json",
    )  # fmt: skip
    assert code == 0, out
    assert len(json.loads(out)["gpus"]) == 2
    code, out, _ = run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--authorization", str(authorization)
    )
    assert code == 0, out
    assert len(verifier.nodes) == 1


def test_an_authorisation_of_another_payload_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator_keys: tuple[Path, object],
) -> None:
    config = write_state_dir(tmp_path, address=verifier.address)
    state = str(config.node.state_dir)
    first = tmp_path / "first.env"
    auth = tmp_path / "auth.env"
    run_agent_cli(capsys, "enroll", "--state-dir", state, "--prepare", str(first))
    run_agent_cli(
        capsys, "operator", "authorize", "--operator-key", str(operator_keys[0]),
        str(first), str(auth),
    )  # fmt: skip
    # A second --prepare makes a new request (new nonce, new time): the old authorisation no
    # longer matches it.
    run_agent_cli(capsys, "enroll", "--state-dir", state, "--prepare", str(tmp_path / "b.env"))
    code, _, err = run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--authorization", str(auth)
    )
    assert code == 3
    assert "different enrolment payload" in err
    assert verifier.nodes == {}


def test_authorize_refuses_bytes_that_are_not_an_envelope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], operator_keys: tuple[Path, object]
) -> None:
    bogus = tmp_path / "bogus.env"
    bogus.write_bytes(b"\x0a\x01x")
    out_path = tmp_path / "out.env"
    code, _, err = run_agent_cli(
        capsys, "operator", "authorize", "--operator-key", str(operator_keys[0]),
        str(bogus), str(out_path),
    )  # fmt: skip
    assert code == 3
    assert "envelope" in err
    assert not out_path.exists()


def test_authorize_refuses_a_request_without_proof_of_possession(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator_keys: tuple[Path, object],
) -> None:
    """A well-formed request from ``enroll --prepare`` is authorised; the same NodeEnrollment
    signed by another key than the node key it names, or with one byte of the signed payload
    changed, is refused (exit 3, nothing written): the proof of possession is checked, not just
    the envelope's shape."""
    config = write_state_dir(tmp_path, address=verifier.address)
    request = tmp_path / "request.env"
    code, out, err = run_agent_cli(
        capsys, "enroll", "--state-dir", str(config.node.state_dir), "--prepare", str(request)
    )
    assert code == 0, out + err
    honest = envelope_pb2.Envelope.FromString(request.read_bytes())
    node_public = keys.load_public_key(config.node.state_dir / "node.pub")
    node_id = keys.key_id(node_public)
    named = registry_pb2.NodeEnrollment.FromString(honest.payload)
    assert named.node_public_key == keys.raw_public_key(node_public)
    assert honest.key_id == node_id

    def authorize(name: str, raw: bytes) -> tuple[int, str, Path]:
        path = tmp_path / f"{name}.env"
        path.write_bytes(raw)
        out_path = tmp_path / f"{name}.auth"
        code, _, err = run_agent_cli(
            capsys, "operator", "authorize", "--operator-key", str(operator_keys[0]),
            str(path), str(out_path),
        )  # fmt: skip
        return code, err, out_path

    other = keys.Ed25519Signer.from_private_key(keys.generate_private_key())
    # 1. Signed by another key (its own key id): that key is not the one the request names.
    by_other = sign_envelope(other, PayloadType.ENROLLMENT, honest.payload)
    code, err, out_path = authorize("by-other", by_other)
    assert code == 3
    assert "proof of possession does not verify" in err
    assert f"key {other.key_id.hex()} is not trusted" in err
    assert not out_path.exists()
    # 2. Claims the node's key id, but the signature is another key's.
    forged = envelope_pb2.Envelope()
    forged.CopyFrom(honest)
    forged.signature = envelope_pb2.Envelope.FromString(by_other).signature
    code, err, out_path = authorize("forged", forged.SerializeToString())
    assert code == 3
    assert "proof of possession does not verify" in err
    assert f"signature by key {node_id.hex()[:16]}... does not verify" in err
    assert not out_path.exists()
    # 3. The node's own signature, one byte of the signed payload changed (the node name).
    altered = envelope_pb2.Envelope()
    altered.CopyFrom(honest)
    at = honest.payload.index(b"test-node")
    altered.payload = honest.payload[:at] + b"T" + honest.payload[at + 1 :]
    assert registry_pb2.NodeEnrollment.FromString(altered.payload).node_name == "Test-node"
    code, err, out_path = authorize("altered", altered.SerializeToString())
    assert code == 3
    assert "proof of possession does not verify" in err
    assert f"signature by key {node_id.hex()[:16]}... does not verify" in err
    assert not out_path.exists()
    # Control: the honest request is authorised, over the very same payload bytes.
    code, err, out_path = authorize("honest", request.read_bytes())
    assert code == 0, err
    authorization = envelope_pb2.Envelope.FromString(out_path.read_bytes())
    assert authorization.payload == honest.payload
    assert authorization.payload_type == PayloadType.ENROLLMENT_AUTHORIZATION


def test_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_state_dir(tmp_path)
    with config.source.open("a") as handle:
        handle.write("[spool]\nmax_unacked_envelopes = 0\n")
    code, _, err = run_agent_cli(capsys, "status", "--state-dir", str(tmp_path / "state"))
    assert code == 2
    assert "spool.max_unacked_envelopes" in err
    code, _, err = run_agent_cli(capsys, "status", "--state-dir", str(tmp_path / "nowhere"))
    assert code == 2
    assert "does not exist" in err


def test_an_unreachable_verifier_is_an_internal_error_with_its_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], operator_keys: tuple[Path, object]
) -> None:
    config = write_state_dir(tmp_path, address="127.0.0.1:9")
    code, _, err = run_agent_cli(
        capsys, "enroll", "--state-dir", str(config.node.state_dir),
        "--operator-key", str(operator_keys[0]),
    )  # fmt: skip
    assert code == 4
    assert "UNAVAILABLE" in err


def test_operator_keygen_declare_inventory_and_revoke(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verifier: FakeVerifier,
    operator_keys: tuple[Path, object],
) -> None:
    out_dir = tmp_path / "keys"
    code, out, _ = run_agent_cli(capsys, "operator", "keygen", "--out", str(out_dir), "--json")
    assert code == 0
    assert stat.S_IMODE((out_dir / "operator.key").stat().st_mode) == 0o600
    assert json.loads(out)["key_id"]
    code, _, err = run_agent_cli(capsys, "operator", "keygen", "--out", str(out_dir))
    assert code == 2
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[[gpu]]\nuuid = "GPU-1"\nmodel = "NVIDIA H100"\n[[gpu]]\nuuid = "GPU-2"\n'
    )
    common = ["--operator-key", str(operator_keys[0]), "--lab", "lab-a",
              "--verifier", verifier.address, "--insecure-no-tls"]  # fmt: skip
    code, out, err = run_agent_cli(
        capsys, "operator", "declare-inventory", *common, "--inventory", str(inventory),
        "--version", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["gpus"] == 2
    inventory.write_text('[[gpu]]\nuuid = "GPU-1"\nmodle = "typo"\n')
    code, _, err = run_agent_cli(
        capsys, "operator", "declare-inventory", *common, "--inventory", str(inventory),
        "--version", "2",
    )  # fmt: skip
    assert code == 2
    assert "gpu[0].modle" in err
    node_id = verifier.add_node(keys.generate_private_key().public_key())
    code, out, err = run_agent_cli(
        capsys, "operator", "revoke", *common, "--node-id", node_id.hex(), "--reason", "retired",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert verifier.node(node_id).revoked
    code, _, err = run_agent_cli(
        capsys, "operator", "revoke", *common, "--node-id", "zz", "--reason", "x"
    )
    assert code == 2
    assert "--node-id" in err


def test_run_with_a_bad_scenario_or_a_readable_key_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verifier: FakeVerifier,
    operator_keys: tuple[Path, object],
) -> None:  # fmt: skip
    config = write_state_dir(tmp_path, address=verifier.address)
    state = str(config.node.state_dir)
    assert run_agent_cli(
        capsys, "enroll", "--state-dir", state, "--operator-key", str(operator_keys[0])
    )[0] == 0  # fmt: skip
    spool = Spool.open(spool_path(config))
    before = (spool.head(), spool.get_text("enrollment"))
    spool.close()
    broken = tmp_path / "broken.toml"
    broken.write_text("gpu_count = 4\n[[fault]]\nat_s = 1\nkind = 'meteor'\n")
    code, _, err = run_agent_cli(capsys, "run", "--state-dir", state, "--scenario", str(broken))
    assert code == 2
    assert "fault[0].kind" in err
    config.node.key_file.chmod(0o644)
    code, _, err = run_agent_cli(capsys, "run", "--state-dir", state)
    assert code == 2
    assert "others can read it" in err
    spool = Spool.open(spool_path(config))
    assert (spool.head(), spool.get_text("enrollment")) == before
    assert spool.envelopes() == []
    spool.close()


def test_authorize_takes_a_request_built_from_the_documented_format_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], operator_keys: tuple[Path, object]
) -> None:
    """docs/agent.md, "The request file": an Envelope (wire-format.md section 2) of type
    application/vnd.pausewatch.enrollment.v1+protobuf over a NodeEnrollment, signed by the key
    it names. Built here without the agent's enrolment code."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from pausewatch.v1 import envelope_pb2, registry_pb2

    from attest.envelope import pae

    node = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"doc node").digest())
    public = node.public_key().public_bytes_raw()
    payload = registry_pb2.NodeEnrollment(
        format_version=1,
        lab_id="lab-a",
        node_public_key=public,
        gpus=[registry_pb2.GpuIdentity(uuid="GPU-0", model="NVIDIA H100 80GB HBM3")],
        node_name="gpu-001",
        agent_version="0.1.0",
        created_at_ns=1_795_939_200_000_000_000,
        verifier_nonce=b"n" * 24,
    ).SerializeToString()
    payload_type = "application/vnd.pausewatch.enrollment.v1+protobuf"
    request = envelope_pb2.Envelope(
        payload_type=payload_type,
        payload=payload,
        key_id=hashlib.sha256(public).digest(),
        signature=node.sign(pae(payload_type.encode(), payload)),
    ).SerializeToString()
    request_in = tmp_path / "request.env"
    request_in.write_bytes(request)
    out = tmp_path / "auth.env"
    code, stdout, err = run_agent_cli(
        capsys, "operator", "authorize", "--operator-key", str(operator_keys[0]),
        str(request_in), str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["node_id"] == hashlib.sha256(public).hexdigest()
    authorization = envelope_pb2.Envelope.FromString(out.read_bytes())
    assert authorization.payload == payload  # the very same bytes
    assert authorization.payload_type == (
        "application/vnd.pausewatch.enrollment-authorization.v1+protobuf"
    )
    # The same request signed by another key than the one it names: refused, nothing written.
    other = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"other").digest())
    forged = envelope_pb2.Envelope.FromString(request)
    forged.signature = other.sign(pae(payload_type.encode(), payload))
    request_in.write_bytes(forged.SerializeToString())
    refused = tmp_path / "refused.env"
    code, _, err = run_agent_cli(
        capsys, "operator", "authorize", "--operator-key", str(operator_keys[0]),
        str(request_in), str(refused),
    )  # fmt: skip
    assert code == 3
    assert not refused.exists()


def test_another_nodes_spool_fails_check_and_run_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verifier: FakeVerifier,
    operator_keys: tuple[Path, object],
) -> None:  # fmt: skip
    """A state directory holding another node's (enrolled) spool is not an enrolled node:
    `check` must not pass it, and `run` must refuse it as a mistake (exit 2, not restarted by
    systemd), naming the spool's owner, before it opens anything (docs/agent.md, errors)."""
    enrolled = write_state_dir(tmp_path / "a", address=verifier.address)
    assert run_agent_cli(
        capsys, "enroll", "--state-dir", str(enrolled.node.state_dir),
        "--operator-key", str(operator_keys[0]),
    )[0] == 0  # fmt: skip
    other = write_state_dir(tmp_path / "b", address=verifier.address, seed=2)
    spool_path(other).write_bytes(spool_path(enrolled).read_bytes())
    state = str(other.node.state_dir)
    code, out, _ = run_agent_cli(capsys, "check", "--state-dir", state, "--no-verifier", "--json")
    assert code == 2, out
    failed = {c["name"]: c["detail"] for c in json.loads(out)["checks"] if c["status"] == "fail"}
    assert "belongs to node" in failed["enrolment"]
    code, _, err = run_agent_cli(capsys, "run", "--state-dir", state)
    assert code == 2
    assert "start-up check 'enrolment' failed: spool" in err
    assert "belongs to node" in err
