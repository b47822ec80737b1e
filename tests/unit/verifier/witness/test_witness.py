"""The witness server (verifier/witness/server.py) over real HTTP on loopback, its durable state,
and the verifier's witness client (verifier/witness/pool.py) against it."""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attest import checkpoint as cp
from attest import merkle, note
from attest.errors import ConfigError
from attest.witness import AddCheckpointRequest, Status, WitnessRefusedError
from verifier.config import WitnessConfig, parse_config
from verifier.witness.pool import WitnessPool
from verifier.witness.server import Witness, WitnessServer, WitnessState

ORIGIN = "log.example/a"


def key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


LOG = note.Ed25519NoteSigner(ORIGIN, key("log"))
COSIGNER = cp.CosignatureSigner("witness.example/w", key("w"))
TREE = merkle.MemoryTree()
for _i in range(64):
    TREE.append_data(b"leaf %d" % _i)


def note_at(size: int) -> str:
    return cp.sign_checkpoint(cp.Checkpoint(ORIGIN, size, TREE.root(size)), LOG)


def body(old: int, size: int) -> bytes:
    proof = tuple(TREE.consistency_proof(old, size)) if 0 < old < size else ()
    return AddCheckpointRequest(old, proof, note_at(size)).to_bytes()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WitnessServer, WitnessState]]:
    state = WitnessState.open(tmp_path / "state")
    server = WitnessServer(Witness(state, COSIGNER, {ORIGIN: LOG.verifier()}), ("127.0.0.1", 0))
    server.start()
    try:
        yield server, state
    finally:
        server.stop()


def post(port: int, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/add-checkpoint", body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def state_files(state: WitnessState) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state.directory.glob("*.checkpoint")}


def test_state_survives_reopening_and_refuses_corruption(tmp_path: Path) -> None:
    state = WitnessState.open(tmp_path / "s")
    witness = Witness(state, COSIGNER, {ORIGIN: LOG.verifier()})
    witness.add_checkpoint(body(0, 10))
    reopened = WitnessState.open(tmp_path / "s")
    assert reopened.latest(ORIGIN) == cp.Checkpoint(ORIGIN, 10, TREE.root(10))
    (path,) = (tmp_path / "s").glob("*.checkpoint")
    assert not list((tmp_path / "s").glob(".*tmp*"))  # no temporary file left behind
    path.write_text("log.example/a\n10\nnot base64\n")
    with pytest.raises(ConfigError, match="corrupt"):
        WitnessState.open(tmp_path / "s")
    path.write_text(cp.Checkpoint("log.example/b", 1, TREE.root(1)).to_text())
    with pytest.raises(ConfigError, match="another log"):
        WitnessState.open(tmp_path / "s")


def test_concurrent_requests_never_roll_the_state_back(tmp_path: Path) -> None:
    """The protocol's race: requests from the same old size for sizes N and N+K. The check and
    the write are one step, so exactly one is cosigned and the other learns the new size."""
    state = WitnessState.open(tmp_path / "s")
    witness = Witness(state, COSIGNER, {ORIGIN: LOG.verifier()})
    witness.add_checkpoint(body(0, 10))
    outcomes: list[object] = []
    barrier = threading.Barrier(8)

    def ask(size: int) -> None:
        barrier.wait()
        try:
            witness.add_checkpoint(body(10, size))
            outcomes.append(size)
        except WitnessRefusedError as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=ask, args=(20 + i * 5,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cosigned = [o for o in outcomes if isinstance(o, int) and not isinstance(o, Status)]
    assert len(cosigned) == 1
    assert outcomes.count(Status.CONFLICT) == 7
    assert state.latest(ORIGIN) == cp.Checkpoint(ORIGIN, cosigned[0], TREE.root(cosigned[0]))
    assert WitnessState.open(tmp_path / "s").latest(ORIGIN) == state.latest(ORIGIN)


def test_http_statuses_and_hostile_requests_change_nothing(
    served: tuple[WitnessServer, WitnessState],
) -> None:
    server, state = served
    status, answer = post(server.port, body(0, 10))
    assert status == 200
    _, cosignatures = cp.verify_cosignatures(
        note_at(10) + answer.decode(), LOG.verifier(), [COSIGNER.verifier()]
    )
    assert len(cosignatures) == 1
    before = state_files(state)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("POST", "/add-checkpoint", body=body(0, 12))
    response = connection.getresponse()
    assert (response.status, response.read()) == (409, b"10\n")
    assert response.getheader("Content-Type") == "text/x.tlog.size"
    connection.close()
    hostile = [
        (b"garbage", {}, 400),
        (b"old 0\n\n" + b"x" * 70_000, {}, 413),
        (body(10, 5), {}, 400),
        (body(10, 10), {}, 200),  # the same checkpoint again: cosigned again
    ]
    for data, headers, expected in hostile:
        assert post(server.port, data, headers)[0] == expected
    # No Content-Length: refused before reading anything.
    raw = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    raw.putrequest("POST", "/add-checkpoint")
    raw.endheaders()
    assert raw.getresponse().status == 411
    raw.close()
    other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    other.request("GET", "/add-checkpoint")
    assert other.getresponse().status == 405
    other.close()
    assert post_path(server.port, "/elsewhere") == 404
    assert state_files(state) == before
    assert not list((state.directory / "refused").iterdir())  # none of these was a fork


def post_path(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=b"x")
        return connection.getresponse().status
    finally:
        connection.close()


def pool_for(url: str, cosigner: cp.CosignatureSigner = COSIGNER) -> WitnessPool:
    return WitnessPool.from_config(
        [WitnessConfig(url, cosigner.verifier().to_vkey())], LOG.verifier(), timeout_s=5
    )


def proofs(old: int, new: int) -> list[bytes]:
    return TREE.consistency_proof(old, new)


def test_pool_learns_the_witness_size_and_adds_a_verified_cosignature(
    served: tuple[WitnessServer, WitnessState],
) -> None:
    server, _ = served
    assert post(server.port, body(0, 10))[0] == 200  # the witness already holds size 10
    pool = pool_for(f"http://127.0.0.1:{server.port}")
    cosigned = pool.cosign(note_at(30), proofs)  # asks from 0, gets 409 "10", retries from 10
    _, cosignatures = cp.verify_cosignatures(cosigned, LOG.verifier(), pool.verifiers)
    assert [c.name for c in cosignatures] == ["witness.example/w"]
    assert pool.missing(cosigned) == []
    assert pool.cosign(cosigned, proofs) == cosigned  # nothing missing: nothing asked


def test_pool_adds_nothing_for_a_down_wrong_or_forked_witness(
    served: tuple[WitnessServer, WitnessState],
) -> None:
    server, _ = served
    note10 = note_at(10)
    assert pool_for("http://127.0.0.1:9").cosign(note10, proofs) == note10  # nobody listens
    # A witness whose answer is not a cosignature by the key we were told: ignored.
    impostor = cp.CosignatureSigner("witness.example/w", key("not w"))
    assert pool_for(f"http://127.0.0.1:{server.port}", impostor).cosign(note10, proofs) == note10
    # The witness holds size 10 of TREE; a forked log of size 10 gets nothing.
    fork = merkle.MemoryTree()
    for i in range(10):
        fork.append_data(b"fork %d" % i)
    forked = cp.sign_checkpoint(cp.Checkpoint(ORIGIN, 10, fork.root()), LOG)
    assert pool_for(f"http://127.0.0.1:{server.port}").cosign(forked, proofs) == forked


def test_an_unreachable_witness_is_logged_in_words(caplog: pytest.LogCaptureFixture) -> None:
    note10 = note_at(10)
    with caplog.at_level("WARNING", logger="verifier.witness.pool"):
        assert pool_for("http://127.0.0.1:9").cosign(note10, proofs) == note10  # nobody listens
    [line] = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert line == "witness http://127.0.0.1:9/add-checkpoint unreachable: connection refused", line


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('url = "ftp://w"\nkey = "{key}"', "http:// or https://"),
        ('url = "http://w"\nkey = "not a key"', "log.witnesses\\[0\\].key"),
        ('url = "http://w"\nkey = "{logkey}"', "not a cosignature/v1 key"),
        ('url = "http://w"\nkey = "{key}"\nextra = 1', "not a known key"),
    ],
)
def test_witness_config_errors(table: str, problem: str) -> None:
    text = table.format(key=COSIGNER.verifier().to_vkey(), logkey=LOG.verifier().to_vkey())
    config = f"[server]\ninsecure_no_tls = true\n[[log.witnesses]]\n{text}\n"
    with pytest.raises(ConfigError, match=problem):
        parse_config(config.encode())


def test_witness_config() -> None:
    vkey = COSIGNER.verifier().to_vkey()
    config = parse_config(
        f"[server]\ninsecure_no_tls = true\n[log]\nwitness_timeout_ms = 700\n"
        f'[[log.witnesses]]\nurl = "http://w.example/"\nkey = "{vkey}"\n'.encode()
    )
    assert config.log.witnesses == (WitnessConfig("http://w.example", vkey),)
    assert config.log.witness_timeout_ms == 700
    twice = f'[[log.witnesses]]\nurl = "http://a"\nkey = "{vkey}"\n' * 2
    with pytest.raises(ConfigError, match="appears twice"):
        parse_config(f"[server]\ninsecure_no_tls = true\n{twice}".encode())


def test_silent_and_surplus_connections_cannot_starve_the_witness(tmp_path: Path) -> None:
    """Anyone may connect: a connection that says nothing is dropped after the timeout, and
    connections beyond the limit are closed at once, while the witness keeps answering."""
    import socket
    import time

    state = WitnessState.open(tmp_path / "s")
    server = WitnessServer(
        Witness(state, COSIGNER, {ORIGIN: LOG.verifier()}),
        ("127.0.0.1", 0),
        request_timeout_s=0.5,
        max_connections=3,
    )
    server.start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        # One slot left: an honest request is served while two connections sit silent.
        assert post(server.port, body(0, 10))[0] == 200
        silent.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.1)
        surplus = socket.create_connection(("127.0.0.1", server.port))
        surplus.settimeout(5)
        assert surplus.recv(1) == b""  # closed at once, never served
        surplus.close()
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(1) == b""  # dropped by the server after the timeout
            sock.close()
        time.sleep(0.1)
        assert post(server.port, body(10, 12))[0] == 200
        assert state.latest(ORIGIN) == cp.Checkpoint(ORIGIN, 12, TREE.root(12))
    finally:
        server.stop()


def test_a_witness_that_breaks_off_its_answer_adds_nothing(tmp_path: Path) -> None:
    """A peer that answers with a truncated or garbled HTTP response is a failed witness, not a
    crash of the verifier's checkpoint loop."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n\xe2\x80\x94 short",  # cut off
        b"not http at all\r\n\r\n",
        b"HTTP/1.1 409 Conflict\r\nContent-Length: 4\r\n\r\nten\n",  # 409, bad size
    ]

    def serve() -> None:
        for answer in answers:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(answer)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = pool_for(f"http://127.0.0.1:{port}")
    note10 = note_at(10)
    for _ in answers:
        assert pool.cosign(note10, proofs) == note10
    thread.join(timeout=10)
    listener.close()
