"""Pieces every regulator command shares: printing results, and the options that say how to reach
a verifier.

    @click.command()
    @verifier_options
    def cmd(target: VerifierTarget) -> None:
        with open_channel(target) as channel: ...
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import grpc

from attest.checkpoint import CosignatureVerifier, parse_cosigner_key
from attest.errors import (
    CertificateRefusedError,
    KeyFileError,
    PausewatchError,
    PeerCertificateError,
)
from verifier.accounting.evaluation import format_time_ns
from verifier.cli.client import (
    NS_PER_S,
    TlsDiagnosis,
    VerifierTarget,
    diagnose_tls,
    parse_time,
    tls_file_problem,
)

F = TypeVar("F", bound=Callable[..., Any])


def emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    """Print a command's result as JSON or as text."""
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(text)


def verifier_options(command: F) -> F:
    """``--verifier``, ``--ca-cert``, ``--client-cert``, ``--client-key``, ``--server-name``,
    ``--insecure-no-tls``, folded into one ``target`` argument."""

    @click.option(
        "--verifier",
        "address",
        default=lambda: os.environ.get("PAUSEWATCH_VERIFIER", ""),
        help="Verifier address HOST:PORT (default: $PAUSEWATCH_VERIFIER).",
    )
    @click.option(
        "--ca-cert",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="CA certificate for the verifier's TLS certificate (default: system roots).",
    )
    @click.option(
        "--client-cert",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="Client certificate, for a verifier that requires mutual TLS.",
    )
    @click.option(
        "--client-key",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="Private key of the client certificate.",
    )
    @click.option(
        "--server-name",
        "--server-name-override",
        "server_name",
        default=None,
        help="Check the TLS certificate for this name.",
    )
    @click.option(
        "--insecure-no-tls",
        is_flag=True,
        help="Talk to the verifier in plaintext (tests on loopback only).",
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any,
        address: str,
        ca_cert: Path | None,
        client_cert: Path | None,
        client_key: Path | None,
        server_name: str | None,
        insecure_no_tls: bool,
        **kwargs: Any,
    ) -> Any:
        if not address:
            raise click.UsageError(
                "say which verifier: --verifier HOST:PORT or $PAUSEWATCH_VERIFIER"
            )
        if (client_cert is None) != (client_key is None):
            raise click.UsageError("--client-cert and --client-key go together")
        target = VerifierTarget(
            address=address,
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            server_name=server_name,
            insecure_no_tls=insecure_no_tls,
        )
        problem = tls_file_problem(target)
        if problem is not None:
            raise click.BadParameter(problem[1], param_hint=problem[0])
        try:
            return command(*args, target=target, **kwargs)
        except grpc.RpcError as exc:
            raise _tls_error(target, exc) or exc from None

    return wrapper  # type: ignore[return-value]


def _tls_error(target: VerifierTarget, exc: grpc.RpcError) -> PausewatchError | None:
    """gRPC says UNAVAILABLE for every failed TLS handshake; say which side refused which
    certificate, when a probe handshake can tell."""
    code = getattr(exc, "code", lambda: None)()
    if code != grpc.StatusCode.UNAVAILABLE or target.insecure_no_tls:
        return None
    diagnosis, reason = diagnose_tls(target)
    if diagnosis is TlsDiagnosis.CLIENT_CERTIFICATE_REFUSED:
        return CertificateRefusedError(
            f"the verifier at {target.address} refused this client's TLS certificate: {reason}"
        )
    if diagnosis is TlsDiagnosis.SERVER_CERTIFICATE_UNTRUSTED:
        against = f"--ca-cert {target.ca_cert}" if target.ca_cert else "the system's CAs"
        return PeerCertificateError(
            f"the TLS certificate of the verifier at {target.address} did not verify against "
            f"{against}"
            + (f" for the name {target.server_name}" if target.server_name else "")
            + f": {reason}"
        )
    return None


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """The witnesses a reader requires: their cosignature keys and how many must have cosigned."""

    verifiers: tuple[CosignatureVerifier, ...] = ()
    threshold: int = 0


def witness_options(command: F) -> F:
    """``--witness KEY`` (repeatable) and ``--witness-threshold K``, folded into one
    ``witnesses`` argument (:class:`WitnessPolicy`). K defaults to every witness named."""

    @click.option(
        "--witness",
        "witness_keys",
        multiple=True,
        help="A witness's cosignature verifier key (<name>+<hash>+<base64>). Repeatable.",
    )
    @click.option(
        "--witness-threshold",
        type=click.IntRange(min=0),
        default=None,
        help="How many of the named witnesses must have cosigned (default: all of them).",
    )
    @functools.wraps(command)
    def wrapper(
        *args: Any, witness_keys: tuple[str, ...], witness_threshold: int | None, **kwargs: Any
    ) -> Any:
        verifiers: list[CosignatureVerifier] = []
        for text in witness_keys:
            try:
                verifier = parse_cosigner_key(text)
            except KeyFileError as exc:
                raise click.BadParameter(exc.diagnostics(), param_hint="--witness") from None
            if any(v.name == verifier.name for v in verifiers):
                raise click.BadParameter(
                    f"witness {verifier.name!r} is named twice", param_hint="--witness"
                )
            verifiers.append(verifier)
        threshold = len(verifiers) if witness_threshold is None else witness_threshold
        if threshold > len(verifiers):
            raise click.BadParameter(
                f"{threshold} is more than the {len(verifiers)} witnesses named",
                param_hint="--witness-threshold",
            )
        return command(*args, witnesses=WitnessPolicy(tuple(verifiers), threshold), **kwargs)

    return wrapper  # type: ignore[return-value]


_NOW_KEY = "pausewatch.now_ns"


class TimeParam(click.ParamType[int, Any]):
    """A time on the command line (see :func:`verifier.cli.client.parse_time`), as ns since
    epoch. ``now`` (and ``-2h``) is read from one clock reading per command, so ``--since now
    --until now`` is an empty period, not a few nanoseconds."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        now_ns = None
        if ctx is not None:
            now_ns = ctx.meta.setdefault(_NOW_KEY, time.time_ns())
        try:
            return parse_time(str(value), now_ns=now_ns)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeParam()


class TimeZoneParam(click.ParamType[ZoneInfo, Any]):
    """An IANA time zone name (``Europe/Brussels``, ``UTC``) for printing times."""

    name = "zone"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> ZoneInfo:
        if isinstance(value, ZoneInfo):
            return value
        try:
            return ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(
                f"{value!r} is not a time zone this machine knows (an IANA name such as "
                "Europe/Brussels or America/New_York)",
                param,
                ctx,
            )


TZ = TimeZoneParam()


def format_time(timestamp_ns: int, zone: ZoneInfo | None) -> str:
    """A time for a person: UTC with a Z (as reports print it) without a zone; with one, the
    local time with its UTC offset, to the nanosecond where there is a fraction."""
    if zone is None:
        return format_time_ns(timestamp_ns)
    seconds, fraction = divmod(timestamp_ns, NS_PER_S)
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).astimezone(zone)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{fraction:09d}".rstrip("0")
    offset = moment.strftime("%z")
    return f"{text}{offset[:3]}:{offset[3:]}"
