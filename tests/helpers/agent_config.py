"""The one agent-config writer of the test suite: the bundled truck log's two buses (J1939 truck, GPS), state
in ``tmp/state``, and optionally a plaintext uplink to a loopback broker.

``buses`` picks how the agent reaches them: ``virtual`` (python-can's in-process bus; also what in-process
runs over a log use, where no bus is opened) or ``socketcand`` (the simulator's socketcand server on
``sim_port``, for `vehicle-agent run` as its own process).  ``only`` keeps some of the two buses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
J1939_DBC = REPO / "dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc"
GPS_DBC = REPO / "dbc/css-electronics/canmod-gps.dbc"
_BUSES = {"truck": (J1939_DBC, True, "0"), "gps": (GPS_DBC, False, "1")}


def uplink_lines(broker_port: int, uplink_extra: str = "") -> list[str]:
    """The uplink section for a plaintext broker on loopback, with quick reconnects."""
    return [
        "uplink:",
        "  region: cn-test",
        f"  broker: {{host: 127.0.0.1, port: {broker_port}}}",
        f"  allowed_brokers: [{{host: 127.0.0.1, port: {broker_port}}}]",
        "  allow_plaintext_loopback: true",
        "  backoff_min: 0.1",
        "  backoff_max: 1.0",
        *[line for line in uplink_extra.splitlines() if line.strip()],
    ]


def _bus_line(name: str, buses: str, sim_port: int | None, channel_prefix: str | None, log_channels: bool) -> str:
    dbc, j1939, log_channel = _BUSES[name]
    fields = [f"name: {name}"]
    if buses in ("socketcand", "socketcand-stock"):
        if sim_port is None:
            raise ValueError("socketcand buses need sim_port")
        fields += ["interface: socketcand", f"channel: {name}"]
    elif buses == "virtual":
        fields.append("interface: virtual")
        if channel_prefix:
            fields.append(f"channel: {channel_prefix}-{name}")
    else:
        raise ValueError(f"buses must be virtual, socketcand or socketcand-stock, not {buses!r}")
    fields.append(f"dbc: [{json.dumps(str(dbc))}]")
    if j1939:
        fields.append("j1939: true")
    if log_channels:
        fields.append(f"log_channel: '{log_channel}'")
    if buses == "socketcand":  # the agent's default client (lean)
        fields.append(f"options: {{host: 127.0.0.1, port: {sim_port}}}")
    elif buses == "socketcand-stock":  # python-can's own client, the fallback
        fields.append(f"options: {{host: 127.0.0.1, port: {sim_port}, client: stock}}")
    return "  - {" + ", ".join(fields) + "}"


def write_agent_config(tmp: Path, *, buses: str = "virtual", sim_port: int | None = None,
                       broker_port: int | None = None, batch_age: float = 10.0, vehicle: str = "{id: test-truck-7}",
                       state_dir: Path | None = None, quota_mb: float | None = None, uplink_extra: str = "",
                       extra: str = "", channel_prefix: str | None = None, only: Sequence[str] = ("truck", "gps"),
                       log_channels: bool = True, name: str = "agent.yaml") -> Path:
    lines = [f"vehicle: {vehicle}", "buses:",
             *(_bus_line(bus, buses, sim_port, channel_prefix, log_channels) for bus in only),
             f"state: {{dir: {json.dumps(str(state_dir or tmp / 'state'))}}}",
             f"batching: {{max_age_s: {batch_age}}}"]
    if quota_mb is not None:
        lines.append(f"buffer: {{quota_mb: {quota_mb}}}")
    if broker_port is not None:
        lines += uplink_lines(broker_port, uplink_extra)
    path = tmp / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
