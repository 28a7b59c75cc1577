"""The reference cloud receiver: subscribe, verify, deduplicate, decode into SQLite or PostgreSQL.

A batch is named by (vehicle, store_epoch, boot_id, seq).  A repeat with the same
payload SHA-256 is a duplicate (dropped, counted); with another payload it is a
conflict: counted and kept aside, the batch stored first stays (``ReceiverStore``).

A message that cannot be processed never stops the receiver and is never lost
from the record: a rejected batch is ``corrupt`` with the reason, and so is any
message whose handling raised anything else (the exception type is the reason;
its traceback is logged the first time that type is seen).

An ``online`` status message's ``health.anchor`` (the vehicle's ledger head) is
kept per vehicle, never going backwards (``simulator.receiver.anchors``).

Several receivers can split a fleet with an MQTT v5 shared subscription
(``shared_group``): the broker hands each batch to one member of the group.
They can share one database (``db_path`` a ``postgresql://`` URL, or one SQLite
file): the database decides duplicates and conflicts, and the report (gaps too)
is computed from what it holds, so every member reports the same.

The receiver keeps a persistent session (fixed client id, clean_start false,
session expiry) with QoS 1 subscriptions, so batches published while it is
disconnected - or while the broker restarts, if the broker persists sessions -
are delivered when it comes back.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.batch.format import BatchError
from agent.ledger_chain import loads_limited
from agent.uplink.properties import parse_user_properties
from agent.uplink.topics import (
    DATA,
    DICTIONARY,
    STATUS,
    TopicParts,
    data_filter,
    data_topic,
    dictionary_filter,
    parse_topic,
    status_filter,
)
from simulator.receiver import anchors
from simulator.receiver.decode import BatchRejected, decode_late, verify_batch
from simulator.receiver.report import build_report
from simulator.receiver.store import CONFLICT, STORED, open_receiver_store

log = logging.getLogger(__name__)

SESSION_EXPIRY_SECONDS = 3600
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class ReceiverTls:
    ca: str
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert and self.key:
            context.load_cert_chain(self.cert, self.key)
        return context


class Receiver:
    def __init__(self, broker_host: str, port: int, db_path: str | Path = ":memory:", tls: ReceiverTls | None = None,
                 shared_group: str | None = None, topic_prefix: str = "vehicles", client_id: str | None = None,
                 clock: Callable[[], float] = time.time, dictionaries: Mapping[str, bytes] | None = None,
                 categories_of: Mapping[str, str] | None = None) -> None:
        self.broker_host = broker_host
        self.port = port
        self.topic_prefix = topic_prefix
        self.shared_group = shared_group
        self.client_id = client_id or f"receiver-{uuid.uuid4().hex[:12]}"
        data_filter(topic_prefix, shared_group)  # a bad group name fails here, not in the network thread
        self.store = open_receiver_store(db_path)  # a SQLite path or a postgresql:// URL
        self._clock = clock
        self._dictionaries = {**self.store.dictionaries(), **(dictionaries or {})}
        self._categories_of = dict(categories_of or {})
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._unique = self.store.batch_count()
        self._received = 0
        self._started = False
        self._said: set[tuple[str, ...]] = set()  # problems logged in full once (a status comes every minute)
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5)
        client.reconnect_delay_set(0.1, 2.0)
        client.enable_logger(logging.getLogger("simulator.receiver.paho"))
        if tls is not None:
            client.tls_set_context(tls.context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; returns once the subscription is in place."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        self._client.connect(self.broker_host, self.port, keepalive=30, clean_start=False, properties=properties)
        self._client.loop_start()
        self._started = True
        if not self._connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"receiver: no subscription on {self.broker_host}:{self.port} within {timeout} s")

    def stop(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
        self.store.close()

    def wait_for(self, batches: int, timeout: float) -> bool:
        """Block until ``batches`` unique batches are stored; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unique < batches:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Block until no message arrived for ``quiet`` seconds while subscribed (or ``timeout``).  Time
        spent disconnected does not count as quiet: after a broker restart the session's queued messages
        arrive only once the reconnect (backoff up to 2 s) is through."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            if not self._connected.is_set():
                last = -1
                time.sleep(min(quiet, 0.05))
                continue
            with self._cond:
                current = self._received
            if current == last:
                return
            last = current
            time.sleep(quiet)

    def report(self) -> dict[str, Any]:
        return build_report(self.store)

    @property
    def unique_batches(self) -> int:
        with self._cond:
            return self._unique

    # -- paho callbacks (network thread) ---------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.error("receiver: broker refused the connection: %s", reason_code)
            return
        options = SubscribeOptions(qos=1)
        client.subscribe([(data_filter(self.topic_prefix, self.shared_group), options),
                          (status_filter(self.topic_prefix), options),
                          (dictionary_filter(self.topic_prefix), options)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        failures = [str(code) for code in reason_codes if code.is_failure]
        if failures:
            log.error("receiver: subscription refused: %s", ", ".join(failures))
            return
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = self._clock()
        try:
            self._handle(message, received)
        except Exception as exc:  # one bad message must not stop the receiver, nor go unrecorded
            self._unexpected(message, received, exc)
        with self._cond:
            self._received += 1
            self._cond.notify_all()

    def _unexpected(self, message: mqtt.MQTTMessage, received: float, exc: Exception) -> None:
        """A message whose handling raised something other than BatchRejected: recorded as corrupt, with
        the exception type as the reason; the traceback is logged once per exception type."""
        topic = str(message.topic)
        reason = f"the receiver could not process it: {type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
        first = ("exception", type(exc).__name__) not in self._said
        self._said.add(("exception", type(exc).__name__))
        log.error("receiver: cannot process a message on %s (recorded as corrupt): %s", topic, reason,
                  exc_info=exc if first else None)
        try:
            parts = parse_topic(self.topic_prefix, topic)
            payload = message.payload or b""
            self.store.add_corrupt(parts.vehicle_id if parts else None, topic, received, len(payload), reason)
        except Exception:
            log.exception("receiver: cannot record the message on %s as corrupt either", topic)

    def _once(self, key: tuple[str, ...], text: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(text, *args)

    def _handle(self, message: mqtt.MQTTMessage, received: float) -> None:
        parts = parse_topic(self.topic_prefix, message.topic)
        payload = bytes(message.payload)
        if parts is None:
            self.store.add_corrupt(None, message.topic, received, len(payload), "topic outside the scheme")
            return
        if parts.kind == STATUS:
            self._handle_status(parts.vehicle_id, payload, received)
            return
        if parts.kind == DICTIONARY:
            self._handle_dictionary(parts, message.topic, payload, received)
            return
        assert parts.kind == DATA and parts.stream is not None
        props = parse_user_properties(getattr(message.properties, "UserProperty", None))
        try:
            verified = verify_batch(parts.vehicle_id, parts.stream, payload, props, received,
                                    self._dictionaries, self._categories_of)
        except BatchRejected as exc:
            log.warning("receiver: rejected batch on %s: %s", message.topic, exc)
            self.store.add_corrupt(parts.vehicle_id, message.topic, received, len(payload), str(exc))
            return
        outcome = self.store.add_batch(verified.row, verified.samples, payload=payload, topic=message.topic,
                                       needs_dictionary=verified.needs_dictionary)
        if outcome == STORED:
            with self._cond:
                self._unique += 1
        elif outcome == CONFLICT:
            log.warning("receiver: conflict on %s: batch %s already stored with another payload (this one, "
                        "SHA-256 %s, is kept aside in conflicts)", message.topic, verified.row.key,
                        verified.row.payload_sha256)

    def _handle_dictionary(self, parts: TopicParts, topic: str, payload: bytes, received: float) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        if digest != parts.stream:
            self.store.add_corrupt(parts.vehicle_id, topic, received, len(payload),
                                   f"dictionary hashes to {digest}, not the {parts.stream} its topic names")
            return
        dictionary_id = f"sha256:{digest}"
        if dictionary_id in self._dictionaries:
            return
        self._dictionaries[dictionary_id] = payload
        self.store.add_dictionary(dictionary_id, payload)
        for key, stream, waiting_payload in self.store.waiting_for(dictionary_id):
            try:
                samples = decode_late(waiting_payload, self._dictionaries, self._categories_of)
            except BatchError as exc:  # verified, but its body does not decode (or is past the decode limits)
                batch_topic = data_topic(self.topic_prefix, key[0], stream)
                log.warning("receiver: rejected batch on %s once its dictionary came: %s", batch_topic, exc)
                self.store.reject_late(key, batch_topic, received, str(exc))
                with self._cond:
                    self._unique = self.store.batch_count()
                continue
            self.store.add_late_samples(key, samples)

    def _handle_status(self, vehicle: str, payload: bytes, received: float) -> None:
        body: Any = None
        try:
            body = loads_limited(payload.decode("utf-8"))
            state = str(body["state"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            state = "unreadable"
        anchor = None
        if state == "online":
            try:
                anchor = anchors.anchor_of_status(body)
            except anchors.AnchorRejected as exc:
                self.store.bump("ledger_anchors_invalid")
                self._once(("anchor", vehicle), "receiver: vehicle %s: status anchor ignored (said once per "
                           "vehicle; the report counts ledger_anchors_invalid): %s", vehicle, exc)
        outcome = self.store.set_status(vehicle, state, payload.decode("utf-8", "replace"), received, anchor,
                                        anchors.status_time(body))
        if outcome in anchors.CONFLICT_REASONS:
            assert anchor is not None
            kept = self.store.ledger_anchor(vehicle) or {}
            log.warning("receiver: vehicle %s published ledger head seq %d (%s..., key %s) but seq %s (%s...) "
                        "is kept: %s; recorded in ledger_anchor_conflicts", vehicle, anchor.seq,
                        anchor.line_sha256[:16], anchor.signing_key, kept.get("seq"),
                        str(kept.get("line_sha256"))[:16], outcome)
