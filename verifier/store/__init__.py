"""Storage: what the verifier keeps, and the one path by which it changes.

    store = SqliteStore.open(Path("verifier.db"))           # or PostgresStore.open(dsn)
    core = VerifierCore.open(config, store, log_private_key)
    with core.write() as w:                                 # the store, the log and the caches
        w.append(PendingEntry(raw, EntryKind.ATTESTATION, lab_id, node_id))

- ``base``: the storage Protocols every backend implements, and the rows they deal in.
- ``sql``, ``sqlite``, ``postgres``: the backends (one SQL for both engines).
- ``log``: the transparency log, a Merkle tree over every accepted record, kept in the store.
- ``settings``: the ingest settings the store's accounts were made with, recorded in the store; a
  start with others is refused.
- ``core``: the verifier's shared state (store, log, node cache, nonce issuer, TPM settings) and
  its one write path, which moves them together.

May import: ``attest``, ``verifier.config``, ``verifier.nonce``, ``verifier.tpm`` and
``verifier.witness`` (the log asks witnesses to cosign its checkpoints). The backends import
nothing of ``verifier`` beyond this part. Must not import the accounting, the audit, the server or
the CLI: they read and write through this part, never the other way round.
"""
