"""Live source: frames from one or more python-can buses.

Bus URLs used on command lines and in the simulator:
``virtual://NAME`` (python-can virtual bus, one process),
``socketcand://HOST:PORT/CHANNEL`` (python-can's stock socketcand client; the
simulator serves this protocol on loopback), ``socketcan://CHANNEL`` (kernel
CAN, e.g. can0 or vcan0).  Any other python-can interface is reachable from
the YAML config (interface + channel + options).

python-can's ``Notifier`` reads each bus on its own thread and hands frames to
a bounded queue; when the consumer falls behind, frames are dropped and
counted (a live bus cannot be paused).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import can

from agent.config import BusConfig
from agent.netlocal import local_bus_problem


class BusUrlError(ValueError):
    pass


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
        return {"interface": "socketcand", "host": parts.hostname, "port": parts.port, "channel": channel}
    if scheme == "socketcan":
        channel = (parts.netloc + parts.path).strip("/")
        if not channel:
            raise BusUrlError(f"{url}: expected socketcan://CHANNEL (e.g. socketcan://vcan0)")
        return {"interface": "socketcan", "channel": channel}
    raise BusUrlError(f"{url}: unknown bus URL scheme {scheme!r}; use virtual://, socketcand:// or socketcan://")


def bus_kwargs_from_config(bus: BusConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"interface": bus.interface, "channel": bus.channel or bus.name}
    if bus.interface not in ("virtual", "socketcand"):
        kwargs["bitrate"] = bus.bitrate
    if bus.fd:
        kwargs["fd"] = True
        if bus.data_bitrate:
            kwargs["data_bitrate"] = bus.data_bitrate
    kwargs.update(bus.options)
    return kwargs


def open_bus(kwargs: dict[str, Any]) -> can.BusABC:
    problem = local_bus_problem(kwargs)
    if problem is not None:  # checked before python-can opens anything
        raise BusUrlError(f"cannot open bus {kwargs.get('interface')}:{kwargs.get('channel')}: {problem}")
    try:
        return can.Bus(**kwargs)
    except Exception as exc:  # python-can raises many types (CanError, OSError, ImportError ...)
        where = f"{kwargs.get('interface')}:{kwargs.get('channel')}"
        raise BusUrlError(f"cannot open bus {where}: {type(exc).__name__}: {exc}") from None


class _Enqueue(can.Listener):
    def __init__(self, source: LiveSource, bus: str) -> None:
        self._source = source
        self._bus = bus

    def on_message_received(self, msg: can.Message) -> None:
        msg.channel = self._bus
        try:
            self._source.queue.put_nowait((self._bus, msg))
        except queue.Full:
            self._source.dropped[self._bus] = self._source.dropped.get(self._bus, 0) + 1

    def on_error(self, exc: Exception) -> None:
        self._source.errors.append(f"bus {self._bus}: {type(exc).__name__}: {exc}")


@dataclass
class LiveSource:
    """Iterates ``(bus, can.Message)`` from several live buses at once."""

    buses: dict[str, can.BusABC]
    queue_size: int = 65536
    idle_timeout: float | None = None
    queue: queue.Queue = field(init=False)
    dropped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = queue.Queue(maxsize=self.queue_size)
        self._stop = threading.Event()
        self._notifiers = [
            can.Notifier(bus, [_Enqueue(self, name)], timeout=0.1) for name, bus in self.buses.items()
        ]

    def stop(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[tuple[str, can.Message]]:
        poll = 0.1
        idle = 0.0
        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=poll)
            except queue.Empty:
                idle += poll
                if self.idle_timeout is not None and idle >= self.idle_timeout:
                    return
                continue
            idle = 0.0
            yield item

    def close(self) -> None:
        self._stop.set()
        for notifier in self._notifiers:
            notifier.stop()
        for bus in self.buses.values():
            bus.shutdown()
