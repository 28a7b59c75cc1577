"""Camera events: schema validation, spool and socket intake with quarantine, and what may leave the car."""

from __future__ import annotations

import copy
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.batch import decode_envelope
from agent.batch.identity import BatchNumbers
from agent.buffer.store import BatchStore
from agent.camera.config import parse_camera
from agent.camera.events import CameraEventError, event_to_dict, parse_event
from agent.camera.rules import CAMERA_PRIORITY, CAMERA_STREAM, camera_decision
from agent.camera.socket_in import CameraSocketServer
from agent.camera.spool import SpoolWatcher
from agent.camera.upload import camera_batch
from agent.privacy.policy import ConsentPolicy
from agent.privacy.transforms import coarsen
from agent.uplink.mqtt import Uplink
from agent.uplink.topics import data_filter
from agent.yamlsrc import ConfigError, load_text
from simulator.scenario import build_scenario, write_scenario
from tests.broker import MosquittoBroker
from tests.uplink_support import plain_config, wait_until

pytestmark = pytest.mark.incident

NOW = 1_700_000_100.0

VALID = {
    "version": 1,
    "event_id": "evt-0001",
    "time": "2023-11-14T22:14:00.250Z",
    "camera": "front",
    "trigger": "collision",
    "clip": {"sha256": "ab" * 32, "size": 1_234_567, "duration_s": 30.0, "resolution": "1920x1080",
             "path": "/media/camera/clips/evt-0001.mp4"},
    "faces": 2,
    "plates": 1,
    "anonymised": False,
    "location": {"lat": 31.230416, "lon": 121.473701, "accuracy_m": 2.5},
}


def record(**changes) -> dict:
    data = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is _DELETE:
            data.pop(key)
        else:
            data[key] = value
    return data


_DELETE = object()


def encode(data: dict) -> bytes:
    return json.dumps(data).encode()


# -- schema ------------------------------------------------------------------------------


def test_valid_record_parses_every_field():
    event = parse_event(encode(VALID), "evt.json")
    assert event.event_id == "evt-0001"
    assert event.time == 1_700_000_040.25  # 2023-11-14T22:14:00.250Z
    assert (event.camera, event.trigger, event.faces, event.plates, event.anonymised) == \
        ("front", "collision", 2, 1, False)
    assert (event.clip.sha256, event.clip.size, event.clip.width, event.clip.height) == ("ab" * 32, 1_234_567, 1920,
                                                                                         1080)
    assert event.location is not None and (event.location.lat, event.location.lon) == (31.230416, 121.473701)
    # The dict form round-trips (the simulator writes records with it).
    assert parse_event(encode(event_to_dict(event)), "again") == parse_event(encode(VALID), "again")


@pytest.mark.parametrize(("data", "field", "words"), [
    (record(camera="roof"), "camera", "must be one of front, rear, left, right, cabin"),
    (record(camera=_DELETE), "camera", "missing"),
    (record(trigger="party"), "trigger", "must be one of"),
    (record(faces=-1), "faces", "between 0 and"),
    (record(plates=1.5), "plates", "expected an integer"),
    (record(anonymised="yes"), "anonymised", "expected true or false"),
    (record(time="yesterday"), "time", "not an RFC 3339 time"),
    (record(time="2023-11-14T22:14:00"), "time", "needs a UTC offset"),
    (record(time=12.0), "time", "implausible time"),
    (record(event_id="../../etc/passwd"), "event_id", "letters, digits"),
    (record(thumbnail="iVBORw0KGgo="), "thumbnail", "unknown field"),
    (record(clip={**VALID["clip"], "sha256": "XYZ"}), "clip.sha256", "64 lowercase hex"),
    (record(clip={**VALID["clip"], "resolution": "big"}), "clip.resolution", "WIDTHxHEIGHT"),
    (record(clip={**VALID["clip"], "frames": "..."}), "clip.frames", "unknown field"),
    (record(location={"lat": 91.0, "lon": 0.0}), "location.lat", "between -90 and 90"),
    (record(location={"lat": 1.0}), "location.lon", "missing"),
    (record(version=2), "version", "between 1 and 1"),
])
def test_malformed_field_is_named(data, field, words):
    with pytest.raises(CameraEventError) as caught:
        parse_event(encode(data), "spool/evt.json")
    assert caught.value.field == field
    assert words in caught.value.problem
    assert str(caught.value).startswith(f"spool/evt.json: {field}: ")


@pytest.mark.parametrize(("data", "words"), [
    (b'{"event_id": "a",', "not JSON: line 1"),
    (b'{"faces": NaN}', "NaN is not valid JSON"),
    (b'{"faces": 1, "faces": 2}', "duplicate key 'faces'"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "expected an object"),
    (b" " * 70_000, "record too large"),
])
def test_malformed_record_is_rejected_as_a_whole(data, words):
    with pytest.raises(CameraEventError) as caught:
        parse_event(data, "x.json")
    assert words in str(caught.value)


# -- spool -------------------------------------------------------------------------------


def drop(directory: Path, name: str, data: bytes) -> Path:
    """As a camera system must: write a temporary name, then rename atomically."""
    temporary = directory / f".{name}.tmp"
    temporary.write_bytes(data)
    os.replace(temporary, directory / name)
    return directory / name


def test_spool_accepts_valid_quarantines_malformed_and_ignores_unfinished(tmp_path):
    spool, quarantine = tmp_path / "spool", tmp_path / "quarantine"
    received = []
    watcher = SpoolWatcher(spool, quarantine, received.append)
    drop(spool, "a.json", encode(record(event_id="a")))
    drop(spool, "b.json", encode(record(event_id="b", camera="roof")))
    drop(spool, "c.json", b"{not json")
    (spool / "d.json.tmp").write_bytes(encode(record(event_id="d")))  # still being written
    (spool / "notes.txt").write_text("not a record")
    (spool / "link.json").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_text("password")

    result = watcher.scan_once()

    assert [event.event_id for event in received] == ["a"]
    assert result.accepted == ["a"]
    assert sorted(result.quarantined) == ["b.json", "c.json", "link.json"]
    assert (spool / "done" / "a.json").is_file()
    assert (quarantine / "b.json").read_bytes() == encode(record(event_id="b", camera="roof"))  # kept byte for byte
    assert "camera: must be one of" in (quarantine / "b.json.reason.txt").read_text()
    assert "not JSON" in (quarantine / "c.json.reason.txt").read_text()
    assert "not a regular file" in (quarantine / "link.json.reason.txt").read_text()
    assert (tmp_path / "secret").read_text() == "password"  # the link was moved, never followed
    assert (spool / "d.json.tmp").is_file() and (spool / "notes.txt").is_file()  # untouched
    assert sorted(p.name for p in spool.iterdir() if p.is_file()) == ["d.json.tmp", "notes.txt"]


def test_spool_keeps_a_record_whose_handler_fails_and_never_overwrites(tmp_path):
    spool, quarantine = tmp_path / "spool", tmp_path / "quarantine"
    calls = []

    def flaky(event):
        calls.append(event.event_id)
        if len(calls) == 1:
            raise RuntimeError("buffer busy")

    watcher = SpoolWatcher(spool, quarantine, flaky)
    drop(spool, "a.json", encode(record(event_id="a")))
    first = watcher.scan_once()
    assert first.retried == ["a.json"] and (spool / "a.json").is_file()
    second = watcher.scan_once()
    assert second.accepted == ["a"] and calls == ["a", "a"]
    # Same file name again (a camera restarting its counter): the first copy in done/ survives.
    drop(spool, "a.json", encode(record(event_id="a2")))
    watcher.scan_once()
    assert json.loads((spool / "done" / "a.json").read_bytes())["event_id"] == "a"
    assert json.loads((spool / "done" / "a.json.1").read_bytes())["event_id"] == "a2"


def test_spool_thread_picks_up_records(tmp_path):
    received = []
    watcher = SpoolWatcher(tmp_path / "spool", tmp_path / "q", received.append, poll_interval=0.02).start()
    try:
        drop(tmp_path / "spool", "late.json", encode(record(event_id="late")))
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert [event.event_id for event in received] == ["late"]


# -- socket ------------------------------------------------------------------------------


def test_socket_is_private_and_answers_each_line(tmp_path):
    path = tmp_path / "camera.sock"
    received = []
    with CameraSocketServer(path, received.append, quarantine_dir=tmp_path / "q"):
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            client.sendall(encode(record(event_id="s1")) + b"\n" + encode(record(faces="two")) + b"\n"
                           + b"garbage\n")
            client.shutdown(socket.SHUT_WR)
            replies = client.makefile("rb").read().decode().splitlines()
    assert replies[0] == "ok s1"
    assert replies[1].startswith("error faces: expected an integer")
    assert replies[2].startswith("error not JSON")
    assert [event.event_id for event in received] == ["s1"]
    quarantined = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert len([name for name in quarantined if name.endswith(".reason.txt")]) == 2
    kept = [p.read_bytes() for p in (tmp_path / "q").iterdir() if not p.name.endswith(".reason.txt")]
    assert b"garbage" in kept and encode(record(faces="two")) in kept
    assert not path.exists()  # removed on stop


def test_socket_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "camera.sock"
    path.write_text("mine")
    with pytest.raises(OSError, match="not a socket"):
        CameraSocketServer(path, lambda event: None).start()
    assert path.read_text() == "mine"


def test_socket_refuses_a_second_server_as_a_temporary_failure(tmp_path):
    from agent.service.exitcodes import EXIT_TEMPFAIL, exit_code_for

    path = tmp_path / "camera.sock"
    with CameraSocketServer(path, lambda event: None), \
            pytest.raises(OSError, match="another process is listening") as info:
        CameraSocketServer(path, lambda event: None).start()
    assert exit_code_for(info.value) == EXIT_TEMPFAIL  # systemd restarts the agent: the other one may be stopping


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))  # blocking: waits while the listen backlog is full
    client.settimeout(10)
    return client


def test_socket_serves_many_connections_on_one_thread_and_bounds_them(tmp_path):
    from agent.camera.events import MAX_RECORD_BYTES

    path = tmp_path / "camera.sock"
    received = []
    baseline = threading.active_count()
    server = CameraSocketServer(path, received.append, quarantine_dir=tmp_path / "q", max_connections=4,
                                idle_timeout=0.5)
    clients = []
    with server:
        for _ in range(50):
            clients.append(connect(path))
        assert threading.active_count() <= baseline + 1  # one thread for all: was one per connection
        assert wait_until(lambda: server.counters()["refused_too_many"] == 46, 5)
        assert clients[-1].makefile("rb").read() == b"error too many connections\n"
        # A held connection works: a record too large is refused (and quarantined), the next one is taken.
        client = clients[0]
        client.sendall(b"x" * (MAX_RECORD_BYTES + 10) + b"\n" + encode(record(event_id="after")) + b"\n")
        reader = client.makefile("rb")
        assert reader.readline() == b"error record too large\n" and reader.readline() == b"ok after\n"
        # Idle connections are closed after the timeout: the client reads end-of-stream.
        assert wait_until(lambda: server.counters()["open"] == 0, 5)
        assert all(c.recv(1) == b"" for c in clients[:4])
        assert connect(path).sendall(encode(record(event_id="later")) + b"\n") is None
        assert wait_until(lambda: len(received) == 2, 5)
        counters = server.counters()
    for c in clients:
        c.close()
    assert [event.event_id for event in received] == ["after", "later"]
    assert counters["records_too_large"] == 1 and counters["records_rejected"] == 1
    assert counters["closed_idle"] >= 4 and counters["connections"] == 5 and counters["records_accepted"] == 2
    assert any(p.name.endswith(".reason.txt") for p in (tmp_path / "q").iterdir())


def test_socket_client_that_reads_its_replies_late_loses_none(tmp_path):
    path = tmp_path / "camera.sock"
    received = []
    with CameraSocketServer(path, received.append):
        client = connect(path)
        lines = b"".join(encode(record(event_id=f"e{i}")) + b"\n" for i in range(3000))  # ~1.3 MB of records

        def send_all():
            client.sendall(lines)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_all)
        sender.start()
        time.sleep(0.5)  # replies pile up unread: the server stops reading until the client catches up
        replies = client.makefile("rb").read().decode().splitlines()
        sender.join(10)
        client.close()
    assert replies == [f"ok e{i}" for i in range(3000)]
    assert len(received) == 3000


# -- what may leave ----------------------------------------------------------------------


def policy(*grants: tuple[str, str | None]) -> ConsentPolicy:
    consent = ConsentPolicy(clock=lambda: NOW)
    for category, level in grants:
        consent.grant(category, "90d", level=level)
    return consent


def event(**changes):
    return parse_event(encode(record(**changes)), "test")


def test_cabin_events_never_leave_even_with_every_grant():
    bench = ConsentPolicy(clock=lambda: NOW, grant_all=True)
    everything = policy(("camera", None), ("location", "round3"), ("incident", None))
    cabin = event(camera="cabin", faces=0, plates=0, anonymised=True)
    assert camera_decision(cabin, everything) is None
    assert camera_decision(cabin, bench) is None


def test_nothing_camera_related_leaves_without_camera_consent():
    no_camera = policy(("location", "round3"), ("incident", None), ("driving", None))
    for camera in ("front", "rear", "left", "right"):
        for anonymised in (True, False):
            assert camera_decision(event(camera=camera, anonymised=anonymised), no_camera) is None


def test_unanonymised_faces_or_plates_leave_as_metadata_only_with_coarse_location():
    consent = policy(("camera", None), ("location", "geohash6"))
    outgoing = camera_decision(event(faces=2, plates=1, anonymised=False), consent)
    assert outgoing is not None
    assert (outgoing.stream, outgoing.priority) == (CAMERA_STREAM, CAMERA_PRIORITY)
    rec = outgoing.record
    assert rec["metadata_only"] is True
    assert rec["clip"] == {"duration_s": 30.0, "resolution": "1920x1080"}  # no hash, no size, no path
    expected = coarsen(31.230416, 121.473701, "geohash6")
    assert (rec["location"]["lat"], rec["location"]["lon"]) == expected
    assert expected != (31.230416, 121.473701)
    assert "accuracy_m" not in rec["location"]
    assert outgoing.categories == frozenset({"camera", "location"})
    text = json.dumps(rec)
    assert "/media/camera" not in text and "ab" * 32 not in text


def test_anonymised_event_keeps_its_clip_reference_but_never_pixels_or_path():
    consent = policy(("camera", None), ("location", "round3"))
    rec = camera_decision(event(anonymised=True), consent).record
    assert rec["metadata_only"] is False
    assert rec["clip"] == {"duration_s": 30.0, "resolution": "1920x1080", "sha256": "ab" * 32, "size": 1_234_567}
    assert (rec["location"]["lat"], rec["location"]["lon"]) == (31.23, 121.474)
    assert set(rec) == {"event_id", "time", "camera", "trigger", "faces", "plates", "anonymised", "metadata_only",
                        "clip", "location"}


def test_location_needs_its_own_consent_and_respects_privacy_zones():
    camera_only = policy(("camera", None))
    rec = camera_decision(event(), camera_only).record
    assert "location" not in rec
    zoned = policy(("camera", None), ("location", "round3"))
    zoned.add_zone(31.2304, 121.4737, 500, "home")
    outgoing = camera_decision(event(), zoned)
    assert "location" not in outgoing.record and outgoing.categories == frozenset({"camera"})


def test_expired_camera_consent_stops_events():
    consent = policy(("camera", None))
    assert camera_decision(event(), consent, now=NOW + 10) is not None
    assert camera_decision(event(), consent, now=NOW + 91 * 86_400) is None


# -- end to end: spool -> rules -> buffer -> MQTT uplink -> a real Mosquitto ------------------


class Subscriber:
    """Collects every data message on the broker (MQTT v5, QoS 1)."""

    def __init__(self, broker) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="test-receiver",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda client, *_: client.subscribe(data_filter("vehicles"), qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, message: self.messages.append((message.topic, message.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_chain(tmp_path: Path, broker, consent: ConsentPolicy, records: list[bytes]) -> list[tuple[str, bytes]]:
    """Camera records dropped into the spool travel as the agent's library parts carry them."""
    store = BatchStore(tmp_path / "buffer.db")
    boot = "boot-camera"
    stored: list[int] = []

    def on_event(event):
        outgoing = camera_decision(event, consent)
        if outgoing is not None:
            numbers = BatchNumbers("", boot, store.next_seq(boot))
            batch = camera_batch([outgoing], "truck-1", numbers, consent.version, consent.bench)
            stored.append(store.add(batch))

    watcher = SpoolWatcher(tmp_path / "spool", tmp_path / "quarantine", on_event)
    for index, data in enumerate(records):
        drop(tmp_path / "spool", f"r{index:02d}.json", data)
    result = watcher.scan_once()
    subscriber = Subscriber(broker)
    uplink = Uplink(plain_config(broker), store, "truck-1")
    try:
        uplink.start()
        assert wait_until(lambda: not store.pending(100), 15), uplink.state()
        assert len(result.accepted) == 4 and len(result.quarantined) == 1
        wait_until(lambda: len(subscriber.messages) >= len(stored), 5)
        time.sleep(0.3)  # anything else would arrive now
    finally:
        uplink.stop()
        subscriber.close()
        store.close()
    return subscriber.messages


@pytest.fixture
def broker(tmp_path):
    server = MosquittoBroker(tmp_path / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scenario_records(tmp_path: Path) -> list[bytes]:
    write_scenario(build_scenario("hard-brake", seed=3), tmp_path / "drive.log", tmp_path / "camera")
    records = [p.read_bytes() for p in sorted((tmp_path / "camera").iterdir())]
    return [*records, b'{"event_id": "broken", "camera": "front"}']


def test_through_the_broker_cabin_never_arrives_and_unanonymised_is_metadata_only(tmp_path, broker):
    consent = policy(("camera", None), ("location", "geohash5"))
    messages = run_chain(tmp_path, broker, consent, scenario_records(tmp_path))
    assert {topic for topic, _ in messages} == {"vehicles/truck-1/v1/data/camera"}
    events = [event for _, payload in messages for event in decode_envelope(payload)[0]["camera_events"]]
    assert sorted((e["camera"], e["trigger"]) for e in events) == [("front", "collision"), ("front", "hard_brake"),
                                                                 ("rear", "sentry")]
    assert all(b"cabin" not in payload for _, payload in messages)
    hard_brake = next(e for e in events if e["trigger"] == "hard_brake")  # 2 plates, not anonymised
    assert hard_brake["metadata_only"] is True and set(hard_brake["clip"]) == {"duration_s", "resolution"}
    collision = next(e for e in events if e["trigger"] == "collision")  # anonymised
    assert collision["metadata_only"] is False and len(collision["clip"]["sha256"]) == 64
    for e in events:
        assert (e["location"]["lat"], e["location"]["lon"]) == coarsen(31.2304, e["location"]["lon"], "geohash5")
        assert e["location"]["level"] == "geohash5"
    assert all(b"/media/camera" not in payload for _, payload in messages)
    # The malformed record is in quarantine with its reason, not lost.
    assert "time: missing" in (tmp_path / "quarantine" / "r04.json.reason.txt").read_text()


def test_through_the_broker_nothing_camera_related_arrives_without_camera_consent(tmp_path, broker):
    consent = policy(("location", "round3"), ("incident", None), ("driving", None))
    messages = run_chain(tmp_path, broker, consent, scenario_records(tmp_path))
    assert messages == []
    assert len(list((tmp_path / "spool" / "done").iterdir())) == 4  # accepted, kept, not sent


def test_camera_config_defaults_and_errors(tmp_path):
    assert parse_camera(None, None).paths(tmp_path) == (tmp_path / "camera/spool", tmp_path / "camera/quarantine",
                                                        tmp_path / "camera/camera.sock")
    doc = load_text("camera:\n  spool: in\n  socket: ''\n", "agent.yaml")
    assert parse_camera(doc, doc.data["camera"]).paths(tmp_path)[2] is None
    doc = load_text("camera:\n  spool: x\n  quarantine: x\n", "agent.yaml")
    with pytest.raises(ConfigError, match=r"agent\.yaml:3: camera\.quarantine: must differ"):
        parse_camera(doc, doc.data["camera"])
    doc = load_text("camera:\n  polling: 1\n", "agent.yaml")
    with pytest.raises(ConfigError, match=r"agent\.yaml:2: camera\.polling: unknown key"):
        parse_camera(doc, doc.data["camera"])
