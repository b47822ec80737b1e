"""The agent's config file, its digest, the boot id and the metrics endpoint."""

from __future__ import annotations

import hashlib
import json
import tomllib
import urllib.request
from pathlib import Path

import pytest

from agent.config import load_config, parse_config, render_config
from agent.identity import DIGEST_HEADER, agent_digest, boot_id, digest_text, package_files
from agent.metrics import AgentMetrics
from agent.sampler.base import Backend
from attest.errors import ConfigError
from tests.testdata import REPO_ROOT

MINIMAL = '[node]\nlab_id = "lab-a"\n[verifier]\naddress = "v.example:443"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.node.state_dir == tmp_path
    assert config.node.key_file == tmp_path / "node.key"
    assert config.sampling.backend is Backend.NVML
    assert config.sampling.window_ns == 60 * 10**9
    assert config.sampling.sample_interval_ms == 1000
    assert config.verifier.insecure_no_tls is False
    assert config.metrics.port == 0
    assert config.metrics.address == "127.0.0.1"
    assert config.spool.max_unacked_envelopes == 100_000


def test_small_windows_for_demos(tmp_path: Path) -> None:
    text = MINIMAL + "[sampling]\nwindow_s = 0.4\nsample_interval_ms = 100\n"
    config = load_config(write(tmp_path, text))
    assert config.sampling.window_ns == 400_000_000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[verifier]\naddress = 'v:1'\n", "node.lab_id"),
        ("[node]\nlab_id = 'Lab A'\n[verifier]\naddress = 'v:1'\n", "node.lab_id"),
        ("[node]\nlab_id = 'lab-a'\n", "verifier.address"),
        (MINIMAL + "[sampling]\nwindow_s = 0.3333\n", "sampling.window_s"),
        (MINIMAL + "[sampling]\nwindow_s = 1.5\n", "sampling.window_s"),
        (MINIMAL + "[sampling]\nwindow_s = 900\n", "sampling.window_s"),
        (MINIMAL + "[sampling]\nsample_interval_ms = 5\n", "sampling.sample_interval_ms"),
        (MINIMAL + "[sampling]\nbackend = 'magic'\n", "sampling.backend"),
        (MINIMAL + "[sampling]\nwindow = 60\n", "sampling.window"),
        (
            MINIMAL.replace('"v.example:443"', '"v:1"\ninsecure_no_tls = "yes"'),
            "verifier.insecure_no_tls",
        ),
        (MINIMAL.replace('"v.example:443"', '"v:1"\nclient_cert = "c.pem"'), "verifier.client_key"),
        (
            MINIMAL.replace('"v.example:443"', '"v:1"\ninsecure_no_tls = true\nca_cert = "a"'),
            "verifier.insecure_no_tls",
        ),
        (MINIMAL + "[metrics]\nport = 70000\n", "metrics.port"),
        (MINIMAL + "[spool]\nmax_unacked_bytes = 10\n", "spool.max_unacked_bytes"),
        (MINIMAL + "[logging]\nformat = 'xml'\n", "logging.format"),
        (MINIMAL + "colour = 'blue'\n", "colour"),
        (MINIMAL + "[node.extra]\n", "node.extra"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_not_toml_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_canonical_json_is_sorted_compact_and_float_free(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, MINIMAL + "[sampling]\nwindow_s = 0.5\nsample_interval_ms = 100\n")
    )
    raw = config.canonical_json()
    data = json.loads(raw)
    assert raw == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert data["sampling"]["window_ns"] == 500_000_000

    def walk(value: object) -> None:
        assert not isinstance(value, float)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        if isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)


def test_agent_digest_follows_the_wire_format(tmp_path: Path) -> None:
    config_json = b'{"a":1}'
    text = digest_text(config_json)
    lines = text.splitlines(keepends=True)
    assert lines[0] == DIGEST_HEADER
    assert lines[-1] == f"config {hashlib.sha256(config_json).hexdigest()}\n"
    paths = [line.split(" ", 1)[1].rstrip("\n") for line in lines[1:-1]]
    assert paths == sorted(paths)
    assert "agent/sampler/nvml.py" in paths
    assert "attest/envelope.py" in paths
    for relative, path in package_files():
        assert f"{hashlib.sha256(path.read_bytes()).hexdigest()} {relative}\n" in lines
    assert agent_digest(config_json) == hashlib.sha256(text.encode()).digest()
    assert agent_digest(b'{"a":2}') != agent_digest(config_json)


def test_boot_id(tmp_path: Path) -> None:
    path = tmp_path / "boot_id"
    path.write_text("4b1c5a7e-0d3c-4f1a-9a57-0f2e8e3c1d00\n")
    assert boot_id(path) == "4b1c5a7e-0d3c-4f1a-9a57-0f2e8e3c1d00"
    fallback = boot_id(tmp_path / "missing")
    assert fallback.startswith("no-boot-id-")
    assert len(fallback) <= 64


def test_metrics_endpoint_on_loopback() -> None:
    metrics = AgentMetrics()
    metrics.samples.inc(8)
    metrics.spool_depth.set(3)
    metrics.ship_errors.labels(kind="unavailable").inc()
    server = metrics.serve(port=0, address="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        server.shutdown()
    assert "pausewatch_agent_samples_total 8.0" in body
    assert "pausewatch_agent_spool_depth 3.0" in body
    assert 'pausewatch_agent_ship_errors_total{kind="unavailable"} 1.0' in body


def test_parse_config_is_what_init_writes(tmp_path: Path) -> None:
    text = render_config(
        lab_id="lab-a",
        node_name='gpu "01"',
        state_dir=tmp_path,
        verifier_address="v:443",
        ca_cert=tmp_path / "ca.pem",
        insecure_no_tls=False,
        backend=Backend.SIM,
    )
    config = parse_config(tomllib.loads(text), tmp_path / "config.toml")
    assert config.node.name == 'gpu "01"'
    assert config.verifier.ca_cert == tmp_path / "ca.pem"
    assert config.sampling.backend is Backend.SIM


def test_the_documented_example_config_is_valid_and_complete() -> None:
    example = REPO_ROOT / "docs" / "agent.example.toml"
    data = tomllib.loads(example.read_text())
    config = parse_config(data, example)
    effective = config.effective()
    documented = {f"{section}.{key}" for section, table in data.items() for key in table}
    # Every setting the agent has is in the example (paths given as commented lines aside).
    optional = {"verifier.client_cert", "verifier.client_key", "sim.scenario", "replay.file",
                "replay.gpus"}  # fmt: skip
    expected = {f"{s}.{k}" for s, table in effective.items() for k in table}
    renamed = {"sampling.window_ns": "sampling.window_s",
               "verifier.rpc_timeout_ms": "verifier.rpc_timeout_s",
               "verifier.nonce_refresh_ms": "verifier.nonce_refresh_s"}  # fmt: skip
    expected = {renamed.get(k, k) for k in expected}
    assert expected - documented - optional == set()
