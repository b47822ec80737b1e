"""The regulator's side of pausewatch: the verifier service, what it counts, what it keeps, and the
auditor's tools.

    pausewatch verifier serve --config verifier.toml               # server/, store/, accounting/
    pausewatch audit verify-bundle lab-a.pwbundle --log-key '...'  # cli/ and audit/, offline

Its parts, from the bottom up: each imports only parts listed before it (the rules, part by part,
are in each part's docstring and in tests/unit/verifier/test_import_layout.py, which checks every
import, inside functions and for types only too):

- ``accounting/``: what accepted evidence counts for, and the policy it is held to (pure).
- ``errors``, ``nonce``, ``access``, ``tpm``, ``config``: what several parts share: request
  errors, challenge nonces, roles, the TPM checks (run at ingest and over a bundle) and the
  settings. ``config`` imports ``access`` and the accounting, for the types of its settings.
- ``witness/``: c2sp.org/tlog-witness: the witness server, and the pool that asks witnesses to
  cosign the verifier's checkpoints.
- ``store/``: the storage backends, the transparency log, and the one write path.
- ``audit/``: reports and evidence bundles from the store, and their offline checks.
- ``server/``: the gRPC server: ingest, registry, site meters, policy monitor, limits, metrics.
- ``demo`` (its data in ``demo_data/``): ``pausewatch demo``, a whole lab run as processes.
- ``cli/``: the command line, ``pausewatch``.

Below them all is ``attest``; ``agent`` is no part of it, and the two never import each other.
"""
