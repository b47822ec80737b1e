"""A small, faithful evaluator for the Prometheus alert rules in docs/alerts/, for tests.

    rules = load_rules(REPO_ROOT / "docs/alerts/pausewatch-agent.rules.yml")
    series = Series(); series.add_scrape(t_s, parse_exposition(text), instance="node-1")
    firing = evaluate_alerts(rules, series, step_times)      # {alert name: first time it fired}

promtool is not a dependency of this project (CI does not install it), so this implements exactly the forms the rule file uses, with Prometheus'
semantics: instant selectors with ``=``, ``=~`` matchers (5 min lookback); ``increase`` and
``delta`` over a range (counter resets handled; WITHOUT Prometheus' extrapolation to the range's
edges, so a value here is at most Prometheus' for a counter: ``> 0`` fires here only if it fires
there); ``time()``; binary ``-`` between a scalar and a vector (drops the metric name); comparison
filters against a scalar; ``and`` (label-set matching, ignoring ``__name__``); and ``for:``
(pending until the expression has held at every evaluation for that long). Anything else raises,
so a rule using a form this does not know fails its test instead of passing unevaluated. Where
promtool is installed, tests also run ``promtool check rules`` on the file and, through
:func:`promtool_test_file`, ``promtool test rules`` asserting that Prometheus fires exactly the
alerts this evaluator fires on the same samples.

The rule file is read with a parser for the YAML subset it uses (block mappings and sequences,
plain and double-quoted scalars): no YAML library is a dependency.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
LOOKBACK_S = 300.0


def parse_exposition(text: str) -> dict[tuple[str, Labels], float]:
    """{(sample name, sorted labels): value} from a /metrics body."""
    values: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return values


# -- the rule file ------------------------------------------------------------------------------


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        return json.loads(text)
    return text


def parse_yaml_subset(text: str) -> Any:
    """Block mappings and sequences of plain or double-quoted scalars; comments ignored."""
    lines = []
    for raw in text.splitlines():
        stripped = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if stripped.strip():
            lines.append((len(stripped) - len(stripped.lstrip()), stripped.strip()))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                # "- key: value" opens a mapping whose keys sit at indent + 2
                lines[i] = (indent + 2, lines[i][1][2:])
                value, i = block(i, indent + 2)
                items.append(value)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            key, _, rest = lines[i][1].partition(":")
            if rest.strip():
                mapping[key] = _scalar(rest)
                i += 1
            else:
                mapping[key], i = block(i + 1, lines[i + 1][0])
        return mapping, i

    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"cannot parse line {lines[end]}")
    return value


_DURATION = re.compile(r"^(\d+)([smh])$")


def duration_s(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"unsupported duration {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass(frozen=True)
class Rule:
    alert: str
    expr: str
    for_s: float
    labels: dict[str, str]
    annotations: dict[str, str]


def load_rules(path: Path) -> list[Rule]:
    document = parse_yaml_subset(path.read_text())
    rules = []
    for group in document["groups"]:
        for item in group["rules"]:
            parse_expr(item["expr"])  # unknown forms fail here
            rules.append(
                Rule(
                    alert=item["alert"],
                    expr=item["expr"],
                    for_s=duration_s(item.get("for", "0m")),
                    labels=dict(item.get("labels", {})),
                    annotations=dict(item.get("annotations", {})),
                )
            )
    return rules


# -- series -------------------------------------------------------------------------------------


@dataclass
class Series:
    """Scraped samples: {(name, labels incl. instance/job): [(t_s, value), ...]}."""

    data: dict[tuple[str, Labels], list[tuple[float, float]]] = field(default_factory=dict)

    def add_scrape(
        self,
        t_s: float,
        values: dict[tuple[str, Labels], float] | None,
        *,
        instance: str,
        job: str = "pausewatch-agent",
    ) -> None:
        """One scrape; ``values`` None records a failed scrape (``up`` 0)."""
        target = (("instance", instance), ("job", job))
        up_key = ("up", target)
        self.data.setdefault(up_key, []).append((t_s, 0.0 if values is None else 1.0))
        for (name, labels), value in (values or {}).items():
            key = (name, tuple(sorted(labels + target)))
            self.data.setdefault(key, []).append((t_s, value))


# -- expressions --------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<op>==|!=|>=|<=|=~|[-+*/()<>\[\]{},=])|"
    r"(?P<str>\"[^\"]*\")|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<dur>\d+[smh]))"
)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        # durations like 15m must win over numbers
        dur = re.match(r"\s*(\d+[smh])\b", text[pos:])
        if dur:
            out.append(dur.group(1))
            pos += dur.end()
            continue
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot tokenise {text[pos:]!r}")
        out.append(match.group(match.lastgroup or "").strip())
        pos = match.end()
    return out


Node = tuple[Any, ...]
_COMPARISONS = (">", "<", ">=", "<=", "==", "!=")


def parse_expr(text: str) -> Node:
    tokens = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal pos
        token = tokens[pos]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r}, got {token!r} in {text!r}")
        pos += 1
        return token

    def selector() -> Node:
        name = take()
        matchers: list[tuple[str, str, str]] = []
        if peek() == "{":
            take("{")
            while peek() != "}":
                label = take()
                op = take()
                if op not in ("=", "=~"):
                    raise ValueError(f"unsupported matcher {op}")
                matchers.append((label, op, json.loads(take())))
                if peek() == ",":
                    take(",")
            take("}")
        return ("selector", name, tuple(matchers))

    def primary() -> Node:
        token = peek()
        if token == "(":
            take("(")
            node = or_expr()
            take(")")
            return node
        if token is not None and re.fullmatch(r"\d+(\.\d+)?", token):
            return ("number", float(take()))
        if token == "time":
            take()
            take("(")
            take(")")
            return ("time",)
        if token in ("increase", "delta"):
            func = take()
            take("(")
            inner = selector()
            take("[")
            window = duration_s(take())
            take("]")
            take(")")
            return ("range", func, inner, window)
        if token is not None and re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token):
            if token in ("and", "or", "unless", "by", "on", "ignoring"):
                raise ValueError(f"unexpected {token!r}")
            return selector()
        raise ValueError(f"unsupported expression at {token!r} in {text!r}")

    def arith() -> Node:
        node = primary()
        while peek() == "-":
            take("-")
            node = ("minus", node, primary())
        return node

    def comparison() -> Node:
        node = arith()
        if peek() in _COMPARISONS:
            op = take()
            right = arith()
            if right[0] != "number":
                raise ValueError("only comparisons against a number are supported")
            node = ("compare", op, node, right[1])
        return node

    def and_expr() -> Node:
        node = comparison()
        while peek() == "and":
            take("and")
            node = ("and", node, comparison())
        return node

    def or_expr() -> Node:
        node = and_expr()
        if peek() in ("or", "unless"):
            raise ValueError("'or'/'unless' are not supported")
        return node

    tree = or_expr()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens {tokens[pos:]} in {text!r}")
    return tree


Vector = dict[Labels, float]


def _matches(key: tuple[str, Labels], name: str, matchers: Iterable[tuple[str, str, str]]) -> bool:
    if key[0] != name:
        return False
    labels = dict(key[1])
    for label, op, value in matchers:
        actual = labels.get(label, "")
        if op == "=" and actual != value:
            return False
        if op == "=~" and not re.fullmatch(value, actual):
            return False
    return True


def _with_name(name: str, labels: Labels) -> Labels:
    return (("__name__", name), *labels)


def _without_name(labels: Labels) -> Labels:
    return tuple(item for item in labels if item[0] != "__name__")


def evaluate(node: Node, series: Series, t_s: float) -> Vector | float:
    kind = node[0]
    if kind == "number":
        return float(node[1])
    if kind == "time":
        return t_s
    if kind == "selector":
        out: Vector = {}
        for key, points in series.data.items():
            if _matches(key, node[1], node[2]):
                recent = [v for ts, v in points if t_s - LOOKBACK_S < ts <= t_s]
                if recent:
                    out[_with_name(key[0], key[1])] = recent[-1]
        return out
    if kind == "range":
        _, func, selector_node, window_s = node
        out = {}
        for key, points in series.data.items():
            if not _matches(key, selector_node[1], selector_node[2]):
                continue
            inside = [v for ts, v in points if t_s - window_s < ts <= t_s]
            if len(inside) < 2:
                continue
            if func == "delta":
                out[key[1]] = inside[-1] - inside[0]
            else:  # increase: a drop is a counter reset
                total = 0.0
                for before, after in itertools.pairwise(inside):
                    total += after - before if after >= before else after
                out[key[1]] = total
        return out
    if kind == "minus":
        left = evaluate(node[1], series, t_s)
        right = evaluate(node[2], series, t_s)
        if isinstance(left, float) and isinstance(right, float):
            return left - right
        if isinstance(left, float) and isinstance(right, dict):
            return {_without_name(k): left - v for k, v in right.items()}
        if isinstance(left, dict) and isinstance(right, float):
            return {_without_name(k): v - right for k, v in left.items()}
        raise ValueError("vector - vector is not supported")
    if kind == "compare":
        _, op, inner, threshold = node
        value = evaluate(inner, series, t_s)
        if not isinstance(value, dict):
            raise ValueError("a comparison needs a vector on its left")
        test = {
            ">": float.__gt__,
            "<": float.__lt__,
            ">=": float.__ge__,
            "<=": float.__le__,
            "==": float.__eq__,
            "!=": float.__ne__,
        }[op]
        return {k: v for k, v in value.items() if test(float(v), float(threshold))}
    if kind == "and":
        left = evaluate(node[1], series, t_s)
        right = evaluate(node[2], series, t_s)
        if not isinstance(left, dict) or not isinstance(right, dict):
            raise ValueError("'and' needs vectors")
        keep = {_without_name(k) for k in right}
        return {k: v for k, v in left.items() if _without_name(k) in keep}
    raise ValueError(f"unknown node {kind}")


def active_alerts(rules: Iterable[Rule], series: Series, t_s: float) -> set[str]:
    """The alerts whose expression holds at ``t_s`` (pending or firing, ``for`` aside)."""
    active = set()
    for rule in rules:
        result = evaluate(parse_expr(rule.expr), series, t_s)
        if not isinstance(result, dict):
            raise ValueError(f"{rule.alert}: the expression is not a vector")
        if result:
            active.add(rule.alert)
    return active


def evaluate_alerts(
    rules: Iterable[Rule], series: Series, times_s: Iterable[float]
) -> dict[str, list[tuple[float, Labels]]]:
    """Evaluate every rule at each time (in order); {alert: [(time it fired, labels), ...]},
    one entry per firing series at each evaluation where it is firing."""
    rules = list(rules)
    pending: dict[tuple[str, Labels], float] = {}
    firing: dict[str, list[tuple[float, Labels]]] = {rule.alert: [] for rule in rules}
    for t_s in times_s:
        for rule in rules:
            result = evaluate(parse_expr(rule.expr), series, t_s)
            if not isinstance(result, dict):
                raise ValueError(f"{rule.alert}: the expression is not a vector")
            active = {_without_name(k) for k in result}
            for labels in list(pending):
                if labels[0] == rule.alert and labels[1] not in active:
                    del pending[labels]  # it stopped holding: 'for' starts over
            for labels in active:
                since = pending.setdefault((rule.alert, labels), t_s)
                if t_s - since >= rule.for_s:
                    firing[rule.alert].append((t_s, labels))
    return firing


# -- cross-check with promtool, where it is installed ---------------------------------------------


def resample(series: Series, start_s: float, interval_s: float, steps: int) -> Series:
    """The series on a fixed grid (the latest sample within the lookback at each step, or
    nothing): the form ``promtool test rules`` takes as input."""
    grid = Series()
    for key, points in series.data.items():
        out = []
        for k in range(steps):
            t = start_s + k * interval_s
            recent = [v for ts, v in points if t - LOOKBACK_S < ts <= t]
            if recent:
                out.append((t, recent[-1]))
        if out:
            grid.data[key] = out
    return grid


def _series_selector(name: str, labels: Labels) -> str:
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in labels)
    return f"{name}{{{inner}}}"


def _render(template: str, labels: dict[str, str]) -> str:
    return re.sub(
        r"\{\{\s*\$labels\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}",
        lambda m: labels.get(m.group(1), ""),
        template,
    )


def promtool_test_file(
    rules_path: Path,
    grid: Series,
    rules: list[Rule],
    start_s: float,
    interval_s: float,
    steps: int,
    eval_steps: Iterable[int],
) -> str:
    """A ``promtool test rules`` file asserting, at each eval step, exactly the alerts this
    module's evaluator says are firing on ``grid`` (as JSON, which is YAML)."""
    input_series = []
    for (name, labels), points in sorted(grid.data.items()):
        shift = start_s if name.endswith(("_timestamp_seconds", "_time_seconds")) else 0.0
        # promtool's clock starts at 0: Unix-time values move with it, so time() - value holds
        by_step = {
            round((t - start_s) / interval_s): (v - shift if v > 0 else v) for t, v in points
        }
        values = " ".join(repr(by_step[k]) if k in by_step else "_" for k in range(steps))
        input_series.append({"series": _series_selector(name, labels), "values": values})
    times = [start_s + k * interval_s for k in range(steps)]
    firing = evaluate_alerts(rules, grid, times)
    tests = []
    for step in eval_steps:
        t = start_s + step * interval_s
        for rule in rules:
            alerts = []
            for fired_at, labels in firing[rule.alert]:
                if fired_at != t:
                    continue
                label_map = dict(labels)
                label_map.pop("__name__", None)
                alerts.append(
                    {
                        "exp_labels": {**label_map, **rule.labels},
                        "exp_annotations": {
                            k: _render(v, label_map) for k, v in rule.annotations.items()
                        },
                    }
                )
            tests.append(
                {
                    "eval_time": f"{int(step * interval_s)}s",
                    "alertname": rule.alert,
                    "exp_alerts": alerts,
                }
            )
    document = {
        "rule_files": [str(rules_path)],
        "evaluation_interval": f"{int(interval_s)}s",
        "tests": [
            {
                "interval": f"{int(interval_s)}s",
                "input_series": input_series,
                "alert_rule_test": tests,
            }
        ],
    }
    return json.dumps(document, indent=1)
