from __future__ import annotations

from pathlib import Path

import pytest

from attest.errors import ConfigError
from attest.keys import format_public_key, generate_private_key
from verifier.config import parse_config

KEY = format_public_key(generate_private_key().public_key())


def config(text: str) -> bytes:
    return text.encode()


def test_minimal_insecure_config_and_defaults(tmp_path: Path) -> None:
    cfg = parse_config(
        config(
            f"""
[server]
insecure_no_tls = true
listen = "127.0.0.1:0"
[ingest]
accept_backends = ["sim"]
bucket_ms = 2000
[[labs]]
id = "lab-a"
operator_public_key = "{KEY}"
policy = "policy.toml"
"""
        ),
        base=tmp_path,
    )
    assert cfg.server.insecure_no_tls
    assert cfg.ingest.bucket_ns == 2 * 10**9
    assert cfg.ingest.accept_backends == ("sim",)
    assert cfg.labs[0].policy_path == tmp_path / "policy.toml"
    assert cfg.labs[0].name == "lab-a"
    assert cfg.store.path == tmp_path / "verifier.db"
    # Late evidence: short nonces (agents refresh every 300 s) and two minutes to arrive.
    assert (cfg.ingest.nonce_lifetime_ns, cfg.ingest.late_after_ns) == (900 * 10**9, 120 * 10**9)


def test_operator_key_from_a_pem_file(tmp_path: Path) -> None:
    from attest.keys import save_public_key

    private = generate_private_key()
    save_public_key(tmp_path / "op.pub", private.public_key())
    cfg = parse_config(
        config(
            '[server]\ninsecure_no_tls = true\n[[labs]]\nid = "lab-a"\noperator_public_key = "op.pub"\n'
        ),
        base=tmp_path,
    )
    assert cfg.labs[0].operator_public_key == private.public_key().public_bytes_raw()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nlisten = 1\ninsecure_no_tls = true", "server.listen: must be a str"),
        ("[server]\nlisten = 'x:1'", "tls_cert and server.tls_key are required"),
        ("[server]\ninsecure_no_tls = true\nbogus = 1", "server.bogus: is not a known key"),
        (
            "[server]\ninsecure_no_tls = true\n[ingest]\nbucket_ms = 0",
            "ingest.bucket_ms: must be positive",
        ),
        (
            "[server]\ninsecure_no_tls = true\n[ingest]\naccept_backends = ['gpu']",
            "accept_backends",
        ),
        ("[server]\ninsecure_no_tls = true\n[store]\nengine = 'postgres'", "store.dsn"),
        (
            "[server]\ninsecure_no_tls = true\n[ingest]\nlate_after_s = 0",
            "ingest.late_after_s: must be positive",
        ),
        (
            "[server]\ninsecure_no_tls = true\n[[labs]]\nid = 'Lab A'\noperator_public_key = 'x'",
            "labs[0].id",
        ),
        (
            "[server]\ninsecure_no_tls = true\n[[labs]]\nid = 'a'\noperator_public_key = 'nope'",
            "labs[0].operator_public_key",
        ),
        (
            f"[server]\ninsecure_no_tls = true\n[[labs]]\nid = 'a'\noperator_public_key = '{KEY}'\n[[labs]]\nid = 'a'\noperator_public_key = '{KEY}'",
            "appears twice",
        ),
        ("[server\n", "verifier.toml"),
        ("[log]\norigin = 'has space'\n[server]\ninsecure_no_tls = true", "log.origin"),
        ("[server]\ninsecure_no_tls = true\nrequire_client_cert = true", "client_ca"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(config(text), source="verifier.toml")


def test_monitor_settings_and_their_errors() -> None:
    base = "[server]\ninsecure_no_tls = true\n"
    assert parse_config(config(base)).monitor.interval_ns == 60 * 10**9  # on by default
    off = parse_config(config(base + "[monitor]\ninterval_s = 0\nlate_s = 60\n")).monitor
    assert (off.interval_ns, off.late_ns) == (0, 60 * 10**9)
    for text, message in [
        ("[monitor]\ninterval_s = -1", "monitor.interval_s: must be 0"),
        ("[monitor]\nlate_s = 0", "monitor.late_s: must be positive"),
        ("[monitor]\nevery = 5", "monitor.every: is not a known key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(config(base + text), source="verifier.toml")


def _with_limits(limits: str, tmp_path: Path) -> object:
    return parse_config(
        config(
            f"""
[server]
insecure_no_tls = true
listen = "127.0.0.1:0"
[limits]
{limits}
[[labs]]
id = "lab-a"
operator_public_key = "{KEY}"
policy = "policy.toml"
"""
        ),
        base=tmp_path,
    )


def test_the_pending_call_limit_reaches_grpc_and_must_be_positive(tmp_path: Path) -> None:
    """gRPC's default (1,000 pending, 3,000 hard) cancelled a fleet's streams as they opened at
    once; the verifier's own limit must be what the server is built with."""
    from verifier.server.server import grpc_server_options

    default = _with_limits("", tmp_path)
    raised = _with_limits("max_pending_calls = 50000", tmp_path)
    for cfg, expected in ((default, 16_384), (raised, 50_000)):
        options = dict(grpc_server_options(cfg))
        assert options["grpc.server.max_pending_requests"] == expected
        assert options["grpc.server.max_pending_requests_hard_limit"] == expected
    with pytest.raises(ConfigError, match="max_pending_calls"):
        _with_limits("max_pending_calls = 0", tmp_path)


def _grpc_options(server_keys: str) -> dict[str, object]:
    """The gRPC server options a config with these ``[server]`` keys builds."""
    from verifier.server.server import grpc_server_options

    cfg = parse_config(config("[server]\ninsecure_no_tls = true\n" + server_keys))
    return dict(grpc_server_options(cfg))


@pytest.mark.parametrize(
    ("keys", "option", "expected"),
    [
        # At 10,000 streams the probe's ping per message was a third of gRPC's own CPU.
        ("", "grpc.http2.bdp_probe", 0),
        ("http2_bdp_probe = true\n", "grpc.http2.bdp_probe", 1),
        ("", "grpc.keepalive_time_ms", 600_000),
        # gRPC's TLS keeps a buffer of this size per connection (6 KiB an agent at 16 KiB).
        ("", "grpc.tsi.max_frame_size", 4_096),
        ("tls_max_frame_bytes = 16384\n", "grpc.tsi.max_frame_size", 16_384),
    ],
)
def test_server_settings_reach_grpc(keys: str, option: str, expected: int) -> None:
    assert _grpc_options(keys)[option] == expected


def test_reuse_port_is_off_by_default_and_needs_a_shared_store() -> None:
    """Off, a second process started on the same port fails to bind instead of taking half the
    connections; on, it needs PostgreSQL (the processes sharing the address share the store)."""
    from verifier.server.server import grpc_server_options

    assert _grpc_options("")["grpc.so_reuseport"] == 0
    shared = parse_config(
        config(
            "[server]\ninsecure_no_tls = true\nreuse_port = true\n"
            '[store]\nengine = "postgres"\ndsn = "postgresql://127.0.0.1/test"\n'
        )
    )
    assert shared.server.reuse_port
    assert dict(grpc_server_options(shared))["grpc.so_reuseport"] == 1
    with pytest.raises(ConfigError, match=r"server\.reuse_port: needs store\.engine = 'postgres'"):
        parse_config(config("[server]\ninsecure_no_tls = true\nreuse_port = true\n"))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('http2_bdp_probe = "no"\n', r"server\.http2_bdp_probe: must be a bool"),
        ("tls_max_frame_bytes = 1023\n", r"server\.tls_max_frame_bytes: must be 1024 to 16384"),
        ("tls_max_frame_bytes = 16385\n", r"server\.tls_max_frame_bytes: must be 1024 to 16384"),
    ],
)
def test_server_settings_out_of_range_are_refused(keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(config("[server]\ninsecure_no_tls = true\n" + keys), source="verifier.toml")


def test_without_accept_backends_only_nvml_is_accepted() -> None:
    """The default is real GPUs only: sim and replay evidence need the operator to ask for it."""
    cfg = parse_config(config("[server]\ninsecure_no_tls = true\n[ingest]\nbucket_ms = 60000\n"))
    assert cfg.ingest.accept_backends == ("nvml",)
    assert parse_config(config("[server]\ninsecure_no_tls = true\n")).ingest.accept_backends == (
        "nvml",
    )


def _with_unauthenticated_role(role: str) -> bytes:
    return config(f'[server]\ninsecure_no_tls = true\n[access]\nunauthenticated_role = "{role}"\n')


UNAUTHENTICATED_ROLE_ERROR = (
    "verifier.toml: access.unauthenticated_role: {role!r} is not one of the roles a client "
    "without a certificate may have: must be public, auditor or regulator"
)


@pytest.mark.parametrize("role", ["public", "auditor", "regulator"])
def test_an_unauthenticated_client_may_be_given_a_reading_role(role: str) -> None:
    from verifier.access import Role

    cfg = parse_config(_with_unauthenticated_role(role))
    assert cfg.access.unauthenticated_role is Role(role)


def _refused_roles() -> list[str]:
    from verifier.access import Role

    return [r.value for r in Role if r.value not in ("public", "auditor", "regulator")]


@pytest.mark.parametrize("role", [*_refused_roles(), "king", "Regulator", ""])
def test_every_other_unauthenticated_role_is_refused(role: str) -> None:
    """Anyone who can connect gets this role: a meter gateway's would let them submit site meter
    readings, a node agent's or lab operator's that party's evidence. Every role of the enum but
    the three reading ones is refused, so a role added later is too."""
    with pytest.raises(ConfigError) as refused:
        parse_config(_with_unauthenticated_role(role), source="verifier.toml")
    assert str(refused.value) == UNAUTHENTICATED_ROLE_ERROR.format(role=role)


def test_meter_gateway_is_among_the_refused_unauthenticated_roles() -> None:
    assert {"meter_gateway", "node_agent", "lab_operator"} <= set(_refused_roles())
