"""pausewatch's pure evidence library: keys, signed envelopes, chains, the Merkle log, checkpoints
and compute bounds. No gRPC, no NVML, no network: everything here can run in an offline auditor.

    from attest import keys, envelope
    private = keys.generate_private_key()
    raw = envelope.sign_envelope(private, envelope.ATTESTATION_PAYLOAD_TYPE, body_bytes)
"""

__version__ = "0.1.0"
