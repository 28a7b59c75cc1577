"""Ledger anchors at the receiver (issue 11): the latest ledger head each vehicle published is kept, never going
backwards, so ``vehicle-agent ledger verify --against`` finds a ledger rolled back or deleted in the car.

The rules (simulator/receiver/anchors.py) one by one on a store, the status handling (online only, malformed
anchors ignored and counted), the report, the exported file accepted by the real ``ledger verify --against``
(and a rollback found with it), and retained status messages through a real Mosquitto.
"""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.cli.main import main as vehicle_agent
from agent.export.anchor import signing_key_fingerprint, vehicle_anchor
from agent.ledger import Ledger
from agent.ledger_chain import anchor_from_document, canonical, sha256_hex
from agent.uplink.topics import status_topic
from simulator.cli import main as vehicle_sim
from simulator.receiver import Receiver, ReceiverStore, build_report, format_report
from simulator.receiver.anchors import Anchor, AnchorRejected, parse_anchor
from tests.uplink_support import VEHICLE, wait_until

KEY = "SHA256:" + "ab" * 32
OTHER_KEY = "SHA256:" + "cd" * 32


def digest(n: int | str) -> str:
    return sha256_hex(f"line {n}".encode())


def status(state: str = "online", seq: int | None = 5, line: str | None = None, key: str | None = KEY,
           time: float = 1000.0, **anchor_fields) -> bytes:
    """A status message as the agent publishes it (agent/uplink/session.py status_json, runtime health())."""
    body: dict = {"schema": "vehicle-status/1", "state": state, "vehicle_id": VEHICLE, "client_id": "c",
                  "region": "eu", "time": time}
    if state == "online":
        head = None if seq is None else {"seq": seq, "line_sha256": line or digest(seq)}
        body["health"] = {"uptime_s": 5, "anchor": {"ledger_head": head, "signing_key": key, **anchor_fields}}
    return json.dumps(body, sort_keys=True).encode()


@pytest.fixture
def store(tmp_path: Path):
    receiver_store = ReceiverStore(tmp_path / "rx.sqlite")
    yield receiver_store
    receiver_store.close()


@pytest.fixture
def receiver(tmp_path: Path):
    rx = Receiver("127.0.0.1", 1, tmp_path / "rx.sqlite")  # never started: messages are delivered directly
    yield rx
    rx.stop()


def deliver(receiver: Receiver, payload: bytes, vehicle: str = VEHICLE, received: float = 2000.0) -> None:
    message = mqtt.MQTTMessage(topic=status_topic("vehicles", vehicle).encode())
    message.payload = payload
    receiver._clock = lambda: received
    receiver._on_message(None, None, message)  # as paho's network thread calls it


def kept(store: ReceiverStore) -> tuple:
    row = store.ledger_anchor(VEHICLE)
    return None if row is None else (row["seq"], row["line_sha256"], row["signing_key"], row["status_time"],
                                     row["received"])


def put(store: ReceiverStore, seq: int, line: str | None = None, key: str | None = KEY, when: float | None = 1.0,
        received: float = 10.0) -> str | None:
    return store.set_status(VEHICLE, "online", "{}", received, Anchor(seq, line or digest(seq), key), when)


# -- validation ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [
    {"seq": 0, "line_sha256": "a" * 64}, {"seq": -1, "line_sha256": "a" * 64}, {"seq": True, "line_sha256": "a" * 64},
    {"seq": "5", "line_sha256": "a" * 64}, {"seq": 5.0, "line_sha256": "a" * 64},
    {"seq": 2**63, "line_sha256": "a" * 64}, {"seq": 5, "line_sha256": "A" * 64},
    {"seq": 5, "line_sha256": "a" * 63}, {"seq": 5, "line_sha256": "a" * 64 + "\n"},
    {"seq": 5, "line_sha256": 7}, {"seq": 5}, [5, "a" * 64], "head",
])
def test_a_ledger_head_that_is_not_one_is_refused(head):
    with pytest.raises(AnchorRejected, match="ledger_head"):
        parse_anchor({"ledger_head": head, "signing_key": KEY})


@pytest.mark.parametrize("key", ["SHA256:" + "a" * 63, "sha256:" + "a" * 64, "a" * 64, "SHA256:" + "g" * 64,
                                 "SHA256:" + "a" * 64 + "\n", 42, ["SHA256:" + "a" * 64]])
def test_a_signing_key_that_is_not_a_fingerprint_is_refused(key):
    with pytest.raises(AnchorRejected, match="signing_key"):
        parse_anchor({"ledger_head": {"seq": 1, "line_sha256": "a" * 64}, "signing_key": key})


def test_what_a_well_formed_anchor_gives():
    head = {"seq": 2**63 - 1, "line_sha256": "a" * 64}
    assert parse_anchor({"ledger_head": head, "signing_key": "SHA256:" + "AB" * 32}) == \
        Anchor(2**63 - 1, "a" * 64, KEY)  # the key's hex in lower case, as the agent shows it
    assert parse_anchor({"ledger_head": head}) == parse_anchor({"ledger_head": head, "signing_key": None}) == \
        Anchor(2**63 - 1, "a" * 64, None)
    assert parse_anchor({"ledger_head": None, "signing_key": KEY}) is None  # an empty ledger
    assert parse_anchor(None) is None
    with pytest.raises(AnchorRejected, match="not an object"):
        parse_anchor([1])


# -- the rules ---------------------------------------------------------------------------------------------------

def test_the_first_anchor_is_stored_and_the_same_one_again_moves_only_the_status_time(store):
    assert store.ledger_anchor(VEHICLE) is None
    assert put(store, 5, when=100.0, received=110.0) == "stored"
    assert store.ledger_anchor(VEHICLE) == {"vehicle": VEHICLE, "seq": 5, "line_sha256": digest(5),
                                            "signing_key": KEY, "status_time": 100.0, "received": 110.0}
    assert put(store, 5, when=160.0, received=170.0) == "confirmed"
    assert kept(store) == (5, digest(5), KEY, 160.0, 110.0)
    assert put(store, 5, when=130.0, received=180.0) == "confirmed"  # an older status again: time stays
    assert put(store, 5, when=None, received=190.0) == "confirmed"
    assert kept(store) == (5, digest(5), KEY, 160.0, 110.0)
    assert store.ledger_anchor_conflicts() == []


def test_a_higher_seq_replaces_the_anchor(store):
    put(store, 5, when=100.0, received=110.0)
    assert put(store, 9, when=200.0, received=210.0) == "advanced"
    assert kept(store) == (9, digest(9), KEY, 200.0, 210.0)
    assert put(store, 12, key=None, when=300.0, received=310.0) == "advanced"  # no key now: the known one stays
    assert kept(store) == (12, digest(12), KEY, 300.0, 310.0)
    assert store.ledger_anchor_conflicts() == []


@pytest.mark.parametrize(("seq", "line", "key", "reason"), [
    (3, None, KEY, "seq_went_back"),
    (3, None, None, "seq_went_back"),
    (5, digest("other"), KEY, "same_seq_other_hash"),
    (5, digest(5), OTHER_KEY, "signing_key_changed"),
    (9, None, OTHER_KEY, "signing_key_changed"),  # even moving on: a head under another key is not this car's
])
def test_a_conflict_is_recorded_and_the_kept_anchor_stays(store, seq, line, key, reason):
    put(store, 5, when=100.0, received=110.0)
    before = kept(store)
    assert put(store, seq, line, key, when=150.0, received=160.0) == reason
    assert kept(store) == before
    [conflict] = store.ledger_anchor_conflicts(VEHICLE)
    assert conflict == {"id": conflict["id"], "vehicle": VEHICLE, "received": 160.0, "kept_seq": 5,
                        "kept_line_sha256": digest(5), "got_seq": seq, "got_line_sha256": line or digest(seq),
                        "got_signing_key": key, "reason": reason}
    # The same conflicting anchor again (a retained status at each reconnect) adds nothing.
    assert put(store, seq, line, key, when=150.0, received=170.0) == "repeated_conflict"
    assert len(store.ledger_anchor_conflicts()) == 1 and kept(store) == before
    assert store.ledger_anchor_conflicts("another-vehicle") == []


def test_an_anchor_without_a_key_adopts_the_first_key_that_comes(store):
    put(store, 5, key=None)
    assert kept(store)[2] is None
    assert put(store, 5, key=KEY) == "confirmed" and kept(store)[2] == KEY
    assert put(store, 6, key=OTHER_KEY) == "signing_key_changed" and kept(store)[:3] == (5, digest(5), KEY)


def test_vehicles_are_kept_apart(store):
    put(store, 5)
    store.set_status("other", "online", "{}", 1.0, Anchor(2, digest(2), OTHER_KEY), 1.0)
    assert store.ledger_anchor("other")["seq"] == 2 and kept(store)[0] == 5
    assert store.ledger_anchor_conflicts() == []


# -- status messages ---------------------------------------------------------------------------------------------

def test_online_status_carries_the_anchor_offline_never_touches_it(receiver):
    deliver(receiver, status(seq=5, time=100.0), received=110.0)
    assert kept(receiver.store) == (5, digest(5), KEY, 100.0, 110.0)
    deliver(receiver, status("offline", time=120.0), received=130.0)  # the last will: no health, no anchor
    assert kept(receiver.store) == (5, digest(5), KEY, 100.0, 110.0)
    assert receiver.report()["status"] == {VEHICLE: "offline"}
    # Something that says "offline" but carries a head (not what the agent sends) is not read either.
    offline_with_head = json.loads(status(seq=3))
    offline_with_head["state"] = "offline"
    deliver(receiver, json.dumps(offline_with_head).encode())
    assert kept(receiver.store)[0] == 5 and receiver.store.ledger_anchor_conflicts() == []
    deliver(receiver, status(seq=3))
    assert kept(receiver.store)[0] == 5
    assert [c["reason"] for c in receiver.store.ledger_anchor_conflicts()] == ["seq_went_back"]


def test_status_without_an_anchor_or_with_a_bad_one_stores_the_status_only(receiver):
    older_agent = json.dumps({"state": "online", "time": 1.0, "health": {"uptime_s": 5}}).encode()
    for payload in (older_agent, status(seq=None), b'{"state": "online"}', b"not json", b"[" * 100_000,
                    json.dumps({"state": "online", "health": {"error": "RuntimeError"}}).encode()):
        deliver(receiver, payload)
    assert receiver.store.ledger_anchor(VEHICLE) is None and receiver.report()["corrupt"] == 0
    assert receiver.report()["status"] == {VEHICLE: "online"}
    for payload in (status(seq=0), status(seq=2**64 - 1), status(line="A" * 64), status(key="SHA256:xyz"),
                    json.dumps({"state": "online", "health": {"anchor": "yes"}}).encode()):
        deliver(receiver, payload)
    assert receiver.store.ledger_anchor(VEHICLE) is None and receiver.report()["corrupt"] == 0
    assert receiver.report()["ledger_anchors_invalid"] == 5
    deliver(receiver, status(seq=4))  # a good one afterwards is kept
    assert kept(receiver.store)[0] == 4


def test_the_report_shows_anchors_and_conflicts(receiver):
    deliver(receiver, status(seq=5))
    deliver(receiver, status(seq=3))
    deliver(receiver, status(seq=2, key=OTHER_KEY))
    deliver(receiver, status(seq=7), vehicle="vehicle-b")
    report = build_report(receiver.store)
    assert report["ledger_anchors"] == {VEHICLE: 5, "vehicle-b": 7}
    assert report["ledger_anchor_conflicts"] == 2
    assert [(d["reason"], d["kept_seq"], d["got_seq"]) for d in report["ledger_anchor_conflict_details"]] == \
        [("seq_went_back", 5, 3), ("signing_key_changed", 5, 2)]
    text = format_report(report)
    assert f"anchor       {VEHICLE}: ledger seq 5" in text and "anchor       vehicle-b: ledger seq 7" in text
    assert "anchor conflicts 2  (a published ledger head went back" in text
    assert f"anchor conflict {VEHICLE}: seq_went_back (kept seq 5, got seq 3)" in text


# -- the exported anchor and `vehicle-agent ledger verify --against` ------------------------------------------

def filled_ledger(state: Path, entries: int = 6) -> Ledger:
    ledger = Ledger.in_dir(state)
    for batch in range(entries):
        ledger.record_upload(batch + 1, bytes([batch]) * 40, ["driving"], 10, (1.7e9, 1.7e9 + 1), None,
                             "127.0.0.1:1883", 1, stream="telemetry")
    return ledger


def test_the_exported_anchor_is_what_ledger_verify_against_reads_and_finds_a_rollback(tmp_path, capsys):
    state = tmp_path / "state"
    ledger = filled_ledger(state)
    key = signing_key_fingerprint(state)  # the vehicle's key, as its status message names it
    published = vehicle_anchor(ledger)  # what health() puts in the status message
    assert published == {"ledger_head": {"seq": 6, "line_sha256": ledger.head()["line_sha256"]}, "signing_key": key}
    db = tmp_path / "receiver.sqlite"
    store = ReceiverStore(db)
    try:
        assert store.set_status(VEHICLE, "online", "{}", 2e9, parse_anchor(published), 1.9e9) == "stored"
    finally:
        store.close()

    out = tmp_path / "anchor.json"
    assert vehicle_sim(["cloud", "anchor", "--db", str(db), "--vehicle", VEHICLE, "-o", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document == {"vehicle": VEHICLE, "seq": 6, "line_sha256": published["ledger_head"]["line_sha256"],
                        "signing_key": key, "status_time": 1.9e9, "received": 2e9}
    assert anchor_from_document(document) == {**published["ledger_head"], "signing_key": key}
    capsys.readouterr()
    assert vehicle_agent(["ledger", "verify", "--state", str(state), "--against", str(out)]) == 0
    assert "ledger matches the anchor" in capsys.readouterr().out

    # Rolled back in the car: the last two lines cut, the head rewritten to match.  The car alone cannot tell.
    lines = ledger.path.read_bytes().splitlines(keepends=True)[:4]
    ledger.path.write_bytes(b"".join(lines))
    ledger.head_path.write_bytes(canonical({"seq": 4, "line_sha256": sha256_hex(lines[-1].rstrip(b"\n"))}) + b"\n")
    assert vehicle_agent(["ledger", "verify", "--state", str(state)]) == 0
    capsys.readouterr()
    assert vehicle_agent(["ledger", "verify", "--state", str(state), "--against", str(out)]) == 1
    assert "rolled back or cut: the ledger has 4 entries, but seq 6" in capsys.readouterr().out
    # Deleted altogether: found too.
    for path in (ledger.path, ledger.head_path):
        path.unlink()
    assert vehicle_agent(["ledger", "verify", "--state", str(state), "--against", str(out)]) == 1


def test_the_anchor_command_prints_conflicts_and_exits_1_without_an_anchor(tmp_path, capsys):
    db = tmp_path / "receiver.sqlite"
    store = ReceiverStore(db)
    try:
        put(store, 5)
        put(store, 3)
    finally:
        store.close()
    assert vehicle_sim(["cloud", "anchor", "--db", str(db), "--vehicle", VEHICLE, "--conflicts"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["seq"] == 5 and [c["reason"] for c in document["conflicts"]] == ["seq_went_back"]
    assert anchor_from_document(document)["seq"] == 5
    assert vehicle_sim(["cloud", "anchor", "--db", str(db), "--vehicle", "nobody"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no ledger anchor for vehicle 'nobody'" in captured.err
    assert vehicle_sim(["cloud", "anchor", "--db", str(tmp_path / "nope.sqlite"), "--vehicle", VEHICLE]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite").exists()


# -- through a real Mosquitto: retained status messages ------------------------------------------------------

def publish_retained(broker, payload: bytes) -> None:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(status_topic("vehicles", VEHICLE), payload, qos=1, retain=True)
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.uplink
def test_retained_status_messages_never_move_the_anchor_back(mosquitto, tmp_path):
    db = tmp_path / "rx.sqlite"
    receiver = Receiver(mosquitto.host, mosquitto.port, db, client_id="rx-anchor")
    receiver.start()
    try:
        publish_retained(mosquitto, status(seq=5, time=100.0))
        assert wait_until(lambda: receiver.store.ledger_anchor(VEHICLE) is not None, 10)
        publish_retained(mosquitto, status(seq=3, time=160.0))
        assert wait_until(lambda: receiver.report()["ledger_anchor_conflicts"] == 1, 10), receiver.report()
        receiver.wait_quiet(0.2, timeout=5)
        assert kept(receiver.store)[:3] == (5, digest(5), KEY)
        [(first_seen,)] = receiver.store.query("SELECT received FROM status")
    finally:
        receiver.stop()
    # Another receiver on the same file gets the retained seq 3 again: harmless.
    again = Receiver(mosquitto.host, mosquitto.port, db, client_id="rx-anchor-2")
    again.start()
    try:
        assert wait_until(lambda: again.store.query("SELECT received FROM status")[0][0] > first_seen, 10)
        again.wait_quiet(0.2, timeout=5)
        report = again.report()
        assert report["ledger_anchors"] == {VEHICLE: 5} and report["ledger_anchor_conflicts"] == 1
        [conflict] = again.store.ledger_anchor_conflicts(VEHICLE)
        assert (conflict["reason"], conflict["kept_seq"], conflict["got_seq"]) == ("seq_went_back", 5, 3)
        publish_retained(mosquitto, status("offline"))
        assert wait_until(lambda: again.report()["status"].get(VEHICLE) == "offline", 10)
        assert again.report()["ledger_anchors"] == {VEHICLE: 5} and again.report()["corrupt"] == 0
    finally:
        again.stop()
