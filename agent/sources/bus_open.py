"""Bus URLs and configured buses to python-can ``Bus`` arguments, and opening a bus with a clear error.

Bus URLs used on command lines and in the simulator:
``virtual://NAME`` (python-can virtual bus, one process),
``socketcand://HOST:PORT/CHANNEL`` (the agent's lean socketcand client,
``agent.canio``; ``?client=stock`` for python-can's own; the simulator serves
this protocol on loopback), ``socketcan://CHANNEL`` (kernel
CAN, e.g. can0 or vcan0).  Any other python-can interface is reachable from
the YAML config (interface + channel + options).  Every bus is checked against the network rule
(``agent.netlocal``) before python-can opens anything.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import can

from agent.canio import SOCKETCAND_CLIENTS, resolve_socketcand_client
from agent.config import BusConfig
from agent.netlocal import local_bus_problem

# A socketcand server that is not up is found with one quick TCP connect: python-can's client itself retries
# connect() in a busy loop for 10 s (a core at 100 %) before it gives up.
PROBE_TIMEOUT_S = 2.0
REASON_CHARS = 200

class BusUrlError(ValueError):
    """A bus that cannot work as configured (bad URL, not local, unknown interface): a configuration error."""


class BusUnavailable(BusUrlError):
    """The bus cannot be opened now (adapter absent, server not up, interface down): worth retrying."""

    transient = True


# python-can failures that retrying cannot fix: an unknown interface or a missing driver module, bad arguments.
_PERMANENT = (can.CanInterfaceNotImplementedError, ImportError, TypeError)


def bus_kwargs_from_url(url: str) -> dict[str, Any]:
    """python-can ``Bus(**kwargs)`` for a bus URL."""
    # Split the scheme by hand: urlsplit() drops schemes it does not accept (an
    # underscore, for one) and the error would then name an empty scheme.
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise BusUrlError(f"{url}: expected SCHEME://..., e.g. virtual://NAME or socketcand://HOST:PORT/CHANNEL")
    parts = urlsplit("x://" + _rest)
    if scheme == "virtual":
        name = (parts.netloc + parts.path).strip("/") or "vcan0"
        return {"interface": "virtual", "channel": name, "receive_own_messages": False}
    if scheme == "socketcand":
        if not parts.hostname or not parts.port:
            raise BusUrlError(f"{url}: expected socketcand://HOST:PORT/CHANNEL")
        channel = parts.path.strip("/") or "can0"
        kwargs: dict[str, Any] = {"interface": "socketcand", "host": parts.hostname, "port": parts.port,
                                  "channel": channel}
        query = parse_qs(parts.query, keep_blank_values=True)
        if set(query) - {"client"} or len(query.get("client", [])) > 1:
            raise BusUrlError(f"{url}: the only query a socketcand URL takes is ?client=lean or ?client=stock")
        if query:
            kwargs["client"] = query["client"][0]
        return _resolved(url, kwargs)
    if scheme == "socketcan":
        channel = (parts.netloc + parts.path).strip("/")
        if not channel:
            raise BusUrlError(f"{url}: expected socketcan://CHANNEL (e.g. socketcan://vcan0)")
        return {"interface": "socketcan", "channel": channel}
    raise BusUrlError(f"{url}: unknown bus URL scheme {scheme!r}; use virtual://, socketcand:// or socketcan://")


def _resolved(where: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return resolve_socketcand_client(kwargs)
    except ValueError as exc:
        raise BusUrlError(f"{where}: {exc}") from None


def bus_kwargs_from_config(bus: BusConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"interface": bus.interface, "channel": bus.channel or bus.name}
    if bus.interface not in ("virtual", *SOCKETCAND_CLIENTS.values()):  # no bitrate to set
        kwargs["bitrate"] = bus.bitrate
    if bus.fd:
        kwargs["fd"] = True
        if bus.data_bitrate:
            kwargs["data_bitrate"] = bus.data_bitrate
    kwargs.update(bus.options)
    return _resolved(f"bus {bus.name}", kwargs)


def short_reason(exc: BaseException) -> str:
    """One line of an exception for logs and status (python-can's socketcand errors carry a whole traceback)."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."


def open_bus(kwargs: dict[str, Any]) -> can.BusABC:
    """python-can ``Bus(**kwargs)``; BusUrlError when it can never work, BusUnavailable when it may later."""
    problem = local_bus_problem(kwargs)
    where = f"{kwargs.get('interface')}:{kwargs.get('channel')}"
    if problem is not None:  # checked before python-can opens anything
        raise BusUrlError(f"cannot open bus {where}: {problem}")
    if kwargs.get("interface") == "socketcand":  # the stock client (ours connects once, with a timeout)
        try:
            with socket.create_connection((str(kwargs.get("host")), int(kwargs.get("port", 0))), PROBE_TIMEOUT_S):
                pass
        except OSError as exc:
            raise BusUnavailable(f"cannot open bus {where}: {short_reason(exc)}") from None
    try:
        # ignore_config: nothing from /etc/can.conf, ~/.canrc or CAN_* variables joins the checked arguments.
        return can.Bus(ignore_config=True, **kwargs)
    except _PERMANENT as exc:
        raise BusUrlError(f"cannot open bus {where}: {short_reason(exc)}") from None
    except ValueError as exc:
        if not isinstance(exc, can.CanError):
            raise BusUrlError(f"cannot open bus {where}: {short_reason(exc)}") from None
        raise BusUnavailable(f"cannot open bus {where}: {short_reason(exc)}") from None
    except Exception as exc:  # python-can raises many types (CanError, OSError, TimeoutError ...)
        raise BusUnavailable(f"cannot open bus {where}: {short_reason(exc)}") from None


__all__ = ["PROBE_TIMEOUT_S", "BusUnavailable", "BusUrlError", "bus_kwargs_from_config", "bus_kwargs_from_url",
           "open_bus", "short_reason"]
