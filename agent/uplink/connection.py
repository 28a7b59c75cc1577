"""The uplink's I/O thread: the endpoint checked once, then connect, run the session, back off, again.

``ConnectionLoop`` owns the connection and nothing of the batches: what happens on a session (connected,
refused, disconnected, a PUBACK) goes to the hooks of the sessions ``new_session`` makes, a connect that
failed to ``on_failed`` (then it backs off), what it is doing to ``on_status``, and a refusal that no retry
can cure (an endpoint outside the residency allow-list, a pin mismatch) to ``on_refused``, after which the
thread ends and the agent keeps buffering.  ``agent.uplink.mqtt.Uplink``
is its one user: its sender thread settles PUBACKs and fills the window on ``session``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.uplink.config import UplinkConfig
from agent.uplink.endpoint import Endpoint, EndpointRefused, PinMismatch, build_tls_context, check_endpoint
from agent.uplink.pacing import Backoff
from agent.uplink.session import Session

log = logging.getLogger(__name__)

CONNECT_LOOP_S = 0.2  # paho's loop() per turn: how soon a stop or a missing CONNACK is noticed


class ConnectionLoop:
    """One MQTT connection at a time to the configured broker, kept up with backoff until ``stop``."""

    def __init__(self, config: UplinkConfig, backoff: Backoff, environ: Mapping[str, str],
                 new_session: Callable[[Endpoint, Any], Session], *, on_status: Callable[[str], None],
                 on_refused: Callable[[str], None], on_failed: Callable[[str], None]) -> None:
        """``new_session(endpoint, tls_context)`` makes a session wired to the caller's hooks."""
        self.config = config
        self.stopping = threading.Event()
        self.session: Session | None = None  # the latest; may be closed
        self.endpoint: Endpoint | None = None  # once the configured broker passed the checks
        self.next_attempt: float | None = None  # monotonic time of the next connect while backing off
        self._backoff = backoff
        self._environ = environ
        self._new_session = new_session
        self._on_status, self._on_refused, self._on_failed = on_status, on_refused, on_failed

    def run(self) -> None:
        """The I/O thread's body: returns once refused or stopped (saying goodbye on a live session)."""
        try:
            endpoint = check_endpoint(self.config)
            tls_context = build_tls_context(self.config.tls, endpoint.pin_sha256, self._environ) \
                if self.config.tls else None
        except EndpointRefused as exc:
            self._on_refused(str(exc))
            return
        self.endpoint = endpoint
        log.info("uplink: endpoint %s accepted for region %s", endpoint, endpoint.region)
        while not self.stopping.is_set():
            session = self._new_session(endpoint, tls_context)
            try:
                self._on_status("connecting")
                session.connect()
            except PinMismatch as exc:
                self._on_refused(f"{self.config.broker_where}: {exc}")
                return
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self._on_failed(f"cannot connect to {endpoint}: {describe(exc)}")
                self._wait_backoff()
                continue
            self.session = session
            connack_deadline = time.monotonic() + self.config.connect_timeout
            while not self.stopping.is_set() and session.loop(CONNECT_LOOP_S):
                if not session.was_connected and time.monotonic() > connack_deadline:
                    session.abort(f"no CONNACK within {self.config.connect_timeout:g} s")
            if self.stopping.is_set() and not session.is_closed:
                self._say_goodbye(session)
                return
            self._wait_backoff()

    def connected(self) -> None:
        """The broker accepted a connection: the next failure starts backing off from the shortest delay."""
        self._backoff.reset()

    def live_session(self) -> Session | None:
        """The session if it is connected and not closed."""
        session = self.session
        return session if session is not None and session.is_connected and not session.is_closed else None

    def _say_goodbye(self, session: Session) -> None:
        """A clean stop sends no last will, so publish "offline" ourselves, then disconnect."""
        if session.is_connected:
            session.publish_status("offline")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and session.control_pending() and session.loop(0.05):
                pass
        session.disconnect()
        with contextlib.suppress(Exception):
            session.loop(0.05)
        self._on_status("stopped")

    def _wait_backoff(self) -> None:
        delay = self._backoff.next_delay()
        self.next_attempt = time.monotonic() + delay
        self._on_status("backoff")
        self.stopping.wait(delay)
        self.next_attempt = None


def describe(exc: BaseException) -> str:
    """An exception as one line, without stack or key material (ssl errors carry only reasons)."""
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


__all__ = ["ConnectionLoop", "describe"]
