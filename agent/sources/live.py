"""Live source: frames from one or more python-can buses.

Bus URLs used on command lines and in the simulator:
``virtual://NAME`` (python-can virtual bus, one process),
``socketcand://HOST:PORT/CHANNEL`` (the agent's lean socketcand client,
``agent.canio``; ``?client=stock`` for python-can's own; the simulator serves
this protocol on loopback), ``socketcan://CHANNEL`` (kernel
CAN, e.g. can0 or vcan0).  Any other python-can interface is reachable from
the YAML config (interface + channel + options).

Each bus has its own reader thread (``bus-NAME``) that hands frames over in
blocks (``agent.sources.blocks``: up to 256 frames, at most 5 ms old) to one
queue bounded in frames; when the consumer falls behind, frames are dropped and
counted (a live bus cannot be paused).  A bus with ``recv_block(timeout,
max_frames)`` is read a block at a time; any other with a blocking ``recv``
followed by ``recv(0)`` while frames come (non-blocking on SocketCAN; once a
block found the bus trickling, the rest of it is read with the blocking
``recv`` only).  A bus opened from its python-can arguments
(``LiveSource.connect``) that cannot be opened yet (a USB adapter that appears
late at boot, a socketcand server not up yet) or that dies later (adapter
unplugged, server gone) is retried by its thread with backoff (1 s doubling to
60 s, jittered) while the other buses keep flowing; ``states()`` says which
bus is open and which is waiting, why, and for how long.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import can

from agent.canio import SOCKETCAND_CLIENTS, resolve_socketcand_client
from agent.canio.socketcand import SocketcandConnectionClosed
from agent.config import BusConfig
from agent.netlocal import local_bus_problem
from agent.sources.blocks import BLOCK_AGE_S, BLOCK_FRAMES, TAKE_FRAMES, BlockQueue, block_reader

log = logging.getLogger(__name__)

RECV_TIMEOUT_S = 0.1
# A socketcand server that is not up is found with one quick TCP connect: python-can's client itself retries
# connect() in a busy loop for 10 s (a core at 100 %) before it gives up.
PROBE_TIMEOUT_S = 2.0
REASON_CHARS = 200
# A bus that dies sooner than this after it opened keeps backing off (an interface that is down may open and
# fail at once, again and again); one that ran longer starts again from the first delay.
STABLE_S = 10.0


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


def _short(exc: BaseException) -> str:
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
            raise BusUnavailable(f"cannot open bus {where}: {_short(exc)}") from None
    try:
        # ignore_config: nothing from /etc/can.conf, ~/.canrc or CAN_* variables joins the checked arguments.
        return can.Bus(ignore_config=True, **kwargs)
    except _PERMANENT as exc:
        raise BusUrlError(f"cannot open bus {where}: {_short(exc)}") from None
    except ValueError as exc:
        if not isinstance(exc, can.CanError):
            raise BusUrlError(f"cannot open bus {where}: {_short(exc)}") from None
        raise BusUnavailable(f"cannot open bus {where}: {_short(exc)}") from None
    except Exception as exc:  # python-can raises many types (CanError, OSError, TimeoutError ...)
        raise BusUnavailable(f"cannot open bus {where}: {_short(exc)}") from None


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th retry in a row: ``initial`` doubling up to ``maximum``, +-``jitter`` (a fraction),
    so that buses (and agents) that failed together do not retry in step."""

    initial: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        base = min(self.maximum, self.initial * 2.0 ** max(0, failures - 1))
        return min(self.maximum, base * (1.0 - self.jitter + 2.0 * self.jitter * rng()))


def _peer_closed(bus: can.BusABC) -> bool:
    """python-can's socketcand client does not notice a server that went away: its recv() just returns nothing
    (in a busy loop).  Peek at its socket: end-of-stream means the server closed the connection."""
    sock = getattr(bus, "_SocketCanDaemonBus__socket", None)
    if not isinstance(sock, socket.socket):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class _BusLink:
    """One bus and its reader thread: open (with retries when ``kwargs`` is known), read, reopen when it dies."""

    def __init__(self, source: LiveSource, name: str, bus: can.BusABC | None, kwargs: dict[str, Any] | None,
                 reason: str | None = None) -> None:
        self.source, self.name, self.bus, self.kwargs = source, name, bus, kwargs
        self.state = "open" if bus is not None else "waiting"
        self.reason = reason
        self.failures = 0 if bus is not None else 1  # failed opens in a row
        self.opens = 1 if bus is not None else 0
        self.lost = 0  # times an open bus died
        self.retry_at = 0.0 if bus is not None else time.monotonic() + source.backoff.delay(1)
        self.opened_at = time.monotonic()
        self._failures_before_open = 0
        self.thread = threading.Thread(target=self._run, name=f"bus-{name}", daemon=True)

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.state, "opens": self.opens, "lost": self.lost}
        if self.state != "open" and self.reason:
            info["reason"] = self.reason
        if self.state == "waiting":
            info["retry_in_s"] = round(max(0.0, self.retry_at - time.monotonic()), 1)
            info["failures"] = self.failures
        return info

    def describe(self) -> str:
        if self.state == "waiting":
            retry = max(0.0, self.retry_at - time.monotonic())
            return f"waiting: {self.reason}, retry in {retry:.0f} s"
        return self.state if self.state == "open" or not self.reason else f"{self.state}: {self.reason}"

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        stop = self.source.stop_event
        try:
            while not stop.is_set():
                if self.bus is None:
                    self._reopen()
                else:
                    self._read()
        finally:
            self._close_bus()
            if self.state != "failed":
                self.state = "stopped"

    def _reopen(self) -> None:
        """Wait for the retry time (or the stop), then try once."""
        if self.source.stop_event.wait(max(0.0, self.retry_at - time.monotonic())):
            return
        self.state = "opening"  # shows a python-can open that hangs (a server that accepts but never answers)
        try:
            bus = self.source.opener(self.kwargs or {})
        except Exception as exc:  # any failure here is a reason to try again later
            self._schedule(str(exc) if isinstance(exc, BusUrlError) else _short(exc))
            return
        self.bus = bus
        self.opens += 1
        log.info("bus %s open (after %d failed attempt%s)", self.name, self.failures,
                 "" if self.failures == 1 else "s")
        self.opened_at, self._failures_before_open = time.monotonic(), self.failures
        self.state, self.reason, self.failures = "open", None, 0

    def _schedule(self, reason: str) -> None:
        self.failures += 1
        delay = self.source.backoff.delay(self.failures)
        self.retry_at = time.monotonic() + delay
        self.state, self.reason = "waiting", reason
        # A warning when the bus goes down (the first failure in a row); the retries that follow are info.
        (log.warning if self.failures == 1 else log.info)("bus %s: %s; retry in %.1f s", self.name, reason, delay)

    def _read(self) -> None:
        bus, stop = self.bus, self.source.stop_event
        assert bus is not None
        fill = block_reader(bus)
        block: list[can.Message] = []
        due = 0.0  # when the block goes, full or not: BLOCK_AGE_S after its first frame
        while not stop.is_set():
            if not block:
                wait = RECV_TIMEOUT_S
            else:
                wait = due - time.monotonic()
                if wait <= 0.0 or len(block) >= BLOCK_FRAMES:
                    self.source.put_block(self.name, block)
                    block = []
                    continue
                # Let the rest of the block gather in the socket, then take it in one read: waking for every
                # TCP segment (a few frames each at a steady rate) cost more than the reading (soak.py).
                time.sleep(wait)
                wait = 0.0
            had = len(block)
            try:
                fill(block, wait)
            except SocketcandConnectionClosed:  # the lean client says so once every frame before it is out
                self._hand_over(block)
                self._server_closed()
                return
            except Exception as exc:  # the bus died: adapter gone, interface down, server gone
                self._hand_over(block)
                self._lost(_short(exc))
                return
            if len(block) > had:
                if not had:
                    due = time.monotonic() + BLOCK_AGE_S
            elif not block and _peer_closed(bus):  # the stock client only returns nothing
                self._server_closed()
                return
        self._hand_over(block)  # what arrived before the stop

    def _server_closed(self) -> None:
        if self.kwargs is None:  # handed over open (``record``): the server ending is the end of the data
            self._close_bus()
            self.state, self.reason = "ended", "connection closed by the socketcand server"
            log.info("bus %s: the socketcand server closed the connection", self.name)
            self.source.stop_event.wait()
            return
        self._lost("connection closed by the socketcand server")

    def _hand_over(self, block: list[can.Message]) -> None:
        if block:
            self.source.put_block(self.name, block)

    def _lost(self, reason: str) -> None:
        if self.source.stop_event.is_set():
            return
        self._close_bus()
        self.source.errors.append(f"bus {self.name}: {reason}")
        # ``lost`` is counted once the state says what happened: status never shows a loss on an "open" bus.
        if self.kwargs is None:  # handed over already open: nothing to reopen it with
            self.state, self.reason = "failed", reason
            self.lost += 1
            log.error("bus %s failed: %s", self.name, reason)
            self.source.stop_event.wait()
            return
        self.failures = self._failures_before_open if time.monotonic() - self.opened_at < STABLE_S else 0
        self._schedule(f"lost: {reason}")
        self.lost += 1

    def _close_bus(self) -> None:
        bus, self.bus = self.bus, None
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.shutdown()


class LiveSource:
    """Iterates ``(bus, can.Message)`` from several live buses at once.

    ``LiveSource(buses)`` reads buses that are already open (a bus that fails is reported in ``errors`` and
    stays down); ``LiveSource.connect(specs)`` opens them itself and keeps reopening the ones that fail.
    """

    def __init__(self, buses: dict[str, can.BusABC] | None = None, queue_size: int = 65536,
                 idle_timeout: float | None = None, *, backoff: Backoff | None = None,
                 opener: Callable[[dict[str, Any]], can.BusABC] = open_bus,
                 _links: dict[str, tuple[can.BusABC | None, dict[str, Any] | None, str | None]] | None = None) -> None:
        self.queue: BlockQueue[can.Message] = BlockQueue(queue_size)
        self.idle_timeout = idle_timeout
        self.backoff = backoff or Backoff()
        self.opener = opener
        self.dropped: dict[str, int] = {}
        self.errors: deque[str] = deque(maxlen=64)  # the latest bus failures, for the log and `record`
        self.stop_event = threading.Event()
        links = _links if _links is not None else {name: (bus, None, None) for name, bus in (buses or {}).items()}
        self._links = {name: _BusLink(self, name, bus, kwargs, reason)
                       for name, (bus, kwargs, reason) in links.items()}
        for link in self._links.values():
            link.thread.start()

    @classmethod
    def connect(cls, specs: dict[str, dict[str, Any]], **options: Any) -> LiveSource:
        """Open every bus once now: one that can never work raises BusUrlError (after closing the others);
        one that cannot be opened yet is left to its thread, which retries with backoff."""
        opener = options.get("opener", open_bus)
        links: dict[str, tuple[can.BusABC | None, dict[str, Any] | None, str | None]] = {}
        try:
            for name, kwargs in specs.items():
                try:
                    links[name] = (opener(kwargs), kwargs, None)
                except BusUnavailable as exc:
                    log.warning("bus %s: %s; the agent runs on and retries", name, exc)
                    links[name] = (None, kwargs, str(exc))
        except BaseException:
            for bus, _kwargs, _reason in links.values():
                if bus is not None:
                    with contextlib.suppress(Exception):
                        bus.shutdown()
            raise
        return cls(_links=links, **options)

    @property
    def buses(self) -> dict[str, can.BusABC | None]:
        return {name: link.bus for name, link in self._links.items()}

    def put_block(self, bus: str, msgs: list[can.Message]) -> None:
        """From ``bus``'s reader thread: its frames, oldest first (the list is handed over, not copied)."""
        for msg in msgs:
            msg.channel = bus
        dropped = self.queue.put(bus, msgs)
        if dropped:
            self.dropped[bus] = self.dropped.get(bus, 0) + dropped

    def blocks(self, timeout: float, max_frames: int = TAKE_FRAMES) -> list[tuple[str, list[can.Message]]]:
        """For the consumer: the oldest waiting blocks ``(bus, [msg, ...])``, about ``max_frames`` frames,
        waiting up to ``timeout`` for one (``[]`` when none came)."""
        return self.queue.take(timeout, max_frames)

    def states(self) -> dict[str, dict[str, Any]]:
        """Per bus: state (open, waiting, failed, stopped), opens, times lost; when waiting, why and the retry."""
        return {name: link.status() for name, link in self._links.items()}

    def not_open(self) -> dict[str, str]:
        """Buses that are not open, each with one line saying why (``waiting: REASON, retry in N s``)."""
        return {name: link.describe() for name, link in self._links.items() if link.state != "open"}

    def stop(self) -> None:
        self.stop_event.set()

    def __iter__(self) -> Iterator[tuple[str, can.Message]]:
        poll = 0.1
        idle = 0.0
        while not self.stop_event.is_set():
            blocks = self.queue.take(poll)
            if not blocks:
                idle += poll
                if self.idle_timeout is not None and idle >= self.idle_timeout:
                    return
                continue
            idle = 0.0
            for bus, msgs in blocks:
                for msg in msgs:
                    yield bus, msg

    def close(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for link in self._links.values():
            link.thread.join(max(0.0, deadline - time.monotonic()))
            if link.thread.is_alive():  # stuck in python-can (e.g. a handshake that never answers)
                log.warning("bus %s: reader did not stop within %.0f s", link.name, timeout)
