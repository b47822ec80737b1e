"""Independent implementations written from docs/ and protos/ alone, never importing attest/,
verifier/ or agent/: if they interoperate with the real processes, the docs are enough."""
