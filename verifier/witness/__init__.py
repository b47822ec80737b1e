"""Witnessing (c2sp.org/tlog-witness), both sides: the witness that cosigns a log's checkpoints,
and the verifier's pool that asks witnesses to cosign its own.

    from verifier.witness.pool import WitnessPool        # the verifier's log, at each checkpoint
    from verifier.witness.server import WitnessServer    # ``pausewatch witness serve``

- ``server``: the witness, a separate party from the verifier that shares no state with it, only
  the log's public key; its state on disk, durably, before it answers.
- ``pool``: the verifier's side, which submits each new checkpoint to the configured witnesses and
  keeps the cosignatures that verify.

May import: ``attest`` and ``verifier.config`` (the pool's settings). Must not import the store,
the server, the audit or the accounting: the witness checks checkpoints and consistency proofs,
nothing of what the log holds, and the verifier's storage imports the pool.
"""
