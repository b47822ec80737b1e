"""The verifier's TPM settings: a bad CA file or allowlist stops the start with an error naming it,
and leaves the store usable by the next start."""

from __future__ import annotations

from pathlib import Path

import pytest

from attest.errors import ConfigError
from tests.verifier_harness import running_verifier


@pytest.mark.parametrize(
    ("files", "config", "lab", "message"),
    [
        ({}, '[tpm]\nmanufacturer_cas = ["missing.pem"]\n', "", r"cannot read .*missing\.pem"),
        (
            {"ca.pem": "not a certificate\n"},
            '[tpm]\nmanufacturer_cas = ["ca.pem"]\n',
            "",
            r"ca\.pem holds no PEM certificate",
        ),
        (
            {"allow.txt": "# ok\n" + "ab" * 32 + "  /usr/bin/a\nnot-hex  /usr/bin/b\n"},
            "",
            'ima_allowlist = "allow.txt"',
            r"allow\.txt: line 3",
        ),
        ({}, "", 'ima_allowlist = "absent.txt"', r"cannot read .*absent\.txt"),
        ({}, "[tpm]\nquote_nonce_max_age_s = 0\n", "", r"tpm\.quote_nonce_max_age_s"),
    ],
)
def test_bad_tpm_settings_stop_the_start_by_name_and_free_the_store(
    tmp_path: Path, files: dict[str, str], config: str, lab: str, message: str
) -> None:
    directory = tmp_path / "v"
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    with (
        pytest.raises(ConfigError, match=message),
        running_verifier(directory, extra_config=config, extra_lab=lab),
    ):
        pass  # pragma: no cover - the start fails
    with running_verifier(directory) as v:  # the same store starts without them
        assert v.address
