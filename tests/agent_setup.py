"""Building agent state directories and configs for tests.

config = write_state_dir(tmp_path, address="127.0.0.1:1", window_s="2", interval_ms=200)
verifier = verifier_config(address="127.0.0.1:50051")
"""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, VerifierConfig, load_config
from attest import keys
from tests.builders import fixed_private_key

SCENARIO = """
seed = 7
gpu_model = "NVIDIA H100 80GB HBM3"
gpu_count = 2
gpm = true
[utilization]
busy_pct = 90
jitter_pct = 4
tensor_active_fraction = 0.5
"""


def write_state_dir(
    root: Path,
    *,
    address: str = "127.0.0.1:1",
    window_s: str = "10",
    interval_ms: int = 1000,
    seed: int = 1,
    extra: str = "",
) -> AgentConfig:
    """A state directory with a fixed node key, a config and a sim scenario."""
    state = root / "state"
    state.mkdir(parents=True, exist_ok=True)
    key_path = state / "node.key"
    if not key_path.exists():
        private = fixed_private_key(seed)
        keys.save_private_key(key_path, private)
        keys.save_public_key(state / "node.pub", private.public_key())
    (state / "scenario.toml").write_text(SCENARIO)
    (state / "config.toml").write_text(
        f"""
[node]
lab_id = "lab-a"
name = "test-node"
state_dir = "{state}"

[sampling]
backend = "sim"
sample_interval_ms = {interval_ms}
window_s = {window_s}

[verifier]
address = "{address}"
insecure_no_tls = true
rpc_timeout_s = 2
backoff_initial_ms = 20
backoff_max_ms = 200

[sim]
scenario = "scenario.toml"
{extra}
"""
    )
    return load_config(state / "config.toml")


def verifier_config(**overrides: object) -> VerifierConfig:
    values: dict[str, object] = {
        "address": "127.0.0.1:1",
        "ca_cert": None,
        "client_cert": None,
        "client_key": None,
        "server_name_override": "",
        "insecure_no_tls": True,
        "rpc_timeout_ms": 1000,
        "nonce_refresh_ms": 60_000,
        "batch_max_envelopes": 8,
        "batch_max_bytes": 1 << 20,
        "backoff_initial_ms": 100,
        "backoff_max_ms": 1000,
    }
    values.update(overrides)
    return VerifierConfig(**values)  # type: ignore[arg-type]
