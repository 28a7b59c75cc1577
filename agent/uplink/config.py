"""The ``uplink:`` section of the agent configuration, as typed dataclasses.

Example (the defaults are the dataclass defaults below)::

    uplink:
      region: eu-central
      broker: {host: mqtt.eu-central.example.net, port: 8883}
      allowed_brokers:                 # residency allow-list for this region
        - {host: mqtt.eu-central.example.net, port: 8883, region: eu-central,
           sha256: "3f:9a:..."}        # optional pin of the broker certificate (DER)
      tls:
        ca: certs/fleet-ca.pem
        cert: certs/vehicle.pem
        key: certs/vehicle.key
        key_password_env: VEHICLE_KEY_PASSWORD   # name of the variable, never the password
      allow_plaintext_loopback: false
      keepalive: 30
      connect_timeout: 10
      in_flight: 16
      backoff_min: 0.5
      backoff_max: 60
      byte_rate_limit: 0               # bytes per second, 0 = unlimited
      topic_prefix: vehicles

Endpoint problems (not allow-listed, plaintext off loopback) are *not* raised
here: the agent must start and keep buffering; the uplink refuses the endpoint
at run time with a clear error (see ``agent.uplink.endpoint``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import schema
from agent.yamlsrc import ConfigError, Located

SECTION = ("uplink",)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int = 8883


@dataclass(frozen=True)
class AllowedBroker:
    host: str
    port: int = 8883
    # Region this broker serves; empty means "the configured region".
    region: str = ""
    # SHA-256 of the broker certificate (DER), hex with or without colons.
    sha256: str | None = None


@dataclass(frozen=True)
class TlsConfig:
    ca: str
    cert: str | None = None
    key: str | None = None
    # Name of the environment variable holding the key password.  The password
    # itself never appears in the configuration, in logs or in state().
    key_password_env: str | None = None


@dataclass(frozen=True)
class UplinkConfig:
    region: str
    broker: BrokerAddress
    allowed_brokers: list[AllowedBroker] = field(default_factory=list)
    tls: TlsConfig | None = None
    allow_plaintext_loopback: bool = False
    enabled: bool = True
    keepalive: int = 30
    # Seconds for TCP connect + TLS handshake, and again for the CONNACK to arrive.
    connect_timeout: float = 10.0
    in_flight: int = 16
    backoff_min: float = 0.5
    backoff_max: float = 60.0
    byte_rate_limit: int = 0
    client_id: str = ""
    topic_prefix: str = "vehicles"
    # How long a batch whose PUBACK carried a failure reason code waits before it is re-sent.
    rejected_retry: float = 30.0
    # Not from YAML: where the broker was configured, for error messages.
    broker_where: str = field(default="uplink.broker", compare=False)


def normalize_fingerprint(text: str) -> str:
    return text.replace(":", "").replace(" ", "").lower()


def _validate(config: UplinkConfig, doc: Located, path: tuple) -> None:
    if not config.region.strip():
        raise doc.error((*path, "region"), "must name the data-residency region")
    if config.keepalive < 5 or config.keepalive > 65535:
        raise doc.error((*path, "keepalive"), "must be between 5 and 65535 seconds")
    if config.connect_timeout <= 0:
        raise doc.error((*path, "connect_timeout"), "must be positive")
    if config.in_flight < 1 or config.in_flight > 1000:
        raise doc.error((*path, "in_flight"), "must be between 1 and 1000")
    if config.backoff_min <= 0 or config.backoff_max < config.backoff_min:
        raise doc.error((*path, "backoff_min"), "need 0 < backoff_min <= backoff_max")
    if config.byte_rate_limit < 0:
        raise doc.error((*path, "byte_rate_limit"), "must be 0 (unlimited) or a positive number of bytes/s")
    if config.rejected_retry <= 0:
        raise doc.error((*path, "rejected_retry"), "must be positive")
    if not _TOPIC_LEVEL.match(config.topic_prefix):
        raise doc.error((*path, "topic_prefix"), "must be topic levels of letters, digits, _ . - joined by /")
    if not 0 < config.broker.port < 65536:
        raise doc.error((*path, "broker", "port"), "must be a TCP port")
    for index, allowed in enumerate(config.allowed_brokers):
        if allowed.sha256 is not None and not _SHA256_HEX.match(normalize_fingerprint(allowed.sha256)):
            raise doc.error((*path, "allowed_brokers", index, "sha256"),
                            "must be 64 hex digits (colons allowed): the SHA-256 of the broker certificate")
        if allowed.sha256 is not None and config.tls is None:
            raise doc.error((*path, "allowed_brokers", index, "sha256"), "a certificate pin needs tls")
    if config.tls is not None and (config.tls.cert is None) != (config.tls.key is None):
        raise doc.error((*path, "tls"), "cert and key go together: give both or neither")


def _resolve_paths(tls: TlsConfig | None, base_dir: Path) -> TlsConfig | None:
    if tls is None:
        return None

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        candidate = Path(value).expanduser()
        return str(candidate if candidate.is_absolute() else base_dir / candidate)

    return replace(tls, ca=resolve(tls.ca) or tls.ca, cert=resolve(tls.cert), key=resolve(tls.key))


def parse_uplink(doc: Located, data: Any, base_dir: Path, path: tuple = SECTION) -> UplinkConfig:
    """Build the uplink configuration; errors read ``file:line: uplink.key: problem``."""
    config = schema.build(UplinkConfig, doc, path, data)
    _validate(config, doc, path)
    return replace(config, tls=_resolve_paths(config.tls, base_dir),
                   broker_where=doc.where((*path, "broker")))


def uplink_config(agent_config: Any) -> UplinkConfig | None:
    """The uplink section of an ``AgentConfig`` (which keeps the located document);
    None when the file has no ``uplink:`` section (the agent then only buffers)."""
    if not agent_config.uplink:
        return None
    doc = agent_config.document
    if doc is None:
        raise ConfigError(f"{agent_config.source}: uplink: no configuration document")
    return parse_uplink(doc, agent_config.uplink, agent_config.base_dir)
