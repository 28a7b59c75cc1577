"""systemd's notification protocol (sd_notify), without a dependency.

systemd passes ``$NOTIFY_SOCKET``: a datagram Unix socket, either a path or an
abstract name written with a leading ``@``.  Each notification is one datagram
of ``KEY=VALUE`` lines.  Outside systemd the variable is unset and every call
is a cheap no-op, so the agent needs no "am I a service" switch.

The watchdog (``WatchdogSec=`` in the unit) is fed by ``ProgressWatchdog``,
and only when the pipeline loop reports that it went round: a timer thread
would keep beating while the pipeline is stuck, which is exactly the failure
the watchdog exists to catch.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class NotifyConfigError(ValueError):
    """$NOTIFY_SOCKET / $WATCHDOG_USEC / $WATCHDOG_PID hold something systemd never writes."""


def notify_address(value: str) -> str | bytes:
    """The socket address for a ``$NOTIFY_SOCKET`` value: a path, or ``@name`` for an abstract socket."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd 254+ may also pass vsock:CID:PORT (VMs); the agent runs on the host OS, so refuse it clearly.
    raise NotifyConfigError(f"NOTIFY_SOCKET={value!r}: expected an absolute path or @abstract-name")


class Notifier:
    """Sends notifications to systemd; a no-op when ``address`` is None (not started by systemd)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        return cls(notify_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram.  Returns False (and logs once) if systemd cannot be reached
        or its socket is full: losing a notification must never stop or stall the agent."""
        if self.address is None or not fields:
            return False
        for field in fields:
            key, equals, _value = field.partition("=")
            if not equals or not key or "\n" in field:
                raise ValueError(f"sd_notify field {field!r}: expected KEY=VALUE on one line")
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never wait: the pipeline loop sends these, and a full socket must not stall it.
            self._sock.sendto(payload, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.send(*_status(text))

    def watchdog(self, status: str | None = None) -> bool:
        return self.send("WATCHDOG=1", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        # systemd 253+ (Type=notify-reload) wants MONOTONIC_USEC beside RELOADING=1; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up (or stop) time, e.g. while a large buffer is checked."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # STATUS= is one line; systemctl status shows it as is.
    return (f"STATUS={' '.join(text.split())}",)


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds (``$WATCHDOG_USEC``), or None when no watchdog is expected of this process.

    As sd_watchdog_enabled(): ``$WATCHDOG_PID``, when set, must name this process (a child that inherited
    the environment must not feed the parent's watchdog).
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        raise NotifyConfigError(f"WATCHDOG_USEC={usec_text!r}: expected a whole number of microseconds") from None
    if usec <= 0:
        raise NotifyConfigError(f"WATCHDOG_USEC={usec_text!r}: must be > 0")
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            watched = int(pid_text)
        except ValueError:
            raise NotifyConfigError(f"WATCHDOG_PID={pid_text!r}: expected a process id") from None
        if watched != (os.getpid() if pid is None else pid):
            return None
    return usec / 1_000_000


class ProgressWatchdog:
    """Feeds systemd's watchdog from the pipeline loop, and keeps STATUS= current.

    Call ``progress()`` once per turn of the loop that does the work (also on an
    idle turn, after the source's poll timed out: an idle bus is not a hang).
    WATCHDOG=1 goes out at most every ``interval / 2`` seconds, as systemd
    recommends; a loop that stops turning stops the pings, and systemd restarts
    the service ``interval`` seconds later.  ``status`` (optional) is asked for
    the one-line summary only when a ping is due, and sent in the same datagram
    when it changed.
    """

    def __init__(self, notifier: Notifier, interval: float | None,
                 status: Callable[[], str] | None = None, status_every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.interval = interval
        self.status = status
        self.status_every = status_every
        self.clock = clock
        self.pings = 0
        self._ping_every = interval / 2 if interval else None
        self._last_ping: float | None = None
        self._last_status_at: float | None = None
        self._last_status: str | None = None

    @classmethod
    def from_environ(cls, notifier: Notifier, environ: Mapping[str, str] | None = None,
                     status: Callable[[], str] | None = None) -> ProgressWatchdog:
        return cls(notifier, watchdog_interval(environ), status=status)

    def progress(self) -> bool:
        """The loop went round.  Returns True when a datagram was sent."""
        if not self.notifier.enabled:
            return False
        now = self.clock()
        ping = self._ping_every is not None and (self._last_ping is None or now - self._last_ping >= self._ping_every)
        text = self._due_status(now)
        if not ping and text is None:
            return False
        fields = ["WATCHDOG=1"] if ping else []
        if text is not None:
            fields.append(f"STATUS={text}")
        sent = self.notifier.send(*fields)
        if ping:
            self._last_ping = now
            self.pings += 1
        return sent

    def _due_status(self, now: float) -> str | None:
        if self.status is None:
            return None
        if self._last_status_at is not None and now - self._last_status_at < self.status_every:
            return None
        self._last_status_at = now
        text = " ".join(self.status().split())
        if text == self._last_status:
            return None
        self._last_status = text
        return text
