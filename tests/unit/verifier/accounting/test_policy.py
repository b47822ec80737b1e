from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from attest import compute
from attest.errors import ConfigError
from tests.testdata import REPO_ROOT
from verifier.accounting.accounts import Figure
from verifier.accounting.policy import (
    CoverageRule,
    CumulativeFlopRule,
    MaxGapRule,
    OnDetect,
    SustainedRateRule,
    TrainingSignatureRule,
    describe_rule,
    format_duration_ns,
    format_flop,
    format_ppm,
    load_policy,
    load_policy_bytes,
    parse_amount,
    rule_to_dict,
    scientific,
    validate_for_buckets,
)

EXAMPLES = sorted((REPO_ROOT / "docs" / "policies").glob("*.toml"))
S = 1_000_000_000

HEADER = """\
format_version = 1
policy_id = "test-policy"
version = 2
lab_id = "lab-a"
"""

RULES = """\
[[rules]]
id = "cumulative"
kind = "cumulative_flop"
window = "30d"
limit_flop = "1e25"

[[rules]]
id = "rate"
kind = "sustained_rate"
interval = "1h"
limit_flop_per_s = 100_000

[[rules]]
id = "coverage"
kind = "coverage"
min_ratio = "99.5%"

[[rules]]
id = "gap"
kind = "max_gap"
max_gap = 900

[[rules]]
id = "signature"
kind = "training_signature"
min_gpus = 8
min_busy_percent = 55
min_duration = "2h"
"""


def load(text: str) -> object:
    return load_policy_bytes(text.encode(), "policy.toml")


def test_a_full_policy_loads_with_every_value_in_its_unit() -> None:
    policy = load_policy_bytes((HEADER + RULES).encode(), "policy.toml")
    assert (policy.policy_id, policy.version, policy.lab_id) == ("test-policy", 2, "lab-a")
    assert policy.default_figure is Figure.UPPER_BOUND
    assert policy.description == ""
    assert policy.rules == (
        CumulativeFlopRule("cumulative", 30 * 86_400 * S, 10**25, Figure.UPPER_BOUND),
        SustainedRateRule("rate", 3_600 * S, 100_000, Figure.UPPER_BOUND),
        CoverageRule("coverage", 995_000),
        MaxGapRule("gap", 900 * S),
        TrainingSignatureRule("signature", 8, 55, 7_200 * S, OnDetect.VIOLATION),
    )
    assert policy.raw == (HEADER + RULES).encode()
    assert policy.digest == hashlib.sha256(policy.raw).digest()
    assert policy.source == "policy.toml"


def test_defaults_figure_applies_unless_a_rule_names_one() -> None:
    text = HEADER + '[defaults]\nfigure = "energy"\n' + RULES
    text += '[[rules]]\nid = "central"\nkind = "cumulative_flop"\nwindow = "1d"\n'
    text += 'limit_flop = 5\nfigure = "central_estimate"\n'
    policy = load_policy_bytes(text.encode())
    figures = [
        r.figure for r in policy.rules if isinstance(r, CumulativeFlopRule | SustainedRateRule)
    ]
    assert figures == [Figure.ENERGY, Figure.ENERGY, Figure.CENTRAL_ESTIMATE]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_policy_loads_and_fits_minute_buckets(path: Path) -> None:
    policy = load_policy(path)
    assert policy.source == str(path)
    assert policy.raw == path.read_bytes()
    assert validate_for_buckets(policy, 60 * S) == []
    kinds = {rule.kind.value for rule in policy.rules}
    assert {"cumulative_flop", "coverage", "max_gap", "training_signature"} <= kinds
    coverage = [r for r in policy.rules if isinstance(r, CoverageRule)]
    assert coverage
    assert coverage[0].min_ratio_ppm >= 990_000


def test_examples_carry_the_reference_thresholds() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"eu-ai-act.toml", "us-eo-14110.toml", "ca-sb53.toml"} <= names

    def limits(name: str) -> set[int]:
        policy = load_policy(REPO_ROOT / "docs" / "policies" / name)
        return {r.limit_flop for r in policy.rules if isinstance(r, CumulativeFlopRule)}

    assert limits("eu-ai-act.toml") == {compute.EU_AI_ACT_SYSTEMIC_RISK_FLOP}
    assert limits("us-eo-14110.toml") == {compute.US_EO_14110_MODEL_FLOP}
    assert limits("ca-sb53.toml") == {compute.CA_SB53_FRONTIER_MODEL_FLOP}
    us = load_policy(REPO_ROOT / "docs" / "policies" / "us-eo-14110.toml")
    rates = [r.limit_flop_per_s for r in us.rules if isinstance(r, SustainedRateRule)]
    assert rates == [compute.US_EO_14110_CLUSTER_FLOPS_PER_S]


def replace_rule_line(old: str, new: str) -> str:
    assert old in RULES
    return HEADER + RULES.replace(old, new, 1)


BAD = {
    "bad duration": (
        replace_rule_line('window = "30d"', 'window = "30x"'),
        'policy.toml: rules[0].window: "30x" is not a duration (use e.g. "30d", "12h", "90m"',
    ),
    "duration as float": (
        replace_rule_line('window = "30d"', "window = 1.5"),
        "policy.toml: rules[0].window: 1.5 is not a duration",
    ),
    "zero duration": (
        replace_rule_line('window = "30d"', 'window = "0s"'),
        'rules[0].window: "0s" must be more than 0',
    ),
    "too long": (
        replace_rule_line('window = "30d"', 'window = "4000d"'),
        'rules[0].window: "4000d" is longer than ten years',
    ),
    "non-integral limit": (
        replace_rule_line('limit_flop = "1e25"', 'limit_flop = "1.5e0"'),
        'policy.toml: rules[0].limit_flop: "1.5e0" is not an exact integer',
    ),
    "float limit": (
        replace_rule_line('limit_flop = "1e25"', "limit_flop = 1e25"),
        'rules[0].limit_flop: 1E+25 is a TOML float; write it as a string ("1e25")',
    ),
    "negative limit": (
        replace_rule_line("limit_flop_per_s = 100_000", "limit_flop_per_s = -1"),
        "rules[1].limit_flop_per_s: must not be negative",
    ),
    "huge limit": (
        replace_rule_line('limit_flop = "1e25"', 'limit_flop = "1e61"'),
        'rules[0].limit_flop: "1e61" is not an exact integer',
    ),
    "boolean limit": (
        replace_rule_line('limit_flop = "1e25"', "limit_flop = true"),
        "rules[0].limit_flop: must be an amount",
    ),
    "unknown rule key": (
        replace_rule_line('window = "30d"', 'window = "30d"\nwindwo = "1d"'),
        "policy.toml: rules[0].windwo: unknown key (a cumulative_flop rule takes id, kind, window",
    ),
    "unknown top-level key": (
        HEADER + "owner = 'me'\n" + RULES,
        "policy.toml: owner: unknown key (a policy takes format_version",
    ),
    "unknown defaults key": (
        HEADER + "[defaults]\nfigures = 'energy'\n" + RULES,
        "policy.toml: defaults.figures: unknown key",
    ),
    "figure on a coverage rule": (
        replace_rule_line('min_ratio = "99.5%"', 'min_ratio = "99.5%"\nfigure = "energy"'),
        "rules[2].figure: unknown key (a coverage rule takes",
    ),
    "missing key": (
        replace_rule_line('window = "30d"\n', ""),
        "policy.toml: rules[0].window: missing (a cumulative_flop rule needs id, kind, window",
    ),
    "duplicate id": (
        replace_rule_line('id = "gap"', 'id = "rate"'),
        'policy.toml: rules[3].id: "rate" is already the id of rules[1]',
    ),
    "bad id": (
        replace_rule_line('id = "gap"', 'id = "Gap!"'),
        'rules[3].id: "Gap!" is not an id',
    ),
    "bad kind": (
        replace_rule_line('kind = "max_gap"', 'kind = "max_gaps"'),
        'policy.toml: rules[3].kind: "max_gaps" is not a rule kind (one of cumulative_flop,',
    ),
    "missing kind": (
        replace_rule_line('kind = "max_gap"\n', ""),
        "policy.toml: rules[3].kind: missing",
    ),
    "busy percent not a multiple of 5": (
        replace_rule_line("min_busy_percent = 55", "min_busy_percent = 52"),
        "policy.toml: rules[4].min_busy_percent: is 52; it must be a multiple of 5 from 5 to 100",
    ),
    "tolerance over 50": (
        replace_rule_line("min_busy_percent = 55", "min_busy_percent = 55\ntolerance_percent = 60"),
        "rules[4].tolerance_percent: is 60; it must be from 0 to 50",
    ),
    "busy percent zero": (
        replace_rule_line("min_busy_percent = 55", "min_busy_percent = 0"),
        "rules[4].min_busy_percent: is 0",
    ),
    "busy percent over 100": (
        replace_rule_line("min_busy_percent = 55", "min_busy_percent = 105"),
        "rules[4].min_busy_percent: is 105",
    ),
    "min gpus": (
        replace_rule_line("min_gpus = 8", "min_gpus = 0"),
        "rules[4].min_gpus: must be at least 1",
    ),
    "on_detect": (
        replace_rule_line('min_duration = "2h"', 'min_duration = "2h"\non_detect = "warn"'),
        'rules[4].on_detect: "warn" is not one of violation, finding',
    ),
    "ratio over 100": (
        replace_rule_line('min_ratio = "99.5%"', 'min_ratio = "100.5%"'),
        'rules[2].min_ratio: "100.5%" is more than 100%',
    ),
    "ratio without percent": (
        replace_rule_line('min_ratio = "99.5%"', "min_ratio = 99"),
        "rules[2].min_ratio: 99 is not a percentage",
    ),
    "both ratios": (
        replace_rule_line('min_ratio = "99.5%"', 'min_ratio = "99.5%"\nmin_ratio_ppm = 5'),
        "rules[2].min_ratio: give exactly one of min_ratio",
    ),
    "ppm range": (
        replace_rule_line('min_ratio = "99.5%"', "min_ratio_ppm = 1_000_001"),
        "rules[2].min_ratio_ppm: must be 0 to 1000000",
    ),
    "wrong format_version": (
        HEADER.replace("format_version = 1", "format_version = 2") + RULES,
        "policy.toml: format_version: is 2; this verifier reads format_version = 1",
    ),
    "format_version as string": (
        HEADER.replace("format_version = 1", 'format_version = "1"') + RULES,
        "policy.toml: format_version: must be an integer, got a string",
    ),
    "missing format_version": (
        HEADER.replace("format_version = 1\n", "") + RULES,
        "policy.toml: format_version: missing",
    ),
    "version zero": (
        HEADER.replace("version = 2", "version = 0") + RULES,
        "policy.toml: version: must be a positive integer",
    ),
    "bad lab id": (
        HEADER.replace('lab_id = "lab-a"', 'lab_id = "Lab A"') + RULES,
        'policy.toml: lab_id: "Lab A" is not a lab id',
    ),
    "no rules": (HEADER + "rules = []\n", "policy.toml: rules: a policy needs at least one rule"),
    "rules not tables": (
        HEADER + "rules = [1, 2]\n",
        "policy.toml: rules: must be an array of tables",
    ),
    "bad figure": (
        HEADER + "[defaults]\nfigure = 'lower_bound'\n" + RULES,
        'policy.toml: defaults.figure: "lower_bound" is not a compute figure',
    ),
    "toml syntax": (
        HEADER + RULES.replace('window = "30d"', "window = "),
        "policy.toml: invalid TOML: Invalid value (at line 8, column 10)",
    ),
    "toml duplicate key": (
        HEADER + "version = 3\n" + RULES,
        "policy.toml: invalid TOML:",
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_each_error_names_the_file_and_the_key(case: tuple[str, str]) -> None:
    text, message = case
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert message in str(caught.value)
    assert caught.value.diagnostics().startswith("policy.toml: ")


def test_syntax_errors_keep_the_line() -> None:
    with pytest.raises(ConfigError, match=r"line 5, column"):
        load(HEADER + "[[rules]\n")


def test_file_errors() -> None:
    with pytest.raises(ConfigError, match="cannot read the policy file"):
        load_policy("/nonexistent/policy.toml")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy_bytes(b"\xff\xfe", "x.toml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e25", 10**25),
        ("1E25", 10**25),
        ("1e+25", 10**25),
        ("10^25", 10**25),
        ("10**25", 10**25),
        ("10 ^ 26", 10**26),
        ("3.5e24", 35 * 10**23),
        ("1.25e2", 125),
        ("1.000e3", 1_000),
        ("123", 123),
        ("1_000_000", 1_000_000),
        ("0", 0),
        ("2^10", 1_024),
        ("1e60", 10**60),
    ],
)
def test_amounts_that_denote_an_integer_exactly(text: str, value: int) -> None:
    assert parse_amount(text) == value


@pytest.mark.parametrize(
    "text",
    ["1.5", "1.25e1", "1e-5", "-5", "1_000_", "ten", "1e61", "10^61", "", "0x10", "1,000", "e5"],
)
def test_amounts_that_are_not_exact_integers(text: str) -> None:
    assert parse_amount(text) is None


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        ('"30d"', 30 * 86_400 * S),
        ('"12h"', 43_200 * S),
        ('"90m"', 5_400 * S),
        ('"45s"', 45 * S),
        ("7", 7 * S),
    ],
)
def test_durations(value: str, ns: int) -> None:
    policy = load_policy_bytes(
        (HEADER + f'[[rules]]\nid = "g"\nkind = "max_gap"\nmax_gap = {value}\n').encode()
    )
    rule = policy.rules[0]
    assert isinstance(rule, MaxGapRule)
    assert rule.max_gap_ns == ns


def test_max_gap_may_be_zero() -> None:
    policy = load_policy_bytes(
        (HEADER + '[[rules]]\nid = "g"\nkind = "max_gap"\nmax_gap = 0\n').encode()
    )
    assert policy.rules == (MaxGapRule("g", 0),)


@pytest.mark.parametrize(
    ("text", "ppm"),
    [('"99%"', 990_000), ('"99.5%"', 995_000), ('"0.0001%"', 1), ('"100%"', 1_000_000)],
)
def test_percentages_are_exact(text: str, ppm: int) -> None:
    policy = load_policy_bytes(
        (HEADER + f'[[rules]]\nid = "c"\nkind = "coverage"\nmin_ratio = {text}\n').encode()
    )
    assert policy.rules == (CoverageRule("c", ppm),)


def test_validate_for_buckets_names_each_rule_that_does_not_fit() -> None:
    policy = load_policy_bytes((HEADER + RULES).encode(), "p.toml")
    assert validate_for_buckets(policy, 60 * S) == []
    assert validate_for_buckets(policy, 7 * S) == [
        "p.toml: rules[0].window: 30d is not a whole number of 7s buckets",
        "p.toml: rules[1].interval: 1h is not a whole number of 7s buckets",
        "p.toml: rules[4].min_duration: 2h is not a whole number of 7s buckets",
    ]
    # max_gap (900 s) is not a multiple of 7 s either, and need not be.
    with pytest.raises(ValueError, match="bucket_ns"):
        validate_for_buckets(policy, 0)


def test_rules_in_words() -> None:
    policy = load_policy_bytes((HEADER + RULES).encode())
    words = [describe_rule(rule) for rule in policy.rules]
    assert words == [
        "at most 10000000000000000000000000 (1.00e25) FLOP (upper-bound) in any 30d window",
        "at most 100000 (1.00e5) FLOP/s (upper-bound) on average over any 1h interval",
        "attested GPU-time at least 99.5% of declared GPU-time (unattested time is unknown, "
        "never paused)",
        "no node unattested for longer than 15m",
        "8 or more GPUs at least 55% busy for 2h or longer is a violation (a GPU counts in a "
        "bucket when attested at that level for 90% of it or more)",
    ]
    data = rule_to_dict(policy.rules[0])
    assert data["limit_flop"] == "10000000000000000000000000"
    assert data["window_ns"] == 30 * 86_400 * S


def test_formatting_is_exact_and_never_rounds_up() -> None:
    assert format_flop(12_345_678_901_234_567_890) == "12345678901234567890 (1.23e19)"
    assert format_flop(999) == "999"
    assert scientific(9_999_999) == "9.99e6"  # rounded down: never shown as 1.00e7
    assert scientific(10**25 - 1) == "9.99e24"
    assert scientific(5) == "5.00e0"
    assert format_duration_ns(90 * 60 * S) == "1h 30m"
    assert format_duration_ns(1_500_000_000) == "1.5s"
    assert format_duration_ns(86_400 * S + 1) == "1d 0.000000001s"
    assert format_duration_ns(0) == "0s"
    assert format_ppm(995_000) == "99.5%"
    assert format_ppm(1) == "0.0001%"


def test_a_site_energy_rule_loads() -> None:
    from verifier.accounting.accounts import Figure
    from verifier.accounting.policy import CumulativeFlopRule, load_policy_bytes

    text = b"""
format_version = 1
policy_id = "p"
version = 1
lab_id = "lab-a"

[[rules]]
id = "site"
kind = "cumulative_flop"
window = "1h"
limit_flop = "1e19"
figure = "site_energy"
"""
    [rule] = load_policy_bytes(text, "p.toml").rules
    assert isinstance(rule, CumulativeFlopRule)
    assert rule.figure is Figure.SITE_ENERGY


def test_a_tpm_rooted_rule_loads_has_no_keys_and_reads_in_words() -> None:
    from verifier.accounting.policy import TpmRootedRule

    [rule] = load_policy_bytes(
        (HEADER + '[[rules]]\nid = "tpm"\nkind = "tpm_rooted"\n').encode(), "p.toml"
    ).rules
    assert rule == TpmRootedRule(rule_id="tpm")
    assert "TPM" in describe_rule(rule)
    assert rule_to_dict(rule)["kind"] == "tpm_rooted"
    with pytest.raises(ConfigError, match="limit"):
        load(HEADER + '[[rules]]\nid = "tpm"\nkind = "tpm_rooted"\nlimit = 3\n')
