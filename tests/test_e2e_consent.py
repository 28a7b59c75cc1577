"""The owner's consent, end to end through a real Mosquitto and the reference receiver (issue 5)."""

from __future__ import annotations

import json
import sqlite3
import time

import can
import paho.mqtt.client as mqtt
import pytest

from agent.buffer.store import BatchStore
from agent.ledger import Ledger
from agent.privacy import ConsentPolicy, ConsentStore
from agent.privacy.transforms import geohash_decode, geohash_encode
from simulator.receiver.client import Receiver
from tests.e2e_support import (
    TRUCK_LOG,
    agent_config,
    grant,
    receiver_samples,
    run_agent,
    start_agent,
    stop_agent,
    store_samples,
    wait_until,
)

pytestmark = [pytest.mark.consent, pytest.mark.uplink]
PERSONAL = {"location", "identity", "cabin", "camera", "driving", "charging", "incident", "unclassified"}


def original_positions(shared_data) -> list[tuple[float, float]]:
    """(latitude, longitude) of every gnss_pos frame, decoded with cantools alone."""
    import cantools

    from tests.e2e_support import GPS_DBC

    db = cantools.database.load_file(str(GPS_DBC))
    message = db.get_message_by_name("gnss_pos")
    positions = []
    with can.LogReader(str(shared_data / TRUCK_LOG)) as reader:
        for msg in reader:
            if msg.arbitration_id == message.frame_id and not msg.is_extended_id:
                values = message.decode(bytes(msg.data))
                positions.append((values["Latitude"], values["Longitude"]))
    return positions


def replay(tmp_path, shared_data, config):
    result = run_agent("replay", str(shared_data / TRUCK_LOG), "--config", str(config), "--buffer",
                       str(tmp_path / "state" / "buffer.sqlite"), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def upload(tmp_path, config, broker, expected_batches):
    receiver = Receiver(broker.host, broker.port, tmp_path / "receiver.sqlite")
    receiver.start()
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        if expected_batches:
            assert receiver.wait_for(batches=expected_batches, timeout=60), (tmp_path / "agent.log").read_text()
        else:
            assert wait_until(lambda: receiver.report()["status"], timeout=30)
            receiver.wait_quiet(1.0, timeout=5)
        report = receiver.report()
        # The retained status as it stands while the agent runs (a clean stop replaces it with "offline").
        report["status_payloads"] = dict(receiver.store.query("SELECT vehicle, payload FROM status"))
    finally:
        assert stop_agent(agent) == 0
        receiver.stop()
    return report


def test_default_consent_uploads_no_personal_sample(tmp_path, shared_data, mosquitto):
    config = agent_config(tmp_path, mosquitto.port)
    summary = replay(tmp_path, shared_data, config)
    assert summary["frames_in"] == 57849 and summary["batches_written"] == 0
    assert summary["privacy"]["rows_in"] > 20000 and summary["privacy"]["rows_forwarded"] == 0
    report = upload(tmp_path, config, mosquitto, expected_batches=0)
    assert report["batches"] == 0 and report["samples"] == 0 and report["by_category"] == {}
    # Only the agent's own status left, and it carries no personal data.
    status = report["status"]["test-truck-7"]
    assert status == "online"
    health = json.loads(report["status_payloads"]["test-truck-7"])["health"]
    # The agent's own counters, nothing of any signal.
    assert set(health) == {"uptime_s", "frames", "decoded", "rejected", "dropped_at_bus", "batches_written",
                           "backlog_batches", "rss_mb", "anchor"}
    # The anchor: the ledger's head and the signing key's fingerprint, hashes only.
    assert set(health["anchor"]) <= {"ledger_head", "signing_key"}
    assert health["backlog_batches"] == 0 and health["batches_written"] == 0


@pytest.mark.parametrize("level", ["city", "geohash5", "geohash6", "round3"])
def test_location_arrives_coarsened_exactly_to_the_granted_level(tmp_path, shared_data, mosquitto, level):
    config = agent_config(tmp_path, mosquitto.port)
    grant(tmp_path / "state", {"location": level})
    summary = replay(tmp_path, shared_data, config)
    report = upload(tmp_path, config, mosquitto, summary["batches_written"])
    received = receiver_samples(tmp_path / "receiver.sqlite")
    assert set(report["by_category"]) == {"location"}
    latitudes = [v for _t, _bus, key, v in received if key == "gnss_pos.Latitude"]
    longitudes = [v for _t, _bus, key, v in received if key == "gnss_pos.Longitude"]
    positions = original_positions(shared_data)
    assert len(latitudes) == len(longitudes) == len(positions) == 115
    # Only latitude and longitude leave the location category (no altitude, heading, accuracy ...).
    assert {key for _t, _b, key, _v in received} == {"gnss_pos.Latitude", "gnss_pos.Longitude"}
    for (lat, lon), got_lat, got_lon in zip(positions, latitudes, longitudes):
        if level == "round3":
            expected = (round(lat, 3), round(lon, 3))
        elif level == "city":  # centre of the 0.1 degree cell
            expected = ((int(lat * 10 // 1) + 0.5) / 10, (int(lon * 10 // 1) + 0.5) / 10)
        else:
            expected = geohash_decode(geohash_encode(lat, lon, 6 if level == "geohash6" else 5))
        assert (got_lat, got_lon) == pytest.approx(expected, abs=1e-9)
        assert (got_lat, got_lon) != (lat, lon)


def test_nothing_of_location_arrives_inside_a_privacy_zone(tmp_path, shared_data, mosquitto):
    config = agent_config(tmp_path, mosquitto.port)
    grant(tmp_path / "state", {"location": "round3", "driving": None})
    lat, lon = original_positions(shared_data)[0]
    ConsentPolicy(ConsentStore.in_dir(tmp_path / "state")).add_zone(lat, lon, 5000, name="home")
    summary = replay(tmp_path, shared_data, config)
    report = upload(tmp_path, config, mosquitto, summary["batches_written"])
    assert report["by_category"].get("location", 0) == 0
    assert report["by_category"]["driving"] > 50000
    # The ledger lists every uploaded batch: what left the car, without values.
    uploads = [e for e in Ledger.in_dir(tmp_path / "state").entries() if e.kind == "upload"]
    assert len(uploads) == report["batches"]
    assert sum(e.fields["signals"] for e in uploads) == report["samples"]
    assert all(e.fields["broker"].startswith("127.0.0.1") for e in uploads)


def test_revocation_during_an_outage_purges_the_backlog(tmp_path, shared_data, mosquitto):
    config = agent_config(tmp_path, mosquitto.port)
    grant(tmp_path / "state", {"location": "round3", "vehicle_health": None})
    summary = replay(tmp_path, shared_data, config)
    buffer = tmp_path / "state" / "buffer.sqlite"
    with BatchStore(buffer, read_only=True) as store:
        before = store.pending(1000)
    location_ids = {b.id for b in before if "location" in b.categories}
    assert location_ids and summary["batches_written"] == len(before)
    mosquitto.stop()  # the dead zone
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        assert wait_until(lambda: (tmp_path / "state" / "control.sock").exists(), timeout=20)
        result = run_agent("consent", "revoke", "location", "--config", str(config))
        assert result.returncode == 0, result.stderr
        with BatchStore(buffer, read_only=True) as store:
            left = store.pending(1000)
        assert left and not any("location" in b.categories for b in left)
        mosquitto.start()
        receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite")
        receiver.start()
        assert receiver.wait_for(batches=len(left), timeout=60)
        receiver.wait_quiet(1.0, timeout=5)
        report = receiver.report()
        receiver.stop()
    finally:
        assert stop_agent(agent) == 0
    assert "location" not in report["by_category"] and report["batches"] == len(left)
    entries = list(Ledger.in_dir(tmp_path / "state").entries())
    purges = [e for e in entries if e.kind == "purge"]
    assert purges and set(purges[-1].fields["batch_ids"]) == location_ids
    assert Ledger.in_dir(tmp_path / "state").verify().ok


def test_the_vin_never_leaves_and_its_pseudonym_is_stable_per_key(tmp_path, shared_data, mosquitto):
    vin = "LSVAU2180N2183294"
    config = agent_config(tmp_path, mosquitto.port)
    text = config.read_text().replace("vehicle: {id: test-truck-7}", f"vehicle: {{id: test-truck-7, vin: {vin}}}")
    config.write_text(text)
    grant(tmp_path / "state", {"vehicle_health": None, "driving": None})
    summary = replay(tmp_path, shared_data, config)
    seen: list[tuple[str, bytes]] = []
    sniffer = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sniffer.on_message = lambda _c, _u, message: seen.append((message.topic, bytes(message.payload)))
    sniffer.connect(mosquitto.host, mosquitto.port)
    sniffer.subscribe("#", qos=1)
    sniffer.loop_start()
    try:
        upload(tmp_path, config, mosquitto, summary["batches_written"])
        assert wait_until(lambda: len(seen) >= summary["batches_written"], timeout=10)
    finally:
        sniffer.loop_stop()
        sniffer.disconnect()
    vehicles = {topic.split("/")[1] for topic, _ in seen}
    assert len(vehicles) == 1
    pseudonym = vehicles.pop()
    assert pseudonym.startswith("v") and len(pseudonym) == 33
    for topic, payload in seen:
        assert vin not in topic and vin.encode() not in payload and vin.lower().encode() not in payload
    assert vin not in (tmp_path / "agent.log").read_text()
    with sqlite3.connect(tmp_path / "receiver.sqlite") as db:
        assert {row[0] for row in db.execute("SELECT DISTINCT vehicle FROM batches")} == {pseudonym}
    # Same key, same pseudonym; a new key (another vehicle), another pseudonym.
    again = run_agent("replay", str(shared_data / TRUCK_LOG), "--config", str(config), "--buffer",
                      str(tmp_path / "again.sqlite"))
    assert again.returncode == 0
    with BatchStore(tmp_path / "again.sqlite", read_only=True) as store:
        assert {b.header["vehicle_id"] for b in store.pending(1000)} == {pseudonym}
    (tmp_path / "state" / "pseudonym.key").unlink()
    other = run_agent("replay", str(shared_data / TRUCK_LOG), "--config", str(config), "--buffer",
                      str(tmp_path / "other.sqlite"))
    assert other.returncode == 0
    with BatchStore(tmp_path / "other.sqlite", read_only=True) as store:
        assert {b.header["vehicle_id"] for b in store.pending(1000)} != {pseudonym}
    assert store_samples(tmp_path / "again.sqlite")[1] > 0


def test_the_network_cannot_grant_only_narrow(tmp_path, mosquitto):
    config = agent_config(tmp_path, mosquitto.port)
    grant(tmp_path / "state", {"driving": None})
    agent = start_agent(config, tmp_path / "agent.log")
    topic = "vehicles/test-truck-7/v1/commands"
    publisher = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    log_path = tmp_path / "agent.log"
    try:
        assert wait_until(lambda: "uplink: connected" in log_path.read_text(), timeout=30)
        time.sleep(0.5)  # the subscription follows the CONNACK
        publisher.publish(topic, json.dumps({"action": "grant", "category": "location", "level": "round3"}),
                          qos=1).wait_for_publish(5)
        assert wait_until(lambda: "remote consent command refused" in log_path.read_text(), timeout=15)
        publisher.publish(topic, json.dumps({"action": "revoke", "category": "driving"}), qos=1).wait_for_publish(5)
        assert wait_until(lambda: "remote consent command accepted" in log_path.read_text(), timeout=15)
        shown = run_agent("consent", "show", "--config", str(config), "--json")
        assert shown.returncode == 0, shown.stderr
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        assert stop_agent(agent) == 0
    state = json.loads(shown.stdout)
    text = json.dumps(state)
    assert "location" in text
    policy = ConsentPolicy(ConsentStore.in_dir(tmp_path / "state"))
    assert not policy.is_granted("location") and not policy.is_granted("driving")
    kinds = [entry.kind for entry in Ledger.in_dir(tmp_path / "state").entries()]
    assert "remote_refused" in kinds
    assert Ledger.in_dir(tmp_path / "state").verify().ok
