"""The request scheduler on the live buses: its own ticking thread, frames from the pipeline thread.

``RequestScheduler`` (agent.diag.requests) has no thread: ``due()`` must be called often (requests go
out on time) and ``on_frame()`` with every frame of its buses (flow control within ISO-TP's N_Bs).  The
runner calls ``due()`` every ``TICK_S`` on a thread of its own and takes frames from the pipeline as a raw
listener; one lock keeps the two apart.  Frames are sent only through ``send``, which the runtime makes from
the live source's open buses, and the scheduler refuses any bus the config does not mark ``transmit``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import can

from agent.diag.config import DiagnosticsConfig
from agent.diag.requests import RequestScheduler

log = logging.getLogger(__name__)

TICK_S = 0.02


class DiagnosticsRunner:
    def __init__(self, scheduler: RequestScheduler, buses: set[str]) -> None:
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._buses = frozenset(buses)  # the buses requests go out on
        self._thread = threading.Thread(target=self._run, name="diag-requests", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def on_raw(self, bus: str, msg: can.Message) -> None:
        """Pipeline thread: every frame (only those of request buses reach the scheduler)."""
        if bus in self._buses:
            with self._lock:
                self.scheduler.on_frame(bus, msg)

    def snapshot(self) -> dict:
        with self._lock:
            return self.scheduler.snapshot()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                with self._lock:
                    self.scheduler.due()
            except Exception:  # a bus that fails to send must not end the requests (counted by the scheduler)
                log.exception("diagnostic requests: tick failed")


def diagnostics_runner(config: DiagnosticsConfig, source: Any) -> DiagnosticsRunner | None:
    """A runner sending ``config``'s requests through the live source's buses; None when none are configured."""
    if not config.requests:
        return None

    def send(bus: str, msg: can.Message) -> None:
        live = source.buses.get(bus)
        if live is None:  # waiting to be reopened: counted as a send error by the scheduler
            raise can.CanOperationError(f"bus {bus} is not open")
        live.send(msg)

    scheduler = RequestScheduler(config.requests, send, config.writable, timeout_s=config.timeout_s)
    return DiagnosticsRunner(scheduler, {spec.bus for spec in config.requests})


__all__ = ["DiagnosticsRunner", "diagnostics_runner"]
