"""Access rules from the config: each bad entry is refused with the key it names; certificates
map to principals by exact URI, URI prefix plus node id, or pinned fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attest.errors import ConfigError
from verifier.access import ANONYMOUS, Access, Principal, Role
from verifier.config import parse_config
from verifier.errors import PermissionDeniedError
from verifier.server.tlsgen import issue_client_cert, write_self_signed

NODE = "ab" * 32


def parse(access: str, limits: str = "") -> object:
    return parse_config(
        f"""
[server]
insecure_no_tls = true
[access]
{access}
[limits]
{limits}
""".encode()
    )


@pytest.mark.parametrize(
    ("access", "message"),
    [
        ('unauthenticated_role = "king"', "access.unauthenticated_role: 'king' is not one of"),
        ('unauthenticated_role = "node_agent"', "must be public, auditor or regulator"),
        ('[[access.identities]]\nrole = "root"\nuri = "spiffe://x"', "role: 'root' is not one"),
        ('[[access.identities]]\nrole = "auditor"', "exactly one of uri, uri_prefix"),
        (
            '[[access.identities]]\nrole = "auditor"\nuri = "spiffe://x"\nfingerprint_sha256 = "00"',
            "exactly one of uri, uri_prefix",
        ),
        ('[[access.identities]]\nrole = "auditor"\nfingerprint_sha256 = "zz"', "64 hex digits"),
        ('[[access.identities]]\nrole = "lab_operator"\nuri = "spiffe://x"', "lab: required"),
        ('[[access.identities]]\nrole = "auditor"\nuri = "spiffe://x"\nlab = "a"', "only for"),
        (
            '[[access.identities]]\nrole = "node_agent"\nuri = "spiffe://x"\nlab = "a"',
            "a node_agent needs node_id",
        ),
        (
            '[[access.identities]]\nrole = "node_agent"\nuri = "spiffe://x"\nlab = "a"\n'
            'node_id = "12"',
            "node_id: must be 64 hex digits",
        ),
        (
            '[[access.identities]]\nrole = "regulator"\nuri_prefix = "spiffe://x/"',
            "uri_prefix: only for role node_agent",
        ),
        ('[[access.identities]]\nrole = "regulator"\nuri = "a"\ncolour = 1', "colour"),
    ],
)
def test_bad_access_entries_are_refused_naming_the_key(access: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse(access)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ("max_streams_per_identity = 0", "limits.max_streams_per_identity: must be positive"),
        ("stream_idle_timeout_s = -1", "limits.stream_idle_timeout_s: must be positive"),
        ("max_inflight_bytes_per_identity = 10", "at least server.max_message_bytes"),
        ("streams = 3", "limits.streams: is not a known key"),
    ],
)
def test_bad_limits_are_refused(limits: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse("", limits)


def test_certificates_map_to_principals(tmp_path: Path) -> None:
    write_self_signed(tmp_path, ["127.0.0.1"], keep_ca_key=True)
    node_pem, _ = issue_client_cert(tmp_path, "n", uri=f"spiffe://r/lab/a/node/{NODE}")
    bad_node_pem, _ = issue_client_cert(tmp_path, "b", uri="spiffe://r/lab/a/node/not-hex")
    pinned_pem, _ = issue_client_cert(tmp_path, "p", uri="spiffe://r/whoever")
    fingerprint = hashlib.sha256(
        x509.load_pem_x509_certificate(pinned_pem.read_bytes()).public_bytes(Encoding.DER)
    ).hexdigest()
    config = parse(
        f"""
[[access.identities]]
uri_prefix = "spiffe://r/lab/a/node/"
role = "node_agent"
lab = "a"
[[access.identities]]
fingerprint_sha256 = "{fingerprint.upper()}"
role = "auditor"
"""
    )
    access = Access(config.access)  # type: ignore[attr-defined]
    node = access.principal(node_pem.read_bytes())
    assert (node.role, node.lab_id, node.node_id.hex()) == (Role.NODE_AGENT, "a", NODE)
    node.require_node(bytes.fromhex(NODE), "attest")
    with pytest.raises(PermissionDeniedError, match="node_agent role may not attest for node"):
        node.require_node(b"\x00" * 32, "attest")
    with pytest.raises(PermissionDeniedError):
        node.require_lab_read("a")  # a node agent reads no lab's evidence
    assert access.principal(pinned_pem.read_bytes()).role is Role.AUDITOR
    unmapped = access.principal(bad_node_pem.read_bytes())
    assert unmapped.role is Role.PUBLIC and unmapped.identity.startswith("sha256:")
    assert access.principal(None).identity == ANONYMOUS
    assert access.principal(b"not a certificate").role is Role.PUBLIC


def test_commit_linger_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.commit_linger_ms: must be 0 or positive"):
        parse_config(b"[server]\ninsecure_no_tls = true\n[ingest]\ncommit_linger_ms = -1\n")
    config = parse_config(b"[server]\ninsecure_no_tls = true\n[ingest]\ncommit_linger_ms = 50\n")
    assert config.ingest.commit_linger_ns == 50_000_000


@pytest.mark.parametrize("lab_id", ["lab\r\nx-injected: 1\x00" * 10_000, "b" * 200_000])
def test_a_denial_shows_only_a_short_escaped_excerpt_of_the_lab_id(lab_id: str) -> None:
    public = Principal(identity="anonymous", role=Role.PUBLIC)
    for check in (public.require_lab_read, public.require_lab_write):
        with pytest.raises(PermissionDeniedError) as info:
            check(lab_id)
        message = info.value.diagnostics()
        assert len(message) < 160
        assert not any(c in message for c in "\r\n\x00")
        assert f"({len(lab_id)} characters)" in message


def test_keys_written_over_old_files_are_private(tmp_path: Path) -> None:
    """Re-running the TLS helper over keys another tool left 0644 leaves them 0600 (the verifier
    refuses a key others can read)."""
    for name in ("ca.key", "server.key", "client.key", "agent-1.key"):
        (tmp_path / name).write_bytes(b"old")
        (tmp_path / name).chmod(0o644)
    write_self_signed(tmp_path, ["127.0.0.1"], keep_ca_key=True, client_name="client")
    issue_client_cert(tmp_path, "agent-1", uri="spiffe://lab/agent-1")
    for name in ("ca.key", "server.key", "client.key", "agent-1.key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
        assert (tmp_path / name).read_bytes().startswith(b"-----BEGIN"), name
