"""The privacy filter on real frames: the CSS truck J1939 bus + CANmod.gps log, decoded with the repo's DBCs
and classified by the catalogs next to them."""

from __future__ import annotations

import copy
import math
import time

import pytest

from agent.cli.common import load_catalogs, load_dbcs
from agent.decode import Decoder
from agent.model import Row, SignalSpec
from agent.privacy.consent import DAY
from agent.privacy.decision import LATITUDE_VSS, LONGITUDE_VSS
from agent.privacy.filter import PrivacyFilter
from agent.privacy.policy import ConsentPolicy
from agent.privacy.pseudonym import Pseudonymizer
from agent.privacy.transforms import latitude_coarsener, longitude_coarsener
from tests.helpers.clock import FakeClock as Clock

pytestmark = pytest.mark.consent

T0 = 1_750_000_000.0
LOG = "logs/css_truck_j1939_and_canmod_gps.asc"


class Collect:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def put(self, row: Row) -> None:
        self.rows.append(row)


@pytest.fixture(scope="module")
def real(repo_root, shared_data):
    from agent.sources.log import LogSource

    css = repo_root / "dbc" / "css-electronics"
    bus_dbcs = load_dbcs([f"can0={css / 'CSS-Electronics-SAE-J1939-DEMO.dbc'}", f"can1={css / 'canmod-gps.dbc'}"])
    decoder = Decoder(bus_dbcs, load_catalogs(bus_dbcs, []), j1939_buses=["can0"])
    frames = []
    for bus, msg in LogSource(shared_data / LOG):
        frame = decoder.decode(msg, bus)
        if frame is not None:
            frames.append(frame)
    assert len(frames) > 26_000
    return decoder.specs, frames


def rows_of(frames) -> list[Row]:
    return [Row("telemetry", 1, f.timestamp, f.bus, f.message, f.raw, True) for f in frames]


def run(policy, specs, frames, **kwargs) -> tuple[Collect, PrivacyFilter]:
    sink = Collect()
    stage = PrivacyFilter(policy, specs, sink, **kwargs)
    for row in rows_of(frames):
        stage.put(row)
    return sink, stage


def received_categories(sink: Collect, specs) -> set[str]:
    found = set()
    for row in sink.rows:
        for name in row.values:
            spec = specs[f"{row.message}.{name}"]
            found.add("location" if spec.vss_path in (LATITUDE_VSS, LONGITUDE_VSS) else spec.category)
    return found


def test_default_consent_sends_nothing(real):
    specs, frames = real
    sink, stage = run(ConsentPolicy(None, clock=Clock()), specs, frames)
    assert sink.rows == []
    assert stage.counters.rows_in == len(frames) and stage.counters.rows_dropped == len(frames)


def test_granted_category_only_and_categories_set(real):
    specs, frames = real
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("vehicle_health", "90d")
    sink, _ = run(policy, specs, frames)
    assert received_categories(sink, specs) == {"vehicle_health"}
    assert all(row.categories == frozenset({"vehicle_health"}) for row in sink.rows)
    # Independent count: frames carrying at least one vehicle_health signal.
    expected = [f for f in frames if any(specs[f"{f.message}.{n}"].category == "vehicle_health" for n in f.raw)]
    assert len(sink.rows) == len(expected) > 12_000
    engine = [r for r in sink.rows if r.message == "EEC1"]
    assert engine and all(set(r.values) == {"EngineSpeed"} and r.raw for r in engine)
    # Whole rows pass unchanged (no copy); partial rows get a new dict with only the granted signals.
    status = [r for r in sink.rows if r.message == "gnss_status"]
    assert len(status) == 115 and all(set(r.values) == {"FixType", "Satellites"} for r in status)
    times = [r for r in sink.rows if r.message == "gnss_time"]
    assert all(set(r.values) == {"TimeValid", "TimeConfirmed"} for r in times)  # Epoch is location


@pytest.mark.parametrize("level", ["city", "geohash5", "geohash6", "round3"])
def test_location_is_coarsened_exactly(real, level):
    specs, frames = real
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("location", "90d", level=level)
    sink, _ = run(policy, specs, frames)
    positions = [f for f in frames if f.message == "gnss_pos"]
    assert len(sink.rows) == len(positions) == 115
    lat_spec, lon_spec = specs["gnss_pos.Latitude"], specs["gnss_pos.Longitude"]
    coarse_lat, coarse_lon = latitude_coarsener(level), longitude_coarsener(level)
    distinct = set()
    for row, frame in zip(sink.rows, positions):
        assert row.timestamp == frame.timestamp and row.raw is False
        assert set(row.values) == {"Latitude", "Longitude"}  # accuracy/validity/altitude/heading never leave
        assert row.categories == frozenset({"location"})
        true_lat = lat_spec.to_physical(frame.raw["Latitude"])
        true_lon = lon_spec.to_physical(frame.raw["Longitude"])
        assert row.values["Latitude"] == coarse_lat(true_lat)
        assert row.values["Longitude"] == coarse_lon(true_lon)
        assert row.values["Latitude"] != true_lat
        distinct.add((row.values["Latitude"], row.values["Longitude"]))
    # The truck barely moves (~10 m): the ~5 and ~10 km levels collapse the whole log into one cell
    # (it sits on a geohash6 boundary, so that level shows two).
    assert len(distinct) == {"city": 1, "geohash5": 1, "geohash6": 2, "round3": 2}[level]
    # The decoder's raw dicts were not touched.
    assert all(isinstance(f.raw["Latitude"], int) for f in positions)


def test_privacy_zone_suppresses_location(real):
    specs, frames = real
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("location", "90d", level="round3")
    policy.grant("driving", "90d")
    policy.add_zone(41.4129, -92.8785, 200, name="depot")  # the truck's position in this log
    sink, stage = run(policy, specs, frames)
    assert "location" not in received_categories(sink, specs)
    assert sink.rows and all(row.categories == frozenset({"driving"}) for row in sink.rows)
    assert stage.counters.zone_suppressed_rows == 115
    # A zone elsewhere (Shanghai) suppresses nothing.
    far = ConsentPolicy(None, clock=Clock())
    far.grant("location", "90d", level="round3")
    far.add_zone(31.23, 121.47, 5000)
    sink, _ = run(far, specs, frames)
    assert len(sink.rows) == 115


def test_zone_with_no_position_yet_fails_closed(real):
    specs, _frames = real
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("location", "90d", level="city")
    policy.add_zone(31.23, 121.47, 5000)
    sink = Collect()
    stage = PrivacyFilter(policy, specs, sink)
    stage.put(Row("telemetry", 1, 0.0, "can1", "gnss_altitude", {"Altitude": 1000}, True))
    assert sink.rows == []  # altitude is never sent anyway, and position unknown


def test_unknown_signals_are_unclassified_and_dropped(real):
    specs, _frames = real
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("vehicle_health", "90d")
    sink = Collect()
    stage = PrivacyFilter(policy, specs, sink)
    stage.put(Row("telemetry", 1, 0.0, "can9", "NoSuchMessage", {"Secret": 42}, True))
    stage.put(Row("telemetry", 1, 0.0, "can0", "EEC1", {"EngineSpeed": 1000, "Smuggled": 7}, True))
    assert len(sink.rows) == 1 and sink.rows[0].values == {"EngineSpeed": 1000}


def test_grant_and_revoke_take_effect_from_the_next_row(real):
    specs, frames = real
    policy = ConsentPolicy(None, clock=Clock())
    sink = Collect()
    versions = []
    stage = PrivacyFilter(policy, specs, sink, on_version_change=versions.append)
    rows = [r for r in rows_of(frames) if r.message == "CCVS1"]
    for row in rows[:100]:
        stage.put(row)
    assert sink.rows == [] and stage.consent_version == 0
    policy.grant("driving", "90d")
    for row in rows[100:200]:
        stage.put(row)
    assert len(sink.rows) == 100 and stage.consent_version == 1
    policy.revoke("driving")
    for row in rows[200:]:
        stage.put(row)
    assert len(sink.rows) == 100 and stage.consent_version == 2
    assert [[c.kind for c in changes] for changes in versions] == [["grant"], ["revoke"]]
    assert versions[1][0].purge == frozenset({"driving"})


def test_expiry_stops_uploads_mid_stream(real):
    specs, frames = real
    clock = Clock()
    policy = ConsentPolicy(None, clock=clock)
    policy.grant("driving", "7d")
    purged = []
    policy.on_change(lambda change: purged.append(change.purge))
    sink = Collect()
    stage = PrivacyFilter(policy, specs, sink)
    rows = [r for r in rows_of(frames) if r.message == "CCVS1"]
    for index, row in enumerate(rows):
        if index == 500:
            clock.now = T0 + 7 * DAY  # the grant runs out between two frames
        stage.put(row)
    assert len(sink.rows) == 500
    assert purged == [frozenset({"driving"})] and policy.state.grants == {}


def test_identity_is_pseudonymised(tmp_path):
    spec = SignalSpec("VI.SerialNumber", "VI", "SerialNumber", 1.0, 0.0, False, False, 32, None, None, "", {},
                      "Vehicle.VehicleIdentification.SerialNumber", "identity")
    pseudonymizer = Pseudonymizer.in_dir(tmp_path)
    policy = ConsentPolicy(None, clock=Clock())
    sink = Collect()
    stage = PrivacyFilter(policy, {spec.key: spec}, sink, pseudonymizer)
    stage.put(Row("telemetry", 1, 0.0, "can0", "VI", {"SerialNumber": 123456789}, True))
    assert sink.rows == []
    policy.grant("identity", "7d")
    stage.put(Row("telemetry", 1, 0.0, "can0", "VI", {"SerialNumber": 123456789}, True))
    [row] = sink.rows
    assert row.raw is False and row.categories == frozenset({"identity"})
    assert row.values == {"SerialNumber": pseudonymizer.value_pseudonym("VI.SerialNumber", 123456789.0)}
    assert row.values["SerialNumber"] != 123456789
    # Without a key, identity is dropped rather than sent raw.
    sink2 = Collect()
    PrivacyFilter(policy, {spec.key: spec}, sink2).put(Row("t", 1, 0.0, "can0", "VI", {"SerialNumber": 5}, True))
    assert sink2.rows == []


def test_bench_mode_passes_everything_at_full_precision(real):
    specs, frames = real
    sink, stage = run(ConsentPolicy(None, clock=Clock(), grant_all=True), specs, frames)
    assert len(sink.rows) == len(frames) and stage.bench
    positions = [r for r in sink.rows if r.message == "gnss_pos"]
    assert positions and all(r.raw and isinstance(r.values["Latitude"], int) for r in positions)
    unknown = Collect()
    PrivacyFilter(ConsentPolicy(None, grant_all=True), specs, unknown).put(
        Row("t", 1, 0.0, "can9", "NoSuchMessage", {"X": 1}, True))
    assert len(unknown.rows) == 1 and unknown.rows[0].categories == frozenset({"unclassified"})


def test_filter_is_fast(real):
    specs, frames = real
    policy = ConsentPolicy(None, clock=Clock())
    for category in ("vehicle_health", "driving"):
        policy.grant(category, "90d")
    policy.grant("location", "90d", level="geohash6")
    policy.add_zone(31.23, 121.47, 5000)
    rows = rows_of(frames) * 4
    sink = Collect()
    stage = PrivacyFilter(policy, specs, sink)
    started = time.perf_counter()
    for row in rows:
        stage.put(row)
    elapsed = time.perf_counter() - started
    rate = len(rows) / elapsed
    # Altitude and geofence messages carry only location signals other than latitude/longitude.
    dropped = [r for r in rows if r.message in ("gnss_altitude", "gnss_geofence")]
    assert stage.counters.rows_in == len(rows) and len(sink.rows) == len(rows) - len(dropped)
    assert rate > 100_000, f"{rate:.0f} rows/s"


def test_rows_are_not_mutated_when_copied(real):
    specs, frames = real
    before = copy.deepcopy([f.raw for f in frames[:2000]])
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("location", "90d", level="city")
    policy.grant("driving", "90d")
    run(policy, specs, frames[:2000])
    assert [f.raw for f in frames[:2000]] == before
    assert not any(math.isnan(v) for raw in before for v in raw.values() if isinstance(v, float))


# -- revocation and expiry purge the real buffer ------------------------------------------------

class InFlight:
    """The uplink's side of a purge (``InFlightTracker``): ids handed to MQTT without a PUBACK yet."""

    def __init__(self, ids=()) -> None:
        self.ids = set(ids)
        self.forgotten: list[int] = []

    def in_flight_ids(self):
        return frozenset(self.ids)

    def forget(self, ids) -> None:
        self.forgotten.extend(ids)
        self.ids -= set(ids)


def pipeline(tmp_path, specs, policy):
    """filter -> batcher -> guarded sink -> BatchStore, wired as docs/privacy.md describes."""
    from agent.batch.batcher import Batcher
    from agent.buffer.store import BatchStore
    from agent.flow.gate import ConsentGate
    from agent.flow.writer import StoreWriter

    store = BatchStore(tmp_path / "buffer.sqlite")
    writer = StoreWriter(store, ConsentGate(policy), "boot-1")
    batcher = Batcher(specs, writer.write, "truck-1", numbering=writer.numbers, max_age_s=10.0,
                      consent_version=policy.version, bench=policy.bench)
    stage = PrivacyFilter(policy, specs, batcher,
                          on_version_change=lambda _changes: batcher.consent_changed(stage.consent_version))
    return store, batcher, stage


def split_streams(frames) -> list[Row]:
    # Positions in their own stream so that batches hold either location or the rest.
    return [Row("position" if f.message == "gnss_pos" else "telemetry", 1, f.timestamp, f.bus, f.message, f.raw,
                True) for f in frames]


def pending(store):
    return store.pending(10_000)


def test_revocation_purges_buffer_and_in_flight(tmp_path, real):
    from agent.ledger import Ledger
    from agent.privacy.purge import consent_change_handler

    specs, frames = real
    clock = Clock()
    policy = ConsentPolicy(None, clock=clock)
    ledger = Ledger(tmp_path / "ledger.jsonl", clock)
    policy.grant("location", "90d", level="round3")
    policy.grant("driving", "90d")
    store, batcher, stage = pipeline(tmp_path, specs, policy)
    rows = split_streams(frames)
    half = len(rows) // 2
    for row in rows[:half]:
        stage.put(row)
    batcher.tick(batcher.clock() + 3600)  # close what is open: into the store
    for row in rows[half:half + 2000]:
        stage.put(row)  # these stay in open batches
    stored = pending(store)
    located = [b.id for b in stored if "location" in b.categories]
    others = [b.id for b in stored if "location" not in b.categories]
    assert located and others and all(b.header["consent_version"] == 2 for b in stored)
    uplink = InFlight([located[0], located[1], others[0]])  # handed to MQTT, no PUBACK yet
    policy.on_change(consent_change_handler(store, uplink, ledger))

    policy.revoke("location")  # e.g. from the control socket thread

    remaining = pending(store)
    assert [b.id for b in remaining] == others
    # Every purged batch is cancelled in the uplink (one read by the sender but not yet published must not go);
    # the two handed to MQTT may have left, and the ledger says so.
    assert uplink.forgotten == located
    kinds = [(e.kind, e.fields) for e in ledger.entries()]
    assert kinds[0][0] == "consent_change" and kinds[0][1]["change"] == "revoke"
    assert kinds[1] == ("purge", {"categories": ["location"], "batches": len(located), "batch_ids": located,
                                  "reason": "revoke", "consent_version": 3, "bytes": None})
    assert kinds[2][0] == "may_have_left" and kinds[2][1]["batch_ids"] == [located[0], located[1]]
    assert ledger.verify().ok
    # The open position batch was made before the revocation: flushing it now stores nothing.
    for row in rows[half + 2000:]:
        stage.put(row)
    batcher.flush()
    after = pending(store)
    assert all("location" not in b.categories for b in after)
    assert len(after) > len(others)  # driving kept flowing
    # The driving batch open at the revocation keeps the version its rows were filtered under.
    assert {b.header["consent_version"] for b in after if b.id not in others} == {2, 3}


def test_guarded_sink_refuses_batches_from_before_a_narrowing(tmp_path, real):
    from agent.privacy.decision import batch_allowed

    specs, frames = real
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("location", "90d", level="round3")
    store, batcher, stage = pipeline(tmp_path, specs, policy)
    for row in split_streams(frames[:3000]):  # under 10 s of log: one open batch
        stage.put(row)
    policy.narrow_level("city")  # still granted, but the open batch holds finer positions
    batcher.flush()
    assert pending(store) == []
    assert batch_allowed(policy, ["location"], policy.version)
    assert not batch_allowed(policy, ["location"], policy.version - 1)
    assert not batch_allowed(policy, ["location"], 0)  # history does not reach back: fail closed


def test_expiry_purges_the_backlog(tmp_path, real):
    from agent.ledger import Ledger
    from agent.privacy.purge import consent_change_handler

    specs, frames = real
    clock = Clock()
    policy = ConsentPolicy(None, clock=clock)
    ledger = Ledger(tmp_path / "ledger.jsonl", clock)
    policy.grant("driving", "7d")
    store, batcher, stage = pipeline(tmp_path, specs, policy)
    policy.on_change(consent_change_handler(store, None, ledger))
    rows = split_streams(frames)
    for row in rows[:10_000]:
        stage.put(row)
    batcher.flush()
    backlog = [b.id for b in pending(store)]
    assert backlog and all(b.categories == ("driving",) for b in pending(store))
    clock.now = T0 + 7 * DAY + 1  # the grant runs out while the broker is unreachable
    for row in rows[10_000:]:
        stage.put(row)
    batcher.flush()
    assert pending(store) == []
    purge = next(e for e in ledger.entries() if e.kind == "purge")
    assert purge.fields["batch_ids"] == backlog and purge.fields["reason"] == "expire"


def test_startup_purges_what_is_no_longer_granted(tmp_path, real):
    from agent.ledger import Ledger
    from agent.privacy.purge import purge_ungranted

    specs, frames = real
    policy = ConsentPolicy(None, clock=Clock())
    policy.grant("location", "90d", level="city")
    policy.grant("driving", "90d")
    store, batcher, stage = pipeline(tmp_path, specs, policy)
    for row in split_streams(frames[:8000]):
        stage.put(row)
    batcher.flush()
    before = pending(store)
    # Restart: location was revoked from the CLI while the agent was stopped.
    restarted = ConsentPolicy(None, clock=Clock())
    restarted.grant("driving", "90d")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    report = purge_ungranted(restarted, store, None, ledger)
    assert report.purged == tuple(b.id for b in before if "location" in b.categories) and report.purged
    assert [b.id for b in pending(store)] == [b.id for b in before if "location" not in b.categories]
    assert [e.kind for e in ledger.entries()] == ["purge"]


def test_expiry_is_enforced_even_if_it_cannot_be_recorded(tmp_path, real, monkeypatch):
    from agent.privacy.store import ConsentStore

    specs, frames = real
    clock = Clock()
    policy = ConsentPolicy(ConsentStore.in_dir(tmp_path), clock=clock)
    policy.grant("driving", "7d")
    sink = Collect()
    stage = PrivacyFilter(policy, specs, sink)
    rows = [r for r in rows_of(frames) if r.message == "CCVS1"]
    for row in rows[:10]:
        stage.put(row)

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(policy.store, "_append", disk_full)
    clock.now = T0 + 7 * DAY
    for row in rows[10:20]:
        stage.put(row)
    assert len(sink.rows) == 10 and policy.version == 1  # not recorded, but nothing more sent


def test_demo_consent_file(tmp_path, real):
    from agent.cli.main import main
    from agent.privacy.store import load_state_file

    specs, frames = real
    state = tmp_path / "state"
    assert main(["consent", "grant", "location", "--for", "7d", "--level", "city", "--state", str(state)]) == 0
    loaded = load_state_file(state / "consent.jsonl")
    assert loaded == load_state_file(state) and loaded.grants["location"].level == "city"
    sink, _ = run(ConsentPolicy(None, state=loaded), specs, frames)
    assert {(r.values["Latitude"], r.values["Longitude"]) for r in sink.rows} == {(41.45, -92.85)}
    with pytest.raises(ValueError, match="no such consent state file"):
        load_state_file(tmp_path / "missing.jsonl")
