"""Accounting and policy: what accepted evidence counts for, and the thresholds it is held to.

    from verifier.accounting import accounts, evaluation
    report = evaluation.evaluate(...)     # the same call on the server, over a bundle, in analysis

Pure code, the one arithmetic behind every figure (ADR 0001): the server's reports, the offline
re-verification of a bundle and what-if analysis all run it, so they agree figure for figure. It
holds no state and reads no store, network or clock; the only files it reads are the policy and
site files it is handed.

- ``accounts``: one accepted attestation to per-GPU figures and time buckets; gaps.
- ``late``: grading of late evidence, and its stretches in a report.
- ``policy``, ``policy_acceptance``: the policy file, and a lab's signed acceptance of it.
- ``site``, ``site_file``: site power accounting, and the regulator's site files.
- ``evaluation``, ``data_quality``: buckets, gaps and findings to a ComplianceReport, and the
  warnings beside its verdict.

May import: ``attest`` and the generated wire format (``pausewatch.v1``). Must not import any other
part of ``verifier`` (not even the config, which imports this part for the energy check's type:
what a module needs of the settings it names as a Protocol, as ``late.LateLimits`` does).
"""
