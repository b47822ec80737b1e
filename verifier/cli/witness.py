"""The witness's commands: ``pausewatch witness ...``.

    pausewatch keygen --out w1/ --name witness
    pausewatch witness vkey --key w1/witness.key --name witness.example/w1
    pausewatch witness serve --key w1/witness.key --name witness.example/w1 --state w1/state \\
        --log-key 'regulator.example/pausewatch+1a2b3c4d+AR...' --listen 0.0.0.0:8470

The witness answers POST /add-checkpoint (c2sp.org/tlog-witness) for the logs whose keys it is
given, cosigning (cosignature/v1) only checkpoints consistent with the last it cosigned for each.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import click

from attest import keys
from attest.checkpoint import CosignatureSigner
from attest.errors import KeyFileError
from attest.note import NoteVerifier, is_valid_key_name, parse_verifier_key
from verifier.cli.common import emit

log = logging.getLogger(__name__)


def _cosigner(key_path: Path, name: str) -> CosignatureSigner:
    if not is_valid_key_name(name):
        raise click.BadParameter(
            "a key name has no spaces, no '+' and no control characters", param_hint="--name"
        )
    return CosignatureSigner(name, keys.load_private_key(key_path))


_KEY_OPTION = click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The witness's Ed25519 private key (PEM, from `pausewatch keygen`).",
)
_NAME_OPTION = click.option(
    "--name", required=True, help="The witness's key name, e.g. witness.example/w1."
)


@click.group("witness")
def witness_group() -> None:
    """A transparency-log witness (c2sp.org/tlog-witness) that cosigns the verifier's log."""


@witness_group.command("vkey")
@_KEY_OPTION
@_NAME_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def vkey_command(key_path: Path, name: str, as_json: bool) -> None:
    """Print the witness's cosignature verifier key (give it to auditors and verifiers)."""
    vkey = _cosigner(key_path, name).verifier().to_vkey()
    emit({"name": name, "verifier_key": vkey}, as_json, vkey)


@witness_group.command("serve")
@_KEY_OPTION
@_NAME_OPTION
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory of the witness's durable state (the last checkpoint cosigned per log).",
)
@click.option(
    "--log-key",
    "log_keys",
    multiple=True,
    required=True,
    help="A log's verifier key (signed-note form); its name is the log's origin. Repeatable.",
)
@click.option("--listen", default="127.0.0.1:8470", show_default=True, help="HOST:PORT.")
@click.option(
    "--port-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the bound port to this file once serving (for scripts).",
)
def serve_command(
    *,
    key_path: Path,
    name: str,
    state_dir: Path,
    log_keys: tuple[str, ...],
    listen: str,
    port_file: Path | None,
) -> None:
    """Serve POST /add-checkpoint until SIGTERM or SIGINT."""
    from verifier.witness.server import Witness, WitnessServer, WitnessState

    cosigner = _cosigner(key_path, name)
    verifiers: dict[str, NoteVerifier] = {}
    for text in log_keys:
        try:
            verifier = parse_verifier_key(text)
        except KeyFileError as exc:
            raise click.BadParameter(exc.diagnostics(), param_hint="--log-key") from None
        if verifier.name in verifiers:
            raise click.BadParameter(
                f"two keys for the log {verifier.name!r}", param_hint="--log-key"
            )
        verifiers[verifier.name] = verifier
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise click.BadParameter("must be HOST:PORT", param_hint="--listen")
    state = WitnessState.open(state_dir)
    try:
        server = WitnessServer(Witness(state, cosigner, verifiers), (host, int(port_text)))
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {listen}: {exc.strerror}") from None

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("signal %d: shutting down", signum)
        threading.Thread(target=server.stop, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(
        f"pausewatch witness {cosigner.verifier().to_vkey()} listening on {host}:{server.port} "
        f"for {len(verifiers)} log(s)",
        err=True,
    )
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{server.port}\n", encoding="ascii")
        tmp.replace(port_file)
    server.serve_forever()
