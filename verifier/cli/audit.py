"""The auditor's commands: ``pausewatch audit ...`` and ``pausewatch log ...``.

    pausewatch audit report --verifier HOST:PORT --lab lab-a --since 2026-11-01 --html report.html
    pausewatch audit findings --lab lab-a --follow
    pausewatch audit export --lab lab-a --since -7d --out lab-a.pwbundle
    pausewatch audit verify-bundle lab-a.pwbundle --log-key 'origin+hash+key'
    pausewatch audit analyse node1.csv node2.csv --policy pause.toml --gpu-model "NVIDIA H100 ..."
    pausewatch log checkpoint --log-key 'origin+hash+key'
    pausewatch log prove --index 1234

Exit codes: 0 compliant / success, 1 non-compliant, 2 usage error, 3 verification failed,
4 internal error (an unreachable verifier included), 5 the verifier refused our TLS client
certificate.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click
import grpc
from google.protobuf import json_format
from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import audit_pb2_grpc as apb_grpc
from pausewatch.v1 import findings_pb2 as fpb

from attest import merkle
from attest.checkpoint import (
    Checkpoint,
    verify_checkpoint,
    verify_extends,
    verify_witness_quorum,
)
from attest.errors import (
    HistoryError,
    KeyFileError,
    NoteError,
    OutputFileError,
    ProofError,
    RollbackError,
    VerificationError,
)
from attest.exitcodes import ExitCode
from attest.note import Ed25519NoteVerifier, parse_verifier_key, split_note
from verifier.accounting.evaluation import format_time_ns, lab_title, render_text
from verifier.cli.client import VerifierTarget, open_channel
from verifier.cli.common import (
    TIME,
    TZ,
    WitnessPolicy,
    emit,
    format_time,
    verifier_options,
    witness_options,
)

if TYPE_CHECKING:
    from verifier.audit.report_html import OfflineStamp

RPC_TIMEOUT_S = 300


def _check_output(path: Path | None, option: str) -> None:
    """Refuse (:class:`OutputFileError`, exit 2) an output file that cannot be written, before
    any work is done: its directory missing, not a directory, or not writable."""
    if path is None:
        return
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputFileError(f"{option} {path}: the directory {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFileError(f"{option} {path}: the directory {parent} is not writable")


def _write_atomically(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` whole or not at all; with ``overwrite=False`` an existing file
    (even one that appears while writing) is left alone and :class:`OutputFileError` raised, as
    it is for a file that cannot be written."""
    if not overwrite and path.exists():
        raise OutputFileError(f"{path} already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            tmp.replace(path)
        else:
            os.link(tmp, path)  # fails if path exists: never replaces it
    except FileExistsError:
        raise OutputFileError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise OutputFileError(
            f"cannot write {path}: {exc.strerror or 'the system refused'}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _verdict_exit(report: apb.ComplianceReport) -> int:
    return ExitCode.OK if report.verdict == apb.VERDICT_COMPLIANT else ExitCode.NON_COMPLIANT


def _report_dict(report: apb.ComplianceReport) -> dict[str, Any]:
    return json_format.MessageToDict(report, preserving_proto_field_name=True)


def _write_html(
    path: Path, report: apb.ComplianceReport, stamp: OfflineStamp | None = None
) -> None:
    from verifier.audit.report_html import render_html

    _write_atomically(path, render_html(report, stamp=stamp).encode("utf-8"))


@click.group()
def audit() -> None:
    """Compliance reports, findings and evidence bundles."""


CSV_COLUMNS = (
    "lab_id",
    "bucket_start_utc",
    "bucket_start_ns",
    "upper_bound_flop",
    "central_estimate_flop",
    "energy_flop",
    "attested_gpu_ms",
    "unattested_gpu_ms",
    "busy_gpu_ms",
    "energy_mj",
)


def _csv_rows(report: apb.ComplianceReport) -> list[list[str]]:
    return [
        [
            report.lab_id,
            format_time_ns(point.bucket_start_ns),
            str(point.bucket_start_ns),
            point.upper_bound_flop or "0",
            point.central_estimate_flop or "0",
            point.energy_flop or "0",
            str(point.attested_gpu_ms),
            str(point.unattested_gpu_ms),
            str(point.busy_gpu_ms),
            str(point.energy_mj),
        ]
        for point in report.series
    ]


def _write_csv(path: Path, reports: list[apb.ComplianceReport]) -> None:
    """The accounts by bucket of every report, one row per lab and bucket, exact integers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in reports:
        writer.writerows(_csv_rows(item))
    _write_atomically(path, buffer.getvalue().encode("utf-8"))


def _get_report(
    stub: apb_grpc.AuditServiceStub, lab: str, since: int, until: int
) -> apb.ComplianceReport:
    return stub.GetComplianceReport(
        apb.GetComplianceReportRequest(lab_id=lab, period_start_ns=since, period_end_ns=until),
        timeout=RPC_TIMEOUT_S,
    ).report


@audit.command("report")
@verifier_options
@click.option("--lab", default=None, help="The lab to report on.")
@click.option(
    "--all-labs", is_flag=True, help="Report on every lab this client may read, one after another."
)
@click.option("--since", type=TIME, default="-30d", show_default=True, help="Period start.")
@click.option("--until", type=TIME, default="now", show_default=True, help="Period end.")
@click.option("--tz", "zone", type=TZ, default=None, help="Print times in this zone (IANA name).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a self-contained HTML page with a chart to this file (one lab).",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the accounts by bucket as CSV (exact integers), every lab reported on.",
)
@click.pass_context
def report(
    ctx: click.Context,
    *,
    target: VerifierTarget,
    lab: str | None,
    all_labs: bool,
    since: int,
    until: int,
    zone: ZoneInfo | None,
    as_json: bool,
    html_path: Path | None,
    csv_path: Path | None,
) -> None:
    """The compliance report of a lab (or of every lab) for a period. Exit 0 if every verdict
    is compliant, 1 if not."""
    if until <= since:
        raise click.UsageError("--until must be after --since")
    if (lab is None) == (not all_labs):
        raise click.UsageError("give --lab LAB or --all-labs")
    if all_labs and html_path is not None:
        raise click.UsageError("--html writes one lab's page; give --lab with it")
    _check_output(html_path, "--html")
    _check_output(csv_path, "--csv")
    with open_channel(target) as channel:
        stub = apb_grpc.AuditServiceStub(channel)
        if all_labs:
            labs = [item.lab_id for item in stub.ListLabs(apb.ListLabsRequest()).labs]
        else:
            assert lab is not None
            labs = [lab]
        results = [_get_report(stub, name, since, until) for name in labs]
    if html_path is not None:
        _write_html(html_path, results[0])
    if csv_path is not None:
        _write_csv(csv_path, results)

    def show(timestamp_ns: int) -> str:
        return format_time(timestamp_ns, zone)

    texts = [render_text(item, show_time=show) for item in results]
    if all_labs:
        summary = ["all labs", *(f"  {_verdict_line(item)}" for item in results), ""]
        text = "\n".join(summary) + "\n".join(texts) if results else "no labs are registered"
    else:
        text = texts[0]
    if html_path is not None:
        text += f"\nHTML report written to {html_path}"
    if csv_path is not None:
        text += f"\nCSV accounts written to {csv_path}"
    if all_labs:
        emit({"reports": [_report_dict(item) for item in results]}, as_json, text)
        worst = max((_verdict_exit(item) for item in results), default=ExitCode.OK)
        ctx.exit(worst)
    emit(_report_dict(results[0]), as_json, text)
    ctx.exit(_verdict_exit(results[0]))


def _verdict_line(item: apb.ComplianceReport) -> str:
    verdict = apb.Verdict.Name(item.verdict).removeprefix("VERDICT_")
    return f"{lab_title(item)}: {verdict}{' (provisional)' if item.provisional else ''}"


_COMPARED: tuple[tuple[str, Callable[[apb.ComplianceReport], str]], ...] = (
    ("verdict", lambda r: apb.Verdict.Name(r.verdict).removeprefix("VERDICT_")),
    ("provisional", lambda r: str(r.provisional).lower()),
    ("policy", lambda r: f"{r.policy_id} v{r.policy_version}"),
    ("upper bound FLOP", lambda r: r.totals.upper_bound_flop or "0"),
    ("central estimate FLOP", lambda r: r.totals.central_estimate_flop or "0"),
    ("energy FLOP", lambda r: r.totals.energy_flop or "0"),
    ("energy mJ", lambda r: str(r.totals.energy_mj)),
    ("busy GPU-ms", lambda r: str(r.totals.busy_gpu_ms)),
    ("coverage ppm", lambda r: str(r.coverage.ratio_ppm)),
    ("attested GPU-ms", lambda r: str(r.coverage.attested_gpu_ms)),
    ("declared GPU-ms", lambda r: str(r.coverage.declared_gpu_ms)),
    ("gaps", lambda r: str(len(r.gaps))),
    ("findings", lambda r: str(len(r.findings))),
    ("nodes", lambda r: str(len(r.nodes))),
)


@audit.command("compare")
@verifier_options
@click.option("--lab", required=True, help="The lab.")
@click.option(
    "--first", type=(TIME, TIME), required=True, metavar="START END", help="The first period."
)
@click.option(
    "--second", type=(TIME, TIME), required=True, metavar="START END", help="The second period."
)
@click.option("--tz", "zone", type=TZ, default=None, help="Print times in this zone (IANA name).")
@click.option("--json", "as_json", is_flag=True, help="Print both reports and the changes as JSON.")
def compare(
    *,
    target: VerifierTarget,
    lab: str,
    first: tuple[int, int],
    second: tuple[int, int],
    zone: ZoneInfo | None,
    as_json: bool,
) -> None:
    """Compare a lab's reports over two periods: verdicts, totals, coverage, each rule's
    measured amount, side by side with the change (exact integers)."""
    for name, (start, end) in (("--first", first), ("--second", second)):
        if end <= start:
            raise click.BadParameter("END must be after START", param_hint=name)
    with open_channel(target) as channel:
        stub = apb_grpc.AuditServiceStub(channel)
        a = _get_report(stub, lab, *first)
        b = _get_report(stub, lab, *second)
    rows: list[dict[str, str]] = []
    for label, value in _COMPARED:
        rows.append(_compared_row(label, value(a), value(b)))
    rules_b = {rule.rule_id: rule for rule in b.rules}
    for rule in a.rules:
        other = rules_b.get(rule.rule_id)
        outcome = apb.RuleOutcome.Name(rule.outcome).removeprefix("RULE_OUTCOME_")
        if other is None:
            rows.append(_compared_row(f"rule {rule.rule_id}", f"{rule.measured} {rule.unit}", "-"))
            continue
        other_outcome = apb.RuleOutcome.Name(other.outcome).removeprefix("RULE_OUTCOME_")
        rows.append(
            _compared_row(f"rule {rule.rule_id} ({rule.unit})", rule.measured, other.measured)
        )
        rows.append(_compared_row(f"rule {rule.rule_id} outcome", outcome, other_outcome))
    for rule in b.rules:
        if rule.rule_id not in {r.rule_id for r in a.rules}:
            rows.append(_compared_row(f"rule {rule.rule_id}", "-", f"{rule.measured} {rule.unit}"))
    headers = ["", "FIRST", "SECOND", "CHANGE"]
    table = [headers] + [[r["what"], r["first"], r["second"], r["change"]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [
        f"lab {lab_title(a)}",
        f"first   {format_time(first[0], zone)} to {format_time(first[1], zone)}",
        f"second  {format_time(second[0], zone)} to {format_time(second[1], zone)}",
        "",
    ] + [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    emit(
        {"first": _report_dict(a), "second": _report_dict(b), "changes": rows},
        as_json,
        "\n".join(lines),
    )


def _compared_row(what: str, first: str, second: str) -> dict[str, str]:
    if first.lstrip("-").isdigit() and second.lstrip("-").isdigit():
        delta = int(second) - int(first)
        change = f"{delta:+d}" if delta else "="
    else:
        change = "=" if first == second else "changed"
    return {"what": what, "first": first, "second": second, "change": change}


@audit.command("analyse")
@click.argument(
    "inputs",
    metavar="FILE_OR_STATE_DIR...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, path_type=Path),
)
@click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The policy to evaluate (its lab id names the lab).",
)
@click.option(
    "--gpus",
    type=click.IntRange(min=1, max=4096),
    default=None,
    help="GPUs per node, for recordings without index or uuid column (default: from the rows).",
)
@click.option(
    "--gpu-model",
    default="",
    help='GPU model of recordings without a name column, e.g. "NVIDIA H100 80GB HBM3".',
)
@click.option(
    "--window-s",
    type=click.IntRange(min=1, max=3600),
    default=60,
    show_default=True,
    help="Window length a recording is cut into.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a self-contained HTML page with a chart to this file.",
)
@click.pass_context
def analyse_command(
    ctx: click.Context,
    *,
    inputs: tuple[Path, ...],
    policy_path: Path,
    gpus: int | None,
    gpu_model: str,
    window_s: int,
    as_json: bool,
    html_path: Path | None,
) -> None:
    """What-if audit of recorded nvidia-smi CSV logs or nodes' state directories (spools).

    The same evaluation and report as 'audit report', over data no verifier received: an
    UNATTESTED analysis, for sizing a policy or checking a lab's history before a pause. Each
    FILE is one node. Exit 0 if it would be compliant, 1 if not."""
    from verifier.accounting.policy import load_policy
    from verifier.audit.analysis import UNATTESTED, AnalysisSource, analyse

    _check_output(html_path, "--html")
    policy = load_policy(policy_path)
    sources = [AnalysisSource.for_path(path) for path in inputs]
    names = [source.node_name for source in sources if not source.is_spool]
    if len(set(names)) != len(names):
        raise click.UsageError("two recordings have the same file name; rename one (one per node)")
    result = analyse(sources, policy, gpus=gpus, gpu_model=gpu_model, window_s=window_s)
    if html_path is not None:
        from verifier.audit.report_html import render_html

        page = render_html(
            result.report,
            title=f"pausewatch what-if analysis: {result.report.lab_id}",
            analysis_notice=UNATTESTED,
            notes=result.notes,
        )
        _write_atomically(html_path, page.encode("utf-8"))
    lines = [f"*** {UNATTESTED} ***", ""]
    lines += [f"  {note}" for note in result.notes]
    lines += ["", render_text(result.report)]
    if html_path is not None:
        lines.append(f"\nHTML report written to {html_path}")
    emit(result.to_dict(), as_json, "\n".join(lines))
    ctx.exit(_verdict_exit(result.report))


def _finding_line(item: apb.LoggedFinding, zone: ZoneInfo | None = None) -> str:
    finding = item.finding
    kind = fpb.FindingKind.Name(finding.kind).removeprefix("FINDING_KIND_")
    severity = fpb.Severity.Name(finding.severity).removeprefix("SEVERITY_")
    node = bytes(finding.node_id).hex()[:16] or "-"
    when = format_time(finding.period_start_ns, zone)
    return f"#{item.log_index} {when} {kind} {severity} node {node}: {finding.summary}"


@audit.command("findings")
@verifier_options
@click.option("--lab", required=True, help="The lab.")
@click.option("--since", type=TIME, default=None, help="Only findings about time after this.")
@click.option("--until", type=TIME, default=None, help="Only findings about time before this.")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(
        [n.removeprefix("FINDING_KIND_").lower() for n in fpb.FindingKind.keys()[1:]]
    ),
    help="Only this kind (repeatable).",
)
@click.option(
    "--from-index",
    type=click.IntRange(min=1),
    default=None,
    help="Only findings at or after this log index (resume where an earlier run stopped).",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep streaming new findings until interrupted, reconnecting if the verifier restarts.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding.")
@click.option("--tz", "zone", type=TZ, default=None, help="Print times in this zone (IANA name).")
def findings(
    *,
    target: VerifierTarget,
    lab: str,
    since: int | None,
    until: int | None,
    kinds: tuple[str, ...],
    from_index: int | None,
    follow: bool,
    as_json: bool,
    zone: ZoneInfo | None,
) -> None:
    """List a lab's findings (by log index); with --follow, stream new ones as they come.

    --follow survives a verifier restart: it reconnects (backing off up to 5 s) and resumes after
    the last finding it printed, so nothing is skipped or printed twice. A run that stopped can
    resume with --from-index (the last printed index + 1)."""
    if since is not None and until is not None and until <= since:
        raise click.UsageError("--until must be after --since")
    kind_values = [fpb.FindingKind.Value("FINDING_KIND_" + k.upper()) for k in kinds]

    def show(item: apb.LoggedFinding) -> None:
        if kind_values and item.finding.kind not in kind_values:
            return
        if as_json:
            click.echo(
                json_format.MessageToJson(item, preserving_proto_field_name=True, indent=None)
            )
        else:
            click.echo(_finding_line(item, zone))

    shown = (from_index - 1) if from_index is not None else -1
    with open_channel(target) as channel:
        stub = apb_grpc.AuditServiceStub(channel)
        token = from_index or 0
        # Anything logged after this size is caught by the watch even if the listing misses it.
        size_before = (
            stub.GetCheckpoint(apb.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S).tree_size
            if follow
            else 0
        )
        while True:
            page = stub.ListFindings(
                apb.ListFindingsRequest(
                    lab_id=lab,
                    since_ns=since or 0,
                    until_ns=until or 0,
                    kinds=kind_values,
                    page_size=1000,
                    page_token=token,
                ),
                timeout=RPC_TIMEOUT_S,
            )
            for item in page.findings:
                if item.log_index > shown:
                    show(item)
                    shown = item.log_index
            token = page.next_page_token
            if not token:
                break
    if not follow:
        return
    # Continue after the last finding shown, or (none shown) from the log size taken before
    # listing; skip anything already shown.
    start = shown + 1 if shown >= 0 else max(1, size_before)
    backoff_s = 0.2
    while True:
        try:
            with open_channel(target) as channel:
                stream = apb_grpc.AuditServiceStub(channel).WatchFindings(
                    apb.WatchFindingsRequest(lab_id=lab, from_log_index=max(1, start))
                )
                try:
                    for item in stream:
                        backoff_s = 0.2
                        if item.log_index > shown:
                            show(item)
                            shown = item.log_index
                            start = shown + 1
                except KeyboardInterrupt:
                    stream.cancel()  # type: ignore[no-untyped-call]
                    return
        except grpc.RpcError as exc:
            code = getattr(exc, "code", lambda: None)()
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
            click.echo(
                f"the verifier went away ({code.name}); reconnecting, resuming at log index "
                f"{start}",
                err=True,
            )
        try:
            time.sleep(backoff_s)
        except KeyboardInterrupt:
            return
        backoff_s = min(5.0, backoff_s * 2)


@audit.command("export")
@verifier_options
@click.option("--lab", required=True, help="The lab.")
@click.option("--since", type=TIME, default="-30d", show_default=True, help="Period start.")
@click.option("--until", type=TIME, default="now", show_default=True, help="Period end.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The bundle file to write (never overwritten).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(
    *, target: VerifierTarget, lab: str, since: int, until: int, out_path: Path, as_json: bool
) -> None:
    """Export the evidence bundle of a lab and period (docs/bundle-format.md). Refuses to
    overwrite an existing file (exit 2)."""
    if until <= since:
        raise click.UsageError("--until must be after --since")
    if out_path.exists():
        raise OutputFileError(f"{out_path} already exists; refusing to overwrite it")
    _check_output(out_path, "--out")
    parts: list[bytes] = []
    total = -1
    offset = 0
    with open_channel(target) as channel:
        for chunk in apb_grpc.AuditServiceStub(channel).ExportBundle(
            apb.ExportBundleRequest(lab_id=lab, period_start_ns=since, period_end_ns=until),
            timeout=RPC_TIMEOUT_S,
        ):
            if chunk.offset != offset:
                raise VerificationError("the verifier sent the bundle's pieces out of order")
            parts.append(chunk.data)
            offset += len(chunk.data)
            total = chunk.total_size
    data = b"".join(parts)
    if len(data) != total:
        raise VerificationError(f"the bundle arrived with {len(data)} of {total} bytes")
    _write_atomically(out_path, data, overwrite=False)
    digest = hashlib.sha256(data).hexdigest()
    emit(
        {"path": str(out_path), "bytes": len(data), "sha256": digest},
        as_json,
        f"wrote {out_path} ({len(data)} bytes, sha256 {digest})\n"
        f"check it anywhere with: pausewatch audit verify-bundle {out_path} --log-key '<key>' "
        f"--expect-lab {lab} --expect-period {format_time_ns(since)} {format_time_ns(until)}",
    )


def _read_problem(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read, in words."""
    if isinstance(exc, UnicodeDecodeError):
        return f"it is not text (byte {exc.start} is not UTF-8)"
    return exc.strerror or "the system refused"


def _log_key(text: str | None, key_file: Path | None) -> str | None:
    """The pinned log key from ``--log-key`` or ``--log-key-file``; both only if they agree."""
    if key_file is None:
        return text
    try:
        from_file = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"cannot read {key_file}: {_read_problem(exc)}", param_hint="--log-key-file"
        ) from None
    if text is not None and text.strip() != from_file:
        raise click.UsageError(
            f"--log-key and --log-key-file ({key_file}) name different keys; give one"
        )
    return from_file


def _bad_key(text: str | None, key_file: Path | None) -> click.BadParameter:
    """A malformed pinned log key, naming where it came from."""
    if text is None and key_file is not None:
        return click.BadParameter(
            f"{key_file} does not hold a signed-note verifier key (<name>+<hash>+<key>)",
            param_hint="--log-key-file",
        )
    return click.BadParameter(
        "not a signed-note verifier key (<name>+<hash>+<key>)", param_hint="--log-key"
    )


def _sha256_hex(text: str | None) -> bytes | None:
    if text is None:
        return None
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise click.BadParameter(
            "a SHA-256 is 64 hexadecimal digits", param_hint="--expect-policy-sha256"
        )
    return bytes.fromhex(value)


@audit.command("verify-bundle")
@click.argument(
    "path", metavar="FILE", type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option("--log-key", default=None, help="Pin the verifier's log key (signed-note form).")
@click.option(
    "--log-key-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Read the pinned log key from a file.",
)
@click.option("--expect-lab", default=None, help="Fail unless the bundle is about this lab.")
@click.option(
    "--expect-period",
    type=(TIME, TIME),
    default=None,
    metavar="START END",
    help="Fail unless the bundle covers exactly this period (as given to audit export).",
)
@click.option(
    "--expect-policy-sha256",
    default=None,
    metavar="HEX",
    help="Fail unless the report is under the policy file with this SHA-256.",
)
@witness_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report recomputed offline as an HTML page.",
)
@click.pass_context
def verify_bundle_command(
    ctx: click.Context,
    *,
    path: Path,
    log_key: str | None,
    log_key_file: Path | None,
    expect_lab: str | None,
    expect_period: tuple[int, int] | None,
    expect_policy_sha256: str | None,
    witnesses: WitnessPolicy,
    as_json: bool,
    html_path: Path | None,
) -> None:
    """Re-verify an evidence bundle offline, trusting nothing but the log key.

    Exit 3 if anything fails, the bundle is not about what --expect-* says, or the recomputed
    report differs from the verifier's (each failure is named); otherwise 0 if the recomputed
    verdict is compliant, 1 if not."""
    from verifier.audit.bundle import BundleExpectations, verify_bundle

    if expect_period is not None and expect_period[1] <= expect_period[0]:
        raise click.BadParameter("END must be after START", param_hint="--expect-period")
    _check_output(html_path, "--html")
    expect = BundleExpectations(
        lab_id=expect_lab, period=expect_period, policy_sha256=_sha256_hex(expect_policy_sha256)
    )
    pinned = _log_key(log_key, log_key_file)
    if pinned is not None:
        try:
            parse_verifier_key(pinned)
        except KeyFileError:
            raise _bad_key(log_key, log_key_file) from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror or 'the system refused'}", param_hint="FILE"
        ) from None
    bundle_sha256 = hashlib.sha256(data).hexdigest()
    result = verify_bundle(
        data,
        pinned_log_key=pinned,
        expect=expect,
        witnesses=witnesses.verifiers,
        witness_threshold=witnesses.threshold,
    )
    offline = result.offline_report
    if html_path is not None and offline is not None:
        from verifier.audit.report_html import OfflineStamp

        _write_html(
            html_path,
            offline,
            OfflineStamp(
                bundle_sha256=bundle_sha256,
                log_key=result.log_key,
                checkpoint_tree_size=result.checkpoint_size,
                checkpoint_root_hex=result.checkpoint_root.hex(),
                verified=result.ok,
                problems=len(result.failures) + len(result.differences),
                log_key_pinned=result.log_key_pinned,
            ),
        )
    summary: dict[str, Any] = {
        "path": str(path),
        "bundle_sha256": bundle_sha256,
        "checkpoint_root_hash": result.checkpoint_root.hex(),
        "ok": result.ok,
        "lab_id": result.lab_id,
        "entries": result.entries,
        "attestations": result.attestations,
        "checkpoint_tree_size": result.checkpoint_size,
        "log_key": result.log_key,
        "log_key_pinned": result.log_key_pinned,
        "witnesses": result.witnesses,
        "failures": result.failures,
        "differences": result.differences,
        "warnings": result.warnings,
        "expected": {
            "lab_id": expect_lab,
            "period": list(expect_period) if expect_period is not None else None,
            "policy_sha256": expect_policy_sha256,
        },
        "verdict": apb.Verdict.Name(offline.verdict) if offline is not None else None,
        "agrees_with_server": offline is not None and not result.differences,
    }
    lines = [
        f"bundle {path}: lab {result.lab_id or '?'}, {result.entries} entries "
        f"({result.attestations} attestations), checkpoint of tree size "
        f"{result.checkpoint_size}"
    ]
    if witnesses.verifiers:
        lines.append(
            f"cosigned by {len(result.witnesses)} of the {len(witnesses.verifiers)} witnesses "
            f"named ({witnesses.threshold} required): {', '.join(result.witnesses) or 'none'}"
        )
    lines += [f"warning: {w}" for w in result.warnings]
    if result.ok and result.log_key_pinned:
        lines.append(
            "VERIFIED: signatures, checkpoint, every inclusion proof and every chain check out, "
            "and the report recomputed offline agrees with the verifier's figure for figure"
        )
        lines.append(
            f"verified from bundle sha256 {bundle_sha256} under log key {result.log_key} at "
            f"checkpoint {result.checkpoint_size} (root {result.checkpoint_root.hex()})"
        )
    elif result.ok:
        lines.append(
            "CONSISTENT WITH ITSELF ONLY (log key not pinned): checked against the log key the "
            "bundle names itself, under which signatures, checkpoint, every inclusion proof and "
            "every chain check out and the report recomputed offline agrees with the one in the "
            "bundle; anyone can make such a bundle under a key of their own, so this does not "
            "show it came from the regulator's verifier: pin its key with --log-key or "
            "--log-key-file"
        )
        lines.append(
            f"checked from bundle sha256 {bundle_sha256} under the bundle's own log key "
            f"{result.log_key} (not pinned) at checkpoint {result.checkpoint_size} (root "
            f"{result.checkpoint_root.hex()})"
        )
    else:
        lines += [f"FAILED: {f}" for f in result.failures]
        lines += [f"DIFFERS: {d}" for d in result.differences]
    if offline is not None and not as_json:
        lines += ["", "report recomputed offline:", render_text(offline)]
    emit(summary, as_json, "\n".join(lines))
    if not result.ok:
        ctx.exit(ExitCode.VERIFICATION_FAILED)
    assert offline is not None
    ctx.exit(_verdict_exit(offline))


@click.group("log")
def log_group() -> None:
    """The verifier's transparency log: checkpoints and proofs."""


def _checkpoint(
    stub: apb_grpc.AuditServiceStub,
    pinned: str | None,
    witnesses: WitnessPolicy,
    bad_key: click.BadParameter | None = None,
) -> tuple[Checkpoint, apb.GetCheckpointResponse, Ed25519NoteVerifier, list[str]]:
    """The verifier's latest checkpoint, verified: the log's signature under the pinned key (or
    the one the verifier sends, with a warning) and the witness quorum asked for. ``bad_key`` is
    the error for a malformed pinned key (default: one naming --log-key)."""
    response = stub.GetCheckpoint(apb.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
    warnings: list[str] = []
    verifier = _log_verifier(pinned, response.verifier_key, warnings, bad_key)
    checkpoint, _ = verify_witness_quorum(
        response.signed_note, verifier, witnesses.verifiers, witnesses.threshold
    )
    return checkpoint, response, verifier, warnings


def _log_verifier(
    pinned: str | None,
    sent: str,
    warnings: list[str],
    bad_key: click.BadParameter | None = None,
) -> Ed25519NoteVerifier:
    key = pinned
    if key is None:
        key = sent
        warnings.append("verified against the key the verifier itself sent; pin it with --log-key")
    try:
        return parse_verifier_key(key)
    except KeyFileError:
        if pinned is None:
            raise VerificationError("the verifier sent a malformed log key") from None
        raise bad_key or _bad_key(pinned, None) from None


@log_group.command("checkpoint")
@verifier_options
@click.option("--log-key", default=None, help="Pin the log key (signed-note form).")
@witness_options
@click.option(
    "--save",
    "save_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the signed note, exactly as received, to this file (for --consistency-from).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def checkpoint_command(
    *,
    target: VerifierTarget,
    log_key: str | None,
    witnesses: WitnessPolicy,
    save_path: Path | None,
    as_json: bool,
) -> None:
    """Fetch the latest checkpoint and verify its signature (and the witness cosignatures asked
    for). Exit 3 if it does not verify."""
    _check_output(save_path, "--save")
    with open_channel(target) as channel:
        checkpoint, response, _, warnings = _checkpoint(
            apb_grpc.AuditServiceStub(channel), log_key, witnesses
        )
    if save_path is not None:
        _write_atomically(save_path, response.signed_note.encode("utf-8"))
    emit(
        {
            "tree_size": checkpoint.tree_size,
            "root_hash": checkpoint.root_hash.hex(),
            "origin": checkpoint.origin,
            "signed_note": response.signed_note,
            "verifier_key": response.verifier_key,
            "verified": True,
            "warnings": warnings,
        },
        as_json,
        "\n".join(
            [response.signed_note.rstrip("\n"), ""]
            + [f"warning: {w}" for w in warnings]
            + [f"verified: tree size {checkpoint.tree_size}, root {checkpoint.root_hash.hex()}"]
        ),
    )


def _load_saved_note(path: Path) -> str:
    """A saved checkpoint: a signed note as written by ``log checkpoint --save``, or the JSON of
    ``log checkpoint --json`` (its ``signed_note``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"cannot read {path}: {_read_problem(exc)}", param_hint="--consistency-from"
        ) from None
    if text.lstrip().startswith("{"):
        try:
            note = json.loads(text)["signed_note"]
        except (ValueError, KeyError, TypeError):
            raise click.BadParameter(
                f"{path} is JSON without a signed_note", param_hint="--consistency-from"
            ) from None
        if not isinstance(note, str):
            raise click.BadParameter(
                f"{path}: signed_note is not text", param_hint="--consistency-from"
            )
        return note
    return text


def _verify_saved(note: str, verifier: Ed25519NoteVerifier, what: str) -> Checkpoint:
    try:
        return verify_checkpoint(note, verifier)
    except NoteError as exc:
        raise NoteError(f"{what}: {exc.diagnostics()}") from None


def _prove_extends(
    stub: apb_grpc.AuditServiceStub, saved: Checkpoint, current: Checkpoint
) -> list[bytes]:
    """Fetch the consistency proof from ``saved`` to ``current`` and check it against both
    roots (never the root the verifier sends for the old size). Raises :class:`HistoryError`."""
    proof: list[bytes] = []
    if 0 < saved.tree_size < current.tree_size:
        proof = list(
            stub.GetConsistencyProof(
                apb.GetConsistencyProofRequest(size1=saved.tree_size, size2=current.tree_size),
                timeout=RPC_TIMEOUT_S,
            ).proof
        )
    verify_extends(saved, current, proof)
    return proof


@log_group.command("prove")
@verifier_options
@click.option("--index", type=click.IntRange(min=0), default=None, help="Prove this entry.")
@click.option(
    "--consistency-from",
    metavar="FILE|SIZE",
    default=None,
    help="Prove that the log extends this saved checkpoint (a file from `log checkpoint --save` "
    "or `--json`); a bare size proves a prefix of that size without tying it to what you saw.",
)
@click.option("--log-key", default=None, help="Pin the log key (signed-note form).")
@witness_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prove(
    *,
    target: VerifierTarget,
    index: int | None,
    consistency_from: str | None,
    log_key: str | None,
    witnesses: WitnessPolicy,
    as_json: bool,
) -> None:
    """Print an inclusion (--index) or consistency (--consistency-from) proof against the latest
    signed checkpoint, verified here. Exit 3 if it does not verify, or if the log no longer
    extends the saved checkpoint (a fork or a rollback: the line says what differs)."""
    if (index is None) == (consistency_from is None):
        raise click.UsageError("give exactly one of --index and --consistency-from")
    with open_channel(target) as channel:
        stub = apb_grpc.AuditServiceStub(channel)
        checkpoint, _, log_verifier, warnings = _checkpoint(stub, log_key, witnesses)
        size = checkpoint.tree_size
        if index is not None:
            if index >= size:
                raise click.BadParameter(
                    f"the latest checkpoint has {size} entries", param_hint="--index"
                )
            inclusion = stub.GetInclusionProof(
                apb.GetInclusionProofRequest(leaf_index=index, tree_size=size),
                timeout=RPC_TIMEOUT_S,
            )
            leaf = merkle.leaf_hash(inclusion.entry)
            if leaf != inclusion.leaf_hash:
                raise ProofError("the entry does not hash to the leaf hash the verifier sent")
            proof = list(inclusion.proof)
            merkle.verify_inclusion(index, size, leaf, proof, checkpoint.root_hash)
            result: dict[str, Any] = {
                "kind": "inclusion",
                "leaf_index": index,
                "tree_size": size,
                "leaf_hash": leaf.hex(),
                "proof": [h.hex() for h in proof],
                "root_hash": checkpoint.root_hash.hex(),
                "entry_sha256": hashlib.sha256(inclusion.entry).hexdigest(),
                "verified": True,
            }
            text = (
                f"entry {index} is in the log of size {size} (root {checkpoint.root_hash.hex()})\n"
                f"leaf hash {leaf.hex()}\n"
                + "\n".join(f"  proof[{i}] {h.hex()}" for i, h in enumerate(proof))
            )
        else:
            assert consistency_from is not None
            saved = _saved_checkpoint(stub, consistency_from, log_verifier, size, warnings)
            try:
                proof = _prove_extends(stub, saved, checkpoint)
            except HistoryError as exc:
                emit(
                    {
                        "kind": "consistency",
                        "verified": False,
                        "problem": "rollback" if isinstance(exc, RollbackError) else "fork",
                        "error": exc.diagnostics(),
                        "saved_tree_size": saved.tree_size,
                        "saved_root_hash": saved.root_hash.hex(),
                        "tree_size": size,
                        "root_hash": checkpoint.root_hash.hex(),
                        "warnings": warnings,
                    },
                    as_json,
                    "\n".join([*(f"warning: {w}" for w in warnings), exc.diagnostics()]),
                )
                raise click.exceptions.Exit(ExitCode.VERIFICATION_FAILED) from None
            result = {
                "kind": "consistency",
                "size1": saved.tree_size,
                "size2": size,
                "root1": saved.root_hash.hex(),
                "root2": checkpoint.root_hash.hex(),
                "proof": [h.hex() for h in proof],
                "verified": True,
            }
            text = (
                f"the log of size {saved.tree_size} (root {saved.root_hash.hex()}) is a prefix "
                f"of the log of size {size} (root {checkpoint.root_hash.hex()})\n"
                + "\n".join(f"  proof[{i}] {h.hex()}" for i, h in enumerate(proof))
            )
    result["warnings"] = warnings
    emit(result, as_json, "\n".join([*(f"warning: {w}" for w in warnings), text, "verified"]))


def _saved_checkpoint(
    stub: apb_grpc.AuditServiceStub,
    value: str,
    log_verifier: Ed25519NoteVerifier,
    size: int,
    warnings: list[str],
) -> Checkpoint:
    """The checkpoint to prove consistency from: a saved note (verified), or for a bare size the
    root the verifier states for it now (which proves only that it is a prefix)."""
    if value.isdigit() and not Path(value).exists():
        size1 = int(value)
        if size1 < 1:
            raise click.BadParameter("a size must be at least 1", param_hint="--consistency-from")
        warnings.append(
            "a bare size is checked against the root the verifier states for it now; save "
            "checkpoints (log checkpoint --save) and pass the file to detect a rewritten history"
        )
        if size1 > size:
            raise RollbackError(
                f"ROLLBACK: the log is at size {size}, smaller than the size {size1} given: "
                f"{size1 - size} entries have disappeared"
            )
        root1 = stub.GetConsistencyProof(
            apb.GetConsistencyProofRequest(size1=size1, size2=size), timeout=RPC_TIMEOUT_S
        ).root1
        if len(root1) != merkle.HASH_SIZE:
            raise ProofError("the verifier sent a root that is not 32 bytes")
        return Checkpoint(log_verifier.name, size1, root1)
    note = _load_saved_note(Path(value))
    try:  # the shape first: a file that is not a checkpoint note at all is the user's error
        Checkpoint.from_text(split_note(note)[0])
    except NoteError as exc:
        raise click.BadParameter(
            f"{value} is not a saved checkpoint (a signed note written by log checkpoint "
            f"--save, or its --json): {exc.diagnostics()}",
            param_hint="--consistency-from",
        ) from None
    return _verify_saved(note, log_verifier, f"the saved checkpoint {value}")


# --- watch: remember every checkpoint seen --------------------------------------------------------

_SEEN_PREFIX = "checkpoint-"
_REJECTED_PREFIX = "rejected-"


def _seen_name(checkpoint: Checkpoint) -> str:
    return f"{_SEEN_PREFIX}{checkpoint.tree_size:020d}-{checkpoint.root_hash.hex()[:16]}.note"


def _last_seen(directory: Path, verifier: Ed25519NoteVerifier) -> tuple[Checkpoint, Path] | None:
    """The largest checkpoint kept in ``directory``, verified again."""
    kept = sorted(directory.glob(f"{_SEEN_PREFIX}*.note"))
    if not kept:
        return None
    last = kept[-1]
    note = last.read_text(encoding="utf-8")
    return _verify_saved(note, verifier, f"the kept checkpoint {last}"), last


def _alarm(result: dict[str, Any], as_json: bool, text: str) -> None:
    """A watch's FORK, ROLLBACK or STALLED: the text once, on stderr (cron mails stderr even when
    stdout is dropped); with --json the result on stdout too, and the text on stderr."""
    if as_json:
        emit(result, True, "")
    click.echo(text, err=True)


@click.command("watch")
@verifier_options
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where every checkpoint seen is kept (created if missing).",
)
@click.option("--log-key", default=None, help="Pin the log key (signed-note form).")
@click.option(
    "--log-key-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Read the pinned log key from a file.",
)
@witness_options
@click.option(
    "--max-unchanged-s",
    type=click.IntRange(min=1),
    default=None,
    help="Fail (exit 3, STALLED) if the log has not grown for longer than this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def watch_command(
    ctx: click.Context,
    *,
    target: VerifierTarget,
    directory: Path,
    log_key: str | None,
    log_key_file: Path | None,
    witnesses: WitnessPolicy,
    max_unchanged_s: int | None,
    as_json: bool,
) -> None:
    """Fetch the latest checkpoint, check that the log extends the last one kept in --dir, and
    keep it. Exit 0 if it does, 3 on a fork or rollback (the checkpoint is kept as evidence
    under rejected-*), so that cron mails the line. Run it regularly."""
    pinned = _log_key(log_key, log_key_file)
    if pinned is None:
        raise click.UsageError("pin the log key: --log-key or --log-key-file")
    directory.mkdir(parents=True, exist_ok=True)
    with open_channel(target) as channel:
        stub = apb_grpc.AuditServiceStub(channel)
        current, response, verifier, warnings = _checkpoint(
            stub, pinned, witnesses, _bad_key(log_key, log_key_file)
        )
        last = _last_seen(directory, verifier)
        result: dict[str, Any] = {
            "tree_size": current.tree_size,
            "root_hash": current.root_hash.hex(),
            "previous_tree_size": None if last is None else last[0].tree_size,
            "previous_root_hash": None if last is None else last[0].root_hash.hex(),
            "warnings": warnings,
        }
        problem: HistoryError | None = None
        if last is not None:
            try:
                _prove_extends(stub, last[0], current)
            except HistoryError as exc:
                problem = exc
    note = response.signed_note.encode("utf-8")
    if problem is not None:
        kind = "rollback" if isinstance(problem, RollbackError) else "fork"
        evidence = directory / (
            f"{_REJECTED_PREFIX}{time.time_ns()}-{kind}-{current.tree_size:020d}.note"
        )
        _write_atomically(evidence, note)
        assert last is not None
        result |= {
            "status": kind,
            "consistent": False,
            "error": problem.diagnostics(),
            "kept": str(evidence),
            "compared_with": str(last[1]),
        }
        _alarm(result, as_json, f"{problem.diagnostics()}\nthe checkpoint is kept in {evidence}")
        ctx.exit(ExitCode.VERIFICATION_FAILED)
    path = directory / _seen_name(current)
    if last is not None and last[0] == current:
        # Kept when first seen: the file's age is how long the log has stood still.
        unchanged_s = max(0, int(time.time() - last[1].stat().st_mtime))
        result["unchanged_for_s"] = unchanged_s
        if max_unchanged_s is not None and unchanged_s > max_unchanged_s:
            stalled = (
                f"STALLED: the log has stayed at tree size {current.tree_size} (root "
                f"{current.root_hash.hex()}) for {unchanged_s} s, more than {max_unchanged_s} s: "
                "a verifier that stopped appending, or one showing this reader an old checkpoint"
            )
            result |= {"status": "stalled", "consistent": True, "error": stalled}
            _alarm(result, as_json, stalled)
            ctx.exit(ExitCode.VERIFICATION_FAILED)
        status = "unchanged"
        line = (
            f"unchanged for {unchanged_s} s: tree size {current.tree_size}, root "
            f"{current.root_hash.hex()}"
        )
    else:
        _write_atomically(path, note)
        status = "first" if last is None else "consistent"
        line = (
            f"first checkpoint kept: tree size {current.tree_size}, root {current.root_hash.hex()}"
            if last is None
            else f"consistent: the log grew from {last[0].tree_size} to {current.tree_size} "
            f"entries and extends the checkpoint kept before (root {current.root_hash.hex()})"
        )
    result |= {"status": status, "consistent": True, "kept": str(path)}
    emit(result, as_json, "\n".join([*(f"warning: {w}" for w in warnings), line]))


audit.add_command(watch_command)
log_group.add_command(watch_command)


@log_group.command("key")
@click.option(
    "--public-key",
    "public_key_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="The log key's public half (the NAME.pub that keygen wrote).",
)
@click.option("--origin", default=None, help="The log's origin (log.origin in the config).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Take the origin and key from a verifier config instead (on the verifier's host).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
def key_command(
    public_key_path: Path | None, origin: str | None, config_path: Path | None, as_json: bool
) -> None:
    """Print the log's signed-note verifier key again (what auditors pin with --log-key), from
    the public key file and the origin, or from the verifier's config. Needs no verifier."""
    from attest import keys, note

    if config_path is not None:
        if public_key_path is not None or origin is not None:
            raise click.UsageError("give --config, or --public-key with --origin, not both")
        from verifier.config import load_config

        config = load_config(config_path)
        name = config.log.origin
        raw = keys.raw_public_key(keys.load_private_key(config.log.signing_key).public_key())
        source = f"{config_path} (log.signing_key {config.log.signing_key})"
    else:
        if public_key_path is None or origin is None:
            raise click.UsageError("give --public-key and --origin (or --config)")
        if not note.is_valid_key_name(origin):
            raise click.BadParameter(
                "an origin has no spaces, no '+' and no control characters", param_hint="--origin"
            )
        name = origin
        raw = keys.raw_public_key(keys.load_public_key(public_key_path))
        source = str(public_key_path)
    vkey = note.format_verifier_key(name, raw)
    emit(
        {"note_verifier_key": vkey, "origin": name, "key_id": keys.key_id_from_raw(raw).hex()},
        as_json,
        f"{vkey}\n(from {source}; pin it with --log-key)",
    )
