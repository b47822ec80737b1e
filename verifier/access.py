"""Who may call what: roles decided from the mutual-TLS client certificate.

    access = Access(config.access)
    principal = access.principal(pem_cert, peer="ipv4:10.0.0.7:51234")
    principal.require_lab_read("lab-a")       # raises PermissionDeniedError for another lab

A client certificate that the server's client CA signed is matched against the config's
``[[access.identities]]`` in order: an exact SAN URI (SPIFFE-style, ``spiffe://...``), a SAN URI
prefix whose remainder is a node id (one rule for a whole fleet of node agents), or a pinned
SHA-256 fingerprint of the certificate. The first match gives the role; a certificate that
matches nothing, and any client without a certificate (plaintext, or TLS without a client CA),
gets ``access.unauthenticated_role``, which is ``public`` unless a local test config says
otherwise. Roles:

- ``regulator``: every call.
- ``auditor``: every read (reports, findings, bundles, registry reads, log entries).
- ``lab_operator`` of lab X: the registry calls and the reads for lab X only.
- ``node_agent`` of node N: challenges, enrolment and attestation for node N only.
- ``meter_gateway``: a site meter's gateway: meter readings in (each still authorised by the key
  its meter was declared with) and where a meter's chain stands.
- ``public``: health, checkpoints and proofs.

Writes stay authorised by signatures as well (node key, operator key): a role only narrows who
may even ask.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from attest.errors import ConfigError
from verifier.errors import PermissionDeniedError, excerpt

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


class Role(StrEnum):
    REGULATOR = "regulator"
    AUDITOR = "auditor"
    LAB_OPERATOR = "lab_operator"
    NODE_AGENT = "node_agent"
    METER_GATEWAY = "meter_gateway"
    PUBLIC = "public"


@dataclass(frozen=True, slots=True)
class IdentityRule:
    """One ``[[access.identities]]`` entry: exactly one of ``uri``, ``uri_prefix`` and
    ``fingerprint_sha256`` names the certificates it matches."""

    role: Role
    uri: str = ""
    uri_prefix: str = ""
    fingerprint_sha256: str = ""
    lab_id: str = ""
    node_id: bytes = b""


@dataclass(frozen=True, slots=True)
class AccessConfig:
    unauthenticated_role: Role = Role.PUBLIC
    identities: tuple[IdentityRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the access rules see it.

    ``identity`` is what limits and metrics count by: the matched SAN URI or fingerprint, or
    ``anonymous``."""

    identity: str
    role: Role
    lab_id: str = ""
    node_id: bytes = b""

    def _deny(self, what: str) -> PermissionDeniedError:
        return PermissionDeniedError(f"the {self.role.value} role may not {what}")

    def require(self, *roles: Role, what: str) -> None:
        if self.role is not Role.REGULATOR and self.role not in roles:
            raise self._deny(what)

    def require_lab_read(self, lab_id: str) -> None:
        """Reports, findings, bundles and registry reads of one lab."""
        if self.role in (Role.REGULATOR, Role.AUDITOR):
            return
        if self.role is Role.LAB_OPERATOR and lab_id == self.lab_id:
            return
        raise self._deny(f"read lab {excerpt(lab_id) if lab_id else '(all labs)'}")

    def require_lab_write(self, lab_id: str) -> None:
        """Registry writes for one lab (enrol, declare inventory, revoke)."""
        if self.role is Role.REGULATOR:
            return
        if self.role is Role.LAB_OPERATOR and lab_id == self.lab_id:
            return
        raise self._deny(f"change the registry of lab {excerpt(lab_id)}")

    def require_node(self, node_id: bytes, what: str) -> None:
        """Challenges and attestations: a node agent acts for its own node only."""
        if self.role is Role.REGULATOR:
            return
        if self.role is Role.NODE_AGENT and node_id == self.node_id:
            return
        raise self._deny(f"{what} for node {node_id.hex()[:16]}")


def _fingerprint(text: str, where: str) -> str:
    cleaned = text.replace(":", "").lower()
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ConfigError(f"{where}fingerprint_sha256: must be 64 hex digits (colons allowed)")
    return cleaned


def _node_id_from_hex(text: str) -> bytes | None:
    if len(text) != 64:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def make_rule(
    *,
    role: str,
    uri: str,
    uri_prefix: str,
    fingerprint_sha256: str,
    lab_id: str,
    node_id: str,
    where: str,
) -> IdentityRule:
    """Validate one identity entry of the config (``where`` names it in errors)."""
    try:
        kind = Role(role)
    except ValueError:
        raise ConfigError(
            f"{where}role: {role!r} is not one of {', '.join(r.value for r in Role)}"
        ) from None
    if sum(1 for v in (uri, uri_prefix, fingerprint_sha256) if v) != 1:
        raise ConfigError(f"{where}: give exactly one of uri, uri_prefix, fingerprint_sha256")
    fingerprint = _fingerprint(fingerprint_sha256, where) if fingerprint_sha256 else ""
    if kind in (Role.LAB_OPERATOR, Role.NODE_AGENT) and not lab_id:
        raise ConfigError(f"{where}lab: required for role {kind.value}")
    if kind not in (Role.LAB_OPERATOR, Role.NODE_AGENT) and lab_id:
        raise ConfigError(f"{where}lab: only for roles lab_operator and node_agent")
    node = b""
    if node_id:
        if kind is not Role.NODE_AGENT:
            raise ConfigError(f"{where}node_id: only for role node_agent")
        parsed = _node_id_from_hex(node_id)
        if parsed is None:
            raise ConfigError(f"{where}node_id: must be 64 hex digits")
        node = parsed
    if kind is Role.NODE_AGENT and not node and not uri_prefix:
        raise ConfigError(
            f"{where}: a node_agent needs node_id, or a uri_prefix followed by the node id"
        )
    if uri_prefix and kind is not Role.NODE_AGENT:
        raise ConfigError(f"{where}uri_prefix: only for role node_agent (the rest is the node id)")
    return IdentityRule(
        role=kind,
        uri=uri,
        uri_prefix=uri_prefix,
        fingerprint_sha256=fingerprint,
        lab_id=lab_id,
        node_id=node,
    )


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    uris: tuple[str, ...]
    fingerprint_sha256: str


def certificate_identity(pem: bytes) -> CertificateIdentity | None:
    """The SAN URIs and fingerprint of a PEM certificate; None when it does not parse."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except (x509.ExtensionNotFound, ValueError):
        uris = ()
    from cryptography.hazmat.primitives.serialization import Encoding

    fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return CertificateIdentity(uris=uris, fingerprint_sha256=fingerprint)


class Access:
    """Maps client certificates to principals (with a bounded cache: a certificate is parsed
    once, not per call)."""

    _CACHE_LIMIT = 16_384

    def __init__(self, config: AccessConfig) -> None:
        self.config = config
        self.anonymous = Principal(identity=ANONYMOUS, role=config.unauthenticated_role)
        self._cache: dict[bytes, Principal] = {}

    def principal(self, pem: bytes | None) -> Principal:
        if not pem:
            return self.anonymous
        cached = self._cache.get(pem)
        if cached is not None:
            return cached
        principal = self._resolve(pem)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[pem] = principal
        return principal

    def _resolve(self, pem: bytes) -> Principal:
        ident = certificate_identity(pem)
        if ident is None:
            return self.anonymous
        for rule in self.config.identities:
            found = _match(rule, ident)
            if found is not None:
                return found
        # A certificate from the client CA that no rule names: unauthenticated, counted apart.
        return Principal(
            identity=f"sha256:{ident.fingerprint_sha256}", role=self.config.unauthenticated_role
        )


def _match(rule: IdentityRule, ident: CertificateIdentity) -> Principal | None:
    if rule.fingerprint_sha256:
        if ident.fingerprint_sha256 != rule.fingerprint_sha256:
            return None
        return Principal(
            identity=f"sha256:{ident.fingerprint_sha256}",
            role=rule.role,
            lab_id=rule.lab_id,
            node_id=rule.node_id,
        )
    for uri in ident.uris:
        if rule.uri and uri == rule.uri:
            return Principal(identity=uri, role=rule.role, lab_id=rule.lab_id, node_id=rule.node_id)
        if rule.uri_prefix and uri.startswith(rule.uri_prefix):
            node_id = _node_id_from_hex(uri[len(rule.uri_prefix) :].lower())
            if node_id is not None:
                return Principal(identity=uri, role=rule.role, lab_id=rule.lab_id, node_id=node_id)
    return None
