"""The policy monitor: threshold breaches and training signatures logged as findings when they
happen, not only when someone asks for a report.

    monitor = PolicyMonitor(core, auditor)
    monitor.check_all()        # each lab's recent stretch evaluated; returns the findings logged

Every ``[monitor] interval_s`` the verifier evaluates each lab's policy in force over the stretch
its rules look at, ending now (the longest rule window plus ``late_s``, for evidence that arrives
late), with the very evaluation a compliance report uses (:meth:`verifier.audit.auditor.Auditor.
report_from`), and logs:

- ``THRESHOLD_EXCEEDED`` (critical) for a ``cumulative_flop`` or ``sustained_rate`` rule whose
  outcome is a violation;
- ``TRAINING_SIGNATURE`` for a ``training_signature`` rule that detected a run: critical when the
  policy counts it as a violation, a warning when ``on_detect = "finding"``;
- ``SITE_ENERGY_UNEXPLAINED`` (critical) for a site whose metered energy its nodes' attested GPU
  energy does not explain past the declared tolerance (docs/site-power.md), with the stretch of
  the buckets that show it and the readings as evidence: evaluated even for a lab whose policy
  has no compute rule, over the last hour plus ``late_s``.

Each finding carries the rule result: its worst stretch as the finding's period, its evidence log
indices and its summary. A rule's finding is logged at most once per hour (or once per rule
window, if longer) per lab, through the store's claims, so a breach that goes on is reported again
while it lasts, and several verifier processes over one database do not repeat each other.

A report remains the authority: the monitor is an early warning, and evidence that arrives later
than ``late_s`` counts in reports without a monitor finding. A pass costs what a report over its
stretch costs (a 90-day rule reads 90 days of buckets), so the monitor waits at least 19 times a
pass's duration before the next one: it never takes more than a twentieth of a core.
"""

from __future__ import annotations

import logging
import threading
import time

from pausewatch.v1 import audit_pb2 as apb
from pausewatch.v1 import findings_pb2 as fpb

from verifier.accounting.policy import (
    CumulativeFlopRule,
    OnDetect,
    Policy,
    Rule,
    SustainedRateRule,
    TrainingSignatureRule,
)
from verifier.audit.auditor import Auditor
from verifier.errors import NotFoundError
from verifier.store.core import VerifierCore

log = logging.getLogger(__name__)

HOUR_NS = 3_600 * 10**9
MAX_BUSY_FACTOR = 19
"""After a pass of T seconds the monitor waits at least 19 T: at most 5 % of a core."""


def rule_window_ns(rule: Rule) -> int:
    """How much time a rule looks at in one measurement (0 for rules the monitor skips)."""
    if isinstance(rule, CumulativeFlopRule):
        return rule.window_ns
    if isinstance(rule, SustainedRateRule):
        return rule.interval_ns
    if isinstance(rule, TrainingSignatureRule):
        return rule.min_duration_ns
    return 0


def finding_for(rule: Rule, result: apb.RuleResult, lab_id: str) -> fpb.Finding | None:
    """The finding a rule result calls for, if any."""
    if isinstance(rule, CumulativeFlopRule | SustainedRateRule):
        if result.outcome != apb.RULE_OUTCOME_VIOLATION:
            return None
        kind, severity = fpb.FINDING_KIND_THRESHOLD_EXCEEDED, fpb.SEVERITY_CRITICAL
    elif isinstance(rule, TrainingSignatureRule):
        measured_ms, limit_ms = int(result.measured or "0"), int(result.limit or "0")
        if measured_ms == 0 or measured_ms < limit_ms:  # no run as long as the rule's duration
            return None
        counted = rule.on_detect is OnDetect.VIOLATION
        kind = fpb.FINDING_KIND_TRAINING_SIGNATURE
        severity = fpb.SEVERITY_CRITICAL if counted else fpb.SEVERITY_WARNING
    else:
        return None
    return fpb.Finding(
        kind=kind,
        severity=severity,
        lab_id=lab_id,
        period_start_ns=result.worst_start_ns,
        period_end_ns=result.worst_end_ns,
        evidence_log_indices=list(result.evidence_log_indices),
        summary=f"rule {rule.rule_id}: {result.summary}"[:1000],
    )


def site_findings(report: apb.ComplianceReport, lab_id: str) -> list[tuple[str, fpb.Finding]]:
    """A ``SITE_ENERGY_UNEXPLAINED`` finding for each site of the report with excess energy."""
    out: list[tuple[str, fpb.Finding]] = []
    for site in report.sites:
        if not site.excess_mj:
            continue
        points = [p for p in site.series if p.excess_mj]
        out.append(
            (
                site.site_id,
                fpb.Finding(
                    kind=fpb.FINDING_KIND_SITE_ENERGY_UNEXPLAINED,
                    severity=fpb.SEVERITY_CRITICAL,
                    lab_id=lab_id,
                    period_start_ns=points[0].bucket_start_ns,
                    period_end_ns=points[-1].bucket_end_ns,
                    evidence_log_indices=list(site.reading_log_indices)[:64],
                    measured=str(site.excess_mj),
                    unit="mj",
                    summary=(
                        f"site {site.site_id}: {site.excess_mj // 1000} J of metered IT energy "
                        f"that no attested GPU explains past the declared tolerance, enough for "
                        f"{site.bound_flop} FLOP"
                    )[:1000],
                ),
            )
        )
    return out


class PolicyMonitor:
    """Evaluates each lab's recent stretch and logs breaches (see the module docstring)."""

    def __init__(self, core: VerifierCore, auditor: Auditor) -> None:
        self.core = core
        self.auditor = auditor
        self._thread: threading.Thread | None = None
        self.started_ns = 0
        self.last_pass_ns = 0
        """When the loop last finished a pass (0: none yet); the server's monitor-lag metric."""

    def check_all(self) -> list[int]:
        """One pass over every registered lab; returns the log indices of new findings."""
        logged: list[int] = []
        for lab in self.core.store.list_labs():
            try:
                logged += self.check_lab(lab.lab_id)
            except NotFoundError:  # no policy for this lab: nothing to monitor
                continue
            except Exception:  # one lab's failure must not keep the others unwatched
                log.exception("policy monitor: lab %s could not be checked", lab.lab_id)
        return logged

    def check_lab(self, lab_id: str) -> list[int]:
        """Evaluate one lab's recent stretch and log the findings it calls for."""
        now = self.core.clock_ns()
        with self.core.store.snapshot() as view:
            policy = self.auditor.policy(view, lab_id, now)
            lookback = max((rule_window_ns(r) for r in policy.rules), default=0)
            if lookback == 0:
                if not view.sites(lab_id):
                    return []
                lookback = HOUR_NS  # the sites are checked even where no compute rule is
            start = now - lookback - self.core.config.monitor.late_ns
            report = self.auditor.report_from(
                view, lab_id, start, now, now, compute_rules_only=True
            )
        found = self._findings(policy, report, lab_id)
        sites = site_findings(report, lab_id)
        if not found and not sites:
            return []
        logged: list[int] = []
        with self.core.write() as w:
            for rule, finding in found:
                period = max(HOUR_NS, rule_window_ns(rule))
                key = f"policy:{lab_id}:{policy.policy_id}:{rule.rule_id}"
                if w.tx.claim_once(key, w.now_ns + period, w.now_ns):
                    logged.append(w.add_finding(finding))
            for site_id, finding in sites:
                if w.tx.claim_once(f"site:{lab_id}:{site_id}", w.now_ns + HOUR_NS, w.now_ns):
                    logged.append(w.add_finding(finding))
        return logged

    @staticmethod
    def _findings(
        policy: Policy, report: apb.ComplianceReport, lab_id: str
    ) -> list[tuple[Rule, fpb.Finding]]:
        rules = {rule.rule_id: rule for rule in policy.rules}
        out: list[tuple[Rule, fpb.Finding]] = []
        for result in report.rules:
            rule = rules.get(result.rule_id)
            if rule is None:
                continue
            finding = finding_for(rule, result, lab_id)
            if finding is not None:
                out.append((rule, finding))
        return out

    # -- the background loop ----------------------------------------------------------------

    def start(self, stopping: threading.Event) -> None:
        """Run :meth:`check_all` every interval until ``stopping`` is set (no-op if off)."""
        interval_ns = self.core.config.monitor.interval_ns
        if interval_ns <= 0:
            log.info("policy monitor off (monitor.interval_s = 0)")
            return
        self.started_ns = self.core.clock_ns()

        def loop() -> None:
            wait_s = interval_ns / 1e9
            while not stopping.wait(wait_s):
                started = time.monotonic()
                try:
                    self.check_all()
                except Exception:  # keep monitoring later; a failure must not stop the server
                    log.exception("policy monitor pass failed")
                else:
                    self.last_pass_ns = self.core.clock_ns()
                # Long rule windows make long passes: never spend more than 1/20 of a core here.
                wait_s = max(interval_ns / 1e9, (time.monotonic() - started) * MAX_BUSY_FACTOR)

        self._thread = threading.Thread(target=loop, name="policy-monitor", daemon=True)
        self._thread.start()

    def lag_ns(self) -> int:
        """How long since the last finished pass (since start if none); 0 when off."""
        since = self.last_pass_ns or self.started_ns
        return max(0, self.core.clock_ns() - since) if since else 0

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
