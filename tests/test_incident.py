"""Incident snapshots from a scenario: exact windows, raw frames that re-decode to the export, storage."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import can
import cantools
import pytest

from agent.batch import Batcher, decode_batch, iter_samples
from agent.batch.identity import BatchNumbers
from agent.buffer.store import BatchStore
from agent.camera.events import parse_event
from agent.cli.common import load_catalogs
from agent.dbc import load_dbc
from agent.decode import Decoder
from agent.export.signing import load_or_create_key
from agent.export.writer import export_incident
from agent.incident.config import parse_incidents
from agent.incident.snapshot import IncidentRecorder, Snapshot
from agent.incident.store import IncidentStore
from agent.incident.upload import INCIDENT_PRIORITY, INCIDENT_STREAM, snapshot_batches
from agent.model import Row
from agent.privacy.policy import ConsentPolicy
from agent.privacy.transforms import latitude_coarsener
from agent.sources.log import LogSource
from agent.yamlsrc import ConfigError, load_text
from simulator.scenario import GPS_DBC, TRUCK_DBC, build_scenario, write_scenario

pytestmark = pytest.mark.incident

BUS_MAP = {"can0": "truck", "can1": "gps"}
TRIGGERS_YAML = """\
incidents:
  pre_s: 20
  post_s: 5
  categories: [driving, vehicle_health, location, incident]
  triggers:
    - name: speed_drop
      when: "change(Vehicle.Speed, 150ms) <= -8"
    - name: hard_decel
      when: "gnss_imu.AccelerationX <= -7"
"""


def us(t: float) -> int:
    return round(t * 1_000_000)


def incident_config(text: str = TRIGGERS_YAML):
    doc = load_text(text, "agent.yaml")
    return parse_incidents(doc, doc.data["incidents"])


def make_decoder() -> Decoder:
    bus_dbcs = {"truck": [load_dbc(TRUCK_DBC)], "gps": [load_dbc(GPS_DBC)]}
    return Decoder(bus_dbcs, load_catalogs(bus_dbcs, []), j1939_buses=["truck"])


def feed(recorder: IncidentRecorder, decoder: Decoder, frames, events=(), event_delay: float = 0.0) -> None:
    """Frames in log order; each camera event arrives once frame time passes its time + ``event_delay``."""
    pending = sorted(events, key=lambda e: e.time)
    for bus, msg in frames:
        while pending and pending[0].time + event_delay <= msg.timestamp:
            recorder.on_camera_event(pending.pop(0))
        recorder.on_raw(bus, msg)
        frame = decoder.decode(msg, bus)
        if frame is not None:
            recorder.on_frame(frame)
    recorder.flush()


@pytest.fixture(scope="module")
def hard_brake(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard-brake")
    truth = write_scenario(build_scenario("hard-brake", seed=11), root / "drive.log", root / "camera")
    frames = list(LogSource(root / "drive.log", bus_map=BUS_MAP))
    decoder = make_decoder()
    store = IncidentStore(root / "incidents", keep=5)
    snapshots: list[Snapshot] = []
    recorder = IncidentRecorder(incident_config(), decoder.specs, lambda s: (snapshots.append(s), store.save(s)))
    events = [parse_event(p.read_bytes(), p.name) for p in (root / "camera").iterdir()]
    feed(recorder, decoder, frames, events)
    key = load_or_create_key(root / "state")
    export_dir = root / "export"
    export_incident(store, snapshots[0].id, export_dir, key, [TRUCK_DBC, GPS_DBC], [], [], "test-truck")
    return {"root": root, "truth": truth, "frames": frames, "snapshots": snapshots, "store": store,
            "export": export_dir, "decoder": decoder}


def test_one_snapshot_whose_window_starts_and_ends_exactly_at_the_edges(hard_brake):
    snapshots = hard_brake["snapshots"]
    assert len(snapshots) == 1
    snapshot = snapshots[0]
    truth = hard_brake["truth"]
    # The brake sets off the deceleration trigger first; the front and cabin cameras' collision
    # events and the impact's speed drop fall into the open window and join it.
    assert snapshot.trigger.name == "hard_decel"
    assert truth["brake_at"] <= snapshot.trigger.timestamp <= truth["brake_at"] + 0.05
    assert [hit.name for hit in snapshot.triggers] == ["hard_decel", "camera_collision", "camera_collision",
                                                       "speed_drop"]
    assert [hit.timestamp for hit in snapshot.triggers[1:3]] == [truth["impact_at"]] * 2
    assert truth["impact_at"] < snapshot.triggers[3].timestamp <= truth["impact_at"] + 0.1
    assert snapshot.complete and snapshot.problems == []
    t0 = snapshot.trigger.timestamp
    start, end = us(t0) - 20_000_000, us(t0) + 5_000_000
    assert (us(snapshot.start), us(snapshot.end)) == (start, end)

    everything = hard_brake["frames"]
    expected = [(bus, us(m.timestamp), m.arbitration_id, bytes(m.data)) for bus, m in everything
                if start <= us(m.timestamp) <= end]
    stored = hard_brake["store"].load(snapshot.id)
    got = [(bus, us(m.timestamp), m.arbitration_id, bytes(m.data)) for bus, m in stored.raw_frames()]
    assert got == sorted(expected, key=lambda item: item[1])
    # Frames lie exactly on both edges (the IMU's 10 ms grid), and they are in.
    assert got[0][1] == start and got[-1][1] == end
    # The log goes on past both edges, so the window really cut it.
    assert any(us(m.timestamp) == start - 10_000 for _, m in everything)
    assert any(us(m.timestamp) == end + 10_000 for _, m in everything)
    assert len(got) == stored.info.raw_frames == len(snapshot.raw_frames)


def test_raw_frames_redecode_with_the_exported_dbc_to_the_exported_samples(hard_brake):
    export = hard_brake["export"]
    databases = {"truck": cantools.database.load_file(export / "dbc" / TRUCK_DBC.name),
                 "gps": cantools.database.load_file(export / "dbc" / GPS_DBC.name)}
    redecoded = set()
    for msg in can.LogReader(str(export / "frames.log")):
        message = databases[msg.channel].get_message_by_frame_id(msg.arbitration_id)
        for name, value in message.decode(msg.data, decode_choices=False).items():
            redecoded.add((round(msg.timestamp, 6), msg.channel, f"{message.name}.{name}", value))
    exported = set()
    for path in sorted((export / "samples").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            exported.add((sample["timestamp"], sample["bus"], sample["signal"], sample["value"]))
    assert len(exported) > 20_000
    assert redecoded == exported
    # The CSV says the same as the JSON lines.
    csv_rows = sum(len(p.read_text().splitlines()) - 1 for p in (export / "samples").glob("*.csv"))
    assert csv_rows == len(exported)


def test_completeness_manifest_lists_defined_and_recorded_signals(hard_brake):
    stored = hard_brake["store"].load(hard_brake["snapshots"][0].id)
    report = stored.completeness
    decoder = hard_brake["decoder"]
    listed = [s for s in decoder.specs.values() if s.category in report["categories"]]
    assert report["defined_signals"] == len(decoder.specs)
    assert report["defined_in_categories"] == len(listed)
    # The scenario never sends the geofence message: its signals are the missing ones.
    assert report["missing"] == sorted(s.key for s in listed if s.message == "gnss_geofence")
    assert report["recorded_signals"] == len(listed) - len(report["missing"])
    speed = next(entry for entry in report["signals"] if entry["signal"] == "CCVS1.WheelBasedVehicleSpeed")
    ccvs1_frames = [m for bus, m in stored.raw_frames() if bus == "truck" and m.arbitration_id == 0x18FEF1FE]
    assert speed["samples"] == len(ccvs1_frames) in (1250, 1251)  # 25 s at 50 Hz
    assert (speed["first"], speed["last"]) == (ccvs1_frames[0].timestamp, ccvs1_frames[-1].timestamp)
    assert report["raw_frames_per_bus"] == {"gps": sum(1 for b, _ in stored.raw_frames() if b == "gps"),
                                            "truck": sum(1 for b, _ in stored.raw_frames() if b == "truck")}


def test_a_camera_collision_event_starts_a_snapshot_even_when_it_arrives_late(tmp_path):
    truth = write_scenario(build_scenario("sentry", seed=2), tmp_path / "s.log", tmp_path / "cam")
    frames = list(LogSource(tmp_path / "s.log", bus_map=BUS_MAP))
    events = [parse_event(p.read_bytes(), p.name) for p in (tmp_path / "cam").iterdir()]
    config = incident_config("incidents:\n  camera_triggers: [collision]\n")
    for delay in (0.0, 8.0):
        decoder = make_decoder()
        snapshots: list[Snapshot] = []
        feed(IncidentRecorder(config, decoder.specs, snapshots.append), decoder, frames, events, delay)
        assert len(snapshots) == 1
        snapshot = snapshots[0]
        assert snapshot.trigger.name == "camera_collision"
        assert snapshot.trigger.timestamp == truth["impact_at"]
        assert "rear camera collision event" in snapshot.trigger.reason
        assert snapshot.complete, snapshot.problems
        times = [us(m.timestamp) for _, m in snapshot.raw_frames]
        assert times[0] == us(truth["impact_at"]) - 20_000_000 and times[-1] == us(truth["impact_at"]) + 5_000_000


def synthetic(times_and_buses):
    return [(bus, can.Message(timestamp=t, arbitration_id=0x100 + i % 3, data=bytes([i % 256]), is_extended_id=False))
            for i, (t, bus) in enumerate(times_and_buses)]


def test_frames_of_a_slower_bus_arriving_late_still_land_in_the_window():
    config = incident_config("incidents:\n  pre_s: 1\n  post_s: 1\n  settle_s: 0.5\n")
    snapshots: list[Snapshot] = []
    recorder = IncidentRecorder(config, {}, snapshots.append)
    base = 1_700_000_000.0
    frames = synthetic([(base + k * 0.1, "a") for k in range(0, 40)])
    for bus, msg in frames[:20]:
        recorder.on_raw(bus, msg)
    recorder.trigger("manual", base + 1.5, "button")
    for bus, msg in frames[20:27]:  # a: up to base + 2.6, past the window end (base + 2.5) but within settle
        recorder.on_raw(bus, msg)
    late = synthetic([(base + 2.45, "b"), (base + 2.5, "b"), (base + 2.51, "b")])
    for bus, msg in late:
        recorder.on_raw(bus, msg)
    assert snapshots == []  # still settling
    for bus, msg in frames[27:]:
        recorder.on_raw(bus, msg)
    assert len(snapshots) == 1
    got = [(bus, round(m.timestamp - base, 2)) for bus, m in snapshots[0].raw_frames]
    assert ("b", 2.45) in got and ("b", 2.5) in got and ("b", 2.51) not in got
    assert got[0] == ("a", 0.5) and got[-1] == ("b", 2.5)
    assert [t for _, t in got] == sorted(t for _, t in got)


def test_trigger_too_early_or_log_ending_early_is_marked_incomplete():
    config = incident_config("incidents:\n  pre_s: 5\n  post_s: 5\n")
    snapshots: list[Snapshot] = []
    recorder = IncidentRecorder(config, {}, snapshots.append)
    base = 1_700_000_000.0
    for bus, msg in synthetic([(base + k * 0.5, "a") for k in range(10)]):
        recorder.on_raw(bus, msg)
    recorder.trigger("manual", base + 2.0, "button")  # only 2 s of history, log ends at +4.5
    assert recorder.open_windows == 1
    recorder.flush()
    snapshot = snapshots[0]
    assert not snapshot.complete
    assert any("recording started" in p for p in snapshot.problems)
    assert any("ended before the end of the window" in p for p in snapshot.problems)
    assert len(snapshot.raw_frames) == 10


def test_a_quiet_live_bus_closes_the_window_by_wall_clock_and_triggers_may_come_from_other_threads():
    config = incident_config("incidents:\n  pre_s: 1\n  post_s: 1\n")
    snapshots: list[Snapshot] = []
    recorder = IncidentRecorder(config, {}, snapshots.append)
    base = 1_700_000_000.0
    frames = synthetic([(base + k * 0.1, "a") for k in range(31)])  # up to base + 3.0, then silence
    for bus, msg in frames[:15]:
        recorder.on_raw(bus, msg)
    caller = threading.Thread(target=recorder.trigger, args=("manual", base + 1.5, "button on the dashboard"))
    caller.start()
    caller.join()
    assert recorder.open_windows == 1 and snapshots == []
    for bus, msg in frames[15:]:
        recorder.on_raw(bus, msg)
    assert snapshots == []  # base + 3.0 is within end (2.5) + settle (0.5)
    assert recorder.close_due(base + 2.9) == []
    (snapshot,) = recorder.close_due(base + 3.1)
    assert snapshot.complete and len(snapshot.raw_frames) == 21 and snapshot.trigger.reason.startswith("button")


def test_store_keeps_at_least_keep_snapshots_under_its_quota(tmp_path):
    config = incident_config("incidents:\n  pre_s: 1\n  post_s: 1\n")
    store = IncidentStore(tmp_path / "incidents", keep=2, max_bytes=1)  # any snapshot is over this quota
    recorder = IncidentRecorder(config, {}, store.save)
    base = 1_700_000_000.0
    frames = synthetic([(base + k * 0.1, "a") for k in range(200)])
    for index, (bus, msg) in enumerate(frames):
        recorder.on_raw(bus, msg)
        if index in (30, 80, 130, 180):
            recorder.trigger(f"t{index}", msg.timestamp, "test")
    recorder.flush()
    listed = store.list()
    assert [info.trigger.name for info in listed] == ["t130", "t180"]  # the two newest survive
    assert all((info.path / "frames.log").is_file() for info in listed)
    assert not [p for p in (tmp_path / "incidents").iterdir() if p.name.startswith(".partial")]


def test_store_refuses_path_tricks_and_names_unknown_ids(tmp_path):
    store = IncidentStore(tmp_path / "incidents")
    with pytest.raises(ValueError, match="not a snapshot id"):
        store.load("../../etc")
    with pytest.raises(ValueError, match="no incident snapshot 'nope'"):
        store.load("nope")


def test_trigger_config_errors_name_file_line_and_column():
    with pytest.raises(ConfigError, match=r"agent\.yaml:5: incidents\.triggers\[0\]\.when: expression column"):
        incident_config("incidents:\n  pre_s: 20\n  triggers:\n    - name: x\n      when: 'speed >= = 3'\n")
    config = incident_config("incidents:\n  triggers:\n    - name: x\n      when: 'Vehicle.Sped <= 3'\n")
    with pytest.raises(ConfigError, match=r"agent\.yaml:4: .*unknown signal 'Vehicle.Sped' \(did you mean "
                                          r"Vehicle.Speed\?\)"):
        IncidentRecorder(config, make_decoder().specs, lambda s: None)
    with pytest.raises(ConfigError, match=r"agent\.yaml:2: incidents\.categories\[1\]: unknown category 'weather'"):
        incident_config("incidents:\n  categories: [driving, weather]\n")
    with pytest.raises(ConfigError, match=r"agent\.yaml:2: incidents\.keep: must be an integer between 1 and"):
        incident_config("incidents:\n  keep: 0\n")


def test_snapshot_ids_are_unique_and_safe(tmp_path):
    config = incident_config("incidents:\n  pre_s: 0.0001\n  post_s: 0.0001\n")
    store = IncidentStore(tmp_path / "i")
    recorder = IncidentRecorder(config, {}, store.save)
    base = 1_700_000_000.0
    for bus, msg in synthetic([(base + k * 0.05, "a") for k in range(40)]):
        recorder.on_raw(bus, msg)
        if us(msg.timestamp) == us(base + 0.5):
            recorder.trigger("a/../b", msg.timestamp, "x")
            recorder.trigger("a/../b", msg.timestamp + 0.0004, "y")  # its own window, same millisecond
    recorder.flush()
    ids = [info.id for info in store.list()]
    assert ids == ["20231114T221320.500Z-a____b", "20231114T221320.500Z-a____b-2"]
    assert [info.raw_frames for info in store.list()] == [1, 0]
    assert all(Path(tmp_path / "i" / i).is_dir() for i in ids)


# -- upload: stream "incident", never evicted ------------------------------------------------


def consent(*grants: tuple[str, str | None], zone: tuple[float, float, float] | None = None) -> ConsentPolicy:
    policy = ConsentPolicy(clock=lambda: 1_800_000_000.0)
    for category, level in grants:
        policy.grant(category, "90d", level=level)
    if zone:
        policy.add_zone(*zone)
    return policy


def upload(stored, policy, boot="boot-1", max_bytes=64 * 1024):
    counter = iter(range(1, 1000))
    return snapshot_batches(stored, policy, "truck-1", lambda: BatchNumbers("", boot, next(counter)),
                            max_bytes=max_bytes)


def test_snapshot_upload_needs_incident_consent_and_coarsens_location(hard_brake):
    stored = hard_brake["store"].load(hard_brake["snapshots"][0].id)
    assert upload(stored, consent(("driving", None), ("location", "round3"), ("camera", None))) == []
    assert len(upload(stored, consent(("incident", None), ("location", "geohash6")))) == 1
    batches = upload(stored, consent(("incident", None), ("location", "geohash6")), max_bytes=3000)
    assert len(batches) >= 3  # parts split by time until each fits
    assert all(len(b.payload) <= 3000 for b in batches)
    headers = [b.header for b in batches]
    assert {h["stream"] for h in headers} == {INCIDENT_STREAM}
    assert {h["priority"] for h in headers} == {INCIDENT_PRIORITY}
    assert [h["incident"]["part"] for h in headers] == list(range(1, len(batches) + 1))
    assert {h["incident"]["id"] for h in headers} == {stored.info.id}
    assert headers[0]["categories"] == ["incident", "location"]
    assert not any("t_res_us" in h for h in headers)  # snapshots keep the frames' own times (docs/payload.md)
    samples = [s for b in batches for s in iter_samples(decode_batch(b.payload))]
    keys = {key for _, _, key, _, _ in samples}
    assert "gnss_pos.Latitude" in keys and "CCVS1.WheelBasedVehicleSpeed" in keys
    assert not keys & {"gnss_pos.PositionAccuracy", "gnss_altitude.Altitude", "gnss_attitude.Heading"}
    latitudes = {value for _, _, key, value, _ in samples if key == "gnss_pos.Latitude"}
    assert latitudes == {latitude_coarsener("geohash6")(31.2304)}
    # Every other signal is there at full rate: as many speed samples as the snapshot holds.
    speed = [s for s in samples if s[2] == "CCVS1.WheelBasedVehicleSpeed"]
    assert len(speed) == sum(1 for f in stored.decoded if f.message == "CCVS1")
    # Without location consent, or inside a privacy zone, no position leaves.
    for policy in (consent(("incident", None)),
                   consent(("incident", None), ("location", "round3"), zone=(31.2304, 121.48, 2000.0))):
        keys = {s[2] for b in upload(stored, policy) for s in iter_samples(decode_batch(b.payload))}
        assert "CCVS1.WheelBasedVehicleSpeed" in keys and not {k for k in keys if k.startswith("gnss_pos.")}


def test_a_locked_snapshot_survives_quota_pressure_that_evicts_everything_else(hard_brake, tmp_path):
    stored = hard_brake["store"].load(hard_brake["snapshots"][0].id)
    incident = upload(stored, consent(("incident", None)), boot="boot-incident")
    incident_bytes = sum(len(b.payload) for b in incident)
    store = BatchStore(tmp_path / "buffer.db", quota_bytes=incident_bytes + 1000, never_evict={INCIDENT_STREAM})
    incident_ids = [store.add(batch) for batch in incident]
    decoder = hard_brake["decoder"]
    batcher = Batcher(decoder.specs, store.add, "truck-1", "boot-telemetry", lambda: store.next_seq("boot-telemetry"),
                      max_age_s=5.0, max_bytes=64 * 1024)
    for bus, msg in hard_brake["frames"]:  # the whole 60 s drive as telemetry, far beyond the spare quota
        frame = decoder.decode(msg, bus)
        if frame is not None:
            batcher.put(Row("telemetry", 0, frame.timestamp, bus, frame.message, dict(frame.raw)))
    batcher.flush()
    counters = store.counters()
    assert batcher.stats.batches == 12 and counters["evicted"] >= 11
    pending = store.pending(1000)
    telemetry = [b for b in pending if b.stream == "telemetry"]
    assert len(telemetry) <= 1  # at most the newest telemetry batch fits next to the snapshot
    kept = {b.id: b.payload for b in pending if b.stream == INCIDENT_STREAM}
    assert sorted(kept) == incident_ids
    assert [kept[i] for i in incident_ids] == [b.payload for b in incident]  # byte for byte
    assert [b.stream for b in pending[:len(incident)]] == [INCIDENT_STREAM] * len(incident)  # sent first
    # Even a quota smaller than the snapshot itself never evicts it (the excess is counted).
    tiny = BatchStore(tmp_path / "tiny.db", quota_bytes=1024, never_evict={INCIDENT_STREAM})
    for batch in incident:
        tiny.add(batch)
    assert len(tiny.pending(1000)) == len(incident) and tiny.counters()["over_quota"] >= 1
    store.close()
    tiny.close()
