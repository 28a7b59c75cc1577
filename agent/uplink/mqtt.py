"""The uplink: drains the durable batch store to an MQTT v5 broker, QoS 1.

Guarantees (issue 4):

* a batch leaves the store only after its PUBACK arrives with a success reason
  code (< 0x80); a failure code keeps it and retries it after ``rejected_retry``;
* at most ``in_flight`` batches (or the broker's Receive Maximum, if lower) wait
  for a PUBACK; everything in flight when a connection dies is offered again by
  the store after the reconnect (the receiver drops duplicates);
* the store hands out batches by priority, then age, so a backlog drains
  incident > events > telemetry;
* reconnects use exponential backoff with jitter; a retained status message says
  "online" on connect and the last will says "offline";
* the endpoint is checked (residency allow-list, plaintext only to loopback when
  allowed, TLS, pin) before any socket is opened; a refused endpoint leaves the
  uplink in state "refused" and the agent keeps buffering.

With a consent gate (``agent.flow.gate``, the agent always has one), every
batch is checked against the live consent under the policy lock immediately
before it is published - after pacing, so a revocation while a batch waits
for the rate limit stops it - and nothing is published while the owner's
ledger cannot be written.  An acknowledged batch whose ledger entry could not
be written yet stays in the store (not offered again) until it is written.

Two threads: the I/O thread owns the connection (``agent.uplink.connection``: connect, paho ``loop``,
backoff); the sender thread settles PUBACKs in the store and fills the window.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

from agent.uplink import properties as batch_properties
from agent.uplink.book import DeliveryBook
from agent.uplink.config import UplinkConfig
from agent.uplink.connection import ConnectionLoop
from agent.uplink.delivery import DeliveryRecorder
from agent.uplink.endpoint import Endpoint
from agent.uplink.pacing import Backoff, ByteRateLimiter
from agent.uplink.ports import BatchSource, Release, ReleaseGate
from agent.uplink.session import Ack, Session, SessionHooks, publish_properties, status_json
from agent.uplink.topics import commands_topic, data_topic, dictionary_topic, status_topic

log = logging.getLogger(__name__)

# How often the sender looks at the store even without notify() (batches written by
# another process, held batches whose retry time came).
_POLL_SECONDS = 1.0


class Uplink:
    def __init__(self, config: UplinkConfig, store: BatchSource, vehicle_id: str,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 environ: Mapping[str, str] | None = None,
                 on_in_flight_change: Callable[[frozenset[int]], None] | None = None,
                 on_command: Callable[[bytes], None] | None = None,
                 health: Callable[[], dict] | None = None,
                 gate: ReleaseGate | None = None) -> None:
        """``on_command`` gets payloads of the commands topic (network thread: queue them);
        ``health`` supplies the counters published with the retained status message;
        ``gate`` checks each batch right before it is published and records each delivery."""
        self.config = config
        self.store = store
        self.vehicle_id = vehicle_id
        self.client_id = config.client_id or f"vehicle-{vehicle_id}"
        self._clock = clock
        self._on_in_flight_change = on_in_flight_change
        self._on_command = on_command
        self._health = health
        self._gate = gate
        self._delivery = DeliveryRecorder(store, gate, self._broker_name)
        self._connection = ConnectionLoop(
            config, Backoff(config.backoff_min, config.backoff_max, rng or random.Random()),
            os.environ if environ is None else environ, self._new_session, on_status=self._set_status,
            on_refused=self._refuse, on_failed=self._connection_failed)
        self._limiter = ByteRateLimiter(config.byte_rate_limit)
        self._status_topic = status_topic(config.topic_prefix, vehicle_id)
        self._cond = threading.Condition()
        self._stop_sending = threading.Event()
        self._window = config.in_flight
        self._acks: deque[Ack] = deque()  # PUBACKs from the I/O thread, settled by the sender
        self._book = DeliveryBook()
        self._wake = False
        self._threads: list[threading.Thread] = []
        self._status = "stopped"
        self._refused: str | None = None
        self._last_error: str | None = None

    # -- public API --------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        if not self.config.enabled:
            self._status = "disabled"
            return
        self._stop_sending.clear()
        self._connection.stopping.clear()
        self._status = "connecting"
        self._threads = [threading.Thread(target=self._connection.run, name="uplink-io", daemon=True),
                         threading.Thread(target=self._send_main, name="uplink-send", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending, wait up to ``timeout`` for outstanding PUBACKs, say "offline", disconnect."""
        if not self._threads:
            return
        deadline = time.monotonic() + timeout
        self._stop_sending.set()
        self.notify()
        self._threads[1].join(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline and self._session_in_flight():
            time.sleep(0.01)
        self._settle_acks()
        self._connection.stopping.set()
        self._threads[0].join(max(0.5, deadline - time.monotonic()))
        self._threads = []
        if self._status != "refused":
            self._status = "stopped"

    def publish_health(self) -> bool:
        """Re-publish the retained status with fresh counters (called periodically by the agent)."""
        session = self._connection.live_session()
        if session is None:
            return False
        session.publish_status("online")
        return True

    def notify(self) -> None:
        """A new batch is in the store (cheap; call it from the batcher)."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def in_flight_ids(self) -> frozenset[int]:
        """Batches handed to the MQTT client whose PUBACK has not been seen: they may have
        left the vehicle (consent revocation records them as such)."""
        session = self._connection.session
        ids = self._book.sending()
        if session is not None:
            ids |= session.in_flight_ids()
        with self._cond:  # acknowledged but not yet settled: they have left, the ledger does not know yet
            ids |= {ack.batch_id for ack in self._acks}
        return frozenset(ids - self._book.forgotten())

    def forget(self, batch_ids: Collection[int]) -> None:
        """These batches were purged (consent revocation): never send them again and
        ignore their PUBACKs.  Their window slots stay taken until the PUBACK comes."""
        self._book.forget(batch_ids)
        self._in_flight_changed()

    def state(self) -> dict[str, Any]:
        book = self._book.snapshot()
        with self._cond:
            status = self._status
        connected = self._connection.live_session() is not None
        next_attempt, endpoint = self._connection.next_attempt, self._connection.endpoint
        return {
            "state": status,
            "connected": connected,
            "endpoint": str(endpoint) if endpoint else f"{self.config.broker.host}:{self.config.broker.port}",
            "region": self.config.region,
            "client_id": self.client_id,
            "in_flight": len(self.in_flight_ids()),
            "window": self._window,
            "refused": self._refused,
            "last_error": self._last_error,
            "retry_in": round(max(0.0, next_attempt - time.monotonic()), 3) if next_attempt else None,
            **book,
        }

    # -- I/O thread (agent.uplink.connection runs it; these are its hooks) --------------
    def _new_session(self, endpoint: Endpoint, tls_context: Any) -> Session:
        hooks = SessionHooks(connected=self._on_connected, refused=self._on_refused_by_broker,
                             disconnected=self._on_disconnected, acked=self._on_acked)
        payload = status_json(self.vehicle_id, self.client_id, self.config.region, self._clock, self._health)
        commands = commands_topic(self.config.topic_prefix, self.vehicle_id) if self._on_command else None
        return Session(endpoint, self.client_id, self.config.keepalive, self.config.connect_timeout,
                       self._status_topic, payload, tls_context, self.config.in_flight, hooks,
                       command_topic=commands, on_command=self._on_command)

    def _refuse(self, message: str) -> None:
        log.error("uplink refused: %s", message)
        with self._cond:
            self._refused = message
            self._last_error = message
            self._status = "refused"

    def _connection_failed(self, message: str) -> None:
        log.warning("uplink: %s", message)
        self._book.count("connect_failures")
        with self._cond:
            self._last_error = message

    def _set_status(self, status: str) -> None:
        with self._cond:
            self._status = status

    # session hooks (I/O thread)
    def _on_connected(self, session: Session, receive_maximum: int | None) -> None:
        self._connection.connected()
        window = self.config.in_flight if not receive_maximum else min(self.config.in_flight, receive_maximum)
        log.info("uplink: connected to %s (window %d)", session.endpoint, window)
        self._book.count("connects")
        with self._cond:
            self._window = window
            self._status = "connected"
            self._last_error = None
            self._wake = True
            self._cond.notify_all()

    def _on_refused_by_broker(self, session: Session, why: str) -> None:
        self._connection_failed(why)

    def _on_disconnected(self, session: Session, why: str) -> None:
        stopping = self._connection.stopping.is_set()
        if stopping:
            log.info("uplink: %s", why)
        else:
            log.warning("uplink: %s; unacknowledged batches stay buffered and are re-sent", why)
        self._book.count("disconnects")
        with self._cond:
            if self._status == "connected" and not stopping:
                self._last_error = why
            self._cond.notify_all()
        self._in_flight_changed()

    def _on_acked(self, ack: Ack) -> None:
        with self._cond:
            self._acks.append(ack)
            self._wake = True
            self._cond.notify_all()

    # -- sender thread ----------------------------------------------------------
    def _send_main(self) -> None:
        while not self._stop_sending.is_set():
            with self._cond:
                if not self._wake and not self._acks:
                    self._cond.wait(_POLL_SECONDS)
                self._wake = False
            try:
                self._settle_acks()
                self._fill_window()
            except Exception:  # a store error (a full disk) must not kill the uplink; the batch stays buffered
                log.exception("uplink: cannot use the batch store")
                self._stop_sending.wait(_POLL_SECONDS)

    def _settle_acks(self) -> None:
        while True:
            with self._cond:
                if not self._acks:
                    return
                # Left in the queue while it is settled: a purge meanwhile sees it in flight (may have left).
                ack = self._acks[0]
            try:
                self._settle(ack)
            finally:
                with self._cond:
                    self._acks.popleft()
            self._in_flight_changed()

    def _settle(self, ack: Ack) -> None:
        if self._book.take_forgotten(ack.batch_id):
            log.info("uplink: PUBACK for purged batch %d ignored", ack.batch_id)
        elif ack.reason_code < 0x80:
            self._delivery.delivered(ack.batch_id)
            self._book.delivered(ack.batch_id, self._clock())
        else:
            log.warning("uplink: broker rejected batch %d (%s); keeping it, retry in %.0f s",
                        ack.batch_id, ack.reason, self.config.rejected_retry)
            self._book.rejected(ack.batch_id, self.config.rejected_retry)
            with self._cond:
                self._last_error = f"broker rejected batch {ack.batch_id}: {ack.reason}"

    def _broker_name(self) -> str:
        endpoint = self._connection.endpoint
        return f"{endpoint.host}:{endpoint.port}" if endpoint else self.config.broker.host

    def _fill_window(self) -> None:
        session = self._connection.live_session()
        if session is None:
            return
        self._delivery.settle()
        # In-flight ids first, then the ack queue: a PUBACK moves a batch from the first to the second.
        busy = session.in_flight_ids()
        with self._cond:
            acked_unsettled = {ack.batch_id for ack in self._acks} | self._delivery.waiting()
        held = self._book.excluded()
        room = self._window - len(busy)
        if room <= 0:
            return
        for batch in self.store.pending(room, exclude=busy | held | acked_unsettled):
            if self._stop_sending.is_set() or not self._send_one(session, batch):
                return

    def _send_one(self, session: Session, batch: Any) -> bool:
        payload = bytes(batch.payload)
        if not self._pace(session, len(payload)):
            return False
        try:
            topic = data_topic(self.config.topic_prefix, self.vehicle_id, batch.stream)
            props = publish_properties(batch_properties.user_properties(batch), batch_properties.CONTENT_TYPE)
            self._ensure_dictionary(session, (getattr(batch, "header", None) or {}).get("zstd_dict"))
        except ValueError as exc:
            self._book.hold(batch.id, self.config.rejected_retry)
            with self._cond:
                self._last_error = f"batch {batch.id}: {exc}"
            log.error("uplink: cannot publish batch %d: %s", batch.id, exc)
            return True
        if not self._book.begin_send(batch.id):
            return True  # purged after pending() returned it
        handed = False
        try:
            if self._gate is None:
                handed = session.publish_batch(batch.id, topic, payload, props)
            else:
                outcome = self._gate.release(batch, lambda: session.publish_batch(batch.id, topic, payload, props))
                handed = outcome is Release.SENT
                if outcome in (Release.REFUSED, Release.HELD):
                    return self._not_released(batch.id, outcome)
        finally:
            self._book.end_send(batch.id, len(payload), handed)
        if handed:
            self._in_flight_changed()
        return handed

    def _pace(self, session: Session, size: int) -> bool:
        """Wait for the byte rate limit; PUBACKs that arrive meanwhile are settled at once (ledger entry,
        then delete), so a revocation during a long wait finds them recorded, not purged unrecorded."""
        delay = self._limiter.delay_for(size)
        while delay > 0:
            with self._cond:
                if not self._acks and not self._stop_sending.is_set():
                    self._cond.wait(min(delay, _POLL_SECONDS))
            if self._stop_sending.is_set() or session.is_closed:
                return False
            self._settle_acks()
            delay = self._limiter.delay_for(size)
        return True

    def _not_released(self, batch_id: int, why: Release) -> bool:
        if why is Release.REFUSED:  # purged by the gate: go on with the next batch
            self._book.forget([batch_id])
            return True
        # The ledger cannot be written: nothing leaves; look again after the poll interval.
        self._book.hold(batch_id, _POLL_SECONDS)
        return False

    def _ensure_dictionary(self, session: Session, dictionary_id: str | None) -> None:
        """Publish the zstd dictionary a batch needs (retained) before the batch itself,
        on the same connection, so a receiver has it when the batch arrives."""
        if not dictionary_id or dictionary_id in session.dictionaries_sent:
            return
        lookup = getattr(self.store, "dictionaries", None)
        data = lookup().get(dictionary_id) if lookup else None
        if data is None:
            raise ValueError(f"needs zstd dictionary {dictionary_id}, which the store does not have")
        session.publish_control(dictionary_topic(self.config.topic_prefix, self.vehicle_id, dictionary_id), data)
        session.dictionaries_sent.add(dictionary_id)

    def _session_in_flight(self) -> bool:
        session = self._connection.session
        return bool(session and not session.is_closed and session.in_flight_ids())

    def _in_flight_changed(self) -> None:
        if self._on_in_flight_change is not None:
            self._on_in_flight_change(self.in_flight_ids())

