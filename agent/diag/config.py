"""The ``diagnostics:`` section: the requests the agent may send (off by default).

Example::

    buses:
      - {name: obd, interface: socketcan, channel: can0, transmit: true}   # transmit: false by default
    diagnostics:
      requests:
        - {bus: obd, kind: obd01, pids: [0x0C, 0x0D, 0x05], period_s: 1}
        - {bus: obd, kind: obd03, period_s: 60}
        - {bus: obd, kind: uds19, status_mask: 0x09, request_id: 0x7E0, period_s: 60}

No section, or no requests: the agent sends nothing and only listens (OBD-II answers and DTC readings
other testers ask for are still decoded).  A request on a bus without ``transmit: true`` is a
configuration error naming the line: the agent never writes to such a bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent import schema
from agent.diag.request_spec import NotWritableError, RequestSpec, spec_from_config, writable_problem
from agent.yamlsrc import Located

SECTION = ("diagnostics",)


@dataclass
class _Diagnostics:
    # Each a mapping checked by agent.diag.requests.spec_from_config (bus, kind, period_s, pids, ...).
    requests: list[Any] = field(default_factory=list)
    timeout_s: float = field(default=1.0, metadata=schema.num(0.05, 60))


@dataclass(frozen=True)
class DiagnosticsConfig:
    requests: tuple[RequestSpec, ...] = ()
    timeout_s: float = 1.0
    writable: frozenset[str] = frozenset()


def diagnostics_config(config: Any) -> DiagnosticsConfig:
    """The typed section of a loaded ``AgentConfig``; errors read ``file:line: diagnostics...: problem``."""
    doc = config.document
    data = config.diagnostics or {}
    writable = frozenset(bus.name for bus in config.buses if bus.transmit)
    if not data:
        return DiagnosticsConfig(writable=writable)
    if doc is None:
        doc = Located(config.source, {"diagnostics": data})
    raw = schema.build(_Diagnostics, doc, SECTION, data)
    buses = {bus.name for bus in config.buses}
    specs = []
    for index, item in enumerate(raw.requests):
        path = (*SECTION, "requests", index)
        try:
            spec = spec_from_config(item, f"diagnostics.requests[{index}]")
        except ValueError as exc:
            raise doc.error(path, str(exc).removeprefix(f"diagnostics.requests[{index}]").lstrip(".: ")) from None
        if spec.bus not in buses:
            raise doc.error((*path, "bus"), f"no bus named {spec.bus!r} (buses: {', '.join(sorted(buses))})")
        problem = writable_problem(spec, writable, "transmit")
        if problem:
            raise doc.error((*path, "bus"), problem)
        specs.append(spec)
    return DiagnosticsConfig(tuple(specs), raw.timeout_s, writable)


__all__ = ["DiagnosticsConfig", "NotWritableError", "diagnostics_config"]
