"""The auditor's command line against a real verifier (over TLS): reports and their exit codes,
findings, bundles exported and re-verified offline, tampered bundles, checkpoints and proofs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.builders import TestNode
from tests.verifier_harness import RunningVerifier, pausewatch, running_verifier

S = 10**9
MINUTE = 60 * S

POLICY = """
format_version = 1
policy_id = "cli-test"
version = 1
lab_id = "lab-a"

[[rules]]
id = "five-minutes"
kind = "cumulative_flop"
window = "5m"
limit_flop = "1e18"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "99%"

[[rules]]
id = "gap"
kind = "max_gap"
max_gap = "2m"
"""


@dataclass
class Lab:
    verifier: RunningVerifier
    t0: int
    directory: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("cli")
    now = time.time_ns()
    t0 = now - now % MINUTE - 60 * MINUTE
    with running_verifier(directory / "v", policy=POLICY, tls=True) as v:
        client = v.client()
        node = TestNode.from_seed(70, t0_ns=t0)
        client.enroll(node, created_at_ns=t0 - S)
        client.declare_inventory(
            [node.gpu_uuid(i) for i in range(2)], effective_from_ns=t0 - MINUTE
        )
        # Minutes 0-9: half busy (within the limit); minutes 10-19: fully busy (over it).
        chain: list[bytes] = []
        prev = None
        from attest.envelope import envelope_digest

        for seq in range(20):
            raw = node.sign_body(node.body(seq, prev, busy_ms=30_000 if seq < 10 else 60_000))
            chain.append(raw)
            prev = envelope_digest(raw)
        receipts = client.submit(chain)
        assert all(r.log_index >= 0 and r.status == 1 for r in receipts)
        time.sleep(1.5)  # a checkpoint interval
        yield Lab(v, t0, directory)


def period(lab: Lab, start_min: int, end_min: int) -> list[str]:
    return [
        "--lab",
        "lab-a",
        "--since",
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((lab.t0 + start_min * MINUTE) // S)),
        "--until",
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((lab.t0 + end_min * MINUTE) // S)),
    ]


def test_report_exit_codes_json_and_html(lab: Lab) -> None:
    target = lab.verifier.cli_target()
    compliant = pausewatch("audit", "report", *target, *period(lab, 0, 10), "--json")
    assert compliant.returncode == 0, compliant.stderr
    assert json.loads(compliant.stdout)["verdict"] == "VERDICT_COMPLIANT"
    html = lab.directory / "report.html"
    violation = pausewatch("audit", "report", *target, *period(lab, 10, 20), "--html", str(html))
    assert violation.returncode == 1
    assert "VIOLATION" in violation.stdout
    assert "five-minutes" in violation.stdout
    assert 'id="compute-chart"' in html.read_text()


def test_usage_errors_and_an_unreachable_verifier(lab: Lab) -> None:
    target = lab.verifier.cli_target()
    unknown = pausewatch("audit", "report", *target, "--lab", "no-such-lab", "--since", "-1h")
    assert unknown.returncode == 2
    assert "NOT_FOUND" in unknown.stderr
    bad_time = pausewatch("audit", "report", *target, "--lab", "lab-a", "--since", "yesterday-ish")
    assert bad_time.returncode == 2
    assert "is not a time" in bad_time.stderr
    gone = pausewatch(
        "audit", "report", "--verifier", "127.0.0.1:1", "--insecure-no-tls", "--lab", "lab-a"
    )
    assert gone.returncode == 4
    assert "cannot reach the verifier" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_findings(lab: Lab) -> None:
    listed = pausewatch("audit", "findings", *lab.verifier.cli_target(), "--lab", "lab-a", "--json")
    assert listed.returncode == 0, listed.stderr
    # The fixture's lab is clean: no findings at all (declared GPUs, contiguous chain).
    assert listed.stdout.strip() == ""


def test_export_verify_and_tamper(lab: Lab) -> None:
    bundle = lab.directory / "lab-a.pwbundle"
    exported = pausewatch(
        "audit", "export", *lab.verifier.cli_target(), *period(lab, 0, 20), "--out", str(bundle)
    )
    assert exported.returncode == 0, exported.stderr
    checkpoint = pausewatch("log", "checkpoint", *lab.verifier.cli_target(), "--json")
    log_key = json.loads(checkpoint.stdout)["verifier_key"]
    verified = pausewatch("audit", "verify-bundle", str(bundle), "--log-key", log_key, "--json")
    result = json.loads(verified.stdout)
    assert verified.returncode == 1  # valid evidence of a violation
    assert result["ok"] and result["agrees_with_server"]
    assert result["verdict"] == "VERDICT_VIOLATION"
    assert result["attestations"] == 20
    data = bundle.read_bytes()
    for position in (5, len(data) // 3, len(data) // 2, len(data) - 10):
        tampered = bytearray(data)
        tampered[position] ^= 0x40
        path = lab.directory / f"tampered-{position}.pwbundle"
        path.write_bytes(bytes(tampered))
        run = pausewatch("audit", "verify-bundle", str(path), "--log-key", log_key)
        assert run.returncode == 3, (position, run.stdout[-500:])
        assert "FAILED" in run.stdout
    from attest.keys import generate_private_key
    from attest.note import format_verifier_key

    other_key = format_verifier_key(
        "test.example/verifier", generate_private_key().public_key().public_bytes_raw()
    )
    pinned_wrong = pausewatch("audit", "verify-bundle", str(bundle), "--log-key", other_key)
    assert pinned_wrong.returncode == 3
    assert "FAILED" in pinned_wrong.stdout
    # The same key under another log origin (a changed `log.origin`) is another log identity.
    from attest.note import parse_verifier_key

    same_key_other_origin = format_verifier_key(
        "other.example/verifier", parse_verifier_key(log_key).public_key
    )
    renamed = pausewatch("audit", "verify-bundle", str(bundle), "--log-key", same_key_other_origin)
    assert renamed.returncode == 3
    assert "FAILED" in renamed.stdout
    malformed = pausewatch("audit", "verify-bundle", str(bundle), "--log-key", "not+a+key")
    assert malformed.returncode == 2


def test_log_checkpoint_and_proofs(lab: Lab) -> None:
    target = lab.verifier.cli_target()
    checkpoint = pausewatch("log", "checkpoint", *target, "--json")
    assert checkpoint.returncode == 0, checkpoint.stderr
    body = json.loads(checkpoint.stdout)
    assert body["verified"] and body["tree_size"] >= 20
    key = body["verifier_key"]
    inclusion = pausewatch("log", "prove", *target, "--index", "3", "--log-key", key, "--json")
    assert inclusion.returncode == 0, inclusion.stderr
    assert json.loads(inclusion.stdout)["verified"]
    consistency = pausewatch("log", "prove", *target, "--consistency-from", "2", "--log-key", key)
    assert consistency.returncode == 0, consistency.stderr
    assert "is a prefix of" in consistency.stdout
    both = pausewatch("log", "prove", *target)
    assert both.returncode == 2


def test_server_name_checks_the_certificate_under_either_spelling(lab: Lab) -> None:
    target = lab.verifier.cli_target()  # TLS, with the test CA
    for option in ("--server-name", "--server-name-override"):  # the agent's spelling works too
        good = pausewatch("log", "checkpoint", *target, option, "localhost", "--json")
        assert good.returncode == 0, good.stderr
        assert json.loads(good.stdout)["tree_size"] > 0
    wrong = pausewatch("log", "checkpoint", *target, "--server-name", "wrong.example")
    assert wrong.returncode == 4
    assert "Traceback" not in wrong.stderr


def test_chain_of_custody_expectations_and_log_key_conflicts(lab: Lab) -> None:
    import hashlib

    target = lab.verifier.cli_target()
    bundle = lab.directory / "custody.pwbundle"
    exported = pausewatch("audit", "export", *target, *period(lab, 0, 10), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    log_key = json.loads(pausewatch("log", "checkpoint", *target, "--json").stdout)["verifier_key"]
    since, until = period(lab, 0, 10)[3], period(lab, 0, 10)[5]
    policy_sha = hashlib.sha256(POLICY.encode()).hexdigest()

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return pausewatch("audit", "verify-bundle", str(bundle), "--log-key", log_key, *extra)

    # The honest control: every expectation met, the verdict's exit code (compliant: 0).
    honest = verify(
        "--expect-lab",
        "lab-a",
        "--expect-period",
        since,
        until,
        "--expect-policy-sha256",
        policy_sha,
        "--json",
    )
    assert honest.returncode == 0, honest.stdout
    assert json.loads(honest.stdout)["ok"]
    # Lab A's bundle checked as lab B, another period, another policy: each fails, named.
    for extra, words in (
        (("--expect-lab", "lab-b"), "not the expected 'lab-b'"),
        (("--expect-period", since, period(lab, 0, 11)[5]), "not the expected"),
        (("--expect-policy-sha256", "ab" * 32), "not the expected " + "ab" * 32),
    ):
        run = verify(*extra)
        assert run.returncode == 3, (extra, run.stdout[-800:])
        assert "FAILED: " in run.stdout and words in run.stdout, run.stdout[-800:]
        assert "VERIFIED" not in run.stdout
    malformed = verify("--expect-policy-sha256", "xyz")
    assert malformed.returncode == 2 and "64 hexadecimal digits" in malformed.stderr

    # --log-key and --log-key-file: the same key is fine, two different keys are refused.
    key_file = lab.directory / "log.pub.note"
    key_file.write_text(log_key + "\n", encoding="utf-8")
    same = verify("--log-key-file", str(key_file))
    assert same.returncode == 0, same.stdout[-500:] + same.stderr
    from attest.keys import generate_private_key
    from attest.note import format_verifier_key

    other = lab.directory / "other.note"
    other.write_text(
        format_verifier_key(
            "test.example/verifier", generate_private_key().public_key().public_bytes_raw()
        ),
        encoding="utf-8",
    )
    conflict = verify("--log-key-file", str(other))
    assert conflict.returncode == 2
    assert "name different keys" in conflict.stderr

    # Export never overwrites: the first bundle is left as it was.
    before = bundle.read_bytes()
    again = pausewatch("audit", "export", *target, *period(lab, 0, 20), "--out", str(bundle))
    assert again.returncode == 2
    assert "already exists; refusing to overwrite" in again.stderr
    assert bundle.read_bytes() == before
    assert not [p for p in lab.directory.iterdir() if p.name.startswith(".custody")]


def _exported(lab: Lab, name: str) -> tuple[Path, str]:
    """A bundle of minutes 0-10 (compliant) and the log key, pinned out of band."""
    target = lab.verifier.cli_target()
    bundle = lab.directory / name
    if not bundle.exists():
        run = pausewatch("audit", "export", *target, *period(lab, 0, 10), "--out", str(bundle))
        assert run.returncode == 0, run.stderr
    key = json.loads(pausewatch("log", "checkpoint", *target, "--json").stdout)["verifier_key"]
    return bundle, key


def test_an_unpinned_bundle_says_it_is_consistent_with_itself_only(lab: Lab) -> None:
    bundle, key = _exported(lab, "pinning.pwbundle")
    pinned = pausewatch("audit", "verify-bundle", str(bundle), "--log-key", key, "--json")
    assert pinned.returncode == 0, pinned.stdout[-500:]
    assert json.loads(pinned.stdout)["log_key_pinned"] is True
    unpinned = pausewatch("audit", "verify-bundle", str(bundle), "--json")
    assert unpinned.returncode == 0  # exit codes unchanged: scripts rely on 0/1/3
    body = json.loads(unpinned.stdout)
    assert body["ok"] is True and body["log_key_pinned"] is False
    text = pausewatch("audit", "verify-bundle", str(bundle))
    assert text.returncode == 0
    assert "VERIFIED:" not in text.stdout
    assert "CONSISTENT WITH ITSELF ONLY (log key not pinned)" in text.stdout
    assert "the log key the bundle names itself" in text.stdout
    assert "VERIFIED:" in pausewatch("audit", "verify-bundle", str(bundle), "--log-key", key).stdout


def _refused_as_usage(run: subprocess.CompletedProcess[str], *words: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stdout[-300:], run.stderr[-500:])
    for word in words:
        assert word in run.stderr, (word, run.stderr[-500:])
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    assert not re.search(r"\w+(Error|Exception)\b", run.stderr), run.stderr  # no exception names


def test_an_output_file_in_a_missing_directory_is_refused_before_any_work(lab: Lab) -> None:
    target = lab.verifier.cli_target()
    bundle, key = _exported(lab, "outputs.pwbundle")
    missing = lab.directory / "no-such-dir"
    for option, command in (
        ("--html", ["audit", "report", *target, *period(lab, 0, 10)]),
        ("--csv", ["audit", "report", *target, *period(lab, 0, 10)]),
        ("--out", ["audit", "export", *target, *period(lab, 0, 10)]),
        ("--save", ["log", "checkpoint", *target]),
        ("--html", ["audit", "verify-bundle", str(bundle), "--log-key", key]),
    ):
        path = missing / "out.file"
        run = pausewatch(*command, option, str(path))
        _refused_as_usage(run, option, str(path), "does not exist")
        assert run.stdout == ""  # nothing reported as done
        assert not missing.exists()
    # A directory where the output's directory should be: the same, and it is left as it was.
    blocker = lab.directory / "a-file"
    blocker.write_text("kept\n", encoding="utf-8")
    run = pausewatch("log", "checkpoint", *target, "--save", str(blocker / "cp.note"))
    _refused_as_usage(run, "--save", "is not a directory")
    assert blocker.read_text(encoding="utf-8") == "kept\n"


def test_an_unreadable_bundle_is_a_usage_error_like_a_missing_one(lab: Lab) -> None:
    missing = pausewatch("audit", "verify-bundle", str(lab.directory / "absent.pwbundle"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    # /proc/self/clear_refs exists but cannot be read (not even by root).
    unreadable = pausewatch("audit", "verify-bundle", "/proc/self/clear_refs")
    _refused_as_usage(unreadable, "FILE", "cannot read /proc/self/clear_refs")
    assert unreadable.stdout == ""


def test_bad_tls_files_are_usage_errors_naming_the_file(lab: Lab) -> None:
    from tests.tls import TestPki

    pki = TestPki.create()
    address = lab.verifier.cli_target()[1]
    not_pem = lab.directory / "not-a-cert.pem"
    not_pem.write_text("hello\n", encoding="utf-8")
    cert = lab.directory / "client.pem"
    cert.write_bytes(pki.client_cert_pem)
    key = lab.directory / "client.key"
    key.write_bytes(pki.client_key_pem)
    other_key = lab.directory / "other.key"
    other_key.write_bytes(pki.server_key_pem)
    base = ["log", "checkpoint", "--verifier", address]
    for extra, option, words in (
        (["--ca-cert", str(not_pem)], "--ca-cert", f"{not_pem} holds no PEM CA certificate"),
        (
            ["--client-cert", str(not_pem), "--client-key", str(key)],
            "--client-cert",
            f"{not_pem} holds no PEM certificate",
        ),
        (
            ["--client-cert", str(cert), "--client-key", str(not_pem)],
            "--client-key",
            f"{not_pem} holds no PEM private key",
        ),
        (
            ["--client-cert", str(cert), "--client-key", str(other_key)],
            "--client-key",
            f"{other_key} is not the private key of the certificate in {cert}",
        ),
    ):
        run = pausewatch(*base, *extra)
        _refused_as_usage(run, option, words)
        assert "SSLError" not in run.stderr and run.stdout == ""


def test_times_out_of_range_and_empty_periods_are_usage_errors(lab: Lab) -> None:
    target = lab.verifier.cli_target()
    for command in (["audit", "report"], ["audit", "findings"], ["audit", "export"]):
        out = lab.directory / "never.pwbundle"
        extra = ["--out", str(out)] if command[1] == "export" else []
        for since, words in (
            ("0001-01-01", "'0001-01-01' is before 1970-01-01T00:00:00Z"),
            ("-99999999d", "'-99999999d' is before 1970-01-01T00:00:00Z"),
        ):
            run = pausewatch(*command, *target, "--lab", "lab-a", "--since", since, *extra)
            _refused_as_usage(run, "--since", words)
        # `now` is read once per command: --since now --until now is an empty period.
        for since, until in (("now", "now"), ("now", "-1d")):
            args = ["--lab", "lab-a", "--since", since, "--until", until, *extra]
            run = pausewatch(*command, *target, *args)
            _refused_as_usage(run, "--until must be after --since")
            assert run.stdout == ""
        assert not out.exists()


def test_a_file_that_is_not_a_saved_checkpoint_is_a_usage_error(lab: Lab) -> None:
    from attest.checkpoint import Checkpoint, sign_checkpoint
    from attest.keys import generate_private_key
    from attest.note import Ed25519NoteSigner, parse_verifier_key

    target = lab.verifier.cli_target()
    key = json.loads(pausewatch("log", "checkpoint", *target, "--json").stdout)["verifier_key"]
    prove = ["log", "prove", *target, "--log-key", key, "--consistency-from"]
    text = lab.directory / "notes.txt"
    text.write_text("hello\nthis is not a checkpoint\n", encoding="utf-8")
    run = pausewatch(*prove, str(text))
    _refused_as_usage(run, "--consistency-from", f"{text} is not a saved checkpoint")
    binary = lab.directory / "binary.note"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    run = pausewatch(*prove, str(binary))
    _refused_as_usage(run, "--consistency-from", f"cannot read {binary}: it is not text")
    # A real checkpoint note whose signature is not the log's stays a verification failure.
    origin = parse_verifier_key(key).name
    forged = lab.directory / "forged.note"
    forged.write_text(
        sign_checkpoint(
            Checkpoint(origin, 3, bytes(32)), Ed25519NoteSigner(origin, generate_private_key())
        ),
        encoding="utf-8",
    )
    run = pausewatch(*prove, str(forged))
    assert run.returncode == 3, run.stderr
    assert "saved checkpoint" in run.stderr
    for path in (text, binary):  # inputs are only read
        assert path.exists()


def test_a_fork_is_printed_once(lab: Lab) -> None:
    from attest.checkpoint import Checkpoint, sign_checkpoint
    from attest.keys import load_private_key
    from attest.note import Ed25519NoteSigner, parse_verifier_key

    target = lab.verifier.cli_target()
    key = json.loads(pausewatch("log", "checkpoint", *target, "--json").stdout)["verifier_key"]
    origin = parse_verifier_key(key).name
    signer = Ed25519NoteSigner(origin, load_private_key(lab.verifier.files.directory / "log.key"))
    saved = lab.directory / "other-root.note"  # validly signed, another root at size 3: a fork
    saved.write_text(sign_checkpoint(Checkpoint(origin, 3, bytes(32)), signer), encoding="utf-8")
    run = pausewatch("log", "prove", *target, "--log-key", key, "--consistency-from", str(saved))
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stdout.count("FORK") == 1 and "FORK" not in run.stderr


def test_a_stalled_watch_says_so_once_on_stderr(lab: Lab) -> None:
    target = lab.verifier.cli_target()
    key = json.loads(pausewatch("log", "checkpoint", *target, "--json").stdout)["verifier_key"]
    seen = lab.directory / "seen-stalled"
    watch = ["audit", "watch", *target, "--log-key", key, "--dir", str(seen)]
    assert pausewatch(*watch).returncode == 0
    (kept,) = seen.glob("checkpoint-*.note")
    os.utime(kept, (time.time() - 120, time.time() - 120))
    stalled = pausewatch(*watch, "--max-unchanged-s", "60")
    assert stalled.returncode == 3
    assert stalled.stderr.count("STALLED") == 1 and stalled.stdout == ""
    as_json = pausewatch(*watch, "--max-unchanged-s", "60", "--json")
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["status"] == "stalled"  # the result, for scripts
    assert as_json.stderr.count("STALLED") == 1  # the line, for cron
    assert [p.name for p in seen.iterdir()] == [kept.name]


def test_a_bad_key_file_is_named(lab: Lab) -> None:
    bundle, _ = _exported(lab, "keyfile.pwbundle")
    bad = lab.directory / "bad.vkey"
    bad.write_text("not+a+key\n", encoding="utf-8")
    run = pausewatch("audit", "verify-bundle", str(bundle), "--log-key-file", str(bad))
    _refused_as_usage(run, "--log-key-file", f"{bad} does not hold a signed-note verifier key")
    assert "'--log-key'" not in run.stderr
    seen = lab.directory / "seen-badkey"
    watch = ["audit", "watch", *lab.verifier.cli_target(), "--dir", str(seen)]
    run = pausewatch(*watch, "--log-key-file", str(bad))
    _refused_as_usage(run, "--log-key-file", f"{bad} does not hold a signed-note verifier key")
    assert not list(seen.glob("*"))
