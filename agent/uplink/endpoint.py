"""Which broker the agent may talk to, and how: residency, plaintext rule, TLS, pinning.

Every check here runs before a socket is opened.  A refused endpoint is a
``EndpointRefused`` with a message that names the configuration entry and says
what to change; the uplink then stays refused and the agent keeps buffering.
The certificate pin is the one check that needs the broker's certificate: it
runs inside the TLS handshake, before a single MQTT byte is sent.

Key material never reaches a message or a log line: the key password is read
from the environment variable the config names, and errors name the variable,
never its value.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from agent.netlocal import is_loopback
from agent.uplink.config import AllowedBroker, TlsConfig, UplinkConfig, normalize_fingerprint


class EndpointRefused(Exception):
    """The configured endpoint must not be used; nothing was sent to it."""


class PinMismatch(ssl.SSLError):
    """The broker's certificate is valid for the CA but is not the pinned one."""


@dataclass(frozen=True)
class Endpoint:
    """An endpoint that passed the residency and transport checks."""

    host: str
    port: int
    region: str
    tls: bool
    pin_sha256: str | None

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _same_host(a: str, b: str) -> bool:
    a, b = a.strip("[]").lower().rstrip("."), b.strip("[]").lower().rstrip(".")
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _allowed_entry(config: UplinkConfig) -> AllowedBroker | None:
    for entry in config.allowed_brokers:
        region = entry.region or config.region
        if _same_host(entry.host, config.broker.host) and entry.port == config.broker.port and \
                region == config.region:
            return entry
    return None


def check_endpoint(config: UplinkConfig) -> Endpoint:
    """Apply the residency allow-list and the plaintext rule; raise EndpointRefused."""
    broker = config.broker
    where = config.broker_where
    entry = _allowed_entry(config)
    if entry is None:
        allowed = ", ".join(f"{e.host}:{e.port}" for e in config.allowed_brokers
                            if (e.region or config.region) == config.region) or "none"
        raise EndpointRefused(
            f"{where}: broker {broker.host}:{broker.port} is not in the allow-list for region "
            f"{config.region!r} (allowed: {allowed}); refusing to connect, data stays buffered")
    if config.tls is None:
        if not is_loopback(broker.host):
            raise EndpointRefused(
                f"{where}: plaintext MQTT to non-loopback host {broker.host} is not allowed; "
                f"configure uplink.tls (data stays buffered)")
        if not config.allow_plaintext_loopback:
            raise EndpointRefused(
                f"{where}: plaintext MQTT to {broker.host} needs uplink.allow_plaintext_loopback: true "
                f"(or configure uplink.tls); data stays buffered")
    pin = normalize_fingerprint(entry.sha256) if entry.sha256 else None
    return Endpoint(broker.host, broker.port, config.region, config.tls is not None, pin)


def certificate_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class _PinnedSSLSocket(ssl.SSLSocket):
    """An SSLSocket that checks the peer certificate's SHA-256 right after the handshake."""

    expected_sha256 = ""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        der = self.getpeercert(binary_form=True) or b""
        actual = certificate_sha256(der)
        if not hmac.compare_digest(actual, self.expected_sha256):
            self.close()
            raise PinMismatch(f"broker certificate SHA-256 {actual} does not match the pinned "
                              f"{self.expected_sha256}; refusing this endpoint")


def build_tls_context(tls: TlsConfig, pin_sha256: str | None = None,
                      environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A client context that verifies the server (CA + host name), presents the client
    certificate, and (optionally) pins the server certificate.  Raises EndpointRefused
    with a message free of key material."""
    environ = os.environ if environ is None else environ
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise EndpointRefused(f"uplink.tls.ca: cannot load CA certificates from {tls.ca}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.cert and tls.key:
        password: str | None = None
        if tls.key_password_env:
            password = environ.get(tls.key_password_env)
            if password is None:
                raise EndpointRefused(f"uplink.tls.key_password_env: environment variable "
                                      f"{tls.key_password_env} is not set")
        try:
            context.load_cert_chain(tls.cert, tls.key, password=password)
        except FileNotFoundError as exc:
            raise EndpointRefused(f"uplink.tls: no such file {exc.filename or tls.cert}") from None
        except (OSError, ssl.SSLError):
            # The library message may quote PEM details; say only what the user must check.
            password_hint = (f"the password in ${tls.key_password_env} is wrong" if tls.key_password_env
                             else "the key is encrypted and uplink.tls.key_password_env is not set")
            raise EndpointRefused(f"uplink.tls: cannot load client certificate {tls.cert} with key {tls.key}: "
                                  f"they do not match, are not PEM, or {password_hint}") from None
    if pin_sha256:
        context.sslsocket_class = type("PinnedSSLSocket", (_PinnedSSLSocket,), {"expected_sha256": pin_sha256})
    return context
