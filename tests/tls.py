"""Throwaway certificates for tests: a self-signed one for 127.0.0.1 (tests serve the ingress over HTTPS),
and a small PKI (`make_pki`: a CA, a server certificate, a client certificate) for the TLS/SASL tests of
the Kafka and Redis clients (tests/unit/test_connections.py, tests/integration/test_kafka_redis_tls.py)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


@dataclass(frozen=True)
class PKI:
    ca: str  # PEM CA certificate: what clients trust (KAFKA_SSL_CAFILE, REDIS_SSL_CA_CERTS)
    server_cert: str  # signed by the CA for 127.0.0.1 and localhost
    server_key: str  # PKCS#8, unencrypted
    server_keystore: str  # key + certificate chain in one PEM file (Kafka's ssl.keystore.type=PEM)
    client_cert: str  # signed by the CA (mTLS)
    client_key: str  # PKCS#8, encrypted with client_key_password when one was given
    client_key_password: str
    other_ca: str  # a second CA that signed nothing here: trusting it must fail verification


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey, password: str = "") -> bytes:
    enc = (serialization.BestAvailableEncryption(password.encode()) if password
           else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def make_pki(directory: Path, *, client_key_password: str = "") -> PKI:
    """A CA and two leaf certificates it signed, written as PEM files under `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), True)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("pagerstream test CA")
    _, other_cert = ca("some other CA")

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None
             ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
             .add_extension(x509.ExtendedKeyUsage([usage]), False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), False)
        return key, b.sign(ca_key, hashes.SHA256())

    from cryptography.x509.oid import ExtendedKeyUsageOID

    s_key, s_cert = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                         [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    c_key, c_cert = leaf("pagerstream-client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    pem = serialization.Encoding.PEM
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "ca.pem": ca_cert.public_bytes(pem),
        "other-ca.pem": other_cert.public_bytes(pem),
        "server.pem": s_cert.public_bytes(pem) + ca_cert.public_bytes(pem),
        "server.key": _pem_key(s_key),
        "server-keystore.pem": _pem_key(s_key) + s_cert.public_bytes(pem) + ca_cert.public_bytes(pem),
        "client.pem": c_cert.public_bytes(pem),
        "client.key": _pem_key(c_key, client_key_password),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600 if name.endswith((".key", "keystore.pem")) else 0o644)
    d = str(directory)
    return PKI(ca=f"{d}/ca.pem", server_cert=f"{d}/server.pem", server_key=f"{d}/server.key",
               server_keystore=f"{d}/server-keystore.pem", client_cert=f"{d}/client.pem",
               client_key=f"{d}/client.key", client_key_password=client_key_password,
               other_ca=f"{d}/other-ca.pem")
