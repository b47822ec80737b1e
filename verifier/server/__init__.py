"""The regulator's server: the gRPC service that takes evidence in, and what runs beside it.

    server = VerifierServer.from_config(load_config(Path("verifier.toml")))
    port = server.start()        # ``pausewatch verifier serve``

- ``server``, ``tls``: the process's lifecycle, and its own TLS material checked before it serves;
  ``tlsgen`` makes throwaway TLS material for the demo, the tests and a first local verifier.
- ``servicers``: thin gRPC servicers, and the one table from errors to status codes.
- ``ingest``: the ingest pipeline, one numbered check after another, then the log append.
- ``registry``: labs and policies, and the enrolments, inventory declarations and revocations.
- ``meters``: site declarations logged, and meter readings taken in.
- ``monitor``: the policy monitor, which logs threshold breaches as they happen.
- ``limits``, ``metrics``: per-client limits, and the server's own Prometheus metrics.

May import: every part below it: ``attest``, the accounting, the config, ``access``, ``errors``,
``nonce``, ``tpm``, the witness pool, the store and the audit (the AuditService and the monitor use
the auditor). Must not import the CLI or the demo, which start it, nor ``agent``.
"""
