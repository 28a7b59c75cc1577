"""Replay a recorded CAN log onto a bus, at real time, faster, or as fast as possible.

Targets (URL): ``virtual://NAME`` (python-can virtual bus in this process),
``socketcand://127.0.0.1:PORT`` (serve the socketcand protocol on loopback;
port 0 picks a free one; clients may open any channel name) and
``socketcan://CHANNEL`` (kernel CAN, e.g. vcan0).  With ``per_bus`` each log
bus keeps its own channel: the virtual or socketcan channel named after the
bus, or the socketcand clients that opened that channel name.

Timing: frame k is sent when the monotonic clock reaches
``start + log_position(k) / speed``, so sleeping never accumulates drift.
Log time only advances: a timestamp behind the newest one seen is sent at
once (buses interleaved by a logger step back by milliseconds), and a step
back of more than ``reset_threshold`` seconds is taken as a logger clock reset,
after which log time continues from the new clock.  Frames are never reordered
(unless ``faults`` asks for it: ``simulator.faults``; then frames are stamped
with the wall clock at sending plus any injected clock jump).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import can

from agent.cli.progress import progress as bar
from agent.sources.bus_open import open_bus
from agent.sources.log import LogSource
from simulator.faults import FaultInjector, FaultReport, FaultSpec, TransportFaults
from simulator.socketcand_server import SocketcandServer, UnsupportedFrameError, loopback_host


class ReplayError(ValueError):
    """A replay that cannot start or finish; the message is meant for the user."""


@dataclass
class ReplayOptions:
    speed: float = 1.0  # math.inf: no sleeping at all
    loop: int = 1  # passes over the log; 0 = until interrupted
    bus_map: dict[str, str] = field(default_factory=dict)  # log channel -> bus; only mapped buses are sent
    per_bus: bool = False
    wait_clients: int = 1  # socketcand: clients to wait for before the first frame
    wait_timeout: float = 30.0
    flush_timeout: float = 60.0
    reset_threshold: float = 1.0
    progress: bool = False
    faults: FaultSpec | None = None
    transport: TransportFaults | None = None  # message layouts for checksum= and counter= faults
    # Set (by the command's SIGINT/SIGTERM handler) to stop: the replay ends at the next frame, a wait for
    # clients at once.  A flag, not a KeyboardInterrupt: an exception raised at any instruction could leave
    # the server's lock held and hang the shutdown (seen in the kill -9 test).
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class ReplayReport:
    sent: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> frames
    dropped: int = 0
    elapsed: float = 0.0
    passes: int = 0
    log_error: str | None = None
    interrupted: bool = False
    faults: FaultReport | None = None

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def rate(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        buses = ", ".join(f"{bus} {n}" for bus, n in sorted(self.sent.items())) or "none"
        text = (f"replayed {self.total} frames in {self.elapsed:.2f} s ({self.rate:.0f} frames/s, "
                f"{self.passes} pass{'es' if self.passes != 1 else ''}): {buses}")
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        if self.dropped:
            text += f"; DROPPED {self.dropped} (slow or gone receivers)"
        if self.interrupted:
            text += "; interrupted"
        if self.faults is not None:
            text += "; " + self.faults.summary()
        return text


class Target(Protocol):
    """Where replayed frames go.  ``send`` may raise UnsupportedFrameError (frame skipped)."""

    def send(self, bus: str, msg: can.Message) -> None: ...

    def dropped(self) -> int: ...

    def close(self, flush: bool = True) -> None: ...


class PythonCanTarget:
    """python-can buses opened on demand: one shared channel, or one per log bus."""

    def __init__(self, interface: str, channel: str, per_bus: bool, send_timeout: float = 1.0,
                 keep_timestamps: bool = False) -> None:
        self.interface = interface
        self.keep_timestamps = keep_timestamps
        self.channel = channel
        self.per_bus = per_bus
        self.send_timeout = send_timeout
        self._buses: dict[str, can.BusABC] = {}
        self._dropped = 0

    def _bus(self, name: str) -> can.BusABC:
        channel = name if self.per_bus else self.channel
        bus = self._buses.get(channel)
        if bus is None:
            kwargs: dict = {"interface": self.interface, "channel": channel}
            if self.interface == "virtual":
                kwargs["receive_own_messages"] = False
                kwargs["preserve_timestamps"] = self.keep_timestamps
            bus = self._buses[channel] = open_bus(kwargs)
        return bus

    def open(self, names: Iterable[str] = ()) -> None:
        """Open the buses up front so that a bad channel fails before the first frame."""
        for name in names if self.per_bus else [self.channel]:
            self._bus(name)

    def send(self, bus: str, msg: can.Message) -> None:
        try:
            self._bus(bus).send(msg, timeout=self.send_timeout)
        except can.CanError:
            self._dropped += 1

    def dropped(self) -> int:
        return self._dropped

    def close(self, flush: bool = True) -> None:
        for bus in self._buses.values():
            bus.shutdown()
        self._buses.clear()


class SocketcandTarget:
    def __init__(self, server: SocketcandServer, per_bus: bool, flush_timeout: float,
                 keep_timestamps: bool = False, stop: threading.Event | None = None) -> None:
        self.server = server
        self.stop = stop  # set: the flush at close ends at once (SIGINT/SIGTERM during it)
        self.keep_timestamps = keep_timestamps
        self.per_bus = per_bus
        self.flush_timeout = flush_timeout

    def send(self, bus: str, msg: can.Message) -> None:
        self.server.send(msg, channel=bus if self.per_bus else None,
                         timestamp=msg.timestamp if self.keep_timestamps else None)

    def dropped(self) -> int:
        return self.server.stats().dropped

    def close(self, flush: bool = True) -> None:
        # Every frame must be in the clients' TCP stacks before the sockets close.
        self.server.stop(flush_timeout=self.flush_timeout if flush else 0.0, interrupt=self.stop)


def open_target(url: str, options: ReplayOptions, announce: Callable[[str], None] = lambda line: None) -> Target:
    """Target for ``url``; socketcand waits for ``options.wait_clients`` clients."""
    # Split the scheme off by hand: urlsplit drops schemes it does not accept (an underscore, for one).
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    parts = urlsplit(url)
    name = (parts.netloc + parts.path).strip("/")
    if scheme in ("virtual", "socketcan"):
        if options.per_bus and name:
            raise ReplayError(f"{url}: give either a channel name or --per-bus (channels named after the buses)")
        if not options.per_bus and not name:
            raise ReplayError(f"{url}: expected {scheme}://CHANNEL (or --per-bus)")
        target = PythonCanTarget(scheme, name, options.per_bus, keep_timestamps=options.faults is not None)
        target.open(options.bus_map.values())
        return target
    if scheme == "socketcand":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ReplayError(f"{url}: expected socketcand://127.0.0.1:PORT (port 0 picks a free one)")
        loopback_host(parts.hostname)  # refuse anything but loopback before binding
        server = SocketcandServer(parts.hostname, port).start()
        announce(f"socketcand server listening on {server.host}:{server.port}")
        if options.wait_clients > 0:
            announce(f"waiting for {options.wait_clients} client(s) (up to {options.wait_timeout:g} s)")
            if not server.wait_for_clients(options.wait_clients, options.wait_timeout, options.stop):
                got = server.client_count
                server.stop()
                if options.stop.is_set():
                    raise ReplayError(f"{url}: stopped while waiting for clients ({got} of "
                                      f"{options.wait_clients} connected)")
                raise ReplayError(f"{url}: only {got} of {options.wait_clients} socketcand client(s) "
                                  f"connected within {options.wait_timeout:g} s")
        return SocketcandTarget(server, options.per_bus, options.flush_timeout,
                                keep_timestamps=options.faults is not None, stop=options.stop)
    raise ReplayError(f"{url}: unknown target scheme {scheme!r}; "
                      "use virtual://NAME, socketcand://127.0.0.1:PORT or socketcan://CHANNEL")


class Pacer:
    """Sleeps until each frame's scaled log time, measured from the first frame."""

    def __init__(self, speed: float, reset_threshold: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not speed > 0:
            raise ReplayError(f"speed must be > 0 (or max), got {speed}")
        self.speed = speed
        self.reset_threshold = reset_threshold
        self.clock = clock
        self.sleep = sleep
        self.log_position = 0.0  # seconds of log time replayed so far
        self.clock_resets = 0
        self._newest: float | None = None
        self._start: float | None = None

    def new_pass(self) -> None:
        """The next frame starts a new pass over the log: continue without a gap."""
        self._newest = None

    def wait(self, timestamp: float) -> None:
        if self._start is None:
            self._start = self.clock()
        if self._newest is None:
            self._newest = timestamp
        elif timestamp > self._newest:
            self.log_position += timestamp - self._newest
            self._newest = timestamp
        elif self._newest - timestamp > self.reset_threshold:
            self._newest = timestamp
            self.clock_resets += 1
        if math.isinf(self.speed):
            return
        delay = self._start + self.log_position / self.speed - self.clock()
        if delay > 0.0005:  # below this a sleep costs more than it saves
            self.sleep(delay)


def _frames(path: Path, options: ReplayOptions, report: ReplayReport,
            pacer: Pacer) -> Iterator[tuple[str, can.Message]]:
    wanted = set(options.bus_map.values()) if options.bus_map else None
    passes = options.loop if options.loop > 0 else None
    while passes is None or report.passes < passes:
        source = LogSource(path, bus_map=options.bus_map, strict=False)
        pacer.new_pass()
        for bus, msg in source:
            if wanted is None or bus in wanted:
                yield bus, msg
        report.passes += 1
        if source.stats.error:
            report.log_error = source.stats.error
            return
        if source.stats.frames == 0:
            return  # an empty log would loop forever


def replay(path: str | Path, target: Target, options: ReplayOptions) -> ReplayReport:
    """Send every frame of ``path`` (all passes) to ``target``; returns what was sent."""
    path = Path(path)
    LogSource(path)  # validates name, format and existence before anything is sent
    report = ReplayReport()
    stop = options.stop
    pacer = Pacer(options.speed, options.reset_threshold, sleep=stop.wait)
    sent = report.sent
    progress = _progress(options.progress)
    started = time.monotonic()
    pending = 0
    frames = _frames(path, options, report, pacer)
    injector = FaultInjector(options.faults, transport=options.transport) if options.faults is not None else None
    report.faults = injector.report if injector is not None else None
    stream = injector.paced(frames) if injector is not None else ((b, m, m.timestamp) for b, m in frames)
    try:
        for bus, msg, pace_at in stream:
            pacer.wait(pace_at)
            if stop.is_set():
                report.interrupted = True
                break
            if injector is not None:
                # As a receiver would stamp it, plus the clock jump injected so far (msg.timestamp - pace_at).
                msg.timestamp = time.time() + (msg.timestamp - pace_at)
            try:
                target.send(bus, msg)
            except UnsupportedFrameError as exc:
                report.skipped[exc.kind] = report.skipped.get(exc.kind, 0) + 1
                continue
            sent[bus] = sent.get(bus, 0) + 1
            pending += 1
            if pending == 1000:
                progress.update(pending)
                pending = 0
    except KeyboardInterrupt:
        report.interrupted = True  # report what was sent; no lengthy flush
    finally:
        progress.update(pending)
        progress.close()
        target.close(flush=not report.interrupted)
        if stop.is_set():  # also during the flush: a client that stopped reading holds it for flush_timeout
            report.interrupted = True
        report.elapsed = time.monotonic() - started
        report.dropped = target.dropped()
    return report


class Progress(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    """The replay's ``update(n)``/``close()`` on the shared rich bar (agent/cli/progress.py)."""

    def __init__(self) -> None:
        self._bar = bar("replay", unit="frames")

    def update(self, n: int) -> None:
        self._bar.advance(n)

    def close(self) -> None:
        self._bar.close()


def _progress(enabled: bool) -> Progress:
    return _Bar() if enabled else _NoProgress()
