"""The process exit codes every pausewatch command uses, and the one place errors map to them.

0 compliant / success, 1 non-compliant, 2 usage error, 3 verification failed, 4 internal error
(an unreachable peer included), 5 the peer refused our TLS client certificate

try:
    ...
except Exception as exc:
    sys.exit(exit_code_for(exc))
"""

from __future__ import annotations

from enum import IntEnum

from attest.errors import (
    CertificateRefusedError,
    ConfigError,
    KeyFileError,
    OutputFileError,
    VerificationError,
)


class ExitCode(IntEnum):
    OK = 0
    NON_COMPLIANT = 1
    USAGE = 2
    VERIFICATION_FAILED = 3
    INTERNAL = 4
    CERTIFICATE_REFUSED = 5


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for an error that ended a command."""
    if isinstance(exc, CertificateRefusedError):
        return ExitCode.CERTIFICATE_REFUSED
    if isinstance(exc, VerificationError):
        return ExitCode.VERIFICATION_FAILED
    if isinstance(exc, ConfigError | KeyFileError | OutputFileError):
        return ExitCode.USAGE
    return ExitCode.INTERNAL
