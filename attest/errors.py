"""The error tree shared by every pausewatch component.

One root, :class:`PausewatchError`, whose :meth:`~PausewatchError.diagnostics` is safe to show a
user; a :class:`VerificationError` subtree with one class per kind of failed check, so callers can
tell an unknown key from a bad signature from a broken chain without parsing messages::

    try:
        verified = envelope.verify_envelope(raw, keyring)
    except SignatureError as exc:
        print(exc.diagnostics())

Remote peers never see ``str(exc)`` of an unexpected exception; they see a reason code and, for
these errors, ``diagnostics()`` only, which never carries key material or internal state.
"""

from __future__ import annotations


class PausewatchError(Exception):
    """Root of every error pausewatch raises on purpose."""

    def diagnostics(self) -> str:
        """A one-line, user-facing account of what went wrong (no secrets, no internals)."""
        text = str(self)
        return text if text else type(self).__name__


class ConfigError(PausewatchError):
    """A configuration or policy file is invalid; the message names the offending key."""


class KeyFileError(PausewatchError):
    """A key file is missing, malformed, or readable by others."""


class OutputFileError(PausewatchError):
    """An output file cannot be written (it exists already, or its directory does not)."""


class CertificateRefusedError(PausewatchError):
    """The peer refused our TLS client certificate (none given, from another CA, expired)."""


class PeerCertificateError(PausewatchError):
    """The peer's TLS certificate did not verify (another CA, another name, expired)."""


class VerificationError(PausewatchError):
    """Evidence failed a check. Subclasses say which check."""


class EnvelopeError(VerificationError):
    """The envelope is malformed: not canonical, empty fields, or wrong field sizes."""


class EnvelopeTooLargeError(EnvelopeError):
    """The envelope or its payload exceeds the size limit."""


class PayloadTypeError(VerificationError):
    """The envelope's payload type is not the one expected."""


class UnknownKeyError(VerificationError):
    """The envelope names a key that is not trusted for this purpose."""


class SignatureError(VerificationError):
    """The signature does not verify over the received bytes."""


class BodyError(VerificationError):
    """The payload, once authenticated, is not a valid message of its type."""


class ChainError(VerificationError):
    """A sequence of attestations does not link up."""


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify."""


class NoteError(VerificationError):
    """A signed note (checkpoint) is malformed or its signatures do not verify."""


class MalformedNoteError(NoteError):
    """The note's text or signature lines are not in the signed-note format."""


class NoteSignatureError(NoteError):
    """A known key's signature on a note is invalid."""


class NoVerifiedSignatureError(NoteError):
    """None of the note's signatures is from a known key."""


class TpmError(VerificationError):
    """A TPM structure (key, quote, signature, credential, IMA log) is malformed or fails."""


class HistoryError(VerificationError):
    """The log's history differs from a checkpoint seen before: forked or rolled back."""


class RollbackError(HistoryError):
    """The log is now smaller than a checkpoint seen before: entries have disappeared."""


class ForkError(HistoryError):
    """The log does not extend a checkpoint seen before: its history was rewritten or split."""


class WitnessQuorumError(NoteError):
    """A checkpoint lacks the cosignatures of the witnesses the caller requires."""
