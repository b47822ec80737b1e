"""The regulator's command line, ``pausewatch``: keys, the verifier, audits, the log, policies,
sites, witnesses and the demo.

    pausewatch audit report --lab lab-a --since 2026-11-01 --until 2026-12-01
    python -m verifier.cli audit report ...         # the same, from a checkout (__main__.py)

- ``main``: the command groups, and the one place that maps errors to exit codes.
- ``audit``, ``registry``, ``site``, ``witness``: the commands of each group.
- ``common``: options and output every command shares; ``client``: channels to a verifier, and
  times written the way people write them.
- ``meter_csv``: the interval files ``pausewatch site import`` reads.

The top of the verifier: it may import every other part and the demo (the server only inside
``verifier serve``, and the audit's heavier modules only inside the commands that need them, so
that a command starts quickly). No other part imports it.
"""
