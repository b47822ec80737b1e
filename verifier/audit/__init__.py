"""The auditor's side: compliance reports and evidence bundles, computed from the store on the
server, and checked offline by anyone who trusts nothing but the log key.

    report = Auditor(core).report("lab-a", period_start_ns, period_end_ns)   # on the server
    result = verify_bundle(data, pinned_log_key=vkey)                        # anywhere, offline

- ``auditor``: reports, findings and bundle exports, read from one snapshot of the store (the
  server's AuditService and its policy monitor call it).
- ``site_report``: a report's site figures, gathered from the store.
- ``bundle``: an evidence bundle exported, and re-verified offline with the accounting's own code.
- ``report_html``: a report as one HTML page with its chart.
- ``analysis``: what-if analysis of recorded nvidia-smi logs or spools against a policy
  (unattested).

May import: ``attest``, the accounting, ``verifier.config``, ``verifier.errors``, ``verifier.tpm``
and the store (the auditor reads through the core). Must not import the server or the CLI, which
import this part. ``bundle`` takes the auditor through a Protocol and does not import ``auditor``,
which imports it.
"""
