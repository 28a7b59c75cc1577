"""A real Mosquitto broker for tests, on a free loopback port in a temporary directory.

``mosquitto`` yields a plaintext broker; ``mosquitto_tls`` a broker that requires
mutual TLS, with a CA, server and client certificates generated here with
``cryptography``.  Both can be stopped and restarted on the same port (outage
tests) and keep their persistence file across restarts, so subscribers with a
persistent session do not lose messages queued while they were away.

A missing Mosquitto is a test *failure*, not a skip: CI installs it.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulator.broker import BrokerError, LocalBroker

# The TLS fixture encrypts the vehicle's client key, so tests can check that the
# password is taken from the environment and never logged.
TEST_CLIENT_KEY_PASSWORD = b"correct horse battery staple"

@dataclass(frozen=True)
class Identity:
    """A certificate and its private key as files, plus the certificate's SHA-256 (DER)."""

    cert: Path
    key: Path
    sha256: str


@dataclass(frozen=True)
class TestPki:
    """CA, server and client identities for mutual TLS; ``other_ca`` signs nothing the broker trusts."""

    __test__ = False  # not a test class, despite the name

    ca: Path
    server: Identity
    client: Identity
    receiver: Identity
    other_ca: Path
    stranger: Identity  # client certificate issued by other_ca
    client_key_password: bytes | None = None  # the client key is encrypted with this, when set


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: bytes | None = None) -> None:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str, directory: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str, directory: Path,
           stem: str, server: bool, key_password: bytes | None = None) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path, key_password)
    digest = cert.fingerprint(hashes.SHA256()).hex()
    return Identity(cert_path, key_path, digest)


def make_pki(directory: Path, client_key_password: bytes | None = None) -> TestPki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, ca_path = _make_ca("test fleet CA", directory, "ca")
    other_cert, other_key, other_path = _make_ca("someone else's CA", directory, "other-ca")
    return TestPki(
        ca=ca_path,
        server=_issue(ca_cert, ca_key, "broker.test", directory, "server", server=True),
        client=_issue(ca_cert, ca_key, "vehicle-under-test", directory, "client", server=False,
                      key_password=client_key_password),
        receiver=_issue(ca_cert, ca_key, "cloud-receiver", directory, "receiver", server=False),
        other_ca=other_path,
        stranger=_issue(other_cert, other_key, "stranger", directory, "stranger", server=False),
        client_key_password=client_key_password,
    )


class MosquittoBroker(LocalBroker):
    """The demo's local broker, with the test PKI for mutual TLS when given."""

    def __init__(self, directory: Path, port: int | None = None, tls: TestPki | None = None,
                 extra_config: str = "") -> None:
        self.tls = tls
        tls_lines = [] if tls is None else [
            f"cafile {tls.ca}",
            f"certfile {tls.server.cert}",
            f"keyfile {tls.server.key}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
        try:
            super().__init__(directory, port, tls_lines, extra_config)
        except BrokerError as exc:
            pytest.fail(f"{exc} (.ci/run installs it)", pytrace=False)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_tls(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker requiring mutual TLS; its certificates are in ``broker.tls`` (a TestPki)."""
    pki = make_pki(tmp_path / "pki", client_key_password=TEST_CLIENT_KEY_PASSWORD)
    broker = MosquittoBroker(tmp_path / "mosquitto-tls", tls=pki)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
