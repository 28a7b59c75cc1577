"""The owner archive (issue 13): trips, reduced-rate signals and full-precision positions recorded from a
real log (the CSS truck: J1939 on can0, a CANmod.gps module on can1), retention, forget, and trip files."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import sqlite3
import struct
import threading
from datetime import datetime
from xml.etree import ElementTree

import pytest

from agent.catalog import load_catalogs
from agent.cli.common import load_dbcs
from agent.decode import Decoder
from agent.model import DecodedFrame
from agent.owner import ArchiveRecorder, OwnerArchive, haversine_km, trip_csv, trip_gpx, trip_json, trip_plot_png
from agent.sources.log import LogSource
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.owner

TRUCK_LOG = "logs/css_truck_j1939_and_canmod_gps.asc"
J1939_DBC = REPO_ROOT / "dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc"
GPS_DBC = REPO_ROOT / "dbc/css-electronics/canmod-gps.dbc"
GPX = "{http://www.topografix.com/GPX/1/1}"
NOW = 10_000.0  # the archive clock in these tests: just after the log (whose times start near 0)


@pytest.fixture(scope="module")
def truck(shared_data):
    bus_dbcs = load_dbcs([f"can0={J1939_DBC}", f"can1={GPS_DBC}"])
    decoder = Decoder(bus_dbcs, load_catalogs(bus_dbcs, []), j1939_buses=["*"])
    frames = [f for bus, msg in LogSource(shared_data / TRUCK_LOG) if (f := decoder.decode(msg, bus)) is not None]
    assert len(frames) > 20_000
    return decoder, frames


def shifted(frames: list[DecodedFrame], by: float) -> list[DecodedFrame]:
    return [dataclasses.replace(f, timestamp=f.timestamp + by) for f in frames]


def record(archive: OwnerArchive, specs, frames, **options) -> ArchiveRecorder:
    recorder = ArchiveRecorder(archive, specs, **options)
    for frame in frames:
        recorder(frame)
    recorder.flush()
    assert recorder.errors == 0
    return recorder


@pytest.fixture
def archive(tmp_path):
    archive = OwnerArchive(tmp_path / "owner.db", clock=lambda: NOW)
    yield archive
    archive.close()


@pytest.fixture
def two_trips(truck, archive):
    decoder, frames = truck
    half = len(frames) // 2
    record(archive, decoder.specs, frames[:half] + shifted(frames[half:], 3600.0))
    return archive


def integrate_kmh(samples: list[tuple[float, float]], factor: float = 1.0) -> float:
    """Trapezoid over (t, speed) in the test's own words: km."""
    return sum((a[1] + b[1]) / 2 * factor * (b[0] - a[0]) / 3600.0 for a, b in itertools.pairwise(samples))


def valid_fixes(decoder, frames) -> list[tuple[float, float, float]]:
    lat, lon = decoder.specs["gnss_pos.Latitude"], decoder.specs["gnss_pos.Longitude"]
    return [(f.timestamp, lat.to_physical(f.raw["Latitude"]), lon.to_physical(f.raw["Longitude"]))
            for f in frames if f.message == "gnss_pos" and f.raw["PositionValid"]]


# -- recording -------------------------------------------------------------------------
def test_a_gap_of_an_hour_makes_two_trips(truck, two_trips):
    _, frames = truck
    trips = two_trips.trips()
    assert len(trips) == 2
    newest, oldest = trips  # newest first
    assert newest.start > oldest.end + 3000
    assert oldest.start == frames[0].timestamp and newest.end == frames[-1].timestamp + 3600.0
    assert two_trips.trip(oldest.id) == oldest and two_trips.trip(9999) is None
    for trip in trips:
        assert trip.samples == len(two_trips.samples(trip.id)) > 0
        assert trip.speed_key == "CCVS1.WheelBasedVehicleSpeed"  # the vehicle speed, not the GNSS speed
        assert trip.energy_kwh is None and trip.fuel_l is None  # the truck log has neither


@pytest.mark.parametrize("rate_hz", [1.0, 4.0])
def test_signals_are_kept_at_the_reduced_rate(truck, archive, rate_hz):
    decoder, frames = truck
    record(archive, decoder.specs, frames, rate_hz=rate_hz)
    (trip,) = archive.trips()
    by_key: dict[str, list[float]] = {}
    for t, key, _ in archive.samples(trip.id):
        by_key.setdefault(key, []).append(t)
    decoded_keys = {f"{f.message}.{name}" for f in frames for name in f.raw}
    assert set(by_key) == decoded_keys == set(archive.signal_keys(trip.id))
    for key, times in by_key.items():
        assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0 / rate_hz - 1e-9, key
    # 90 Hz IMU down to rate_hz: about duration * rate_hz samples, not thousands.
    duration = frames[-1].timestamp - frames[0].timestamp
    assert len(by_key["gnss_imu.AccelerationX"]) <= duration * rate_hz + 1
    assert len(by_key["gnss_imu.AccelerationX"]) >= duration * rate_hz * 0.8
    assert len(archive.samples(trip.id, ["EEC1.EngineSpeed"])) == len(by_key["EEC1.EngineSpeed"])


def test_sample_values_are_the_physical_values(truck, archive):
    decoder, frames = truck
    record(archive, decoder.specs, frames)
    (trip,) = archive.trips()
    first = next(f for f in frames if f.message == "EEC1")
    t, key, value = archive.samples(trip.id, ["EEC1.EngineSpeed"])[0]
    assert (t, key, value) == (first.timestamp, "EEC1.EngineSpeed",
                               decoder.specs["EEC1.EngineSpeed"].to_physical(first.raw["EngineSpeed"]))
    assert archive.signal_units(["gnss_speed.Speed", "EEC1.EngineSpeed"]) == {"gnss_speed.Speed": "m/s",
                                                                               "EEC1.EngineSpeed": "rpm"}


def test_positions_are_every_fix_at_full_precision(truck, archive):
    decoder, frames = truck
    record(archive, decoder.specs, frames)
    (trip,) = archive.trips()
    fixes = valid_fixes(decoder, frames)
    assert len(fixes) > 100
    assert archive.positions(trip.id) == fixes  # exact floats, not rounded


def test_distance_from_vehicle_speed_gnss_speed_or_positions(truck, tmp_path):
    decoder, frames = truck
    # The truck stands still: the vehicle speed (CCVS1) is 0 throughout.
    ccvs = [(f.timestamp, decoder.specs["CCVS1.WheelBasedVehicleSpeed"].to_physical(f.raw["WheelBasedVehicleSpeed"]))
            for f in frames if f.message == "CCVS1"]
    with OwnerArchive(tmp_path / "a.db", clock=lambda: NOW) as archive:
        record(archive, decoder.specs, frames)
        (trip,) = archive.trips()
        assert trip.distance_km == pytest.approx(integrate_kmh(ccvs), abs=1e-9)
        assert trip.max_speed_kmh == max(v for _, v in ccvs)

    # Without CCVS1 the GNSS speed (m/s, small but not zero) is integrated, in km/h.
    no_ccvs = {k: s for k, s in decoder.specs.items() if not k.startswith("CCVS1.")}
    gnss = [(f.timestamp, no_ccvs["gnss_speed.Speed"].to_physical(f.raw["Speed"]))
            for f in frames if f.message == "gnss_speed"]
    expected = integrate_kmh(gnss, 3.6)
    with OwnerArchive(tmp_path / "b.db", clock=lambda: NOW) as archive:
        record(archive, no_ccvs, [f for f in frames if f.message != "CCVS1"])
        (trip,) = archive.trips()
        assert trip.speed_key == "gnss_speed.Speed"
        assert expected > 0.001 and trip.distance_km == pytest.approx(expected, rel=0.05)
        assert trip.max_speed_kmh == pytest.approx(max(v for _, v in gnss) * 3.6)
        assert 0 < trip.mean_speed_kmh <= trip.max_speed_kmh

    # No speed signal at all: the haversine distance along the fixes.
    no_speed = {k: s for k, s in no_ccvs.items() if not k.startswith("gnss_speed.")}
    kept = [f for f in frames if f.message not in ("CCVS1", "gnss_speed")]
    fixes = valid_fixes(decoder, kept)
    expected = sum(haversine_km(a[1], a[2], b[1], b[2]) for a, b in itertools.pairwise(fixes))
    with OwnerArchive(tmp_path / "c.db", clock=lambda: NOW) as archive:
        record(archive, no_speed, kept)
        (trip,) = archive.trips()
        assert trip.speed_key is None
        assert expected > 0.001 and trip.distance_km == pytest.approx(expected, rel=0.05)


# -- retention -------------------------------------------------------------------------
def test_prune_by_age_drops_trips_that_ended_before_the_retention(truck, tmp_path):
    decoder, frames = truck
    now = [NOW]
    with OwnerArchive(tmp_path / "owner.db", retention_days=2, clock=lambda: now[0]) as archive:
        day = 86400.0
        record(archive, decoder.specs, frames + shifted(frames, day) + shifted(frames, 3 * day))
        assert len(archive.trips()) == 3
        now[0] = 3 * day + 200.0  # the first trip ended 3 days ago, the second 2 days and ~70 s ago
        assert archive.prune() == 2
        (left,) = archive.trips()
        assert left.start == frames[0].timestamp + 3 * day
        assert archive.prune() == 0


def test_prune_by_size_drops_oldest_trips_until_under_max_bytes(truck, tmp_path):
    decoder, frames = truck
    with OwnerArchive(tmp_path / "owner.db", clock=lambda: NOW) as archive:
        # Ten trips an hour apart at 10 Hz: well over 1 MB.
        record(archive, decoder.specs, [f for i in range(10) for f in shifted(frames, i * 3600.0)], rate_hz=10.0)
        before = archive.trips()
        assert len(before) == 10 and archive.size_bytes() > 1_500_000
        archive.set_limits(30, 1_000_000)
        dropped = archive.prune()
        after = archive.trips()
        assert 0 < dropped < 10 and len(after) == 10 - dropped
        assert after == before[:len(after)]  # the newest stay
        assert archive.size_bytes() < 1_000_000


def test_limits_are_validated_naming_the_field(tmp_path):
    for kwargs, field in (({"retention_days": 0}, "retention_days"), ({"retention_days": 366}, "retention_days"),
                          ({"max_bytes": 999_999}, "max_bytes"), ({"max_bytes": "big"}, "max_bytes")):
        with pytest.raises(ValueError, match=field):
            OwnerArchive(tmp_path / "x.db", **kwargs)
    with OwnerArchive(tmp_path / "owner.db") as archive:
        with pytest.raises(ValueError, match="retention_days"):
            archive.set_limits(400, 50_000_000)
        with pytest.raises(ValueError, match="max_bytes"):
            archive.set_limits(30, 10)
        archive.set_limits(365, 1_000_000)
        assert (archive.retention_days, archive.max_bytes) == (365, 1_000_000)


def test_forget_empties_the_archive_and_shrinks_the_file(truck, two_trips):
    decoder, frames = truck
    size = two_trips.size_bytes()
    two_trips.forget()
    assert two_trips.trips() == [] and two_trips.samples(1) == [] and two_trips.positions(1) == []
    assert two_trips.size_bytes() < size / 4
    content = two_trips.path.read_bytes() + (two_trips.path.parent / "owner.db-wal").read_bytes()
    assert b"gnss_pos" not in content and b"EEC1" not in content
    assert struct.pack(">d", valid_fixes(decoder, frames)[0][1]) not in content  # no latitude either
    # Recording goes on afterwards, in a new trip.
    record(two_trips, decoder.specs, shifted(frames, 7200.0))
    assert len(two_trips.trips()) == 1


def test_a_recorder_holding_a_trip_from_before_forget_does_not_write_it_back(truck, archive):
    decoder, frames = truck
    recorder = ArchiveRecorder(archive, decoder.specs)
    for frame in frames[:5000]:
        recorder(frame)
    archive.forget()
    for frame in frames[5000:]:
        recorder(frame)
    recorder.flush()
    (trip,) = archive.trips()
    assert trip.start > frames[4999].timestamp
    assert all(t > frames[4999].timestamp for t, _, _ in archive.samples(trip.id))


def test_the_file_is_owner_only(truck, tmp_path):
    decoder, frames = truck
    path = tmp_path / "owner.db"
    path.write_bytes(b"")
    path.chmod(0o644)
    with OwnerArchive(path, clock=lambda: NOW) as archive:
        record(archive, decoder.specs, frames[:3000])
        for name in ("owner.db", "owner.db-wal", "owner.db-shm"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_write_failures_never_raise_into_the_pipeline(truck, archive, monkeypatch, caplog):
    decoder, frames = truck
    recorder = ArchiveRecorder(archive, decoder.specs)

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(archive, "store", disk_full)
    with caplog.at_level(logging.WARNING, logger="agent.owner.recorder"):
        for frame in frames:
            recorder(frame)
        recorder.flush()
    assert recorder.errors > 10 and recorder.dropped_rows > 0
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1  # logged once
    assert "disk is full" in caplog.text
    monkeypatch.undo()
    # A closed database: still counted, not raised.
    archive.close()
    errors = recorder.errors
    for frame in shifted(frames[:3000], 3600.0):
        recorder(frame)
    recorder.flush()
    assert recorder.errors > errors


def test_readers_on_another_thread_while_recording(truck, archive):
    decoder, frames = truck
    stop, seen, failures = threading.Event(), [], []

    def read() -> None:
        try:
            while not stop.is_set():
                for trip in archive.trips():
                    seen.append(len(archive.samples(trip.id)))
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        record(archive, decoder.specs, frames)
    finally:
        stop.set()
        reader.join()
    assert not failures and seen


# -- trip files ------------------------------------------------------------------------
def test_trip_csv(two_trips):
    trip = two_trips.trips()[0]
    rows = list(csv.reader(io.StringIO(trip_csv(two_trips, trip.id))))
    assert rows[0] == ["timestamp", "time_local", "key", "value"]
    samples = two_trips.samples(trip.id)
    assert len(rows) - 1 == len(samples)
    for row, (t, key, value) in zip(rows[1:], samples):
        assert (float(row[0]), row[2], float(row[3])) == (t, key, value)
        local = datetime.fromisoformat(row[1])
        assert local.utcoffset() is not None and abs(local.timestamp() - t) < 0.001


def test_trip_gpx(two_trips):
    trip = two_trips.trips()[1]
    root = ElementTree.fromstring(trip_gpx(two_trips, trip.id))
    assert root.tag == f"{GPX}gpx" and root.get("version") == "1.1"
    points = root.findall(f"{GPX}trk/{GPX}trkseg/{GPX}trkpt")
    positions = two_trips.positions(trip.id)
    assert len(points) == len(positions) > 0
    t, lat, lon = positions[0]
    assert (float(points[0].get("lat")), float(points[0].get("lon"))) == (lat, lon)
    when = datetime.fromisoformat(points[0].find(f"{GPX}time").text.replace("Z", "+00:00"))
    assert abs(when.timestamp() - t) < 0.001


def test_trip_json(two_trips):
    trip = two_trips.trips()[0]
    doc = json.loads(json.dumps(trip_json(two_trips, trip.id)))
    assert doc["trip"]["id"] == trip.id and doc["trip"]["distance_km"] == trip.distance_km
    assert doc["trip"]["start"] == trip.start and doc["trip"]["speed_key"] == trip.speed_key
    assert [tuple(s) for s in doc["samples"]] == two_trips.samples(trip.id)
    assert [tuple(p) for p in doc["positions"]] == two_trips.positions(trip.id)
    assert doc["units"]["CCVS1.WheelBasedVehicleSpeed"] == "km/h"


def _png_checks(png: bytes) -> tuple[int, int]:
    from matplotlib import image

    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    pixels = image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (height, width)
    assert pixels.var() > 0
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::7]}) > 2
    return width, height


def test_trip_plot_png(two_trips):
    trip = two_trips.trips()[0]
    width, height = _png_checks(trip_plot_png(two_trips, trip.id))
    assert width > 300 and height > 300
    width, height = _png_checks(trip_plot_png(two_trips, trip.id, keys=["EEC1.EngineSpeed", "gnss_speed.Speed"]))
    assert width > 300 and height > 300


def test_a_trip_without_data_is_a_clear_error(two_trips):
    for make in (trip_csv, trip_gpx, trip_json, trip_plot_png):
        with pytest.raises(ValueError, match="no such trip"):
            make(two_trips, 9999)
    empty = two_trips.store(dataclasses.replace(two_trips.trips()[0], id=None))
    for make in (trip_csv, trip_json, trip_plot_png):
        with pytest.raises(ValueError, match=f"trip {empty}: no"):
            make(two_trips, empty)
    with pytest.raises(ValueError, match="no positions"):
        trip_gpx(two_trips, empty)


def test_the_pipeline_cost_per_frame_is_small(truck, archive):
    import time

    decoder, frames = truck
    recorder = ArchiveRecorder(archive, decoder.specs)
    start = time.perf_counter()
    for frame in frames:
        recorder(frame)
    recorder.flush()
    per_frame = (time.perf_counter() - start) / len(frames)
    assert per_frame < 100e-6, f"{per_frame * 1e6:.1f} µs per frame"  # measured ~5 µs; generous for busy CI
    assert not math.isnan(per_frame) and os.path.exists(archive.path)


def test_trip_signals_are_the_speed_position_and_valid_flags(truck):
    from agent.owner import trip_signal

    decoder, _ = truck
    chosen = sorted(key for key, spec in decoder.specs.items() if trip_signal(spec))
    assert chosen == ["CCVS1.WheelBasedVehicleSpeed", "gnss_pos.Latitude", "gnss_pos.Longitude",
                      "gnss_pos.PositionValid", "gnss_speed.Speed"]


def test_a_forget_in_another_process_is_not_undone_by_the_agents_recorder(truck, tmp_path):
    """The page forgets through its own connection while the agent's recorder holds a trip open: the rows
    buffered before the forget never reach the file, and recording goes on as a new trip."""
    decoder, frames = truck
    path = tmp_path / "shared.db"
    agent_side, page_side = OwnerArchive(path, clock=lambda: NOW), OwnerArchive(path, clock=lambda: NOW)
    try:
        recorder = ArchiveRecorder(agent_side, decoder.specs)
        half = len(frames) // 2
        for frame in frames[:half]:
            recorder(frame)
        recorder.flush()
        assert len(page_side.trips()) == 1
        for frame in frames[half:half + 500]:  # buffered, not yet written
            recorder(frame)
        page_side.forget()
        recorder.flush()
        assert page_side.trips() == [] and agent_side.trips() == []
        after = frames[half + 500]
        for frame in frames[half + 500:]:
            recorder(frame)
        recorder.flush()
        (trip,) = page_side.trips()
        assert trip.start >= after.timestamp and recorder.errors == 0
    finally:
        agent_side.close()
        page_side.close()


def test_the_owners_own_limits_win_over_the_configured_ones_in_every_process(tmp_path):
    path = tmp_path / "limits.db"
    with OwnerArchive(path, retention_days=30, max_bytes=50_000_000, clock=lambda: NOW) as page_side:
        assert not page_side.owner_chose_limits
        page_side.set_limits(7, 2_000_000, persist=True)
        with pytest.raises(ValueError, match="retention_days"):
            page_side.set_limits(0, 2_000_000, persist=True)
    # The agent opens the archive with the configuration's defaults: the owner's choice is what counts.
    with OwnerArchive(path, retention_days=30, max_bytes=50_000_000, clock=lambda: NOW) as agent_side:
        assert (agent_side.retention_days, agent_side.max_bytes) == (7, 2_000_000)
        agent_side.forget()  # "forget me" forgets the choice too
    with OwnerArchive(path, retention_days=30, max_bytes=50_000_000, clock=lambda: NOW) as again:
        assert (again.retention_days, again.max_bytes) == (30, 50_000_000) and not again.owner_chose_limits


def _kept_by_the_rule(frames: list[DecodedFrame], specs, rate_hz: float) -> list[tuple[float, str]]:
    """Every (time, key) the archive's rule keeps: a signal when ``rate_hz``'s period passed since it was last
    kept, each signal on its own (the reference the recorder's per-message shortcut must agree with)."""
    period, nxt, kept = 1.0 / rate_hz, {}, []
    for frame in frames:
        for name in frame.raw:
            key = f"{frame.message}.{name}"
            if key in specs and frame.timestamp >= nxt.get(key, -math.inf):
                nxt[key] = frame.timestamp + period
                kept.append((frame.timestamp, key))
    return kept


def test_the_recorder_keeps_exactly_what_the_per_signal_rule_keeps(truck, archive):
    """Frames of a message that carry different signals (as a multiplexed message's do), interleaved at
    100 Hz, and a clock step back: the recorder skips a message's frames only while none of its signals is due."""
    decoder, frames = truck
    imu = [f for f in frames if f.message == "gnss_imu"][:3000]
    names = sorted(imu[0].raw)
    mixed = []
    for i, frame in enumerate(imu):  # odd frames carry the first half of the signals, even ones the rest
        half = names[: len(names) // 2] if i % 2 else names[len(names) // 2:]
        mixed.append(DecodedFrame(frame.timestamp, frame.bus, frame.frame_id, frame.message,
                                  {n: frame.raw[n] for n in half}))
    back = [DecodedFrame(f.timestamp - 7.5, f.bus, f.frame_id, f.message, f.raw) for f in imu[1000:1500]]
    stream = mixed[:2000] + back + mixed[2000:]
    record(archive, decoder.specs, stream, rate_hz=2.0)
    (trip,) = archive.trips()
    got = sorted((t, key) for t, key, _ in archive.samples(trip.id))
    expected = sorted(_kept_by_the_rule(stream, decoder.specs, 2.0))
    assert len(expected) > 100 and got == expected
