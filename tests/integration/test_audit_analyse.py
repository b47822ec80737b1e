"""``pausewatch audit analyse``: a what-if audit of recorded nvidia-smi logs, as real processes.

The regulator's CLI runs the agent's ``export-windows`` as a process for each file (no import
between the two packages), verifies and folds the windows with the verifier's own code and prints
the same report as ``audit report``, marked as unattested. The files are generated in exactly the
shape operators keep (tests/nvsmi_logs.py): eight GPUs interleaved without index, uuid or name
column, ~102 ms polls with jitter and a stall, units in every value. Figures are checked against
the generator's own ground truth, computed independently of the replay.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.nvsmi_logs import HEADER, START_NS, generate_log, nvsmi_timestamp

H100 = "NVIDIA H100 80GB HBM3"
H100_SXM_PEAK_FLOPS = 1_979 * 10**12
"""H100 SXM datasheet: FP8 Tensor Core 3,958 TFLOPS with sparsity, so 1,979 dense: its fastest."""

POLICY = """\
format_version = 1
policy_id = "pause-what-if"
version = 1
lab_id = "lab-a"
description = "What would the pause policy have said of last month's logs?"

[[rules]]
id = "cumulative-1h"
kind = "cumulative_flop"
window = "1h"
limit_flop = "{limit}"

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "98%"

[[rules]]
id = "training-signature"
kind = "training_signature"
min_gpus = 8
min_busy_percent = 90
min_duration = "5m"
"""


def pausewatch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "verifier.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


def write_policy(tmp_path: Path, limit: str = "10^19") -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.format(limit=limit), encoding="utf-8")
    return path


def rule(report: dict[str, Any], rule_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in report["rules"] if r["rule_id"] == rule_id)
    return found


def within(measured: float, truth: float, tolerance: float = 0.02) -> bool:
    return abs(measured - truth) <= tolerance * truth


def test_a_training_run_in_an_nvidia_smi_log_is_reported_with_its_signature(
    tmp_path: Path,
) -> None:
    # 9 minutes of one 8-GPU node at 86-100 % busy (~93 %), with a 3 s stall after 200 s.
    log = generate_log(gpus=8, seconds=540, busy_pct=(86, 100), stall_at_s=200, stall_s=3)
    recording = tmp_path / "node7.csv"
    recording.write_text(log.text, encoding="utf-8")
    html_path = tmp_path / "what-if.html"
    done = pausewatch(
        "audit",
        "analyse",
        str(recording),
        "--policy",
        str(write_policy(tmp_path)),
        "--gpu-model",
        H100,
        "--html",
        str(html_path),
        "--json",
    )
    assert done.returncode == 1, done.stderr  # a violation: the training signature
    out = json.loads(done.stdout)
    assert out["analysis"]["unattested"] is True
    assert "UNATTESTED ANALYSIS" in out["analysis"]["notice"]
    (node,) = out["nodes"]
    assert node["gpus"] == 8  # not 16: polls 100 ms apart are not merged
    assert node["models"] == [H100]
    assert node["recording"]["gpu_count_source"] == "row cycle"
    assert node["recording"]["stalls"] == 1
    report = out["report"]
    assert report["verdict"] == "VERDICT_VIOLATION"
    signature = rule(report, "training-signature")
    assert signature["outcome"] == "RULE_OUTCOME_VIOLATION"
    assert "at least 8 GPUs counted" in signature["summary"]

    # The figures against the generator's ground truth, within 2 %.
    totals = report["totals"]
    busy_ms = int(totals["busy_gpu_ms"])
    assert within(busy_ms, log.busy_gpu_ms()), (busy_ms, log.busy_gpu_ms())
    assert within(int(totals["energy_mj"]), log.energy_mj())
    upper = int(totals["upper_bound_flop"])
    truth_upper = log.busy_gpu_ms() / 1000 * H100_SXM_PEAK_FLOPS
    assert within(upper, truth_upper), (upper, truth_upper)
    assert int(totals.get("unknown_model_gpu_windows", 0)) == 0
    # Coverage: all recorded time but the stall, against the 8 GPUs over the period.
    coverage = report["coverage"]
    # Coverage counts whole buckets, from the first poll to the last whole minute.
    horizon_ms = int(report["as_of_ns"]) // 1_000_000 // 60_000 * 60_000
    assert int(coverage["declared_gpu_ms"]) == 8 * (horizon_ms - START_NS // 1_000_000)
    assert within(int(coverage["attested_gpu_ms"]), 8 * log.observed_ms())
    assert rule(report, "coverage")["outcome"] == "RULE_OUTCOME_PASS"

    # The HTML says what it is, beside the verdict.
    page = html_path.read_text(encoding="utf-8")
    assert 'id="analysis-notice"' in page and "UNATTESTED ANALYSIS" in page
    assert 'id="data-quality"' in page
    assert page.index('id="verdict"') < page.index('id="data-quality"') < page.index('id="chart"')


def test_the_terminal_report_is_marked_and_warns_of_unknown_models(tmp_path: Path) -> None:
    log = generate_log(gpus=8, seconds=120, busy_pct=(86, 100))
    recording = tmp_path / "node7.csv"
    recording.write_text(log.text, encoding="utf-8")
    html_path = tmp_path / "out.html"
    done = pausewatch(
        "audit",
        "analyse",
        str(recording),
        "--policy",
        str(write_policy(tmp_path, limit="10^30")),
        "--html",
        str(html_path),
    )
    assert done.returncode == 0, done.stderr  # 2 minutes: no signature, far under the limit
    text = done.stdout
    assert text.startswith("*** UNATTESTED ANALYSIS")
    assert "8 GPUs read from the rows' cycle" in text
    assert "VERDICT   COMPLIANT" in text
    verdict_at = text.index("VERDICT")
    warning_at = text.index("DATA QUALITY")
    assert verdict_at < warning_at < text.index("rules (")  # the warning sits by the verdict
    assert "not in the compute table" in text[warning_at:]
    assert html_path.exists()
    assert "Data quality: " in html_path.read_text(encoding="utf-8")


def test_two_nodes_recorded_alike_never_share_gpus(tmp_path: Path) -> None:
    # node2 starts recording 20 s later, mid-bucket: its GPUs count from then on.
    for name, seed, offset_s in (("node1", 1, 0), ("node2", 2, 20)):
        log = generate_log(gpus=8, seconds=90, seed=seed, start_ns=START_NS + offset_s * 10**9)
        (tmp_path / f"{name}.csv").write_text(log.text, encoding="utf-8")
    done = pausewatch(
        "audit",
        "analyse",
        str(tmp_path / "node1.csv"),
        str(tmp_path / "node2.csv"),
        "--policy",
        str(write_policy(tmp_path, limit="10^30")),
        "--gpu-model",
        H100,
        "--json",
    )
    assert done.returncode in (0, 1), done.stderr
    out = json.loads(done.stdout)
    assert [n["gpus"] for n in out["nodes"]] == [8, 8]
    assert len({n["node_id"] for n in out["nodes"]}) == 2
    assert len(out["report"]["nodes"]) == 2
    # 16 GPUs declared (the recorded ones, each node's from its first poll), none counted twice.
    horizon_ms = int(out["report"]["as_of_ns"]) // 1_000_000 // 60_000 * 60_000  # whole buckets
    start_ms = START_NS // 1_000_000
    declared = 8 * (horizon_ms - start_ms) + 8 * (horizon_ms - start_ms - 20_000)
    coverage = out["report"]["coverage"]
    assert int(coverage["declared_gpu_ms"]) == declared
    assert int(coverage["ratio_ppm"]) >= 990_000  # complete recordings: ~100 % covered


def _slow_query_log(polls: int) -> str:
    """Each of 4 GPUs' rows 13 ms after the previous one: no burst shows where a poll starts."""
    lines = [HEADER]
    for poll in range(polls):
        for gpu in range(4):
            at_ns = START_NS + (poll * 140 + gpu * 13) * 1_000_000
            lines.append(f"{nvsmi_timestamp(at_ns)}, 70.00 W, 5 %, 100 MiB")
    return "\n".join(lines) + "\n"


def test_an_ambiguous_file_is_refused_naming_the_fix_and_writes_nothing(tmp_path: Path) -> None:
    recording = tmp_path / "slow.csv"
    recording.write_text(_slow_query_log(50), encoding="utf-8")
    html_path = tmp_path / "never.html"
    policy = write_policy(tmp_path, limit="10^30")
    done = pausewatch(
        "audit", "analyse", str(recording), "--policy", str(policy), "--html", str(html_path)
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "cannot group rows into polls" in done.stderr
    assert "--gpus N" in done.stderr
    assert str(recording) in done.stderr
    assert "Traceback" not in done.stderr
    assert not html_path.exists()
    assert done.stdout == ""
    # With the fix the message names, the same file is analysed.
    fixed = pausewatch("audit", "analyse", str(recording), "--policy", str(policy), "--gpus", "4")
    assert fixed.returncode in (0, 1), fixed.stderr  # 7 s in a 1-minute bucket: unaccounted
    assert "4 GPUs as given with --gpus" in fixed.stdout
    assert "VERDICT" in fixed.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("timestamp, power.draw [W]\n2026/12/06 01:00:00.000, 70 W\n", "no utilization.gpu"),
        ("not,a,recording\n", "not a header"),
    ],
)
def test_bad_recordings_are_refused_with_the_file_and_line(
    tmp_path: Path, content: str, message: str
) -> None:
    recording = tmp_path / "bad.csv"
    recording.write_text(content, encoding="utf-8")
    done = pausewatch("audit", "analyse", str(recording), "--policy", str(write_policy(tmp_path)))
    assert done.returncode == 2
    assert message in done.stderr and "bad.csv" in done.stderr


# --- a node's spool ------------------------------------------------------------------------------


def _spooled_state_dir(tmp_path: Path) -> Path:
    """A node state directory whose spool holds 4 minutes of an 8-GPU replay, signed by the node
    key, never shipped (the daemon run offline, as a lab would before enrolling)."""
    from agent.daemon import Daemon, DaemonOptions
    from agent.sampler.replay import ReplaySampler, parse_recording
    from attest import keys
    from tests.agent_setup import write_state_dir
    from tests.fakes import FakeClock

    config = write_state_dir(tmp_path, window_s="60")
    log = generate_log(gpus=8, seconds=240, busy_pct=(86, 100))
    recording = parse_recording(log.text, gpu_model=H100)
    signer = keys.Ed25519Signer.from_private_key(keys.load_private_key(config.node.key_file))
    sampler = ReplaySampler(recording, node_id=signer.key_id.hex())
    daemon = Daemon(
        config,
        sampler,
        signer,
        clock=FakeClock(START_NS + 10**6 * 10**9),
        options=DaemonOptions(ship=False),
    )
    daemon.run()
    assert daemon.windows_signed >= 4
    return config.node.state_dir


def test_a_nodes_spool_is_analysed_with_its_own_key(tmp_path: Path) -> None:
    state_dir = _spooled_state_dir(tmp_path)
    done = pausewatch(
        "audit",
        "analyse",
        str(state_dir),
        "--policy",
        str(write_policy(tmp_path, limit="10^30")),
        "--json",
    )
    assert done.returncode in (0, 1), done.stderr
    out = json.loads(done.stdout)
    (node,) = out["nodes"]
    assert node["attested"] is True  # signed by the node key (but never received by a verifier)
    assert node["gpus"] == 8 and node["models"] == [H100]
    assert node["windows"] >= 4
    assert out["analysis"]["unattested"] is True
    assert any("never received by a verifier" in note for note in out["analysis"]["notes"])
    assert int(out["report"]["totals"]["busy_gpu_ms"]) > 8 * 200_000  # ~93 % of 4 minutes


def _flip_a_byte(state_dir: Path) -> None:
    """The operator lowers a window's figures by editing the stored envelope's bytes."""
    import sqlite3

    from agent.daemon import SPOOL_FILE

    with sqlite3.connect(state_dir / SPOOL_FILE) as connection:
        (blob,) = connection.execute("SELECT envelope FROM envelopes WHERE seq = 2").fetchone()
        edited = bytearray(blob)
        edited[len(edited) // 2] ^= 0x01
        connection.execute("UPDATE envelopes SET envelope = ? WHERE seq = 2", (bytes(edited),))


def _drop_a_window(state_dir: Path) -> None:
    """... or drops a busy window from the middle of the chain."""
    import sqlite3

    from agent.daemon import SPOOL_FILE

    with sqlite3.connect(state_dir / SPOOL_FILE) as connection:
        connection.execute("DELETE FROM envelopes WHERE seq = 2")


@pytest.mark.parametrize(
    ("edit", "message"),
    [(_flip_a_byte, "fails verification"), (_drop_a_window, "does not follow the chain")],
)
def test_an_edited_spool_is_refused_naming_it(
    tmp_path: Path, edit: Callable[[Path], None], message: str
) -> None:
    state_dir = _spooled_state_dir(tmp_path)
    edit(state_dir)
    html_path = tmp_path / "never.html"
    done = pausewatch(
        "audit",
        "analyse",
        str(state_dir),
        "--policy",
        str(write_policy(tmp_path, limit="10^30")),
        "--html",
        str(html_path),
    )
    assert done.returncode == 3, (done.stdout, done.stderr)  # evidence failed a check
    assert message in done.stderr and str(state_dir) in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == "" and not html_path.exists()


def test_an_unenrolled_node_spools_a_replay_with_no_ship_for_analysis(tmp_path: Path) -> None:
    from tests.agent_setup import write_state_dir

    config = write_state_dir(tmp_path, window_s="60")
    recording = tmp_path / "node7.csv"
    recording.write_text(generate_log(gpus=8, seconds=150).text, encoding="utf-8")
    state = str(config.node.state_dir)
    agent = [sys.executable, "-m", "agent.cli", "run", "--state-dir", state]
    replay = ["--backend", "replay", "--replay", str(recording), "--gpu-model", H100]
    refused = subprocess.run(
        [*agent, *replay], capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 2
    assert "enrol" in refused.stderr  # shipping needs an enrolled node
    spooled = subprocess.run(
        [*agent, *replay, "--no-ship"], capture_output=True, text=True, timeout=120, check=False
    )
    assert spooled.returncode == 0, spooled.stderr
    done = pausewatch(
        "audit", "analyse", state, "--policy", str(write_policy(tmp_path, "10^30")), "--json"
    )
    assert done.returncode in (0, 1), done.stderr
    (node,) = json.loads(done.stdout)["nodes"]
    assert node["gpus"] == 8 and node["windows"] >= 3 and node["attested"] is True


def test_a_node_of_sixteen_gpus_is_noted_as_worth_checking(tmp_path: Path) -> None:
    recording = tmp_path / "big.csv"
    recording.write_text(generate_log(gpus=16, seconds=30).text, encoding="utf-8")
    done = pausewatch(
        "audit", "analyse", str(recording), "--policy", str(write_policy(tmp_path, "10^30"))
    )
    assert done.returncode in (0, 1), done.stderr
    assert "Node big enrolled 16 GPUs, more than common servers hold (8)" in done.stdout
    assert done.stdout.index("DATA QUALITY") < done.stdout.index("rules (")
