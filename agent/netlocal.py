"""What "stays on this machine" means, in one place.

CAN traffic is read from local adapters, python-can virtual buses, or a
socketcand server on loopback; MQTT plaintext is allowed to loopback only.
Interfaces are allow-listed (rather than a few refused by name) so that any
python-can interface that talks over an IP network is refused unless it is
added here on purpose.

The interface name is not enough: several local interfaces take a channel that
pyserial opens as a URL (``slcan``/``serial``/``robotell`` with
``socket://HOST:PORT`` or ``rfc2217://HOST:PORT`` open TCP to HOST), and some
channels name a network device (``PCAN_LANBUS1``: a PCAN-Gateway over IP;
``ETAS://ETH/...``: an ETAS module over Ethernet).  So every value given to
python-can is checked, for every interface:

* a value under a key that names a host (``host``, ``ip``, ``address``,
  ``server``, ``url``, ...) must be a loopback address or ``localhost``;
* a URL (``scheme://...``) anywhere is allowed only for a scheme that stays on
  the machine (``loop://``, ``hwgrep://``, ``ETAS://USB/...``), or for a network
  scheme (``socket://``, ``rfc2217://``, ...) with a loopback host;
* a bare IP address anywhere must be loopback.

Names are never resolved (a DNS lookup is already a contact with the outside):
a hostname other than ``localhost`` is refused.  What python-can cannot tell
from its arguments - a Vector or Kvaser channel that the vendor's driver maps
to a device on Ethernet - is outside this check (docs/deploy.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

# python-can interfaces that reach a CAN bus on this machine (kernel, USB/PCI/serial adapters, in-process).
LOCAL_INTERFACES = frozenset({
    "socketcan", "virtual", "pcan", "kvaser", "vector", "ixxat", "neovi", "nican", "nixnet", "slcan", "serial",
    "gs_usb", "cantact", "canalystii", "systec", "usb2can", "seeedstudio", "robotell", "etas", "iscan",
})
# Interfaces that speak to a server over TCP: allowed only with a loopback host.
LOOPBACK_ONLY_INTERFACES = frozenset({"socketcand", "socketcand_lean"})
# Keys whose value names a host (compared lower-case, also as the end of a key: ``server_ip``, ``tcp_host``).
HOST_KEYS = frozenset({"host", "hostname", "ip", "ip_address", "address", "addr", "server", "url", "uri",
                       "remote", "endpoint", "peer", "gateway"})
# URL schemes that never leave the machine (pyserial's loop:// and hwgrep:// pick no network peer).
LOCAL_SCHEMES = frozenset({"loop", "hwgrep"})
# URL schemes that connect to a host: allowed with a loopback host only.
NETWORK_SCHEMES = frozenset({"socket", "rfc2217", "tcp", "udp", "socketcand", "http", "https", "ws", "wss",
                             "ssh", "telnet"})
# python-can arguments that pull further arguments from /etc/can.conf, ~/.canrc or CAN_* variables.
CONFIG_KEYS = frozenset({"config_context", "context"})
_PCAN_LAN = re.compile(r"^PCAN_LANBUS\d+$", re.IGNORECASE)
_ETAS_LOCAL = re.compile(r"^etas://usb/", re.IGNORECASE)
_IPV4_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$")
_IPV6_PORT = re.compile(r"^\[([0-9A-Fa-f:.%]+)\](?::\d{1,5})?$")


def is_loopback(host: str) -> bool:
    """True only for literal loopback addresses and ``localhost`` (no DNS lookup:
    a lookup is already a contact with the outside)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _ip_literal(value: str) -> str | None:
    """The IP address a value is (``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]:80``), else None."""
    for pattern in (_IPV4_PORT, _IPV6_PORT):
        match = pattern.match(value)
        if match:
            value = match.group(1)
            break
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return value


@dataclass(frozen=True)
class BusProblem:
    """Why a bus would not stay on this machine: ``field`` is the python-can argument (``channel``,
    ``host``, ``interface``, or a path into a nested option such as ``options.url``)."""

    field: str
    message: str

    def __str__(self) -> str:
        return self.message


def _values(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every leaf of a (nested) argument with its dotted path."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _values(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _values(item, f"{path}[{index}]")
    else:
        yield path, value


def _names_host(path: str) -> bool:
    key = re.split(r"[.\[]", path)[-1].rstrip("]").lower()
    return key in HOST_KEYS or any(key.endswith("_" + name) for name in HOST_KEYS)


def _url_problem(interface: str, value: str) -> str | None:
    # As pyserial's serial_for_url reads it: whatever comes before the first "://" is the scheme.
    scheme = value.split("://", 1)[0].lower()
    if scheme == "etas" and interface == "etas":
        return None if _ETAS_LOCAL.match(value) else "is an ETAS device on Ethernet (only ETAS://USB/... is local)"
    if scheme in LOCAL_SCHEMES:
        return None
    if scheme in NETWORK_SCHEMES:
        try:
            host = urlsplit(value).hostname or ""
        except ValueError:
            host = ""
        if is_loopback(host):
            return None
        named = f"host {host!r}" if host else "a host"
        return f"opens a network connection ({scheme}://) to {named}, not loopback (127.0.0.1, ::1, localhost)"
    return (f"is a URL ({scheme}://) not known to stay on this machine; allowed: a local device, "
            f"{', '.join(f'{s}://' for s in sorted(LOCAL_SCHEMES))}, or a network URL with a loopback host")


def _value_problem(interface: str, path: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return None  # numbers (ports, USB addresses, bitrates), flags
    text = value.strip()
    if "://" in text:
        return _url_problem(interface, text)
    address = _ip_literal(text)
    if address is not None:
        return None if is_loopback(address) else "is not a loopback address (127.0.0.1, ::1)"
    if _names_host(path) and not text.isdigit() and not is_loopback(text):
        return "is not loopback (127.0.0.1, ::1, localhost); host names are not looked up"
    if path == "channel" and interface == "pcan" and _PCAN_LAN.match(text):
        return "is a PCAN-LAN channel (a PCAN-Gateway over IP); use a local PCAN_USBBUSn/PCAN_PCIBUSn"
    return None


def bus_problem(kwargs: Mapping[str, Any]) -> BusProblem | None:
    """Why python-can ``Bus(**kwargs)`` would not stay on this machine (naming the argument), or None."""
    interface = str(kwargs.get("interface", ""))
    if interface not in LOCAL_INTERFACES | LOOPBACK_ONLY_INTERFACES:
        known = ", ".join(sorted(LOCAL_INTERFACES | LOOPBACK_ONLY_INTERFACES))
        return BusProblem("interface", f"interface {interface!r} is not a local CAN interface (allowed: {known})")
    if interface in LOOPBACK_ONLY_INTERFACES:
        host = str(kwargs.get("host", ""))
        if not is_loopback(host):
            return BusProblem("host", f"{interface} host {host!r} is not loopback (127.0.0.1, ::1)")
    for key, value in kwargs.items():
        if key == "interface":
            continue
        if key in CONFIG_KEYS:
            return BusProblem(key, f"{interface} {key} {value!r} would take more bus arguments from python-can's "
                                   "configuration files, which this check cannot see")
        for path, leaf in _values(value, str(key)):
            problem = _value_problem(interface, path, leaf)
            if problem is not None:
                return BusProblem(path, f"{interface} {path} {leaf!r} {problem}")
    return None


def local_bus_problem(kwargs: Mapping[str, Any]) -> str | None:
    """``bus_problem`` as a message (None when the bus stays on this machine)."""
    problem = bus_problem(kwargs)
    return None if problem is None else problem.message
