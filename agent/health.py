"""Is this node producing evidence that counts? The verdict ``pausewatch-agent status`` exits with.

    problems = assess_health(facts, HealthLimits(max_signing_age_s=180, max_unshipped_age_s=900))
    sys.exit(problems[0].exit_code if problems else 0)

Each problem has its own exit code, so a fleet check (``status`` in a cron job, a node exporter's
textfile, an Ansible assert) can tell them apart without parsing text. When several hold, the
first in this order decides the code: not enrolled, not running, nothing signed for too long,
nothing shipped for too long. Rejected evidence is shown but is not a status failure: it stays in
the spool for good, and the ``PausewatchAgentEvidenceRejected`` alert reports new rejections.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class HealthProblem(IntEnum):
    """``status`` exit codes (0 is healthy; 2, 3 and 4 keep their meaning for every command)."""

    NOT_ENROLLED = 10
    NOT_RUNNING = 11
    NOT_SIGNING = 12
    NOT_SHIPPING = 13

    @property
    def exit_code(self) -> int:
        return int(self.value)


@dataclass(frozen=True, slots=True)
class HealthLimits:
    max_signing_age_s: int
    """How old the newest signed window's end may be (a few windows)."""
    max_unshipped_age_s: int
    """How old the oldest unacknowledged window may be."""


@dataclass(frozen=True, slots=True)
class HealthFacts:
    enrolled: bool
    running: bool
    head_window_end_age_s: int | None
    oldest_unshipped_age_s: int | None


@dataclass(frozen=True, slots=True)
class HealthFinding:
    problem: HealthProblem
    detail: str

    @property
    def exit_code(self) -> int:
        return self.problem.exit_code


def assess_health(facts: HealthFacts, limits: HealthLimits) -> list[HealthFinding]:
    """Every problem that holds, worst first."""
    found: list[HealthFinding] = []
    if not facts.enrolled:
        found.append(HealthFinding(HealthProblem.NOT_ENROLLED, "run 'pausewatch-agent enroll'"))
    if not facts.running:
        found.append(
            HealthFinding(
                HealthProblem.NOT_RUNNING,
                "no agent holds the state directory (systemctl status pausewatch-agent)",
            )
        )
    age = facts.head_window_end_age_s
    if facts.enrolled and (age is None or age > limits.max_signing_age_s):
        found.append(
            HealthFinding(
                HealthProblem.NOT_SIGNING,
                "no window signed yet"
                if age is None
                else f"the newest signed window ended {age} s ago "
                f"(limit {limits.max_signing_age_s} s)",
            )
        )
    unshipped = facts.oldest_unshipped_age_s
    if unshipped is not None and unshipped > limits.max_unshipped_age_s:
        found.append(
            HealthFinding(
                HealthProblem.NOT_SHIPPING,
                f"the oldest unacknowledged window is {unshipped} s old "
                f"(limit {limits.max_unshipped_age_s} s); see last errors",
            )
        )
    return found
