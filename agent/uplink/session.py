"""One MQTT connection: a fresh paho client per attempt.

A new client per connection keeps paho's own re-send queue out of the picture:
the durable store is the only source of truth for what still has to go, and
everything that was in flight when a connection died is simply offered again
by the store on the next connection (the receiver drops duplicates).

Callbacks run on the uplink's I/O thread; ``publish`` runs on its sender
thread.  paho calls ``on_publish`` while holding its own lock, and
``publish`` takes that lock, so this class never holds its own lock while
calling paho: a PUBACK that overtakes the bookkeeping of its own publish is
parked in ``_early`` and settled when the bookkeeping catches up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.uplink.endpoint import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ack:
    batch_id: int
    reason_code: int
    reason: str


@dataclass(frozen=True)
class SessionHooks:
    """What the session reports back to the uplink (all called on the I/O thread)."""

    connected: Callable[[Session, int | None], None]  # (session, broker receive maximum)
    refused: Callable[[Session, str], None]  # closed before a successful CONNACK: a failed attempt
    disconnected: Callable[[Session, str], None]  # an established connection ended
    acked: Callable[[Ack], None]


class Session:
    def __init__(self, endpoint: Endpoint, client_id: str, keepalive: int, connect_timeout: float,
                 status_topic: str, status_payload: Callable[[str], bytes], tls_context: ssl.SSLContext | None,
                 max_in_flight: int, hooks: SessionHooks, command_topic: str | None = None,
                 on_command: Callable[[bytes], None] | None = None) -> None:
        self.endpoint = endpoint
        self.keepalive = keepalive
        self.status_topic = status_topic
        self._status_payload = status_payload
        self._hooks = hooks
        self._lock = threading.Lock()
        self._by_mid: dict[int, int] = {}  # mid -> batch id, PUBACK not yet seen
        # Batches whose PUBACK is being handed to the uplink: still "in flight" until the uplink has queued
        # the ack, so a sender choosing batches in between never sees one as neither (it would re-send it).
        self._acking: dict[int, int] = {}  # batch id -> handovers in progress
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat their bookkeeping
        self._control_mids: set[int] = set()
        self.is_connected = False
        self.was_connected = False
        self.is_closed = False
        self._refusal: str | None = None
        self._socket_error: str | None = None
        # Dictionary ids published on this connection (retained, so once per connection is plenty).
        self.dictionaries_sent: set[str] = set()
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        # One extra slot for the status message; paho must never hold data back on its own.
        client.max_inflight_messages_set(max_in_flight + 2)
        client.max_queued_messages_set(0)
        client.connect_timeout = connect_timeout
        client.enable_logger(logging.getLogger("agent.uplink.paho"))
        if tls_context is not None:
            client.tls_set_context(tls_context)
        client.will_set(status_topic, status_payload("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_log = self._on_log
        self.command_topic = command_topic
        self._on_command = on_command
        if on_command is not None:
            client.on_message = self._on_message
        self.client = client

    # -- I/O thread -------------------------------------------------------
    def connect(self) -> None:
        """Open the socket (TCP, TLS handshake incl. pin check) and send CONNECT; may raise."""
        self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=self.keepalive,
                            clean_start=True)

    def loop(self, timeout: float) -> bool:
        """Process network events; False once the connection is gone."""
        if self.is_closed:
            return False
        rc = self.client.loop(timeout)
        if rc != mqtt.MQTT_ERR_SUCCESS and not self.is_closed:
            self._close(f"connection lost ({mqtt.error_string(rc)})")
        return not self.is_closed

    def abort(self, why: str) -> None:
        """Give up on this connection (e.g. no CONNACK in time) and close its socket."""
        self._close(why)
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def publish_status(self, state: str) -> int:
        return self.publish_control(self.status_topic, self._status_payload(state))

    def publish_control(self, topic: str, payload: bytes) -> int:
        """A retained QoS 1 message that is not a batch (status, dictionary); its PUBACK is not tracked."""
        info = self.client.publish(topic, payload, qos=1, retain=True)
        with self._lock:
            self._control_mids.add(info.mid)
        return info.mid

    def control_pending(self) -> bool:
        with self._lock:
            return bool(self._control_mids)

    def disconnect(self) -> None:
        if not self.is_closed:
            self.client.disconnect()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            # Not authorized, bad client id, ...: the broker closes the socket next.
            self._refusal = f"broker refused the connection: {reason_code}"
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties else None
        self.is_connected = True
        self.was_connected = True
        self.publish_status("online")
        if self._on_command is not None and self.command_topic:
            client.subscribe(self.command_topic, qos=1)
        self._hooks.connected(self, receive_maximum)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        self._close(f"disconnected: {reason_code}")

    def _close(self, why: str) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.is_connected = False
        with self._lock:
            self._by_mid.clear()
            self._early.clear()
            self._control_mids.clear()
        if self.was_connected:
            self._hooks.disconnected(self, why)
        else:
            # With TLS 1.3 the broker rejects a client certificate after the client's
            # handshake is done, so a refusal shows up here, as an alert on the first read.
            reason = self._refusal or self._socket_error or why
            self._hooks.refused(self, f"connection to {self.endpoint} closed before CONNACK: {reason}")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Network thread: hand the bytes over, never act here (the handler queues them).
        if self._on_command is not None and message.topic == self.command_topic:
            self._on_command(bytes(message.payload))

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._socket_error = text

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        with self._lock:
            if mid in self._control_mids:
                self._control_mids.discard(mid)
                return
            batch_id = self._by_mid.pop(mid, None)
            if batch_id is None:
                self._early[mid] = reason_code
                return
            self._acking[batch_id] = self._acking.get(batch_id, 0) + 1
        try:
            self._hooks.acked(Ack(batch_id, reason_code.value, str(reason_code)))
        finally:
            with self._lock:
                left = self._acking.pop(batch_id) - 1
                if left:
                    self._acking[batch_id] = left

    # -- sender thread ----------------------------------------------------
    def publish_batch(self, batch_id: int, topic: str, payload: bytes, properties: Properties) -> bool:
        """Hand one batch to paho; False when the connection is gone (the batch stays pending)."""
        if not self.is_connected or self.is_closed:
            return False
        info = self.client.publish(topic, payload, qos=1, retain=False, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        with self._lock:
            if self.is_closed:
                return False
            early = self._early.pop(info.mid, None)
            if early is None:
                self._by_mid[info.mid] = batch_id
                return True
        self._hooks.acked(Ack(batch_id, early.value, str(early)))
        return True

    def in_flight_ids(self) -> set[int]:
        """Sent and not yet acknowledged to the uplink (read this before the uplink's ack queue)."""
        with self._lock:
            return set(self._by_mid.values()) | self._acking.keys()


def status_json(vehicle_id: str, client_id: str, region: str, clock: Callable[[], float],
                health: Callable[[], dict] | None = None) -> Callable[[str], bytes]:
    """The retained status message; ``health`` adds the agent's own counters (no personal data)."""

    def payload(state: str) -> bytes:
        body = {"schema": "vehicle-status/1", "state": state, "vehicle_id": vehicle_id, "client_id": client_id,
                "region": region, "time": round(clock(), 3)}
        if health is not None and state == "online":
            try:
                body["health"] = health()
            except Exception as exc:  # a status report must never take the uplink down
                body["health"] = {"error": type(exc).__name__}
        return json.dumps(body, sort_keys=True).encode()

    return payload


def publish_properties(user_properties: list[tuple[str, str]], content_type: str) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.ContentType = content_type
    properties.PayloadFormatIndicator = 0  # binary
    properties.UserProperty = user_properties
    return properties
