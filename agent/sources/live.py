"""Live source: frames from one or more python-can buses.

Buses are named by URL or opened from the config by ``agent.sources.bus_open``.  Each bus has its own
reader thread (``bus-NAME``) that hands frames over in
blocks (``agent.sources.blocks``: up to 256 frames and 5 ms old for a bus read a frame at a time, 1024
and 40 ms for one read a block at a time) to one
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

import can

from agent.canio.socketcand import SocketcandConnectionClosed
from agent.sources.blocks import TAKE_FRAMES, BlockQueue, block_reader
from agent.sources.bus_open import BusUnavailable, BusUrlError, open_bus, short_reason

log = logging.getLogger(__name__)

RECV_TIMEOUT_S = 0.1
# A bus that dies sooner than this after it opened keeps backing off (an interface that is down may open and
# fail at once, again and again); one that ran longer starts again from the first delay.
STABLE_S = 10.0


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
            self._schedule(str(exc) if isinstance(exc, BusUrlError) else short_reason(exc))
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
        fill, limits = block_reader(bus)
        max_frames, max_age_s = limits.frames, limits.age_s
        block: list[can.Message] = []
        due = 0.0  # when the block goes, full or not: max_age_s after its first frame
        while not stop.is_set():
            if not block:
                wait = RECV_TIMEOUT_S
            else:
                wait = due - time.monotonic()
                if wait <= 0.0 or len(block) >= max_frames:
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
                self._lost(short_reason(exc))
                return
            if len(block) > had:
                if not had:
                    due = time.monotonic() + max_age_s
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
