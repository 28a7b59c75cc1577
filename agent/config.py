"""The agent's configuration: one YAML file loaded into typed dataclasses.

``config/agent.yaml`` is the commented example; the defaults below are the ones
it documents.  Only data lives here; each stage interprets its own section.
Relative paths in the file are resolved against the file's own directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import schema
from agent.batch.format import DEFAULT_TIME_RESOLUTION_US, MAX_TIME_RESOLUTION_US
from agent.canio import socketcand_client_problem
from agent.netlocal import bus_problem
from agent.yamlsrc import ConfigError, Located, load_file, load_text

# Bus names are frame labels and file-name parts: no dots.
BUS_NAME = schema.Text(64, "A-Za-z0-9_-", min_len=1, what="letters, digits, - and _")


@dataclass
class VehicleConfig:
    # Internal id used in topics and batch headers.  Never the VIN: the VIN is
    # identity data and is only ever sent as a keyed pseudonym.
    id: str = field(default="demo-vehicle", metadata=schema.text(schema.ID))
    model: str = field(default="", metadata=schema.text(schema.NAME))
    # The VIN, when known.  It never leaves the car: with a VIN set, topics and
    # batch headers carry a keyed pseudonym of it (HMAC-SHA256, per-vehicle key
    # in the state dir) instead of ``id``.
    vin: str = field(default="", metadata=schema.text(schema.Text(32)))


@dataclass
class BusConfig:
    name: str = field(metadata=schema.text(BUS_NAME))
    # python-can interface: socketcan, virtual, socketcand, pcan, ...
    interface: str = field(default="virtual", metadata=schema.text(schema.Text(64)))
    channel: str = field(default="", metadata=schema.text(schema.Text(256)))
    bitrate: int = field(default=500000, metadata=schema.num(1_000, 10_000_000))
    fd: bool = False
    data_bitrate: int | None = field(default=None, metadata=schema.num(1_000, 20_000_000))
    dbc: list[str] = field(default_factory=list, metadata=schema.text(schema.PATH))
    # Match extended frames on their J1939 PGN (ignoring source address) even
    # when the DBC does not declare ProtocolType J1939.
    j1939: bool = False
    # When replaying a log: which log channel is this bus (candump name such as
    # "can1", or the reader's channel number: ASC/BLF count from 0, TRC from 1).
    log_channel: str | int | None = field(default=None, metadata=schema.num(0, 1023, text=schema.Text(64)))
    # The agent may send frames on this bus (diagnostic requests, agent.diag); it never writes to any other.
    transmit: bool = False
    # Extra python-can constructor arguments (e.g. host/port for socketcand); numbers finite, text bounded.
    # A socketcand bus uses the agent's lean client; ``client: stock`` picks python-can's own (agent.canio).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StateConfig:
    # Where the buffer, consent state, ledger and keys live (created 0700).
    dir: str = field(default="state", metadata=schema.text(schema.PATH))


@dataclass
class BatchingConfig:
    # A batch closes after this much data time (or wall time, for a quiet bus) ...
    max_age_s: float = field(default=10.0, metadata=schema.num(0.01, 86_400))
    # ... or when its compressed size reaches this (well under broker limits).
    max_bytes: int = field(default=65536, metadata=schema.num(1024, 16 * 1024 * 1024))
    # Timestamps of telemetry batches are kept to this many microseconds (floored); 1 keeps the
    # frames' own.  Incident snapshots always keep the frames' own (agent.incident).
    time_resolution_us: int = field(default=DEFAULT_TIME_RESOLUTION_US, metadata=schema.num(1, MAX_TIME_RESOLUTION_US))


@dataclass
class BufferConfig:
    # SQLite file inside state.dir.
    file: str = field(default="buffer.sqlite", metadata=schema.text(schema.PATH))
    # Byte quota of stored batches; when full: lowest priority, then oldest, evicted.
    quota_mb: float = field(default=256.0, metadata=schema.num(0.001, 1_048_576))
    # Streams never evicted by the quota (locked incident snapshots).
    never_evict: list[str] = field(default_factory=lambda: ["incident"], metadata=schema.text(schema.ID))
    # Per-stream time to live in seconds (unsent batches older than this expire; at most 10 years).
    ttl_s: dict[str, float] = field(default_factory=dict, metadata=schema.num(0.001, 315_360_000))
    # SQLite synchronous mode in WAL: FULL survives power loss (every commit is
    # fsynced); NORMAL survives kill -9 but may lose the last commits on power loss.
    synchronous: str = field(default="FULL", metadata=schema.text(schema.Text(16)))


@dataclass
class AgentConfig:
    vehicle: VehicleConfig = field(default_factory=VehicleConfig)
    buses: list[BusConfig] = field(default_factory=list)
    state: StateConfig = field(default_factory=StateConfig)
    # Sections owned by later stages; kept as located data and validated by
    # the stage that interprets them (rules need expression positions).
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    collection: dict[str, Any] = field(default_factory=dict,
                                       metadata=schema.deferred("agent.collect.rules:_Collection"))
    uplink: dict[str, Any] = field(default_factory=dict,
                                   metadata=schema.deferred("agent.uplink.config:UplinkConfig"))
    consent: dict[str, Any] = field(default_factory=dict,
                                    metadata=schema.deferred("agent.privacy.config:ConsentConfig"))
    camera: dict[str, Any] = field(default_factory=dict,
                                   metadata=schema.deferred("agent.camera.config:CameraConfig"))
    incidents: dict[str, Any] = field(default_factory=dict,
                                      metadata=schema.deferred("agent.incident.config:_Incidents"))
    owner_page: dict[str, Any] = field(default_factory=dict,
                                       metadata=schema.deferred("agent.ownerpage.config:OwnerPageConfig"))
    diagnostics: dict[str, Any] = field(default_factory=dict,
                                        metadata=schema.deferred("agent.diag.config:_Diagnostics"))
    # Not from YAML: the file this came from and its located document, so later
    # stages can report file:line for their own sections.
    source: str = field(default="<defaults>", metadata=schema.INTERNAL)
    base_dir: Path = field(default_factory=Path.cwd, metadata=schema.INTERNAL)
    document: Located | None = field(default=None, metadata=schema.INTERNAL)

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def buffer_path(self) -> Path:
        """The batch buffer: ``buffer.file`` in the state directory (the one place that says so)."""
        return self.resolve(self.state.dir) / self.buffer.file

    def where(self, path: tuple[str | int, ...]) -> str:
        return self.document.where(path) if self.document else self.source


_TYPED_SECTIONS = ("vehicle", "buses", "state", "batching", "buffer")
_SECTIONS = (*_TYPED_SECTIONS, "collection", "uplink", "consent", "camera", "incidents", "owner_page", "diagnostics")


_VIN_RE = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")


def _validate(config: AgentConfig, doc: Located) -> None:
    if _VIN_RE.match(config.vehicle.id.upper()) and any(c.isdigit() for c in config.vehicle.id):
        raise doc.error(("vehicle", "id"), "looks like a VIN; the VIN must never leave the car: "
                                           "put it in vehicle.vin (sent only as a keyed pseudonym)")
    if config.vehicle.vin and not _VIN_RE.match(config.vehicle.vin.replace(" ", "").upper()):
        raise doc.error(("vehicle", "vin"), "not a 17-character VIN")
    names: set[str] = set()
    for index, bus in enumerate(config.buses):  # names and numbers: checked by their declarations
        if bus.name in names:
            raise doc.error(("buses", index, "name"), f"duplicate bus name {bus.name!r}")
        names.add(bus.name)
        arguments = {"interface": bus.interface, **bus.options}
        if bus.channel is not None:
            arguments["channel"] = bus.channel
        problem = bus_problem(arguments)
        if problem is not None:  # CAN traffic stays on this machine (see agent/netlocal.py)
            key = problem.field if problem.field in ("interface", "channel") else "options"
            raise doc.error(("buses", index, key), problem.message)
        client_problem = socketcand_client_problem(arguments)
        if client_problem is not None:
            raise doc.error(("buses", index, "options", "client"), client_problem)
        for dbc_index, dbc in enumerate(bus.dbc):
            try:
                found = config.resolve(dbc).is_file()
            except OSError as exc:  # e.g. permission denied on a directory of the path
                raise doc.error(("buses", index, "dbc", dbc_index), f"cannot check {dbc}: {exc.strerror}") from None
            if not found:
                raise doc.error(("buses", index, "dbc", dbc_index), f"no such file {dbc}")


def _validate_sections(config: AgentConfig, doc: Located) -> None:
    # Numbers (max_age_s, max_bytes, quota_mb, ttl_s) are checked by their declared ranges.
    for stream in config.buffer.ttl_s:
        problem = schema.ID.problem(stream)
        if problem:
            raise doc.error(("buffer", "ttl_s", stream), f"stream name {problem}")
    if config.buffer.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise doc.error(("buffer", "synchronous"), "must be FULL, NORMAL or EXTRA")


def from_document(doc: Located, base_dir: Path) -> AgentConfig:
    if doc.data is not None and not isinstance(doc.data, dict):
        raise doc.error((), "the configuration must be a mapping of sections")
    data = dict(doc.data or {})
    for key in data:
        if key not in _SECTIONS:
            raise doc.error((key,), f"unknown section (known: {', '.join(_SECTIONS)})")
    typed = {key: data[key] for key in _TYPED_SECTIONS if key in data}
    config = schema.build(AgentConfig, doc, (), typed)
    for key in _SECTIONS[len(_TYPED_SECTIONS):]:
        if key in data:
            value = data[key]
            if value is not None and not isinstance(value, dict):
                raise doc.error((key,), f"expected a mapping, got {type(value).__name__}")
            setattr(config, key, value or {})
    config.source = doc.source
    config.base_dir = base_dir
    config.document = doc
    _validate(config, doc)
    _validate_sections(config, doc)
    return config


def limits_table() -> str:
    """Every configuration key with its limit, as the Markdown table of ``docs/configuration.md``."""
    return schema.markdown_table(AgentConfig)


def load_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    doc = load_file(path)
    return from_document(doc, path.resolve().parent)


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> AgentConfig:
    return from_document(load_text(text, source), base_dir or Path.cwd())


__all__ = ["AgentConfig", "BatchingConfig", "BufferConfig", "BusConfig", "ConfigError", "StateConfig",
           "VehicleConfig", "limits_table", "load_config", "parse_config"]
