"""The analysis's reading of exported windows: every malformed or mismatched export is refused
with the input named, and an honest one evaluates (the processes are in
tests/integration/test_audit_analyse.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from agent.offline import WindowsExport, sign_recording
from agent.sampler.replay import parse_recording
from tests.nvsmi_logs import generate_log
from verifier.accounting.policy import load_policy_bytes
from verifier.audit.analysis import (
    AnalysisError,
    AnalysisEvidenceError,
    AnalysisSource,
    _evaluate,
    _node_from_export,
    load_export,
)
from verifier.config import IngestConfig

POLICY = b"""
format_version = 1
policy_id = "p"
version = 1
lab_id = "lab-a"
description = "d"
[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "99%"
"""
SOURCE = AnalysisSource.for_path(Path("node7.csv"))
BUCKET_NS = 60 * 10**9


def export(lab_id: str = "lab-a", seconds: int = 150) -> dict[str, object]:
    recording = parse_recording(generate_log(gpus=2, seconds=seconds).text, gpu_model="x")
    windows: WindowsExport = sign_recording(
        recording, lab_id=lab_id, node_name="node7", key_seed=b"seed"
    )
    data: dict[str, object] = json.loads(windows.to_json())
    return data


def test_an_honest_export_is_verified_and_evaluated() -> None:
    node, atts = _node_from_export(export(), SOURCE, "lab-a", BUCKET_NS)
    assert len(atts) == 3 and len(node.models) == 2
    analysis = _evaluate([(node, atts)], load_policy_bytes(POLICY), IngestConfig())
    assert analysis.report.coverage.ratio_ppm >= 990_000
    assert analysis.to_dict()["analysis"] == {
        "unattested": True,
        "notice": analysis.to_dict()["analysis"]["notice"],  # type: ignore[index]
        "notes": list(analysis.notes),
    }


def _tampered(data: dict[str, object]) -> dict[str, object]:
    envelopes = list(data["envelopes"])  # type: ignore[call-overload]
    raw = bytearray(base64.b64decode(envelopes[1]))
    raw[len(raw) // 2] ^= 0x01
    envelopes[1] = base64.b64encode(bytes(raw)).decode()
    return data | {"envelopes": envelopes}


def _reordered(data: dict[str, object]) -> dict[str, object]:
    envelopes = list(data["envelopes"])  # type: ignore[call-overload]
    envelopes[0], envelopes[1] = envelopes[1], envelopes[0]
    return data | {"envelopes": envelopes}


@pytest.mark.parametrize(
    ("change", "lab", "message"),
    [
        (lambda d: d, "lab-b", "windows are for lab 'lab-a', the policy's lab is 'lab-b'"),
        (_tampered, "lab-a", "window 1 fails verification"),
        (_reordered, "lab-a", "does not follow the chain"),
        (lambda d: d | {"node_public_key": "zz"}, "lab-a", "a malformed key or envelope"),
        (lambda d: d | {"node_public_key": "00" * 32}, "lab-a", "fails verification"),
        (lambda d: d | {"envelopes": ["!!"]}, "lab-a", "a malformed key or envelope"),
        (lambda d: d | {"envelopes": [7]}, "lab-a", "an envelope is not a string"),
        (lambda d: d | {"envelopes": []}, "lab-a", "no windows to analyse"),
        (lambda d: d | {"envelopes": None}, "lab-a", "lack a key or envelopes"),
    ],
)
def test_a_bad_export_is_refused_naming_the_input(change: object, lab: str, message: str) -> None:
    data = change(export())  # type: ignore[operator]
    with pytest.raises((AnalysisError, AnalysisEvidenceError), match=message) as caught:
        _node_from_export(data, SOURCE, lab, BUCKET_NS)
    assert "node7.csv" in str(caught.value)
    evidence = "verification" in message or "chain" in message
    assert isinstance(caught.value, AnalysisEvidenceError) is evidence


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "could not be read"),
        ('{"format": "other"}', "not in the pausewatch.windows.v1 format"),
        ("[1, 2]", "not in the pausewatch.windows.v1 format"),
    ],
)
def test_an_unreadable_export_file_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "export.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AnalysisError, match=message):
        load_export(path, SOURCE)


def test_an_internal_error_of_the_export_is_internal_with_the_command_that_shows_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import subprocess

    from attest.exitcodes import ExitCode, exit_code_for
    from verifier.audit import analysis

    def crashed(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        stderr = "internal error: KeyError (run with --debug for details)\n"
        return subprocess.CompletedProcess(command, int(ExitCode.INTERNAL), "", stderr)

    monkeypatch.setattr(analysis.subprocess, "run", crashed)
    source = AnalysisSource.for_path(tmp_path / "node7.csv")
    with pytest.raises(analysis.AnalysisInternalError) as failed:
        analysis.export_windows(
            source, tmp_path / "out.json", lab_id="lab-a", gpus=None, gpu_model="", window_s=60
        )
    assert exit_code_for(failed.value) == ExitCode.INTERNAL  # not 2, "an input that cannot be read"
    assert str(failed.value) == (
        f"{source.path}: exporting its windows failed with an internal error (internal error: "
        "KeyError (run with --debug for details)); `pausewatch-agent --debug export-windows "
        f"--replay {source.path} --lab lab-a --node-name node7 --out FILE` shows the details: "
        "please report it"
    )


def test_a_large_recording_is_given_time_for_its_size(tmp_path: Path) -> None:
    import gzip

    from verifier.audit.analysis import EXPORT_TIMEOUT_S, export_timeout_s

    # A week of eight GPUs at -lms 100 is 48 million rows, ~2 GB: far more than 600 s to read.
    week = tmp_path / "week.csv"
    with week.open("wb") as file:
        file.truncate(2 * 10**9)  # sparse: no disk used
    assert export_timeout_s(week) >= EXPORT_TIMEOUT_S + 20_000
    packed = tmp_path / "week.csv.gz"
    packed.write_bytes(gzip.compress(b"x" * 1000) + bytes(20 * 10**6))
    assert export_timeout_s(packed) >= EXPORT_TIMEOUT_S + 2_000  # as if ten times larger
    assert export_timeout_s(tmp_path) == EXPORT_TIMEOUT_S  # a state directory
