"""What the verifier refuses to start on, and what the command line says when TLS fails.

The command line says when the verifier refused its client certificate (missing, from another CA,
expired: exit 5), apart from an untrusted verifier and an unreachable one (exit 4). The verifier
refuses to start (exit 2, nothing served) on an expired certificate, a TLS key that others can
read, a certificate that is not for its key, and a policy it cannot evaluate."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tls import TestPki
from tests.verifier_harness import (
    REPO,
    RunningVerifier,
    VerifierFiles,
    pausewatch,
    start_verifier_process,
    stop_process,
    write_verifier_files,
)


def write_pem(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def tls_verifier_files(directory: Path, pki: TestPki, *, key_mode: int = 0o600) -> VerifierFiles:
    files = write_verifier_files(directory)
    tls = directory / "tls"
    tls.mkdir()
    cert = write_pem(tls / "server.pem", pki.server_cert_pem, 0o644)
    key = write_pem(tls / "server.key", pki.server_key_pem, key_mode)
    ca = write_pem(tls / "client-ca.pem", pki.ca_pem, 0o644)
    files.config.write_text(
        files.config.read_text().replace(
            'insecure_no_tls = true\nlisten = "127.0.0.1:0"',
            f'listen = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
            f'client_ca = "{ca}"\nrequire_client_cert = true',
        )
    )
    return files


@dataclass
class Mtls:
    verifier: RunningVerifier
    pki: TestPki
    directory: Path

    def target(self, client: tuple[bytes, bytes] | None, ca: bytes | None = None) -> list[str]:
        d = self.directory
        args = ["--verifier", self.verifier.address, "--server-name", "localhost"]
        args += ["--ca-cert", str(write_pem(d / "ca.pem", ca or self.pki.ca_pem, 0o644))]
        if client is not None:
            name = f"client-{abs(hash(client))}"
            args += ["--client-key", str(write_pem(d / f"{name}.key", client[0]))]
            args += ["--client-cert", str(write_pem(d / f"{name}.pem", client[1], 0o644))]
        return args


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mtls]:
    directory = tmp_path_factory.mktemp("mtls")
    pki = TestPki.create()
    files = tls_verifier_files(directory / "v", pki)
    verifier = start_verifier_process(files, directory / "verifier.log", wait_health=False)
    try:
        yield Mtls(verifier, pki, directory)
    finally:
        stop_process(verifier)


def test_the_right_client_certificate_is_served(mtls: Mtls) -> None:
    pki = mtls.pki
    good = pausewatch(
        "log", "checkpoint", *mtls.target((pki.client_key_pem, pki.client_cert_pem)), "--json"
    )
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("which", ["missing", "other-ca", "expired"])
def test_a_refused_client_certificate_is_named_with_its_own_exit_code(
    mtls: Mtls, which: str
) -> None:
    pki = mtls.pki
    rogue = TestPki.create()
    client = {
        "missing": None,
        "other-ca": (rogue.client_key_pem, rogue.client_cert_pem),
        "expired": (pki.expired_client_key_pem, pki.expired_client_cert_pem),
    }[which]
    run = pausewatch("log", "checkpoint", *mtls.target(client))
    assert run.returncode == 5, run.stderr
    assert "refused this client's TLS certificate" in run.stderr
    expected = "no client certificate was given" if which == "missing" else "did not accept"
    assert expected in run.stderr
    assert "cannot reach" not in run.stderr and "Traceback" not in run.stderr


def test_an_untrusted_verifier_and_an_unreachable_one_read_differently(mtls: Mtls) -> None:
    pki = mtls.pki
    client = (pki.client_key_pem, pki.client_cert_pem)
    untrusted = pausewatch("log", "checkpoint", *mtls.target(client, ca=TestPki.create().ca_pem))
    assert untrusted.returncode == 4, untrusted.stderr
    assert "did not verify against --ca-cert" in untrusted.stderr
    assert "refused this client" not in untrusted.stderr
    gone = pausewatch(
        "log",
        "checkpoint",
        "--verifier",
        "127.0.0.1:1",
        "--ca-cert",
        str(mtls.directory / "ca.pem"),
    )
    assert gone.returncode == 4
    assert "cannot reach the verifier" in gone.stderr


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("expired", "expired at"),
        ("key-0644", "others can read it. Run: chmod 600"),
        ("key-0640", "others can read it"),
        ("wrong-key", "is not for the key in"),
    ],
)
def test_the_verifier_refuses_to_start_on_bad_tls_material(
    tmp_path: Path, case: str, words: str
) -> None:
    pki = TestPki.create(server_valid_days=-1 if case == "expired" else 1)
    mode = {"key-0644": 0o644, "key-0640": 0o640}.get(case, 0o600)
    files = tls_verifier_files(tmp_path / "v", pki, key_mode=mode)
    if case == "wrong-key":
        write_pem(tmp_path / "v" / "tls" / "server.key", TestPki.create().server_key_pem)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "verifier.cli",
            "verifier",
            "serve",
            "--config",
            str(files.config),
            "--port-file",
            str(tmp_path / "port"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")])),
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert words in run.stderr
    assert "server.tls_" in run.stderr
    assert not (tmp_path / "port").exists()  # never served
    assert "Traceback" not in run.stderr
    # Refused before anything was logged: no lab or policy record in a store it never served.
    if files.store.exists():
        with sqlite3.connect(files.store) as db:
            assert db.execute("SELECT COUNT(*) FROM log_entries").fetchone() == (0,)


def test_the_verifier_refuses_to_start_on_a_policy_it_cannot_evaluate_naming_the_file_once(
    tmp_path: Path,
) -> None:
    from tests.verifier_harness import DEFAULT_POLICY

    files = write_verifier_files(
        tmp_path / "v", policy=DEFAULT_POLICY.replace('window = "1h"', 'window = "90s"')
    )
    run = subprocess.run(
        [sys.executable, "-m", "verifier.cli", "verifier", "serve", "--config", str(files.config)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "protos")])),
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    error = run.stderr.strip().splitlines()[-1]
    assert error.count(str(files.directory / "policy.toml")) == 1, error
    assert "rules[0].window: 1m 30s is not a whole number of 1m buckets" in error
    assert "(lab lab-a; set by ingest.bucket_ms)" in error
    assert "Traceback" not in run.stderr


def test_a_store_a_newer_verifier_wrote_is_refused_in_words(tmp_path: Path) -> None:
    """docs/verifier.md, Upgrades: an older verifier refuses a newer store "and says so" (exit 2),
    not as an internal error naming a Python exception; the store is left as it was."""
    from verifier.store.sqlite import SqliteStore

    files = write_verifier_files(tmp_path / "v")
    SqliteStore.open(files.store).close()
    with sqlite3.connect(files.store) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (b"99",))
    refused = pausewatch("verifier", "serve", "--config", str(files.config))
    assert refused.returncode == 2, refused.stderr
    assert f"the store {files.store} has schema version 99" in refused.stderr
    assert "a newer verifier wrote it" in refused.stderr
    assert "Error" not in refused.stderr and "Traceback" not in refused.stderr
    with sqlite3.connect(files.store) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            b"99",
        )


def test_an_unreachable_postgres_store_is_named_without_its_password(tmp_path: Path) -> None:
    """A PostgreSQL store that cannot be reached is said in words (exit 4, as an unreachable
    peer), naming store.dsn with its password hidden; a DSN that does not parse is exit 2."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://verifier:S3cretPW@127.0.0.1:{port}/pausewatch"
    files = write_verifier_files(tmp_path / "v", store=f'engine = "postgres"\ndsn = "{dsn}"')
    refused = pausewatch("--debug", "verifier", "serve", "--config", str(files.config))
    assert refused.returncode == 4, refused.stderr
    assert "error: cannot connect to the PostgreSQL store" in refused.stderr
    assert "postgresql://verifier:***@127.0.0.1" in refused.stderr
    assert "S3cretPW" not in refused.stderr
    assert "OperationalError" not in refused.stderr

    bad = "host=127.0.0.1 user=verifier password S3cretPW dbname=pausewatch"
    files = write_verifier_files(tmp_path / "w", store=f'engine = "postgres"\ndsn = "{bad}"')
    refused = pausewatch("--debug", "verifier", "serve", "--config", str(files.config))
    assert refused.returncode == 2, refused.stderr
    assert "error: store.dsn: not a PostgreSQL connection string" in refused.stderr
    assert "S3cretPW" not in refused.stderr
    assert "ProgrammingError" not in refused.stderr
