"""TPM-rooted nodes over two verifier processes sharing one PostgreSQL database: one TPM backs one
live node whichever process enrols it, and a node's quote state (the TPM clock, the IMA log's end
and PCR 10) carries from one process to the other, so a chain whose windows alternate between
them keeps verifying its IMA log incrementally.

Uses the real PostgreSQL server at ``$PAUSEWATCH_TEST_POSTGRES``, in a database of its own.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from pausewatch.v1 import findings_pb2 as fpb

from agent.tpm_quotes import ImaLog, WindowQuoter
from tests.builders import TestNode
from tests.stores import POSTGRES_DSN
from tests.tpm_setup import Chain, SwtpmCa, enroll_with_tpm, measure, require_swtpm, start_swtpm
from tests.verifier_harness import (
    RunningVerifier,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def database() -> Iterator[str]:
    name = f"pw_tpm_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_processes_share_tpm_ownership_and_quote_state(tmp_path: Path, database: str) -> None:
    require_swtpm()
    ca = SwtpmCa.create(tmp_path / "ca")
    with start_swtpm(ca, tmp_path / "tpm") as device:
        running: list[RunningVerifier] = []
        try:
            for name in ("a", "b"):
                directory = tmp_path / name
                directory.mkdir()
                (directory / "ek-cas.pem").write_bytes(ca.root_pem + ca.intermediate_pem)
                files = write_verifier_files(
                    directory,
                    store=f'engine = "postgres"\ndsn = "{database}"',
                    extra_config='[tpm]\nmanufacturer_cas = ["ek-cas.pem"]\n',
                )
                running.append(start_verifier_process(files, tmp_path / f"{name}.log"))
            a, b = running
            t0 = time.time_ns() + 5 * 10**9
            first = TestNode.from_seed(1801, t0_ns=t0)
            second = TestNode.from_seed(1802, t0_ns=t0)
            enroll_with_tpm(a, first, device)
            with pytest.raises(grpc.RpcError) as info:
                enroll_with_tpm(b, second, device)
            assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS

            ima = tmp_path / "ima"
            quoter = WindowQuoter(device.tools(), ImaLog(ima))
            chain_a, chain_b = Chain(a, first, quoter), Chain(b, first, quoter)
            for i in range(4):
                # The kernel measures one more file before each window.
                measure(device, ima, f"/opt/job/{i}", hashlib.sha256(bytes([i])).digest())
                here, there = (chain_a, chain_b) if i % 2 == 0 else (chain_b, chain_a)
                body = here.body()
                assert body.tpm_quote.ima_log_start == i  # only the new line is sent
                assert here.send(body).tpm_quote == fpb.TPM_QUOTE_STATUS_OK
                there.seq, there.prev = here.seq, here.prev
        finally:
            for verifier in running:
                stop_process(verifier)
