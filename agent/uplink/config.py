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


REGION = schema.ID  # a data-residency region: cn-north, eu-central
REGION_OR_EMPTY = schema.Text(64, schema.SAFE_CHARS, what=schema.SAFE_WHAT)
CLIENT_ID = REGION_OR_EMPTY  # MQTT client id; a topic-safe id, or "" for the default
ENV_NAME = schema.Text(128, "A-Za-z0-9_", min_len=1, what="letters, digits and _")


@dataclass(frozen=True)
class BrokerAddress:
    host: str = field(metadata=schema.text(schema.HOST))
    port: int = field(default=8883, metadata=schema.num(1, 65535))


@dataclass(frozen=True)
class AllowedBroker:
    host: str = field(metadata=schema.text(schema.HOST))
    port: int = field(default=8883, metadata=schema.num(1, 65535))
    # Region this broker serves; empty means "the configured region".
    region: str = field(default="", metadata=schema.text(REGION_OR_EMPTY))
    # SHA-256 of the broker certificate (DER), hex with or without colons.
    sha256: str | None = field(default=None, metadata=schema.text(schema.Text(128)))


@dataclass(frozen=True)
class TlsConfig:
    ca: str = field(metadata=schema.text(schema.PATH))
    cert: str | None = field(default=None, metadata=schema.text(schema.PATH))
    key: str | None = field(default=None, metadata=schema.text(schema.PATH))
    # Name of the environment variable holding the key password.  The password
    # itself never appears in the configuration, in logs or in state().
    key_password_env: str | None = field(default=None, metadata=schema.text(ENV_NAME))


@dataclass(frozen=True)
class UplinkConfig:
    region: str = field(metadata=schema.text(REGION))
    broker: BrokerAddress = field()
    allowed_brokers: list[AllowedBroker] = field(default_factory=list)
    tls: TlsConfig | None = None
    allow_plaintext_loopback: bool = False
    enabled: bool = True
    keepalive: int = field(default=30, metadata=schema.num(5, 65535))
    # Seconds for TCP connect + TLS handshake, and again for the CONNACK to arrive.
    connect_timeout: float = field(default=10.0, metadata=schema.num(0.01, 3600))
    in_flight: int = field(default=16, metadata=schema.num(1, 1000))
    backoff_min: float = field(default=0.5, metadata=schema.num(0.01, 3600))
    backoff_max: float = field(default=60.0, metadata=schema.num(0.01, 86_400))
    # Bytes per second, 0 = unlimited.
    byte_rate_limit: int = field(default=0, metadata=schema.num(0, 10**12))
    # "" = vehicle-{vehicle id}.
    client_id: str = field(default="", metadata=schema.text(CLIENT_ID))
    topic_prefix: str = field(default="vehicles", metadata=schema.text(schema.Text(128, "A-Za-z0-9_./-", min_len=1,
                                                            what="letters, digits, -, _, . and /")))
    # How long a batch whose PUBACK carried a failure reason code waits before it is re-sent.
    rejected_retry: float = field(default=30.0, metadata=schema.num(0.01, 86_400))
    # Not from YAML: where the broker was configured, for error messages.
    broker_where: str = field(default="uplink.broker", compare=False, metadata=schema.INTERNAL)


def normalize_fingerprint(text: str) -> str:
    return text.replace(":", "").replace(" ", "").lower()


def _validate(config: UplinkConfig, doc: Located, path: tuple) -> None:
    # Numbers and string lengths are checked by their declarations (schema.num, schema.text).
    if config.backoff_max < config.backoff_min:
        raise doc.error((*path, "backoff_min"), "need backoff_min <= backoff_max")
    if not _TOPIC_LEVEL.match(config.topic_prefix):
        raise doc.error((*path, "topic_prefix"), "must be topic levels of letters, digits, _ . - joined by /")
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
