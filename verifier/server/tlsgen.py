"""Throwaway TLS material for a local verifier: a private CA and a server certificate.

    files = write_self_signed(Path("tls"), hosts=["127.0.0.1", "localhost"], keep_ca_key=True)
    files.ca_cert, files.server_cert, files.server_key
    cert, key = issue_client_cert(Path("tls"), "auditor", uri="spiffe://example/auditor")

For demos, tests and first deployments on one machine. A regulator's production verifier should
use certificates from its own PKI; nothing here is meant to replace that.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pausewatch (self-signed)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    *,
    common_name: str,
    hosts: list[str],
    usage: x509.ObjectIdentifier,
    days: int,
    uris: tuple[str, ...] = (),
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def write_self_signed(
    directory: Path,
    hosts: list[str],
    *,
    client_name: str | None = None,
    days: int = 30,
    keep_ca_key: bool = False,
) -> TlsFiles:
    """Write ca.pem, server.pem, server.key (and client.pem/client.key if ``client_name``; and
    ca.key, mode 0600, if ``keep_ca_key``, for :func:`issue_client_cert` later)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("pausewatch local CA")
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    if keep_ca_key:
        ca_key_path = directory / "ca.key"
        _write_private(ca_key_path, _pem_key(ca_key))
    cert, key = _issue(
        ca_key,
        ca_name,
        common_name=hosts[0],
        hosts=hosts,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        days=days,
    )
    files.server_cert.write_bytes(cert)
    _write_private(files.server_key, key)
    if client_name is not None:
        cert, key = _issue(
            ca_key,
            ca_name,
            common_name=client_name,
            hosts=[],
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            days=days,
        )
        client_cert = directory / "client.pem"
        client_key = directory / "client.key"
        client_cert.write_bytes(cert)
        _write_private(client_key, key)
        files = TlsFiles(
            files.ca_cert, files.server_cert, files.server_key, client_cert, client_key
        )
    return files


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only, whatever mode an old file had."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def issue_client_cert_pem(
    ca_cert_pem: bytes, ca_key_pem: bytes, name: str, *, uri: str, days: int = 30
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of a client certificate with SAN URI ``uri``, signed
    by the given CA (in memory: for tools that make many, such as bench/bench_streams.py)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    loaded = serialization.load_pem_private_key(ca_key_pem, None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key is not an EC private key")
    return _issue(
        loaded,
        ca_cert.subject,
        common_name=name,
        hosts=[],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
        uris=(uri,),
    )


def issue_client_cert(directory: Path, name: str, *, uri: str, days: int = 30) -> tuple[Path, Path]:
    """A client certificate with SAN URI ``uri`` (a SPIFFE-style identity the verifier's
    ``[[access.identities]]`` map to a role), signed by the CA that :func:`write_self_signed`
    kept in ``directory``. Writes and returns ``<name>.pem`` and ``<name>.key`` (mode 0600)."""
    cert, key = issue_client_cert_pem(
        (directory / "ca.pem").read_bytes(),
        (directory / "ca.key").read_bytes(),
        name,
        uri=uri,
        days=days,
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert)
    _write_private(key_path, key)
    return cert_path, key_path
