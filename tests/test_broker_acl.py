"""Per-vehicle topic ACLs on Mosquitto (issue 14): a vehicle may publish only under vehicles/<its id>/.

The broker here allows no anonymous client.  Two listeners on loopback: one with user names and
passwords (the receiver, and plain MQTT v5 clients standing for vehicles), one with mutual TLS where
the client certificate's common name is the user name (``use_identity_as_username``) - that is how
the agent's Uplink, which authenticates with a certificate, gets its identity.  The ACL::

    user receiver
    topic read vehicles/#
    pattern write vehicles/%u/#

A publish under another vehicle's prefix gets PUBACK reason code 0x87 (Not authorized) and never
reaches the receiver; the Uplink keeps such a batch in its buffer.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.buffer import BatchStore
from agent.privacy import Pseudonymizer
from agent.uplink import Uplink
from agent.uplink.config import AllowedBroker, BrokerAddress, TlsConfig, UplinkConfig
from agent.uplink.properties import CONTENT_TYPE, user_properties
from agent.uplink.session import publish_properties
from agent.uplink.topics import data_topic
from simulator.broker import LocalBroker, free_loopback_port
from simulator.receiver.client import Receiver
from tests.broker import Identity, _issue, _make_ca
from tests.uplink_support import fill_store, wait_until

pytestmark = pytest.mark.fleet

NOT_AUTHORIZED = 0x87
VEHICLE_A = "v" + Pseudonymizer(b"A" * 32).vehicle_pseudonym("KMHK381GFLU000001")[:32]
VEHICLE_B = "v" + Pseudonymizer(b"B" * 32).vehicle_pseudonym("KMHK381GFLU000002")[:32]
PASSWORDS = {"receiver": "receiver-secret", VEHICLE_A: "a-secret", VEHICLE_B: "b-secret"}
ACL = "user receiver\ntopic read vehicles/#\n\npattern write vehicles/%u/#\n"


@dataclass
class AclBroker:
    broker: LocalBroker
    tls_port: int
    ca: Path
    vehicle_a: Identity  # client certificate with common name VEHICLE_A

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        pytest.fail("mosquitto_passwd not found (Debian package mosquitto)", pytrace=False)
    directory = tmp_path / "mosquitto-acl"
    broker = LocalBroker(directory)  # its start/stop; the configuration is written here
    passwords, acl = directory / "passwords", directory / "acl"
    for index, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run([tool, "-b", *(["-c"] if index == 0 else []), str(passwords), user, password], check=True,
                       capture_output=True)
    acl.write_text(ACL)
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_cert, ca_key, ca = _make_ca("fleet test CA", pki, "ca")
    server = _issue(ca_cert, ca_key, "broker.test", pki, "server", server=True)
    vehicle_a = _issue(ca_cert, ca_key, VEHICLE_A, pki, "vehicle-a", server=False)
    tls_port = free_loopback_port()
    broker.config_path.write_text("\n".join([
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwords}",
        f"acl_file {acl}",
        "persistence false",
        f"log_dest file {broker.log_path}",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        f"listener {broker.port} 127.0.0.1",
        f"listener {tls_port} 127.0.0.1",
        f"cafile {ca}", f"certfile {server.cert}", f"keyfile {server.key}",
        "require_certificate true", "use_identity_as_username true",
    ]) + "\n")
    broker.start()
    try:
        yield AclBroker(broker, tls_port, ca, vehicle_a)
    finally:
        broker.stop()


def start_receiver(acl_broker: AclBroker, tmp_path: Path) -> Receiver:
    receiver = Receiver(acl_broker.host, acl_broker.port, tmp_path / "receiver.sqlite")
    # The reference receiver has no credentials option; its paho client takes them before it connects.
    receiver._client.username_pw_set("receiver", PASSWORDS["receiver"])
    receiver.start()
    return receiver


class Vehicle:
    """A plain MQTT v5 client logged in as one vehicle; ``publish`` returns the PUBACK reason code."""

    def __init__(self, acl_broker: AclBroker, user: str) -> None:
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"plain-{user}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, PASSWORDS[user])
        self.acks: dict[int, int] = {}
        self.connack: int | None = None
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect(acl_broker.host, acl_broker.port)
        self.client.loop_start()
        assert self._wait(lambda: self.connack is not None) and self.connack == 0, self.connack

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.connack = reason_code.value
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.acks[mid] = reason_code.value
            self._cond.notify_all()

    def _wait(self, condition, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(condition, timeout)

    def publish(self, batch, vehicle_id: str) -> int:
        properties = publish_properties(user_properties(batch), CONTENT_TYPE)
        info = self.client.publish(data_topic("vehicles", vehicle_id, batch.stream), bytes(batch.payload), qos=1,
                                   properties=properties)
        assert self._wait(lambda: info.mid in self.acks), "no PUBACK"
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def batches_of(tmp_path: Path, shared_data: Path, vehicle_id: str, name: str, rows: int = 3000) -> BatchStore:
    store = BatchStore(tmp_path / f"{name}.sqlite")
    fill_store(store, shared_data, boot_id=f"boot-{name}", limit_rows=rows, vehicle=vehicle_id)
    return store


def test_vehicle_publishes_under_its_own_prefix_only(tmp_path, shared_data, acl_broker):
    receiver = start_receiver(acl_broker, tmp_path)
    own = batches_of(tmp_path, shared_data, VEHICLE_A, "own").pending(1)[0]
    forged = batches_of(tmp_path, shared_data, VEHICLE_B, "forged").pending(1)[0]
    vehicle = Vehicle(acl_broker, VEHICLE_A)
    try:
        assert vehicle.publish(own, VEHICLE_A) < 0x80
        assert vehicle.publish(forged, VEHICLE_B) == NOT_AUTHORIZED
        assert receiver.wait_for(1, timeout=10)
        receiver.wait_quiet(0.5, timeout=5)
        report = receiver.report()
    finally:
        vehicle.close()
        receiver.stop()
    assert (report["batches"], report["vehicles"], report["corrupt"]) == (1, [VEHICLE_A], 0)


def test_anonymous_clients_are_refused(acl_broker):
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="anonymous",
                         protocol=mqtt.MQTTv5)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, reason_code, p: codes.append(reason_code.value)
    client.connect(acl_broker.host, acl_broker.port)
    client.loop_start()
    try:
        assert wait_until(lambda: bool(codes), 10)
    finally:
        client.loop_stop()
    assert codes[0] >= 0x80  # Not authorized (no user name on a broker without anonymous access)


def uplink(acl_broker: AclBroker, store: BatchStore, vehicle_id: str) -> Uplink:
    """The agent's Uplink over mutual TLS with vehicle A's certificate (its identity is its user name)."""
    config = UplinkConfig(
        region="eu-test", broker=BrokerAddress(acl_broker.host, acl_broker.tls_port),
        allowed_brokers=[AllowedBroker(acl_broker.host, acl_broker.tls_port, region="eu-test")],
        tls=TlsConfig(ca=str(acl_broker.ca), cert=str(acl_broker.vehicle_a.cert), key=str(acl_broker.vehicle_a.key)),
        in_flight=4, backoff_min=0.2, backoff_max=1.0, rejected_retry=3600.0)
    return Uplink(config, store, vehicle_id)


def test_uplink_of_a_vehicle_reaches_the_receiver_under_its_own_prefix(tmp_path, shared_data, acl_broker):
    receiver = start_receiver(acl_broker, tmp_path)
    store = batches_of(tmp_path, shared_data, VEHICLE_A, "uplink-own")
    committed = store.counters()["pending_batches"]
    link = uplink(acl_broker, store, VEHICLE_A)
    link.start()
    try:
        assert receiver.wait_for(committed, timeout=30), (link.state(), acl_broker.broker.log_tail())
        assert wait_until(lambda: store.counters()["pending_batches"] == 0, 10)
        report = receiver.report()
    finally:
        link.stop()
        receiver.stop()
    assert (report["batches"], report["vehicles"], report["gaps"], report["corrupt"]) == (committed, [VEHICLE_A], 0, 0)
    assert link.state()["rejected"] == 0


def test_uplink_batches_under_another_vehicles_prefix_are_refused_and_stay_buffered(tmp_path, shared_data,
                                                                                      acl_broker):
    receiver = start_receiver(acl_broker, tmp_path)
    store = batches_of(tmp_path, shared_data, VEHICLE_B, "uplink-forged")
    before = [batch.id for batch in store.pending(1000)]
    link = uplink(acl_broker, store, VEHICLE_B)  # vehicle A's certificate, vehicle B's topics
    link.start()
    try:
        assert wait_until(lambda: link.state()["rejected"] >= len(before), 30), link.state()
        receiver.wait_quiet(0.5, timeout=5)
        state = link.state()
        report = receiver.report()
    finally:
        link.stop()
        receiver.stop()
    assert state["connected"] and state["acked"] == 0 and state["held"] == len(before)
    # Every refused batch is still in the buffer, unchanged: nothing was deleted on a failure PUBACK.
    assert [batch.id for batch in store.pending(1000)] == before
    assert report["batches"] == 0 and VEHICLE_B not in report["vehicles"]
