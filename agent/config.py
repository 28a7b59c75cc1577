"""The agent's configuration: one YAML file loaded into typed dataclasses.

``config/agent.yaml`` is the commented example; the defaults below are the ones
it documents.  Only data lives here; each stage interprets its own section.
Relative paths in the file are resolved against the file's own directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import schema
from agent.yamlsrc import ConfigError, Located, load_file, load_text


@dataclass
class VehicleConfig:
    # Internal id used in topics and batch headers.  Never the VIN: the VIN is
    # identity data and is only ever sent as a keyed pseudonym.
    id: str = "demo-vehicle"
    model: str = ""


@dataclass
class BusConfig:
    name: str
    # python-can interface: socketcan, virtual, socketcand, pcan, ...
    interface: str = "virtual"
    channel: str = ""
    bitrate: int = 500000
    fd: bool = False
    data_bitrate: int | None = None
    dbc: list[str] = field(default_factory=list)
    # Match extended frames on their J1939 PGN (ignoring source address) even
    # when the DBC does not declare ProtocolType J1939.
    j1939: bool = False
    # When replaying a log: which log channel is this bus (candump name such as
    # "can1", or the reader's channel number: ASC/BLF count from 0, TRC from 1).
    log_channel: str | int | None = None
    # Extra python-can constructor arguments (e.g. host/port for socketcand).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StateConfig:
    # Where the buffer, consent state, ledger and keys live (created 0700).
    dir: str = "state"


@dataclass
class AgentConfig:
    vehicle: VehicleConfig = field(default_factory=VehicleConfig)
    buses: list[BusConfig] = field(default_factory=list)
    state: StateConfig = field(default_factory=StateConfig)
    # Sections owned by later stages; kept as located data and validated by
    # the stage that interprets them (rules need expression positions).
    collection: dict[str, Any] = field(default_factory=dict)
    batching: dict[str, Any] = field(default_factory=dict)
    buffer: dict[str, Any] = field(default_factory=dict)
    uplink: dict[str, Any] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    camera: dict[str, Any] = field(default_factory=dict)
    incidents: dict[str, Any] = field(default_factory=dict)
    # Not from YAML: the file this came from and its located document, so later
    # stages can report file:line for their own sections.
    source: str = "<defaults>"
    base_dir: Path = field(default_factory=Path.cwd)
    document: Located | None = None

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def where(self, path: tuple[str | int, ...]) -> str:
        return self.document.where(path) if self.document else self.source


_SECTIONS = ("vehicle", "buses", "state", "collection", "batching", "buffer", "uplink", "consent", "camera",
             "incidents")


def _validate(config: AgentConfig, doc: Located) -> None:
    names: set[str] = set()
    for index, bus in enumerate(config.buses):
        if not bus.name or not bus.name.replace("_", "").replace("-", "").isalnum():
            raise doc.error(("buses", index, "name"), f"bus name must be letters, digits, - or _, got {bus.name!r}")
        if bus.name in names:
            raise doc.error(("buses", index, "name"), f"duplicate bus name {bus.name!r}")
        names.add(bus.name)
        if bus.bitrate <= 0:
            raise doc.error(("buses", index, "bitrate"), "must be positive")
        if bus.interface == "udp_multicast":
            # Project rule: never send CAN over the network outside loopback.
            raise doc.error(("buses", index, "interface"), "udp_multicast is not allowed (leaves the machine)")
        for dbc_index, dbc in enumerate(bus.dbc):
            if not config.resolve(dbc).is_file():
                raise doc.error(("buses", index, "dbc", dbc_index), f"no such file {dbc}")


def from_document(doc: Located, base_dir: Path) -> AgentConfig:
    if doc.data is not None and not isinstance(doc.data, dict):
        raise doc.error((), "the configuration must be a mapping of sections")
    data = dict(doc.data or {})
    for key in data:
        if key not in _SECTIONS:
            raise doc.error((key,), f"unknown section (known: {', '.join(_SECTIONS)})")
    typed = {key: data[key] for key in ("vehicle", "buses", "state") if key in data}
    config = schema.build(AgentConfig, doc, (), typed)
    for key in _SECTIONS[3:]:
        if key in data:
            value = data[key]
            if value is not None and not isinstance(value, dict):
                raise doc.error((key,), f"expected a mapping, got {type(value).__name__}")
            setattr(config, key, value or {})
    config.source = doc.source
    config.base_dir = base_dir
    config.document = doc
    _validate(config, doc)
    return config


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    doc = load_file(path)
    return from_document(doc, path.resolve().parent)


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> AgentConfig:
    return from_document(load_text(text, source), base_dir or Path.cwd())


__all__ = ["AgentConfig", "BusConfig", "ConfigError", "StateConfig", "VehicleConfig", "load_config",
           "parse_config"]
