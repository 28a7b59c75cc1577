"""What "stays on this machine" means, in one place.

CAN traffic is read from local adapters, python-can virtual buses, or a
socketcand server on loopback; MQTT plaintext is allowed to loopback only.
Interfaces are allow-listed (rather than a few refused by name) so that any
python-can interface that talks over an IP network is refused unless it is
added here on purpose.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

# python-can interfaces that reach a CAN bus on this machine (kernel, USB/PCI/serial adapters, in-process).
LOCAL_INTERFACES = frozenset({
    "socketcan", "virtual", "pcan", "kvaser", "vector", "ixxat", "neovi", "nican", "nixnet", "slcan", "serial",
    "gs_usb", "cantact", "canalystii", "systec", "usb2can", "seeedstudio", "robotell", "etas", "iscan",
})
# Interfaces that speak to a server over TCP: allowed only with a loopback host.
LOOPBACK_ONLY_INTERFACES = frozenset({"socketcand"})


def is_loopback(host: str) -> bool:
    """True only for literal loopback addresses and ``localhost`` (no DNS lookup:
    a lookup is already a contact with the outside)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def local_bus_problem(kwargs: Mapping[str, Any]) -> str | None:
    """Why python-can ``Bus(**kwargs)`` would not stay on this machine, or None when it does."""
    interface = str(kwargs.get("interface", ""))
    if interface in LOOPBACK_ONLY_INTERFACES:
        host = str(kwargs.get("host", ""))
        return None if is_loopback(host) else f"{interface} host {host!r} is not loopback (127.0.0.1, ::1)"
    if interface in LOCAL_INTERFACES:
        return None
    known = ", ".join(sorted(LOCAL_INTERFACES | LOOPBACK_ONLY_INTERFACES))
    return f"interface {interface!r} is not a local CAN interface (allowed: {known})"
