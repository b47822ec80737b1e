"""Throwaway TLS material for tests: a CA, a server certificate for localhost/127.0.0.1, and a
client certificate, all made with `cryptography` at test time (never stored in the repository).

pki = TestPki.create()
pki.ca_pem, pki.server_key_pem, pki.server_cert_pem, pki.client_key_pem, pki.client_cert_pem
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class TestPki:
    __test__ = False

    ca_pem: bytes
    server_key_pem: bytes
    server_cert_pem: bytes
    client_key_pem: bytes
    client_cert_pem: bytes
    expired_client_key_pem: bytes
    expired_client_cert_pem: bytes
    """A client certificate from the same CA that expired a day ago."""

    @classmethod
    def create(
        cls,
        server_name: str = "localhost",
        *,
        server_valid_days: float = 1,
        client_valid_days: float = 1,
    ) -> TestPki:
        """A negative ``*_valid_days`` makes that certificate expired that long ago."""
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("pausewatch test CA"))
            .issuer_name(_name("pausewatch test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(
            common_name: str,
            usage: x509.ObjectIdentifier,
            sans: list[x509.GeneralName],
            valid_days: float,
        ) -> tuple[bytes, bytes]:
            not_after = now + datetime.timedelta(days=valid_days)
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(common_name))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(min(now, not_after) - datetime.timedelta(days=1))
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)

        server_key, server_cert = leaf(
            server_name,
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            server_valid_days,
        )
        client_key, client_cert = leaf(
            "node-1", ExtendedKeyUsageOID.CLIENT_AUTH, [], client_valid_days
        )
        expired_key, expired_cert = leaf("node-old", ExtendedKeyUsageOID.CLIENT_AUTH, [], -1)
        return cls(
            expired_client_key_pem=expired_key,
            expired_client_cert_pem=expired_cert,
            ca_pem=ca.public_bytes(serialization.Encoding.PEM),
            server_key_pem=server_key,
            server_cert_pem=server_cert,
            client_key_pem=client_key,
            client_cert_pem=client_cert,
        )
