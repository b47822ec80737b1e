"""The declared-threshold policy file: TOML, versioned, validated with errors that name the key.

    policy = load_policy("docs/policies/eu-ai-act.toml")
    policy.policy_id, policy.version, policy.digest.hex()      # what a report cites
    for rule in policy.rules:
        print(describe_rule(rule))                           # one line in words
    validate_for_buckets(policy, bucket_ns=60_000_000_000)   # [] when every window fits

A policy is the lab's declared thresholds (ADR 0001, "Rules"; docs/policy.md):

    format_version = 1
    policy_id = "eu-ai-act"
    version = 3
    lab_id = "example-lab"

    [defaults]
    figure = "upper_bound"            # or "central_estimate" or "energy"

    [[rules]]
    id = "cumulative-90d"
    kind = "cumulative_flop"
    window = "90d"
    limit_flop = "1e25"

Durations are ``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or an integer number of seconds; FLOP
amounts are TOML integers or strings that denote an integer exactly (``"1e25"``, ``"10^25"``,
``"10**25"``, ``"3.5e24"``, ``"1_000_000"``). Nothing is ever a float: TOML floats are parsed as
decimals and refused, with a hint to quote them. Every error is a :class:`ConfigError` whose message
starts with the file and the key path, e.g.
``policy.toml: rules[2].window: "30x" is not a duration (use e.g. "30d", "12h", "90s")``. Rule
positions in key paths count from 0. docs/policy.md documents every key.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, TypeVar

from attest.errors import ConfigError
from attest.ids import is_valid_lab_id
from verifier.accounting.accounts import Figure

FORMAT_VERSION = 1
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
PPM = 1_000_000
MAX_RULES = 256
MAX_DESCRIPTION = 2_000
MAX_DURATION_NS = 3_650 * 86_400 * NS_PER_S
"""Ten years: longer windows are a typo, and every duration stays far inside int64 ns."""
MAX_FLOP_EXPONENT = 60
MAX_AMOUNT = 10**MAX_FLOP_EXPONENT
"""The largest FLOP (or FLOP/s) limit a policy may state."""
MAX_VERSION = 2**63 - 1

_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
_MAX_ID = 64
_DURATION = re.compile(r"([0-9]+)([dhms])")
_UNIT_NS = {"d": 86_400 * NS_PER_S, "h": 3_600 * NS_PER_S, "m": 60 * NS_PER_S, "s": NS_PER_S}
_DIGITS = re.compile(r"[0-9]+(?:_[0-9]+)*")
_SCIENTIFIC = re.compile(r"([0-9]+)(?:\.([0-9]+))?[eE]\+?([0-9]+)")
_POWER = re.compile(r"([0-9]+)\s*(?:\^|\*\*)\s*([0-9]+)")
_PERCENT = re.compile(r"([0-9]{1,3})(?:\.([0-9]{1,4}))?\s*%")
_DURATION_HINT = '(use e.g. "30d", "12h", "90m", "45s", or an integer number of seconds)'
_AMOUNT_HINT = '(use an integer, or a string such as "1e25", "10^25", "3.5e24" or "1_000")'


_T = TypeVar("_T")


class RuleKind(StrEnum):
    """The kind of a rule (the ``kind`` key)."""

    CUMULATIVE_FLOP = "cumulative_flop"
    SUSTAINED_RATE = "sustained_rate"
    COVERAGE = "coverage"
    MAX_GAP = "max_gap"
    TRAINING_SIGNATURE = "training_signature"
    TPM_ROOTED = "tpm_rooted"


class OnDetect(StrEnum):
    """What a detected training signature does to the verdict."""

    VIOLATION = "violation"
    """It is a violation of the policy (the default)."""
    FINDING = "finding"
    """It is reported with its evidence but does not count towards the verdict."""


@dataclass(frozen=True, slots=True)
class CumulativeFlopRule:
    """At most ``limit_flop`` of ``figure`` in any ``window_ns``-long run of buckets."""

    kind: ClassVar[RuleKind] = RuleKind.CUMULATIVE_FLOP
    rule_id: str
    window_ns: int
    limit_flop: int
    figure: Figure


@dataclass(frozen=True, slots=True)
class SustainedRateRule:
    """Lab-wide ``figure`` over any ``interval_ns`` at most ``limit_flop_per_s`` on average."""

    kind: ClassVar[RuleKind] = RuleKind.SUSTAINED_RATE
    rule_id: str
    interval_ns: int
    limit_flop_per_s: int
    figure: Figure


@dataclass(frozen=True, slots=True)
class CoverageRule:
    """Attested declared GPU-time at least ``min_ratio_ppm`` of declared GPU-time."""

    kind: ClassVar[RuleKind] = RuleKind.COVERAGE
    rule_id: str
    min_ratio_ppm: int


@dataclass(frozen=True, slots=True)
class MaxGapRule:
    """No node's gap longer than ``max_gap_ns``."""

    kind: ClassVar[RuleKind] = RuleKind.MAX_GAP
    rule_id: str
    max_gap_ns: int


@dataclass(frozen=True, slots=True)
class TrainingSignatureRule:
    """At least ``min_gpus`` GPUs at ``min_busy_percent`` busy or more for ``min_duration_ns``.

    GPUs are counted per bucket: a GPU counts when its attested time at that busy level covers at
    least ``100 - tolerance_percent`` % of the bucket (so a few lost samples never hide a GPU),
    i.e. the bucket's GPU-time at the level / ((100 - tolerance) % x bucket), rounded down.
    """

    kind: ClassVar[RuleKind] = RuleKind.TRAINING_SIGNATURE
    rule_id: str
    min_gpus: int
    min_busy_percent: int
    min_duration_ns: int
    on_detect: OnDetect
    tolerance_percent: int = 10


@dataclass(frozen=True, slots=True)
class TpmRootedRule:
    """Every window of every node is covered by a valid TPM quote (verifier/tpm.py): a node that
    is not TPM-enrolled, or a window whose quote was refused or missing, is unattested evidence."""

    kind: ClassVar[RuleKind] = RuleKind.TPM_ROOTED
    rule_id: str


Rule = (
    CumulativeFlopRule
    | SustainedRateRule
    | CoverageRule
    | MaxGapRule
    | TrainingSignatureRule
    | TpmRootedRule
)


class LateEvidence(StrEnum):
    """How a policy counts late evidence: windows that reached the verifier long after they ended,
    or whose nonce was too old to show they were signed near their time
    (``[defaults] late_evidence``)."""

    GAP = "gap"
    """The default: like a gap. The late windows' time is not covered and joins the node's
    gaps (the max-gap rule sees the whole stretch), bounded by the energy their counters show; the
    compute they attest still counts."""
    ATTESTED = "attested"
    """Like evidence that arrived in time (the late windows are still named in the report)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded, valid policy. ``raw`` is the file's bytes exactly; ``digest`` their SHA-256."""

    policy_id: str
    version: int
    lab_id: str
    description: str
    default_figure: Figure
    rules: tuple[Rule, ...]
    source: str
    raw: bytes = field(repr=False)
    late_evidence: LateEvidence = LateEvidence.GAP
    digest: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.sha256(self.raw).digest())


# --- loading -------------------------------------------------------------------------------------


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises :class:`ConfigError` naming the file and key."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the policy file ({exc.strerror})") from None
    return load_policy_bytes(raw, source)


def load_policy_bytes(raw: bytes, source: str = "policy.toml") -> Policy:
    """Validate policy file bytes; ``source`` names the file in error messages."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 (byte {exc.start})") from None
    try:
        # parse_float keeps TOML floats exact (and out of float): they are refused below.
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    return _Parser(source).policy(document, raw)


class _Parser:
    """Walks a parsed TOML document; every error names ``source`` and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {message}")

    def policy(self, document: dict[str, object], raw: bytes) -> Policy:
        self.keys(
            "a policy",
            "",
            document,
            required=("format_version", "policy_id", "version", "lab_id", "rules"),
            optional=("description", "defaults"),
        )
        format_version = self.integer("format_version", document["format_version"])
        if format_version != FORMAT_VERSION:
            raise self.error(
                "format_version",
                f"is {format_version}; this verifier reads format_version = {FORMAT_VERSION}",
            )
        policy_id = self.identifier("policy_id", document["policy_id"])
        version = self.integer("version", document["version"])
        if not 1 <= version <= MAX_VERSION:
            raise self.error("version", f"must be a positive integer, got {version}")
        lab_id = self.string("lab_id", document["lab_id"])
        if not is_valid_lab_id(lab_id):
            raise self.error(
                "lab_id",
                f"{_show(lab_id)} is not a lab id (lowercase letters, digits, '.', '_', '-'; "
                "1 to 64 characters)",
            )
        description = ""
        if "description" in document:
            description = self.string("description", document["description"])
            if len(description) > MAX_DESCRIPTION:
                raise self.error("description", f"is longer than {MAX_DESCRIPTION} characters")
        default_figure = Figure.UPPER_BOUND
        late_evidence = LateEvidence.GAP
        if "defaults" in document:
            defaults = self.table("defaults", document["defaults"])
            self.keys(
                "defaults",
                "defaults.",
                defaults,
                required=(),
                optional=("figure", "late_evidence"),
            )
            if "figure" in defaults:
                default_figure = self.figure("defaults.figure", defaults["figure"])
            if "late_evidence" in defaults:
                text = self.string("defaults.late_evidence", defaults["late_evidence"])
                try:
                    late_evidence = LateEvidence(text)
                except ValueError:
                    raise self.error(
                        "defaults.late_evidence",
                        f"{_show(text)} is not a way to count late evidence "
                        f"(one of {_choices(LateEvidence)})",
                    ) from None
        rules_value = document["rules"]
        if not isinstance(rules_value, list) or not all(isinstance(r, dict) for r in rules_value):
            raise self.error("rules", "must be an array of tables, written [[rules]]")
        if not rules_value:
            raise self.error("rules", "a policy needs at least one rule")
        if len(rules_value) > MAX_RULES:
            raise self.error("rules", f"more than {MAX_RULES} rules")
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for index, table in enumerate(rules_value):
            rule = self.rule(f"rules[{index}]", table, default_figure)
            if rule.rule_id in seen:
                raise self.error(
                    f"rules[{index}].id",
                    f"{_show(rule.rule_id)} is already the id of rules[{seen[rule.rule_id]}]",
                )
            seen[rule.rule_id] = index
            rules.append(rule)
        return Policy(
            policy_id=policy_id,
            version=version,
            lab_id=lab_id,
            description=description,
            default_figure=default_figure,
            rules=tuple(rules),
            source=self.source,
            raw=raw,
            late_evidence=late_evidence,
        )

    def rule(self, path: str, table: dict[str, object], default_figure: Figure) -> Rule:
        if "kind" not in table:
            raise self.error(f"{path}.kind", f"missing (one of {_choices(RuleKind)})")
        kind_text = self.string(f"{path}.kind", table["kind"])
        try:
            kind = RuleKind(kind_text)
        except ValueError:
            raise self.error(
                f"{path}.kind",
                f"{_show(kind_text)} is not a rule kind (one of {_choices(RuleKind)})",
            ) from None
        at = f"{path}."
        match kind:
            case RuleKind.CUMULATIVE_FLOP:
                self.keys(
                    f"a {kind} rule", at, table, ("id", "kind", "window", "limit_flop"), ("figure",)
                )
                return CumulativeFlopRule(
                    rule_id=self.identifier(at + "id", table["id"]),
                    window_ns=self.duration(at + "window", table["window"]),
                    limit_flop=self.amount(at + "limit_flop", table["limit_flop"]),
                    figure=self.figure(at + "figure", table.get("figure", default_figure)),
                )
            case RuleKind.SUSTAINED_RATE:
                self.keys(
                    f"a {kind} rule",
                    at,
                    table,
                    ("id", "kind", "interval", "limit_flop_per_s"),
                    ("figure",),
                )
                return SustainedRateRule(
                    rule_id=self.identifier(at + "id", table["id"]),
                    interval_ns=self.duration(at + "interval", table["interval"]),
                    limit_flop_per_s=self.amount(
                        at + "limit_flop_per_s", table["limit_flop_per_s"]
                    ),
                    figure=self.figure(at + "figure", table.get("figure", default_figure)),
                )
            case RuleKind.COVERAGE:
                self.keys(
                    f"a {kind} rule", at, table, ("id", "kind"), ("min_ratio", "min_ratio_ppm")
                )
                return CoverageRule(
                    rule_id=self.identifier(at + "id", table["id"]),
                    min_ratio_ppm=self.ratio(path, table),
                )
            case RuleKind.TPM_ROOTED:
                self.keys(f"a {kind} rule", at, table, ("id", "kind"), ())
                return TpmRootedRule(rule_id=self.identifier(at + "id", table["id"]))
            case RuleKind.MAX_GAP:
                self.keys(f"a {kind} rule", at, table, ("id", "kind", "max_gap"), ())
                return MaxGapRule(
                    rule_id=self.identifier(at + "id", table["id"]),
                    max_gap_ns=self.duration(at + "max_gap", table["max_gap"], allow_zero=True),
                )
            case RuleKind.TRAINING_SIGNATURE:
                self.keys(
                    f"a {kind} rule",
                    at,
                    table,
                    ("id", "kind", "min_gpus", "min_busy_percent", "min_duration"),
                    ("on_detect", "tolerance_percent"),
                )
                tolerance = self.integer(
                    at + "tolerance_percent", table.get("tolerance_percent", 10)
                )
                if not 0 <= tolerance <= 50:
                    raise self.error(
                        at + "tolerance_percent", f"is {tolerance}; it must be from 0 to 50"
                    )
                min_gpus = self.integer(at + "min_gpus", table["min_gpus"])
                if min_gpus < 1:
                    raise self.error(at + "min_gpus", f"must be at least 1, got {min_gpus}")
                busy = self.integer(at + "min_busy_percent", table["min_busy_percent"])
                if busy % 5 != 0 or not 5 <= busy <= 100:
                    raise self.error(
                        at + "min_busy_percent",
                        f"is {busy}; it must be a multiple of 5 from 5 to 100 (accounts keep "
                        "busy time in 5 % steps)",
                    )
                on_detect_text = self.string(
                    at + "on_detect", table.get("on_detect", OnDetect.VIOLATION.value)
                )
                try:
                    on_detect = OnDetect(on_detect_text)
                except ValueError:
                    raise self.error(
                        at + "on_detect",
                        f"{_show(on_detect_text)} is not one of {_choices(OnDetect)}",
                    ) from None
                return TrainingSignatureRule(
                    rule_id=self.identifier(at + "id", table["id"]),
                    min_gpus=min_gpus,
                    min_busy_percent=busy,
                    min_duration_ns=self.duration(at + "min_duration", table["min_duration"]),
                    on_detect=on_detect,
                    tolerance_percent=tolerance,
                )

    # --- keys and values --------------------------------------------------------------------------

    def keys(
        self,
        what: str,
        at: str,
        table: Mapping[str, object],
        required: tuple[str, ...],
        optional: tuple[str, ...],
    ) -> None:
        allowed = required + optional
        for key in table:
            if key not in allowed:
                raise self.error(
                    f"{at}{key}", f"unknown key ({what} takes {', '.join(allowed) or 'no keys'})"
                )
        for key in required:
            if key not in table:
                raise self.error(f"{at}{key}", f"missing ({what} needs {', '.join(required)})")

    def table(self, path: str, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(path, f"must be a table, got {_type(value)}")
        return value

    def string(self, path: str, value: object) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"must be a string, got {_type(value)}")
        return value

    def integer(self, path: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"must be an integer, got {_type(value)}")
        return value

    def identifier(self, path: str, value: object) -> str:
        text = self.string(path, value)
        if len(text) > _MAX_ID or _ID.fullmatch(text) is None:
            raise self.error(
                path,
                f"{_show(text)} is not an id (lowercase letters, digits, '.', '_', '-', starting "
                f"with a letter or digit; at most {_MAX_ID} characters)",
            )
        return text

    def figure(self, path: str, value: object) -> Figure:
        if isinstance(value, Figure):
            return value
        text = self.string(path, value)
        try:
            return Figure(text)
        except ValueError:
            raise self.error(
                path, f"{_show(text)} is not a compute figure (one of {_choices(Figure)})"
            ) from None

    def duration(self, path: str, value: object, *, allow_zero: bool = False) -> int:
        if isinstance(value, bool | Decimal):
            raise self.error(path, f"{_show(value)} is not a duration {_DURATION_HINT}")
        if isinstance(value, int):
            duration_ns = value * NS_PER_S
        elif isinstance(value, str):
            match = _DURATION.fullmatch(value.strip())
            if match is None:
                raise self.error(path, f"{_show(value)} is not a duration {_DURATION_HINT}")
            duration_ns = int(match.group(1)) * _UNIT_NS[match.group(2)]
        else:
            raise self.error(path, f"must be a duration {_DURATION_HINT}, got {_type(value)}")
        if duration_ns < 0 or (duration_ns == 0 and not allow_zero):
            raise self.error(path, f"{_show(value)} must be {'' if allow_zero else 'more than '}0")
        if duration_ns > MAX_DURATION_NS:
            raise self.error(path, f"{_show(value)} is longer than ten years")
        return duration_ns

    def amount(self, path: str, value: object) -> int:
        """A non-negative integer amount (FLOP or FLOP/s), exactly."""
        if isinstance(value, Decimal):
            raise self.error(
                path,
                f'{value} is a TOML float; write it as a string ("{_decimal_hint(value)}") or '
                "an integer, so that the limit is exact",
            )
        if isinstance(value, bool):
            raise self.error(path, f"must be an amount {_AMOUNT_HINT}, got a boolean")
        if isinstance(value, int):
            amount = value
        elif isinstance(value, str):
            parsed = parse_amount(value)
            if parsed is None:
                raise self.error(path, f"{_show(value)} is not an exact integer {_AMOUNT_HINT}")
            amount = parsed
        else:
            raise self.error(path, f"must be an amount {_AMOUNT_HINT}, got {_type(value)}")
        if amount < 0:
            raise self.error(path, f"must not be negative, got {amount}")
        if amount > MAX_AMOUNT:
            raise self.error(path, f"is more than 10^{MAX_FLOP_EXPONENT}")
        return amount

    def ratio(self, path: str, table: Mapping[str, object]) -> int:
        has_ratio, has_ppm = "min_ratio" in table, "min_ratio_ppm" in table
        if has_ratio == has_ppm:
            raise self.error(
                f"{path}.min_ratio",
                'give exactly one of min_ratio (a percentage such as "99.5%") and min_ratio_ppm',
            )
        if has_ppm:
            ppm = self.integer(f"{path}.min_ratio_ppm", table["min_ratio_ppm"])
            if not 0 <= ppm <= PPM:
                raise self.error(f"{path}.min_ratio_ppm", f"must be 0 to {PPM}, got {ppm}")
            return ppm
        value = table["min_ratio"]
        text = value if isinstance(value, str) else None
        match = None if text is None else _PERCENT.fullmatch(text.strip())
        if match is None:
            raise self.error(
                f"{path}.min_ratio",
                f'{_show(value)} is not a percentage (use a string such as "99%" or "99.5%")',
            )
        ppm = int(match.group(1)) * 10_000 + int((match.group(2) or "").ljust(4, "0"))
        if ppm > PPM:
            raise self.error(f"{path}.min_ratio", f"{_show(value)} is more than 100%")
        return ppm


def parse_amount(text: str) -> int | None:
    """The integer a FLOP string denotes exactly, or ``None``.

    >>> parse_amount("1e25") == parse_amount("10^25") == parse_amount("10**25") == 10**25
    True
    >>> parse_amount("3.5e24"), parse_amount("1.5e0")
    (3500000000000000000000000, None)
    """
    text = text.strip()
    if _DIGITS.fullmatch(text):
        return int(text.replace("_", ""))
    if match := _SCIENTIFIC.fullmatch(text):
        whole, fraction, exponent_text = match.group(1), match.group(2) or "", match.group(3)
        exponent = int(exponent_text) - len(fraction)
        if int(exponent_text) > MAX_FLOP_EXPONENT:
            return None
        mantissa = int(whole + fraction)
        if exponent >= 0:
            return mantissa * _power_of_ten(exponent)
        scale = _power_of_ten(-exponent)
        return mantissa // scale if mantissa % scale == 0 else None
    if match := _POWER.fullmatch(text):
        base, exponent = int(match.group(1)), int(match.group(2))
        if exponent > MAX_FLOP_EXPONENT or base > 10**MAX_FLOP_EXPONENT:
            return None
        result: int = base**exponent
        return result
    return None


def _power_of_ten(exponent: int) -> int:
    result: int = 10**exponent
    return result


# --- checks against verifier settings ------------------------------------------------------------


def validate_for_buckets(policy: Policy, bucket_ns: int) -> list[str]:
    """Errors that make ``policy`` unusable with accounts in buckets of ``bucket_ns``; [] if none.

    Rolling windows, rate intervals and training-signature durations are counted in whole buckets
    (ADR 0001), so each must be a multiple of the bucket width. ``max_gap`` is not: gaps are
    measured in nanoseconds, not buckets.
    """
    if bucket_ns <= 0:
        raise ValueError(f"bucket_ns must be positive, got {bucket_ns}")
    errors: list[str] = []
    width = format_duration_ns(bucket_ns)
    for index, rule in enumerate(policy.rules):
        checks: list[tuple[str, int]] = []
        match rule:
            case CumulativeFlopRule():
                checks.append(("window", rule.window_ns))
            case SustainedRateRule():
                checks.append(("interval", rule.interval_ns))
            case TrainingSignatureRule():
                checks.append(("min_duration", rule.min_duration_ns))
            case CoverageRule() | MaxGapRule() | TpmRootedRule():
                pass
        for key, value_ns in checks:
            if value_ns % bucket_ns != 0:
                errors.append(
                    f"{policy.source}: rules[{index}].{key}: {format_duration_ns(value_ns)} is not "
                    f"a whole number of {width} buckets"
                )
    return errors


# --- words ---------------------------------------------------------------------------------------


FIGURE_WORDS = {
    Figure.UPPER_BOUND: "upper-bound",
    Figure.CENTRAL_ESTIMATE: "central-estimate",
    Figure.ENERGY: "energy cross-check",
    Figure.SITE_ENERGY: "site energy nothing attested explains",
}


def describe_rule(rule: Rule) -> str:
    """The rule in words, on one line."""
    match rule:
        case CumulativeFlopRule():
            return (
                f"at most {format_flop(rule.limit_flop)} FLOP ({FIGURE_WORDS[rule.figure]}) in any "
                f"{format_duration_ns(rule.window_ns)} window"
            )
        case SustainedRateRule():
            return (
                f"at most {format_flop(rule.limit_flop_per_s)} FLOP/s "
                f"({FIGURE_WORDS[rule.figure]}) on average over any "
                f"{format_duration_ns(rule.interval_ns)} interval"
            )
        case CoverageRule():
            return (
                f"attested GPU-time at least {format_ppm(rule.min_ratio_ppm)} of declared GPU-time "
                "(unattested time is unknown, never paused)"
            )
        case MaxGapRule():
            return f"no node unattested for longer than {format_duration_ns(rule.max_gap_ns)}"
        case TpmRootedRule():
            return (
                "every node TPM-rooted: each window covered by a valid TPM quote (software-rooted "
                "evidence counts as unattested)"
            )
        case TrainingSignatureRule():
            effect = (
                "a violation" if rule.on_detect is OnDetect.VIOLATION else "a finding, not counted"
            )
            return (
                f"{rule.min_gpus} or more GPUs at least {rule.min_busy_percent}% busy for "
                f"{format_duration_ns(rule.min_duration_ns)} or longer is {effect} (a GPU counts "
                f"in a bucket when attested at that level for {100 - rule.tolerance_percent}% "
                "of it or more)"
            )


def rule_to_dict(rule: Rule) -> dict[str, object]:
    """The rule as JSON-ready data (amounts as decimal strings, durations in ns)."""
    data: dict[str, object] = {"id": rule.rule_id, "kind": rule.kind.value}
    match rule:
        case CumulativeFlopRule():
            data |= {
                "window_ns": rule.window_ns,
                "limit_flop": str(rule.limit_flop),
                "figure": rule.figure.value,
            }
        case SustainedRateRule():
            data |= {
                "interval_ns": rule.interval_ns,
                "limit_flop_per_s": str(rule.limit_flop_per_s),
                "figure": rule.figure.value,
            }
        case CoverageRule():
            data |= {"min_ratio_ppm": rule.min_ratio_ppm}
        case MaxGapRule():
            data |= {"max_gap_ns": rule.max_gap_ns}
        case TpmRootedRule():
            pass
        case TrainingSignatureRule():
            data |= {
                "min_gpus": rule.min_gpus,
                "min_busy_percent": rule.min_busy_percent,
                "min_duration_ns": rule.min_duration_ns,
                "on_detect": rule.on_detect.value,
                "tolerance_percent": rule.tolerance_percent,
            }
    data["description"] = describe_rule(rule)
    return data


def format_duration_ns(duration_ns: int) -> str:
    """A duration exactly, in days, hours, minutes and seconds: "30d", "1h 30m", "1.5s".

    >>> format_duration_ns(90 * 60 * 10**9), format_duration_ns(1_500_000_000)
    ('1h 30m', '1.5s')
    """
    if duration_ns < 0:
        return "-" + format_duration_ns(-duration_ns)
    if duration_ns == 0:
        return "0s"
    parts: list[str] = []
    rest = duration_ns
    for unit in ("d", "h", "m"):
        count, rest = divmod(rest, _UNIT_NS[unit])
        if count:
            parts.append(f"{count}{unit}")
    if rest:
        seconds, fraction = divmod(rest, NS_PER_S)
        text = str(seconds) if not fraction else f"{seconds}.{fraction:09d}".rstrip("0")
        parts.append(f"{text}s")
    return " ".join(parts)


def format_flop(amount: int) -> str:
    """An exact integer followed, from 1000 on, by its value in scientific notation for reading.

    The notation keeps three significant digits and is rounded *down* with integer arithmetic, so
    it never shows a figure as larger than it is (the exact digits decide every comparison).

    >>> format_flop(12345678901234567890), format_flop(10**25), format_flop(999)
    ('12345678901234567890 (1.23e19)', '10000000000000000000000000 (1.00e25)', '999')
    """
    if amount < 0:
        return "-" + format_flop(-amount)
    digits = str(amount)
    if len(digits) < 4:
        return digits
    return f"{digits} ({scientific(amount)})"


def scientific(amount: int) -> str:
    """``amount`` in scientific notation with three significant digits, rounded down."""
    if amount < 0:
        return "-" + scientific(-amount)
    digits = str(amount)
    exponent = len(digits) - 1
    head = digits[:3].ljust(3, "0")
    return f"{head[0]}.{head[1:]}e{exponent}"


def format_ppm(ppm: int) -> str:
    """Parts per million as an exact percentage: 995000 -> "99.5%"."""
    whole, fraction = divmod(ppm, 10_000)
    return f"{whole}%" if not fraction else f"{whole}.{fraction:04d}".rstrip("0") + "%"


def _decimal_hint(value: Decimal) -> str:
    sign, digits, exponent = value.normalize().as_tuple()
    mantissa = "".join(str(d) for d in digits)
    if not isinstance(exponent, int):
        return str(value)
    if len(mantissa) > 1:
        mantissa = f"{mantissa[0]}.{mantissa[1:]}"
    power = exponent + len(digits) - 1
    return f"{'-' if sign else ''}{mantissa}e{power}"


def _show(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _type(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        str: "a string",
        Decimal: "a float",
        list: "an array",
        dict: "a table",
    }
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a date or time"


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(member.value for member in enum)


def record_in_force(records: Sequence[tuple[int, _T]], at_ns: int) -> _T | None:
    """Of ``(effective_from_ns, record)`` pairs in the order they were logged, the last one in
    effect at ``at_ns``; before any is in effect, the first one (a period before any policy took
    effect is judged by the first policy, never by none); None if there are none."""
    current: _T | None = None
    for effective_from_ns, record in records:
        if effective_from_ns <= at_ns:
            current = record
    if current is None and records:
        current = records[0][1]
    return current
