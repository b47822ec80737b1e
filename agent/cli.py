"""The lab's command line, ``pausewatch-agent``: set up a node, enrol it, run the daemon, watch it.

    pausewatch-agent init --state-dir /var/lib/pausewatch-agent --lab lab-a --verifier v.example:443
    pausewatch-agent enroll --operator-key operator.key            # or --prepare / --authorization
    pausewatch-agent run --backend nvml
    pausewatch-agent status --json
    pausewatch-agent operator keygen --out keys/

Commands find their configuration with ``--config FILE``, or ``--state-dir DIR`` (its
``config.toml``), or ``$PAUSEWATCH_AGENT_CONFIG``, or /var/lib/pausewatch-agent/config.toml.
Exit codes (every command): 0 success, 2 usage error (bad arguments, config, key files), 3
verification failed (a signature or proof did not verify, or the verifier refused one), 4 internal
error. ``status`` exits 10-13 when the node is unhealthy and ``check`` 2 or 4 when a check
fails (docs/agent.md). Every command that prints a result takes ``--json``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import os
import signal
import socket
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from agent.clock import NS_PER_S, SystemClock
from agent.config import (
    CONFIG_FILE_NAME,
    DEFAULT_STATE_DIR,
    AgentConfig,
    VerifierConfig,
    load_config,
    parse_config,
    render_config,
)
from agent.daemon import Daemon, DaemonOptions, StateLock, spool_path
from agent.enroll import (
    authorize_enrollment,
    build_enrollment,
    check_authorization,
    first_nonce,
    get_challenge,
    sign_enrollment_request,
    submit_enrollment,
    verify_enrollment_request,
)
from agent.health import HealthFacts, HealthLimits, assess_health
from agent.identity import AGENT_VERSION
from agent.logformat import configure_logging, route_native_stderr, set_log_context
from agent.metrics import AgentMetrics
from agent.operator import (
    declare_inventory,
    enrolled_gpus,
    load_inventory,
    merge_inventories,
    render_inventory,
    revoke_node,
    sign_inventory,
    sign_revocation,
)
from agent.preflight import (
    CheckResult,
    CheckStatus,
    first_failure,
    local_checks,
    verifier_check,
)
from agent.sampler.base import Backend, GpuIdentity, Sampler
from agent.sdnotify import Notifier
from agent.shipper import open_channel
from agent.spool import Nonce, Spool
from agent.tpm import Tpm2Tools
from agent.tpm_quotes import tpm_enrollment
from attest import keys
from attest.errors import ConfigError, PausewatchError
from attest.exitcodes import ExitCode, exit_code_for
from attest.files import write_new_file
from attest.ids import NodeId, is_valid_lab_id, parse_hex_id

log = logging.getLogger(__name__)

ENROLLMENT_REQUEST_FILE = "enrollment-request.env"
SIM_SCENARIO_FILE = "scenario.toml"
EXAMPLE_SCENARIO = "example-8xh100.toml"


def example_scenario() -> Path:
    """The example sim scenario installed with the package."""
    path = Path(str(importlib.resources.files("agent") / "scenarios" / EXAMPLE_SCENARIO))
    if not path.is_file():
        raise ConfigError(f"the example scenario {path} is not installed with this agent")
    return path


ENROLLMENT_KEY = "enrollment"
F = TypeVar("F", bound=Callable[..., Any])


def emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    """Print a command's result as JSON or as text."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(text)


def _iso(ns: int | None) -> str:
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // NS_PER_S))


def _config_path(config: Path | None, state_dir: Path | None) -> Path:
    if config is not None:
        return config
    if state_dir is not None:
        return state_dir / CONFIG_FILE_NAME
    env = os.environ.get("PAUSEWATCH_AGENT_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_STATE_DIR / CONFIG_FILE_NAME


def config_options(function: F) -> F:
    """``--config`` and ``--state-dir``, for commands that read the agent's configuration."""
    function = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="State directory (its config.toml is used).",
    )(function)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Agent config file (default: STATE_DIR/config.toml).",
    )(function)


def _load(config_file: Path | None, state_dir: Path | None) -> AgentConfig:
    return load_config(_config_path(config_file, state_dir))


def _node_signer(config: AgentConfig) -> keys.Ed25519Signer:
    return keys.Ed25519Signer.from_private_key(keys.load_private_key(config.node.key_file))


def _timeout_s(config: VerifierConfig) -> float:
    return config.rpc_timeout_ms / 1000


# -- sampler wiring -----------------------------------------------------------------------------


def make_sampler(
    config: AgentConfig,
    backend: Backend,
    *,
    scenario: Path | None = None,
    replay: Path | None = None,
    replay_realtime: bool | None = None,
    replay_columns: tuple[str, ...] = (),
    replay_gpus: int | None = None,
    replay_gpu_model: str | None = None,
) -> Sampler:
    """The sampler for ``backend``, from the command line or the config file.

    A replay's unnamed GPUs get UUIDs derived from this node's key id, so that two nodes
    replaying similar files never claim the same GPUs."""
    interval_ms = config.sampling.sample_interval_ms
    if backend is Backend.NVML:
        from agent.sampler.nvml import NvmlSampler

        return NvmlSampler(
            sample_interval_ms=interval_ms,
            retry_initial_ms=config.nvml.init_retry_initial_ms,
            retry_max_ms=config.nvml.init_retry_max_ms,
        )
    if backend is Backend.SIM:
        from agent.sampler.sim import SimSampler, load_scenario

        path = scenario or config.sim.scenario
        if path is None:
            raise click.UsageError("the sim backend needs --scenario FILE (or sim.scenario)")
        return SimSampler(load_scenario(path), sample_interval_ms=interval_ms)
    from agent.sampler.replay import ReplaySampler, load_recording

    path = replay or config.replay.file
    if path is None:
        raise click.UsageError("the replay backend needs --replay FILE (or replay.file)")
    recording = load_recording(
        path,
        columns=replay_columns or config.replay.columns,
        gpus=replay_gpus if replay_gpus is not None else config.replay.gpus,
        gpu_model=replay_gpu_model if replay_gpu_model is not None else config.replay.gpu_model,
    )
    realtime = config.replay.realtime if replay_realtime is None else replay_realtime
    node_id = _node_signer(config).key_id.hex()
    return ReplaySampler(recording, realtime=realtime, node_id=node_id)


def backend_option(function: F) -> F:
    function = click.option(
        "--gpu-model",
        "replay_gpu_model",
        default=None,
        help="Replay: the GPUs' model, for a recording without a name column.",
    )(function)
    function = click.option(
        "--gpus",
        "replay_gpus",
        type=click.IntRange(min=1, max=4096),
        default=None,
        help="Replay: GPUs per poll, for a recording without index or uuid column.",
    )(function)
    function = click.option(
        "--replay",
        "replay_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="nvidia-smi CSV recording (replay backend).",
    )(function)
    function = click.option(
        "--scenario",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Scenario file (sim backend).",
    )(function)
    return click.option(
        "--backend",
        type=click.Choice([b.value for b in Backend]),
        default=None,
        help="Sampler backend (default: sampling.backend in the config).",
    )(function)


# -- the group ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Log debug detail (and tracebacks) to stderr.")
@click.option(
    "--log-format",
    type=click.Choice(["kv", "json"]),
    default=None,
    help="Log lines as key=value or JSON (default: logging.format in the config, else kv).",
)
@click.version_option(AGENT_VERSION, prog_name="pausewatch-agent")
@click.pass_context
def cli(ctx: click.Context, debug: bool, log_format: str | None) -> None:
    """pausewatch-agent: attest this node's GPU compute to the regulator's verifier."""
    configure_logging(level="debug" if debug else "warning", fmt=log_format or "kv")
    ctx.obj = {"debug": debug, "log_format": log_format}


# -- init ---------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the key, config, spool and lock live.",
)
@click.option("--lab", "lab_id", required=True, help="The lab id this node belongs to.")
@click.option("--verifier", "address", required=True, help="Verifier address, HOST:PORT.")
@click.option(
    "--ca-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA certificate to check the verifier's TLS certificate against.",
)
@click.option(
    "--insecure-no-tls",
    is_flag=True,
    help="Talk to the verifier in plaintext. Only for tests on loopback.",
)
@click.option("--node-name", default=None, help="Name of this node (default: the host name).")
@click.option(
    "--backend",
    type=click.Choice([b.value for b in Backend]),
    default=Backend.NVML.value,
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(
    *,
    state_dir: Path,
    lab_id: str,
    address: str,
    ca_cert: Path | None,
    insecure_no_tls: bool,
    node_name: str | None,
    backend: str,
    as_json: bool,
) -> None:
    """Create the state directory, the node key (mode 0600) and the config file."""
    if not is_valid_lab_id(lab_id):
        raise click.BadParameter(
            "must be lowercase letters, digits, '-', '_', '.' (1-64)", param_hint="--lab"
        )
    if insecure_no_tls and ca_cert is not None:
        raise click.UsageError("--insecure-no-tls and --ca-cert exclude each other")
    state_dir = state_dir.resolve()
    key_path = state_dir / "node.key"
    pub_path = state_dir / "node.pub"
    config_path = state_dir / CONFIG_FILE_NAME
    scenario_path = state_dir / SIM_SCENARIO_FILE
    sim = Backend(backend) is Backend.SIM
    for existing in (key_path, pub_path, config_path, *([scenario_path] if sim else [])):
        if existing.exists():
            raise click.UsageError(f"{existing} already exists; refusing to overwrite it")
    text = render_config(
        lab_id=lab_id,
        node_name=node_name or socket.gethostname(),
        state_dir=state_dir,
        verifier_address=address,
        ca_cert=ca_cert.resolve() if ca_cert is not None else None,
        insecure_no_tls=insecure_no_tls,
        backend=Backend(backend),
        sim_scenario=SIM_SCENARIO_FILE if sim else None,
    )
    parse_config(tomllib.loads(text), config_path)  # validate before writing anything
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sim:
        write_new_file(scenario_path, example_scenario().read_bytes(), mode=0o644)
    private = keys.generate_private_key()
    keys.save_private_key(key_path, private)
    keys.save_public_key(pub_path, private.public_key())
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    node_id = keys.key_id(private.public_key()).hex()
    emit(
        {
            "state_dir": str(state_dir),
            "config": str(config_path),
            "private_key": str(key_path),
            "public_key": str(pub_path),
            "node_id": node_id,
            "lab_id": lab_id,
        },
        as_json,
        f"wrote {key_path} (mode 0600), {pub_path} and {config_path}\nnode id {node_id}\n"
        f"next: pausewatch-agent enroll --state-dir {state_dir} --operator-key KEY",
    )


# -- enroll -------------------------------------------------------------------------------------


def _inventory(
    config: AgentConfig,
    backend: Backend,
    scenario: Path | None,
    replay: Path | None,
    *,
    replay_gpus: int | None,
    replay_gpu_model: str | None,
) -> tuple[GpuIdentity, ...]:
    sampler = make_sampler(
        config,
        backend,
        scenario=scenario,
        replay=replay,
        replay_gpus=replay_gpus,
        replay_gpu_model=replay_gpu_model,
    )
    sampler.open(time.time_ns())
    try:
        gpus = sampler.inventory()
        if not gpus:
            poll = sampler.poll(time.time_ns())
            why = "; ".join(e.detail for e in poll.events) if poll is not None else ""
            raise click.UsageError(
                f"no GPUs found with the {backend.value} backend" + (f" ({why})" if why else "")
            )
        return gpus
    finally:
        sampler.close()


def _save_enrollment(
    config: AgentConfig, node_id: NodeId, response: Any, nonce: Nonce
) -> dict[str, Any]:
    record = {
        "node_id": bytes(response.node_id).hex(),
        "lab_id": config.node.lab_id,
        "log_index": int(response.log_index),
        "already_enrolled": bool(response.already_enrolled),
        "enrolled_at_ns": time.time_ns(),
    }
    if bytes(response.node_id) != bytes(node_id):
        raise click.ClickException("the verifier enrolled a different node id")
    spool = Spool.open(spool_path(config), node_id=node_id)
    try:
        spool.set_text(ENROLLMENT_KEY, json.dumps(record, sort_keys=True))
        held = spool.nonce()
        if nonce.nonce and (held is None or held.issued_at_ns < nonce.issued_at_ns):
            spool.store_nonce(nonce)  # windows signed before the first challenge carry it
    finally:
        spool.close()
    return record


@cli.command()
@config_options
@backend_option
@click.option(
    "--operator-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="One step: the lab operator's private key authorises the enrolment here.",
)
@click.option(
    "--prepare",
    "prepare_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Two steps: write the node-signed request here for the operator to authorise.",
)
@click.option(
    "--authorization",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Two steps: the operator's authorisation (from 'operator authorize'); sends both.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def enroll(
    *,
    config_file: Path | None,
    state_dir: Path | None,
    backend: str | None,
    scenario: Path | None,
    replay_file: Path | None,
    replay_gpus: int | None,
    replay_gpu_model: str | None,
    operator_key: Path | None,
    prepare_out: Path | None,
    authorization: Path | None,
    as_json: bool,
) -> None:
    """Enrol this node with the verifier (its key, its GPUs, the operator's authorisation)."""
    chosen = [o for o in (operator_key, prepare_out, authorization) if o is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --operator-key, --prepare, --authorization")
    config = _load(config_file, state_dir)
    signer = _node_signer(config)
    node_id = NodeId(signer.key_id)
    request_path = config.node.state_dir / ENROLLMENT_REQUEST_FILE
    timeout = _timeout_s(config.verifier)
    if authorization is not None:
        if not request_path.exists():
            raise click.UsageError(f"no prepared request at {request_path}; run enroll --prepare")
        request = request_path.read_bytes()
        auth = authorization.read_bytes()
        check_authorization(request, auth)
        channel = open_channel(config.verifier)
        try:
            response = submit_enrollment(channel, request, auth, timeout_s=timeout)
            first = first_nonce(channel, node_id, request, timeout_s=timeout, now_ns=time.time_ns())
        finally:
            channel.close()
        record = _save_enrollment(config, node_id, response, first)
        emit(
            record, as_json, f"enrolled node {record['node_id']} (log index {record['log_index']})"
        )
        return
    operator = None
    if operator_key is not None:
        operator = keys.Ed25519Signer.from_private_key(keys.load_private_key(operator_key))
    chosen_backend = Backend(backend) if backend else config.sampling.backend
    gpus = _inventory(
        config,
        chosen_backend,
        scenario,
        replay_file,
        replay_gpus=replay_gpus,
        replay_gpu_model=replay_gpu_model,
    )
    channel = open_channel(config.verifier)
    try:
        tpm_evidence = None
        if config.tpm.tcti:
            # The TPM's proof replaces the plain challenge: its nonce is bound to the credential.
            tpm_evidence = tpm_enrollment(
                channel,
                Tpm2Tools(config.tpm.tcti),
                keys.raw_public_key(signer.public_key),
                timeout_s=timeout,
            )
            nonce = tpm_evidence.nonce
        else:
            nonce = get_challenge(channel, node_id, timeout_s=timeout)
        payload = build_enrollment(
            lab_id=config.node.lab_id,
            node_public_key=keys.raw_public_key(signer.public_key),
            gpus=gpus,
            node_name=config.node.name,
            agent_version=AGENT_VERSION,
            created_at_ns=time.time_ns(),
            verifier_nonce=nonce,
            tpm=tpm_evidence.enrollment if tpm_evidence is not None else None,
        )
        request = sign_enrollment_request(signer, payload)
        if operator is None:
            assert prepare_out is not None
            for path in (request_path, prepare_out):
                path.write_bytes(request)
            emit(
                {
                    "request": str(prepare_out),
                    "node_id": bytes(node_id).hex(),
                    "gpus": [g.uuid for g in gpus],
                },
                as_json,
                f"wrote the enrolment request to {prepare_out} ({len(gpus)} GPUs)\n"
                f"next: pausewatch-agent operator authorize --operator-key KEY {prepare_out} OUT\n"
                f"then: pausewatch-agent enroll --authorization OUT",
            )
            return
        auth = authorize_enrollment(operator, request)
        response = submit_enrollment(channel, request, auth, timeout_s=timeout)
        first = first_nonce(channel, node_id, request, timeout_s=timeout, now_ns=time.time_ns())
    finally:
        channel.close()
    record = _save_enrollment(config, node_id, response, first)
    record["gpus"] = [g.uuid for g in gpus]
    emit(
        record,
        as_json,
        f"enrolled node {record['node_id']} with {len(gpus)} GPUs "
        f"(log index {record['log_index']})",
    )


# -- run ----------------------------------------------------------------------------------------


@cli.command()
@config_options
@backend_option
@click.option(
    "--replay-realtime/--replay-offline", default=None, help="Pace a replay by the clock."
)
@click.option("--replay-columns", default=None, help="Column names of a header-less recording.")
@click.option("--no-ship", is_flag=True, help="Do not ship (offline replay into a scratch state).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
@click.pass_context
def run(
    ctx: click.Context,
    *,
    config_file: Path | None,
    state_dir: Path | None,
    backend: str | None,
    scenario: Path | None,
    replay_file: Path | None,
    replay_gpus: int | None,
    replay_gpu_model: str | None,
    replay_realtime: bool | None,
    replay_columns: str | None,
    no_ship: bool,
    metrics_port: int | None,
) -> None:
    """Run the daemon: sample, sign a window at a time, spool, ship. SIGTERM stops it cleanly."""
    config = _load(config_file, state_dir)
    configure_logging(
        level="debug" if ctx.obj["debug"] else config.logging.level,
        fmt=ctx.obj["log_format"] or config.logging.format,
    )
    if metrics_port is not None:
        config = replace(config, metrics=replace(config.metrics, port=metrics_port))
    chosen = Backend(backend) if backend else config.sampling.backend
    if not no_ship:
        checks = local_checks(
            config,
            chosen,
            enrolled=_is_enrolled,
            sampler_file_given=bool(scenario or replay_file),
        )
        failed = first_failure(checks)
        if failed is not None:
            raise ConfigError(
                f"start-up check '{failed.name}' failed: {failed.detail}; fix: {failed.fix} "
                "(pausewatch-agent check lists every problem)"
            )
    elif not _is_enrolled(config):
        # Nothing is shipped, so nothing can be rejected: the spool is for 'audit analyse'.
        log.warning("node not enrolled: windows are spooled, never shipped (--no-ship)")
    signer = _node_signer(config)
    set_log_context(node_id=bytes(signer.key_id).hex())
    columns = tuple(c.strip() for c in replay_columns.split(",")) if replay_columns else ()
    sampler = make_sampler(
        config,
        chosen,
        scenario=scenario,
        replay=replay_file,
        replay_realtime=replay_realtime,
        replay_columns=columns,
        replay_gpus=replay_gpus,
        replay_gpu_model=replay_gpu_model,
    )
    clock = SystemClock()
    daemon = Daemon(
        config,
        sampler,
        signer,
        clock=clock,
        metrics=AgentMetrics(backend=sampler.backend.value),
        notifier=Notifier.from_environment(),
        options=DaemonOptions(ship=not no_ship),
    )

    def stop(signum: int, _frame: object) -> None:
        log.info("signal received signal=%s; stopping", signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restore_stderr = route_native_stderr()
    try:
        daemon.run()
    finally:
        restore_stderr()


def _is_enrolled(config: AgentConfig) -> bool:
    """Whether this node's spool records an enrolment. The spool is opened as this node's
    (node.pub names it): another node's spool, copied in or left by a replaced key, raises
    'spool ... belongs to node ...' instead of passing for this node's enrolment."""
    path = spool_path(config)
    if not path.exists():
        return False
    public = keys.load_public_key(config.node.key_file.with_suffix(".pub"))
    spool = Spool.open(path, node_id=NodeId(keys.key_id(public)), create=False)
    try:
        return spool.get_text(ENROLLMENT_KEY) is not None
    finally:
        spool.close()


# -- check --------------------------------------------------------------------------------------


@cli.command()
@config_options
@backend_option
@click.option("--no-verifier", is_flag=True, help="Skip the check that reaches the verifier.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(
    *,
    config_file: Path | None,
    state_dir: Path | None,
    backend: str | None,
    scenario: Path | None,
    replay_file: Path | None,
    no_verifier: bool,
    as_json: bool,
    **_replay_shape: object,
) -> None:
    """Check this node's set-up (files, key modes, enrolment, the verifier over the TLS the agent
    will use) and say what to fix. Exit 0 when all pass, 2 when something must be fixed, 4 when
    only the verifier cannot be reached (an outage: the agent would spool and retry)."""
    path = _config_path(config_file, state_dir)
    try:
        config = load_config(path)
    except ConfigError as exc:
        results = [
            CheckResult(
                "config",
                CheckStatus.FAIL,
                exc.diagnostics(),
                "correct the file; docs/agent.example.toml documents every key",
            )
        ]
    else:
        results = [CheckResult("config", CheckStatus.OK, str(config.source))]
        chosen = Backend(backend) if backend else config.sampling.backend
        if chosen is Backend.SIM and scenario is not None:
            config = replace(config, sim=replace(config.sim, scenario=scenario))
        if chosen is Backend.REPLAY and replay_file is not None:
            config = replace(config, replay=replace(config.replay, file=replay_file))
        results += local_checks(config, chosen, enrolled=_is_enrolled)
        if not no_verifier:
            node = next((r for r in results if r.name == "node key"), None)
            if node is not None and node.status is CheckStatus.OK:
                node_id = NodeId(_node_signer(config).key_id)
                # What the gRPC C core writes to fd 2 (a failed handshake's 'I1206 ...' line)
                # becomes a log record, as under 'run', never a raw line on the terminal.
                restore_stderr = route_native_stderr()
                try:
                    results.append(verifier_check(config.verifier, node_id, open_channel))
                finally:
                    restore_stderr()
    failures = [r for r in results if r.status is CheckStatus.FAIL]
    code = ExitCode.OK
    if failures:
        code = ExitCode.INTERNAL if all(r.heals for r in failures) else ExitCode.USAGE
    emit(
        {
            "ok": not failures,
            "checks": [
                {"name": r.name, "status": r.status.value, "detail": r.detail, "fix": r.fix}
                for r in results
            ],
        },
        as_json,
        "\n".join(r.line() for r in results)
        + ("\n" + f"{len(failures)} problem(s) to fix" if failures else "\nall checks passed"),
    )
    if code:
        sys.exit(code)


# -- export-windows -----------------------------------------------------------------------------


@cli.command("export-windows")
@click.option(
    "--replay",
    "replay_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="An nvidia-smi CSV recording to replay into windows (signed by a throwaway key).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Or: a node's state directory, whose spooled windows are exported as they are.",
)
@click.option("--lab", "lab_id", default=None, help="The lab the windows are for (with --replay).")
@click.option("--node-name", default=None, help="Node name (with --replay; default: file stem).")
@click.option("--gpus", type=click.IntRange(min=1, max=4096), default=None, help="GPUs per poll.")
@click.option("--gpu-model", default="", help="GPU model, for a recording without a name column.")
@click.option("--replay-columns", default=None, help="Column names of a header-less recording.")
@click.option("--window-s", type=click.IntRange(min=1, max=3600), default=60, show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output file."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_windows(
    *,
    replay_file: Path | None,
    state_dir: Path | None,
    lab_id: str | None,
    node_name: str | None,
    gpus: int | None,
    gpu_model: str,
    replay_columns: str | None,
    window_s: int,
    out: Path,
    as_json: bool,
) -> None:
    """Windows for an offline what-if analysis ('pausewatch audit analyse' runs this).

    With --replay, the recording is replayed offline into windows exactly as a running agent
    makes them, signed by a throwaway key derived from the file (never a node's attestation).
    With --state-dir, the node's spooled windows are exported as signed."""
    from agent.offline import sign_recording, spool_export, write_export
    from agent.sampler.replay import load_recording

    if (replay_file is None) == (state_dir is None):
        raise click.UsageError("give exactly one of --replay FILE and --state-dir DIR")
    if replay_file is not None:
        if lab_id is None or not is_valid_lab_id(lab_id):
            raise click.UsageError("--replay needs --lab LAB (a valid lab id)")
        columns = tuple(c.strip() for c in replay_columns.split(",")) if replay_columns else ()
        recording = load_recording(replay_file, columns=columns, gpus=gpus, gpu_model=gpu_model)
        try:
            with replay_file.open("rb") as recorded:  # streamed: a week's log is large
                digest = hashlib.file_digest(recorded, "sha256").digest()
        except OSError as exc:
            raise click.UsageError(f"cannot read {replay_file}: {exc.strerror}") from None
        name = node_name or replay_file.stem
        export = sign_recording(
            recording,
            lab_id=lab_id,
            node_name=name,
            key_seed=digest + name.encode(),
            window_ns=window_s * NS_PER_S,
        )
    else:
        assert state_dir is not None
        export = spool_export(_load(None, state_dir))
    write_export(export, out)
    emit(
        {"out": str(out), "source": export.source, "windows": len(export.envelopes)}
        | {"recording": export.recording},
        as_json,
        f"wrote {len(export.envelopes)} windows ({export.source}) to {out}",
    )


# -- status -------------------------------------------------------------------------------------


@cli.command()
@config_options
@click.option(
    "--max-signing-age-s",
    type=click.IntRange(min=1),
    default=None,
    help="Unhealthy when the newest window ended longer ago (default: 3 windows + 60 s).",
)
@click.option(
    "--max-unshipped-age-s",
    type=click.IntRange(min=1),
    default=900,
    show_default=True,
    help="Unhealthy when a window this old is still unacknowledged.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def status(
    *,
    config_file: Path | None,
    state_dir: Path | None,
    max_signing_age_s: int | None,
    max_unshipped_age_s: int,
    as_json: bool,
) -> None:
    """Chain head, spool depth, last receipt, rejections, nonce age and recent errors. Exits 0
    when healthy, else 10 not enrolled, 11 not running, 12 nothing signed for too long, 13
    nothing shipped for too long (the first that holds)."""
    config = _load(config_file, state_dir)
    public = keys.load_public_key(config.node.key_file.with_suffix(".pub"))
    node_id = keys.key_id(public)
    now = time.time_ns()
    running = StateLock(config.node.state_dir).held_by_other()
    path = spool_path(config)
    result: dict[str, Any] = {
        "node_id": node_id.hex(),
        "lab_id": config.node.lab_id,
        "node_name": config.node.name,
        "agent_running": running,
        "enrolled": False,
        "enrollment": None,
        "head": None,
        "spool": {
            "pending": 0,
            "pending_bytes": 0,
            "oldest_pending_seq": None,
            "oldest_pending_age_s": None,
        },
        "acknowledged": 0,
        "rejected": 0,
        "last_receipt": None,
        "nonce": None,
        "last_errors": [],
    }
    if path.exists():
        spool = Spool.open_readonly(path, node_id=NodeId(node_id), writer_running=running)
        try:
            stats = spool.stats()
            enrollment = spool.get_text(ENROLLMENT_KEY)
        finally:
            spool.close()
        if enrollment is not None:
            result["enrolled"] = True
            result["enrollment"] = json.loads(enrollment)
        if stats.head is not None:
            result["head"] = {
                "seq": stats.head.seq,
                "digest": bytes(stats.head.digest).hex(),
                "window_end_ns": stats.head.window_end_ns,
                "window_end": _iso(stats.head.window_end_ns),
            }
        oldest = stats.oldest_pending_window_start_ns
        result["spool"] = {
            "pending": stats.pending_count,
            "pending_bytes": stats.pending_bytes,
            "oldest_pending_seq": stats.oldest_pending_seq,
            "oldest_pending_age_s": None if oldest is None else (now - oldest) // NS_PER_S,
        }
        result["acknowledged"] = stats.acknowledged_count
        result["rejected"] = stats.rejected_count
        if stats.last_receipt is not None:
            result["last_receipt"] = {
                "seq": stats.last_receipt.seq,
                "status": stats.last_receipt.status.value,
                "log_index": stats.last_receipt.log_index,
                "age_s": (now - stats.last_receipt.at_ns) // NS_PER_S,
            }
        if stats.nonce is not None:
            result["nonce"] = {
                "age_s": (now - stats.nonce.received_at_ns) // NS_PER_S,
                "expires_in_s": (stats.nonce.expires_at_ns - now) // NS_PER_S,
            }
        result["last_errors"] = [
            {"at": _iso(at), "source": source, "message": message}
            for at, source, message in stats.last_errors
        ]
    head = result["head"]
    findings = assess_health(
        HealthFacts(
            enrolled=result["enrolled"],
            running=running,
            head_window_end_age_s=None
            if head is None
            else (now - head["window_end_ns"]) // NS_PER_S,
            oldest_unshipped_age_s=result["spool"]["oldest_pending_age_s"],
        ),
        HealthLimits(
            max_signing_age_s=max_signing_age_s or 3 * config.sampling.window_ns // NS_PER_S + 60,
            max_unshipped_age_s=max_unshipped_age_s,
        ),
    )
    result["healthy"] = not findings
    result["problems"] = [
        {"code": f.exit_code, "problem": f.problem.name.lower(), "detail": f.detail}
        for f in findings
    ]
    emit(result, as_json, _status_text(result))
    if findings:
        sys.exit(findings[0].exit_code)


def _status_text(r: dict[str, Any]) -> str:
    lines = [
        f"node          {r['node_id']} (lab {r['lab_id']}, name {r['node_name'] or '-'})",
        f"agent         {'running' if r['agent_running'] else 'not running'}",
    ]
    enrollment = r["enrollment"]
    lines.append(
        f"enrolled      yes (log index {enrollment['log_index']})"
        if enrollment
        else "enrolled      no"
    )
    head = r["head"]
    lines.append(
        f"chain head    seq {head['seq']}, digest {head['digest'][:16]}..., window end "
        f"{head['window_end']}"
        if head
        else "chain head    none (no window signed yet)"
    )
    spool = r["spool"]
    oldest = (
        f"; oldest seq {spool['oldest_pending_seq']} ({spool['oldest_pending_age_s']} s old)"
        if spool["oldest_pending_seq"] is not None
        else ""
    )
    lines.append(
        f"spool         {spool['pending']} not yet acknowledged ({spool['pending_bytes']} bytes)"
        + oldest
    )
    lines.append(f"acknowledged  {r['acknowledged']}")
    receipt = r["last_receipt"]
    lines.append(
        f"last receipt  seq {receipt['seq']} {receipt['status']}, log index "
        f"{receipt['log_index']}, {receipt['age_s']} s ago"
        if receipt
        else "last receipt  none"
    )
    lines.append(
        f"rejected      {r['rejected']}"
        + ("  <- evidence the verifier will not count; see errors" if r["rejected"] else "")
    )
    nonce = r["nonce"]
    lines.append(
        f"nonce         {nonce['age_s']} s old, expires in {nonce['expires_in_s']} s"
        if nonce
        else "nonce         none yet"
    )
    lines.append(
        "health        ok"
        if r["healthy"]
        else "health        "
        + "; ".join(f"{p['problem']} (exit {p['code']}): {p['detail']}" for p in r["problems"])
    )
    if r["last_errors"]:
        lines.append("last errors")
        lines += [f"  {e['at']} {e['source']}: {e['message']}" for e in r["last_errors"]]
    return "\n".join(lines)


# -- operator -----------------------------------------------------------------------------------


@cli.group()
def operator() -> None:
    """Lab-operator actions: keys, authorising enrolments, inventory, revocation."""


def verifier_options(function: F) -> F:
    return _verifier_options(function, address_required=True)


def _verifier_options(function: F, *, address_required: bool) -> F:
    for option in reversed(
        [
            click.option(
                "--verifier", "address", required=address_required, help="Verifier HOST:PORT."
            ),
            click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path)),
            click.option("--client-cert", type=click.Path(dir_okay=False, path_type=Path)),
            click.option("--client-key", type=click.Path(dir_okay=False, path_type=Path)),
            click.option(
                "--server-name",
                "--server-name-override",
                "server_name_override",
                default="",
                help="Check the TLS certificate for this name (the config's server_name_override).",
            ),
            click.option("--insecure-no-tls", is_flag=True, help="Plaintext; tests only."),
            click.option("--timeout-s", type=float, default=10.0, show_default=True),
        ]
    ):
        function = option(function)
    return function


def _verifier_config(
    *,
    address: str,
    ca_cert: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    server_name_override: str,
    insecure_no_tls: bool,
    timeout_s: float,
) -> VerifierConfig:
    if insecure_no_tls and (ca_cert or client_cert or client_key):
        raise click.UsageError("--insecure-no-tls excludes the TLS options")
    if (client_cert is None) != (client_key is None):
        raise click.UsageError("--client-cert and --client-key go together")
    return VerifierConfig(
        address=address,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        server_name_override=server_name_override,
        insecure_no_tls=insecure_no_tls,
        rpc_timeout_ms=int(timeout_s * 1000),
        nonce_refresh_ms=300_000,
        batch_max_envelopes=1,
        batch_max_bytes=1 << 20,
        backoff_initial_ms=500,
        backoff_max_ms=60_000,
    )


def _operator_signer(path: Path) -> keys.Ed25519Signer:
    return keys.Ed25519Signer.from_private_key(keys.load_private_key(path))


@operator.command("keygen")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--name", default="operator", show_default=True, help="File name stem.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def operator_keygen(out_dir: Path, name: str, as_json: bool) -> None:
    """Write a new operator key pair (NAME.key mode 0600, NAME.pub). Never overwrites."""
    if not name or "/" in name or name.startswith("."):
        raise click.BadParameter("must be a plain file name stem", param_hint="--name")
    key_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub"
    for existing in (key_path, pub_path):
        if existing.exists():
            raise click.UsageError(f"{existing} already exists; refusing to overwrite a key")
    out_dir.mkdir(parents=True, exist_ok=True)
    private = keys.generate_private_key()
    keys.save_private_key(key_path, private)
    keys.save_public_key(pub_path, private.public_key())
    kid = keys.key_id(private.public_key()).hex()
    emit(
        {
            "private_key": str(key_path),
            "public_key": str(pub_path),
            "key_id": kid,
            "public_key_base64": keys.format_public_key(private.public_key()),
        },
        as_json,
        f"wrote {key_path} (mode 0600) and {pub_path}\nkey id {kid}\n"
        f"public key (for the regulator's lab record) "
        f"{keys.format_public_key(private.public_key())}",
    )


@operator.command("authorize")
@click.option("--operator-key", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.argument("request_in", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("authorization_out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def operator_authorize(
    *, operator_key: Path, request_in: Path, authorization_out: Path, as_json: bool
) -> None:
    """Check a node's enrolment request and sign the same payload as its authorisation."""
    if authorization_out.exists():
        raise click.UsageError(f"{authorization_out} already exists; refusing to overwrite it")
    signer = _operator_signer(operator_key)
    request = request_in.read_bytes()
    verified = verify_enrollment_request(request)
    authorization = authorize_enrollment(signer, request)
    write_new_file(authorization_out, authorization, mode=0o644)
    enrollment = verified.enrollment
    emit(
        {
            "authorization": str(authorization_out),
            "node_id": bytes(verified.node_id).hex(),
            "lab_id": enrollment.lab_id,
            "node_name": enrollment.node_name,
            "gpus": [g.uuid for g in enrollment.gpus],
        },
        as_json,
        f"authorised node {bytes(verified.node_id).hex()} ({enrollment.node_name or '-'}) "
        f"for lab {enrollment.lab_id} with {len(enrollment.gpus)} GPUs:\n"
        + "".join(f"  {g.uuid} {g.model}\n" for g in enrollment.gpus)
        + f"wrote {authorization_out}",
    )


@operator.command("declare-inventory")
@click.option("--operator-key", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--lab", "lab_id", required=True)
@click.option(
    "--inventory", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True
)
@click.option("--version", "version", type=click.IntRange(min=1), required=True)
@click.option(
    "--effective-from-unix-s",
    type=click.IntRange(min=0),
    default=None,
    help="When it applies (default: now).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the signed declaration to this file instead of sending it (for the verifier's "
    "inventory_declarations); no --verifier needed.",
)
@functools.partial(_verifier_options, address_required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def operator_declare_inventory(
    *,
    operator_key: Path,
    lab_id: str,
    inventory: Path,
    version: int,
    effective_from_unix_s: int | None,
    out: Path | None,
    as_json: bool,
    **verifier: Any,
) -> None:
    """Sign the lab's GPU inventory (a TOML file of [[gpu]] tables) and declare it to the
    verifier, or with --out write the signed declaration to a file."""
    if out is None and not verifier["address"]:
        raise click.UsageError("--verifier is required (or --out FILE to write the declaration)")
    if out is not None and verifier["address"]:
        raise click.UsageError("--out writes a file and sends nothing; leave out --verifier")
    if out is not None and out.exists():
        raise click.UsageError(f"{out} already exists; refusing to overwrite it")
    config = None if out is not None else _verifier_config(**verifier)
    signer = _operator_signer(operator_key)
    gpus = load_inventory(inventory)
    now = time.time_ns()
    envelope = sign_inventory(
        signer,
        lab_id=lab_id,
        version=version,
        gpus=gpus,
        effective_from_ns=now
        if effective_from_unix_s is None
        else effective_from_unix_s * NS_PER_S,
        created_at_ns=now,
    )
    if config is None:
        assert out is not None
        write_new_file(out, envelope, mode=0o644)
        emit(
            {"version": version, "out": str(out), "gpus": len(gpus)},
            as_json,
            f"wrote inventory declaration version {version} ({len(gpus)} GPUs) to {out}; "
            "list it in the lab's inventory_declarations on the verifier",
        )
        return
    channel = open_channel(config)
    try:
        response = declare_inventory(channel, envelope, timeout_s=_timeout_s(config))
    finally:
        channel.close()
    emit(
        {"version": response.version, "log_index": response.log_index, "gpus": len(gpus)},
        as_json,
        f"declared inventory version {response.version} ({len(gpus)} GPUs), "
        f"log index {response.log_index}",
    )


@operator.command("inventory-from-enrolled")
@click.option("--lab", "lab_id", required=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The inventory file to write (never overwritten).",
)
@click.option(
    "--merge",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="An existing inventory file: keep its GPUs and add the enrolled ones it lacks.",
)
@verifier_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def operator_inventory_from_enrolled(
    *, lab_id: str, out: Path, merge: Path | None, as_json: bool, **verifier: Any
) -> None:
    """Write the lab's inventory file from the GPUs its live nodes enrolled with (as the verifier
    holds them); then sign it with 'operator declare-inventory --inventory FILE'."""
    if out.exists():
        raise click.UsageError(f"{out} already exists; refusing to overwrite it")
    existing = load_inventory(merge) if merge is not None else []
    config = _verifier_config(**verifier)
    channel = open_channel(config)
    try:
        found = enrolled_gpus(channel, lab_id, timeout_s=_timeout_s(config))
    finally:
        channel.close()
    if not found.gpus and not existing:
        raise click.UsageError(
            f"lab {lab_id} has no enrolled GPUs on the verifier; nothing to write"
        )
    gpus = merge_inventories(existing, found.gpus)
    added = len(gpus) - len(existing)
    text = render_inventory(
        gpus,
        header=f"GPU inventory of lab {lab_id}: {found.nodes} enrolled node(s) on the verifier "
        f"at {config.address}, {_iso(time.time_ns())}"
        + (f"; merged with {merge}" if merge is not None else "")
        + "\nReview it, then: pausewatch-agent operator declare-inventory --inventory THIS_FILE",
    )
    write_new_file(out, text.encode(), mode=0o644)
    emit(
        {
            "out": str(out),
            "gpus": len(gpus),
            "added_from_enrolled": added,
            "nodes": found.nodes,
            "revoked_nodes_skipped": found.revoked_nodes_skipped,
        },
        as_json,
        f"wrote {out}: {len(gpus)} GPUs ({added} from {found.nodes} enrolled node(s)"
        + (
            f", {found.revoked_nodes_skipped} revoked node(s) left out"
            if found.revoked_nodes_skipped
            else ""
        )
        + ")\nnext: pausewatch-agent operator declare-inventory --inventory "
        f"{out} --lab {lab_id} --version N ...",
    )


@operator.command("revoke")
@click.option("--operator-key", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--lab", "lab_id", required=True)
@click.option("--node-id", required=True, help="The node's id, 64 hex characters.")
@click.option("--reason", required=True, help="Why (kept in the log).")
@verifier_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def operator_revoke(
    *,
    operator_key: Path,
    lab_id: str,
    node_id: str,
    reason: str,
    as_json: bool,
    **verifier: Any,
) -> None:
    """Revoke a node: the verifier accepts nothing further from it."""
    try:
        node = NodeId(parse_hex_id(node_id, "--node-id"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--node-id") from None
    config = _verifier_config(**verifier)
    signer = _operator_signer(operator_key)
    envelope = sign_revocation(
        signer, lab_id=lab_id, node_id=node, reason=reason, created_at_ns=time.time_ns()
    )
    channel = open_channel(config)
    try:
        response = revoke_node(channel, envelope, timeout_s=_timeout_s(config))
    finally:
        channel.close()
    emit(
        {"log_index": response.log_index, "already_revoked": response.already_revoked},
        as_json,
        f"revoked node {node_id} (log index {response.log_index})"
        + (" (it was already revoked)" if response.already_revoked else ""),
    )


# -- the entry point ----------------------------------------------------------------------------

_GRPC_EXIT = {
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.VERIFICATION_FAILED,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.VERIFICATION_FAILED,
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.USAGE,
    grpc.StatusCode.NOT_FOUND: ExitCode.USAGE,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.USAGE,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.USAGE,
}


def main() -> None:
    """Entry point: run the CLI and map errors to exit codes in one place."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except PausewatchError as exc:
        click.echo(f"error: {exc.diagnostics()}", err=True)
        sys.exit(exit_code_for(exc))
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else ""
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        click.echo(f"error: the verifier answered {name}: {details or ''}", err=True)
        sys.exit(_GRPC_EXIT.get(code, ExitCode.INTERNAL) if code else ExitCode.INTERNAL)
    except Exception as exc:  # the CLI entry: anything unexpected is an internal error
        log.debug("internal error", exc_info=True)
        click.echo(f"internal error: {type(exc).__name__} (run with --debug for details)", err=True)
        sys.exit(ExitCode.INTERNAL)


if __name__ == "__main__":
    main()
