"""A real Mosquitto broker for tests, on a free loopback port in a temporary directory.

``mosquitto`` yields a plaintext broker; ``mosquitto_tls`` a broker that requires
mutual TLS, with a CA, server and client certificates generated here with
``cryptography``.  Both can be stopped and restarted on the same port (outage
tests) and keep their persistence file across restarts, so subscribers with a
persistent session do not lose messages queued while they were away.

A missing Mosquitto is a test *failure*, not a skip: CI installs it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The TLS fixture encrypts the vehicle's client key, so tests can check that the
# password is taken from the environment and never logged.
TEST_CLIENT_KEY_PASSWORD = b"correct horse battery staple"

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("mosquitto not found (install the Debian package 'mosquitto'; .ci/run does)", pytrace=False)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


class MosquittoBroker:
    """One Mosquitto process; ``stop()``/``start()`` keep the port and the persistence file."""

    def __init__(self, directory: Path, port: int | None = None, tls: TestPki | None = None,
                 extra_config: str = "") -> None:
        self.executable = find_mosquitto()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_loopback_port()
        self.tls = tls
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text(self._config_text(extra_config))
        self._process: subprocess.Popen[bytes] | None = None

    def _config_text(self, extra: str) -> str:
        lines = [
            # Stay as the current user (as root, mosquitto would switch to user "mosquitto",
            # who cannot read the test's private temporary directory).
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            "persistence_file mosquitto.db",
            # Outage tests queue whole backlogs for offline persistent subscribers.
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            "max_inflight_messages 0",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.tls:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server.cert}",
                f"keyfile {self.tls.server.key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        return "\n".join(lines) + "\n" + extra + "\n"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no broker log)"

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._process = subprocess.Popen([self.executable, "-c", str(self.config_path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: {stderr.strip()}\n"
                                   f"{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on {self.host}:{self.port} "
                           f"within {timeout} s\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("mosquitto is not running")
        return self._process.pid

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing (PUBACKs stop coming)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Crash: SIGKILL, no persistence written, sockets reset by the kernel."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: mosquitto writes its persistence file first)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
        if process.stderr:
            process.stderr.close()


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
