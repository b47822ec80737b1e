"""The regulator's command line, ``pausewatch``: keys, the verifier, audits, the log, policies.

    pausewatch keygen --out keys/ --name verifier
    pausewatch verifier serve --config verifier.toml
    pausewatch audit report --lab lab-a --since 2026-11-01 --until 2026-12-01

Exit codes (every command): 0 compliant / success, 1 non-compliant, 2 usage error,
3 verification failed, 4 internal error (an unreachable verifier included), 5 the verifier refused
our TLS client certificate. Every command that prints a result takes ``--json``.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

import click
import grpc

from attest import __version__, compute, keys, note
from attest.errors import ConfigError, OutputFileError, PausewatchError
from attest.exitcodes import ExitCode, exit_code_for
from verifier.accounting import policy as policy_file
from verifier.cli.audit import audit, log_group
from verifier.cli.common import emit
from verifier.cli.registry import (
    entry_command,
    health_command,
    labs_command,
    node_command,
    nodes_command,
)
from verifier.cli.site import site
from verifier.cli.witness import witness_group
from verifier.demo import demo_command

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    version=__version__,
    prog_name="pausewatch",
    message=f"%(prog)s %(version)s (GPU table version {compute.TABLE_VERSION})",
)
@click.option("--debug", is_flag=True, help="Log debug detail (and tracebacks) to stderr.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="What to log to stderr (a verifier in service wants info).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, log_level: str) -> None:
    """pausewatch: verify compute attestations during a declared pause on frontier training."""
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    ctx.obj = {"debug": debug}


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write NAME.key (mode 0600) and NAME.pub into.",
)
@click.option("--name", default="pausewatch", show_default=True, help="File name stem.")
@click.option(
    "--note-name",
    default=None,
    help="Also print the signed-note verifier key for this key name (a log origin).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keygen(out_dir: Path, name: str, note_name: str | None, as_json: bool) -> None:
    """Write a new Ed25519 key pair. Never overwrites an existing key."""
    if not name or "/" in name or name.startswith("."):
        raise click.BadParameter("must be a plain file name stem", param_hint="--name")
    if note_name is not None and not note.is_valid_key_name(note_name):
        raise click.BadParameter(
            "a key name has no spaces, no '+' and no control characters", param_hint="--note-name"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    private = keys.generate_private_key()
    key_path = out_dir / f"{name}.key"
    pub_path = out_dir / f"{name}.pub"
    if pub_path.exists():
        raise click.UsageError(f"{pub_path} already exists; refusing to overwrite a key")
    keys.save_private_key(key_path, private)
    keys.save_public_key(pub_path, private.public_key())
    kid = keys.key_id(private.public_key()).hex()
    result: dict[str, Any] = {
        "private_key": str(key_path),
        "public_key": str(pub_path),
        "key_id": kid,
        "public_key_base64": keys.format_public_key(private.public_key()),
    }
    lines = [f"wrote {key_path} (mode 0600) and {pub_path}", f"key id {kid}"]
    if note_name is not None:
        vkey = note.format_verifier_key(note_name, private.public_key().public_bytes_raw())
        result["note_verifier_key"] = vkey
        lines.append(f"signed-note verifier key {vkey}")
    emit(result, as_json, "\n".join(lines))


@cli.group()
def policy() -> None:
    """Declared-threshold policy files (docs/policy.md)."""


def _load_checked_policy(path: Path, bucket_seconds: int | None) -> policy_file.Policy:
    loaded = policy_file.load_policy(path)
    if bucket_seconds is not None:
        errors = policy_file.validate_for_buckets(loaded, bucket_seconds * 1_000_000_000)
        if errors:
            raise ConfigError("\n".join(errors))
    return loaded


@policy.command("check")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--bucket-seconds",
    type=click.IntRange(min=1),
    default=None,
    help="Also check that every window fits accounting buckets of this width.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def policy_check(path: Path, bucket_seconds: int | None, as_json: bool) -> None:
    """Validate a policy file and show its rules in words. Exit 0 if valid, 2 if not."""
    try:
        loaded = _load_checked_policy(path, bucket_seconds)
    except ConfigError as exc:
        if as_json:
            emit({"valid": False, "path": str(path), "errors": str(exc).split("\n")}, True, "")
        raise  # main() prints it on stderr and exits 2 (ExitCode.USAGE)
    result: dict[str, Any] = {
        "valid": True,
        "path": str(path),
        "policy_id": loaded.policy_id,
        "version": loaded.version,
        "lab_id": loaded.lab_id,
        "description": loaded.description,
        "digest": loaded.digest.hex(),
        "default_figure": loaded.default_figure.value,
        "late_evidence": loaded.late_evidence.value,
        "rules": [policy_file.rule_to_dict(rule) for rule in loaded.rules],
    }
    lines = [
        f"policy {loaded.policy_id} version {loaded.version} for lab {loaded.lab_id}",
        f"sha256 {loaded.digest.hex()}",
    ]
    if loaded.description:
        lines.append(loaded.description)
    lines.append(
        "late evidence counts like a gap"
        if loaded.late_evidence is policy_file.LateEvidence.GAP
        else "late evidence counts as attested"
    )
    lines.append(f"{len(loaded.rules)} rules:")
    lines += [
        f"  {rule.rule_id} ({rule.kind.value}): {policy_file.describe_rule(rule)}"
        for rule in loaded.rules
    ]
    if bucket_seconds is not None:
        result["bucket_seconds"] = bucket_seconds
        lines.append(f"valid, and every window fits buckets of {bucket_seconds} s")
    else:
        lines.append("valid")
    emit(result, as_json, "\n".join(lines))


@policy.command("accept")
@click.argument(
    "path", metavar="FILE", type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option(
    "--operator-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The lab operator's private key (the key the verifier's config registers for the lab).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the signed acceptance here (never overwritten).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def policy_accept(path: Path, operator_key: Path, out_path: Path, as_json: bool) -> None:
    """The lab's side: sign the policy FILE with the operator key, accepting its thresholds.

    Give the file to the regulator, who names it as the lab's policy_acceptance in the
    verifier's config; reports then show that the lab accepted the policy in force."""
    import time

    from verifier.accounting.policy_acceptance import sign_acceptance

    loaded = policy_file.load_policy(path)
    signer = keys.Ed25519Signer.from_private_key(keys.load_private_key(operator_key))
    raw = sign_acceptance(signer, loaded, accepted_at_ns=time.time_ns())
    if out_path.exists():
        raise OutputFileError(f"{out_path} already exists; refusing to overwrite it")
    out_path.write_bytes(raw)
    emit(
        {
            "path": str(out_path),
            "policy_id": loaded.policy_id,
            "version": loaded.version,
            "lab_id": loaded.lab_id,
            "policy_sha256": loaded.digest.hex(),
            "operator_key_id": signer.key_id.hex(),
        },
        as_json,
        f"wrote {out_path}: lab {loaded.lab_id} accepts policy {loaded.policy_id} version "
        f"{loaded.version} (sha256 {loaded.digest.hex()}), signed by operator key "
        f"{signer.key_id.hex()[:16]}",
    )


@cli.group()
def verifier() -> None:
    """Run the regulator's verifier service."""


@verifier.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The verifier's TOML config file (see docs/verifier.md).",
)
@click.option("--listen", default=None, help="Override server.listen (HOST:PORT; port 0 = any).")
@click.option(
    "--metrics-listen",
    default=None,
    help="Override metrics.listen (HOST:PORT): each of several processes sharing one config "
    "and address (server.reuse_port) serves its metrics on an address of its own.",
)
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the bound port to this file once serving (for scripts).",
)
def serve(
    config_path: Path, listen: str | None, metrics_listen: str | None, port_file: Path | None
) -> None:
    """Serve AttestationService, RegistryService and AuditService until SIGTERM or SIGINT."""
    import dataclasses
    import signal

    from verifier.config import load_config
    from verifier.server.process import tune_garbage_collector
    from verifier.server.server import VerifierServer

    config = load_config(config_path)
    tune_garbage_collector()
    if listen is not None:
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, listen=listen)
        )
    if metrics_listen is not None:
        config = dataclasses.replace(
            config, metrics=dataclasses.replace(config.metrics, listen=metrics_listen)
        )
    server = VerifierServer.from_config(config)
    port = server.start()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("signal %d: shutting down", signum)
        threading.Thread(target=server.stop, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = config.server.listen.rsplit(":", 1)[0]
    click.echo(f"pausewatch verifier listening on {host}:{port}", err=True)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{port}\n", encoding="ascii")
        tmp.replace(port_file)
    server.wait()


cli.add_command(audit)
cli.add_command(log_group)
log_group.add_command(entry_command)
for _command in (labs_command, nodes_command, node_command, health_command):
    cli.add_command(_command)
cli.add_command(demo_command)
cli.add_command(site)
cli.add_command(witness_group)

# gRPC status codes of a refused request, and the exit code each maps to.
_USAGE_STATUS = frozenset(
    {
        "NOT_FOUND",
        "INVALID_ARGUMENT",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
    }
)


def _rpc_exit(exc: grpc.RpcError) -> int:
    # A failed call's error is also a grpc.Call; the stubs cannot say so.
    code = getattr(exc, "code", lambda: None)()
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = str(getattr(exc, "details", lambda: "")() or "")
    if name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        click.echo(f"error: cannot reach the verifier ({name}): {details}", err=True)
        return ExitCode.INTERNAL
    click.echo(f"error: the verifier refused the request ({name}): {details}", err=True)
    if name in _USAGE_STATUS:
        return ExitCode.USAGE
    if name == "UNAUTHENTICATED":
        return ExitCode.VERIFICATION_FAILED
    return ExitCode.INTERNAL


def main() -> None:
    """Entry point: run the CLI and map errors to exit codes in one place."""
    try:
        code = cli.main(standalone_mode=False)
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
        sys.exit(_rpc_exit(exc))
    except Exception as exc:  # the CLI entry: anything unexpected is an internal error
        log.debug("internal error", exc_info=True)
        click.echo(f"internal error: {type(exc).__name__} (run with --debug for details)", err=True)
        sys.exit(ExitCode.INTERNAL)
    # A command that ends with ctx.exit(n) returns n here (standalone_mode=False).
    sys.exit(code if isinstance(code, int) else ExitCode.OK)
