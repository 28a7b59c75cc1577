"""Collection rules: config parsing and exactly which samples each rule keeps."""

from __future__ import annotations

import math
import textwrap

import pytest

from agent.collect import CollectionPlan, Collector, parse_collection
from agent.config import parse_config
from agent.yamlsrc import ConfigError, load_text
from tests.collect_support import ListSink, frame, make_specs, wheels

SPECS = make_specs()


def plan_of(yaml_text: str) -> CollectionPlan:
    text = textwrap.dedent(yaml_text)
    return parse_collection(load_text(text, "agent.yaml"), source_text=text)


def run(plan: CollectionPlan, frames, flush: bool = True) -> ListSink:
    sink = ListSink()
    collector = Collector(plan, SPECS, sink)
    for item in frames:
        collector.on_frame(item)
    if flush:
        collector.flush()
    return sink


def single_rule(rule: str, extra: str = "") -> CollectionPlan:
    return plan_of(f"""
        collection:
          {extra}
          campaigns:
            - name: c
              stream: s
              priority: 3
              signals:
                - {rule}
        """)


# -- no config ------------------------------------------------------------------------


def test_no_config_collects_everything_at_full_rate_into_telemetry():
    config = parse_config("vehicle: {id: v1}\n")
    plan = parse_collection(config)
    assert plan == CollectionPlan()
    frames = [wheels(0.0, 100, -5, 1), frame(0.01, "Safety", AEB=0, Gear=3), wheels(0.02, 101, -6, 2)]
    rows = run(plan, frames).rows
    assert [(r.stream, r.priority, r.timestamp, r.message, r.values, r.raw) for r in rows] == [
        ("telemetry", 0, 0.0, "Wheels", {"Speed": 100, "Accel": -5, "Counter": 1}, True),
        ("telemetry", 0, 0.01, "Safety", {"AEB": 0, "Gear": 3}, True),
        ("telemetry", 0, 0.02, "Wheels", {"Speed": 101, "Accel": -6, "Counter": 2}, True),
    ]
    assert rows[0].categories == frozenset({"driving", "unclassified"})
    assert rows[1].categories == frozenset({"driving", "incident"})
    assert rows[0].values is not frames[0].raw  # never hand the decoder's dict downstream


def test_empty_section_and_missing_document_mean_defaults():
    assert plan_of("collection: {}\n") == CollectionPlan()
    assert plan_of("vehicle: {id: x}\n") == CollectionPlan()


# -- period ---------------------------------------------------------------------------


def test_period_last_keeps_the_last_frame_of_each_aligned_period():
    plan = single_rule('{match: "Vehicle.Speed", period_ms: 500}')
    times = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 1.125, 2.5, 2.625]
    rows = run(plan, [wheels(t, 1000 + i) for i, t in enumerate(times)]).rows
    # periods [0, .5) [.5, 1) [1, 1.5) [2.5, 3): a frame exactly on a boundary opens the next one
    assert [(r.timestamp, r.values, r.raw) for r in rows] == [
        (0.375, {"Speed": 1003}, True),
        (0.625, {"Speed": 1005}, True),
        (1.125, {"Speed": 1006}, True),
        (2.625, {"Speed": 1008}, True),  # emitted by flush
    ]
    assert {(r.stream, r.priority, r.message, r.categories) for r in rows} == {
        ("s", 3, "Wheels", frozenset({"driving"}))}


def test_period_without_flush_holds_the_open_period():
    plan = single_rule('{match: "Vehicle.Speed", period_ms: 500}')
    rows = run(plan, [wheels(0.0, 1), wheels(0.25, 2), wheels(0.5, 3)], flush=False).rows
    assert [(r.timestamp, r.values) for r in rows] == [(0.25, {"Speed": 2})]


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [("mean", [(0.0, 11.0), (0.5, 30.0), (1.5, 5.0)]),
     ("min", [(0.0, 10.0), (0.5, 20.0), (1.5, 5.0)]),
     ("max", [(0.0, 12.0), (0.5, 40.0), (1.5, 5.0)])],
)
def test_period_aggregates_are_physical_and_stamped_with_the_period_start(aggregate, expected):
    plan = single_rule(f'{{match: "Wheels.Speed", period_ms: 500, aggregate: {aggregate}}}')
    # raw 1000 -> 10.00 km/h (scale 0.01)
    frames = [wheels(0.0, 1000), wheels(0.25, 1200), wheels(0.375, 1100),
              wheels(0.5, 4000), wheels(0.75, 2000), wheels(1.75, 500)]
    rows = run(plan, frames).rows
    assert [r.raw for r in rows] == [False, False, False]
    assert [(r.timestamp, list(r.values)) for r in rows] == [(t, ["Speed"]) for t, _ in expected]
    for row, (_, value) in zip(rows, expected):
        assert math.isclose(row.values["Speed"], value, rel_tol=1e-12)


def test_period_groups_signals_of_one_message_and_keeps_buses_apart():
    plan = single_rule('{match: "Wheels.*", period_ms: 1000}')
    frames = [wheels(0.0, 1, 1, 1, bus="a"), wheels(0.1, 2, 2, 2, bus="b"), wheels(0.2, 3, 3, 3, bus="a"),
              wheels(1.0, 4, 4, 4, bus="a")]
    rows = run(plan, frames).rows
    assert sorted((r.bus, r.timestamp, r.values["Speed"]) for r in rows) == [
        ("a", 0.2, 3), ("a", 1.0, 4), ("b", 0.1, 2)]
    assert rows[0].values == {"Speed": 3, "Accel": 3, "Counter": 3}


def test_period_with_timestamps_going_backwards():
    plan = single_rule('{match: "Vehicle.Speed", period_ms: 500}')
    # 0.45 arrives after 0.55 (interleaved logger): counted in the open period [0.5, 1).
    # Then the logger clock resets to -3.0: the open period is emitted and a new one starts.
    times = [0.1, 0.55, 0.45, 0.7, -3.0, -2.9, -2.4]
    rows = run(plan, [wheels(t, i) for i, t in enumerate(times)]).rows
    assert [(r.timestamp, r.values["Speed"]) for r in rows] == [(0.1, 0), (0.7, 3), (-2.9, 5), (-2.4, 6)]


# -- on_change / max_rate --------------------------------------------------------------


def speeds(values_kmh, step=0.125):
    return [wheels(i * step, round(v * 100)) for i, v in enumerate(values_kmh)]


def kept(rows):
    return [(r.timestamp, r.values) for r in rows]


def test_on_change_keeps_first_sample_and_every_change():
    plan = single_rule('{match: "Vehicle.Speed", on_change: true}')
    rows = run(plan, speeds([10, 10, 10.01, 10.01, 10])).rows
    assert kept(rows) == [(0.0, {"Speed": 1000}), (0.25, {"Speed": 1001}), (0.5, {"Speed": 1000})]
    assert all(r.raw for r in rows)


def test_on_change_absolute_deadband_compares_with_the_last_kept_value():
    plan = single_rule('{match: "Vehicle.Speed", on_change: {abs: 0.5}}')
    rows = run(plan, speeds([10.0, 10.3, 10.45, 10.8, 10.4, 10.2, 11.31, 10.9])).rows
    # kept: 10.0 (first), 10.8 (+0.8), 10.2 (-0.6 from 10.8), 11.31 (+1.11); 10.9 is -0.41
    assert kept(rows) == [(0.0, {"Speed": 1000}), (0.375, {"Speed": 1080}), (0.625, {"Speed": 1020}),
                          (0.75, {"Speed": 1131})]


def test_on_change_relative_deadband():
    plan = single_rule('{match: "Vehicle.Speed", on_change: {rel: 0.1}}')
    rows = run(plan, speeds([100, 109, 111, 101, 99, 0, 0, 0.01])).rows
    # 111 > 100 * 1.1; 101 is within 10 % of 111; 99 is 10.8 % below 111; 0 is 100 % below;
    # from 0 any change counts
    assert [r.values["Speed"] for r in rows] == [10000, 11100, 9900, 0, 1]


def test_on_change_is_per_signal_and_rows_hold_only_changed_signals():
    plan = single_rule('{match: "Wheels.*", on_change: true}')
    frames = [wheels(0.0, 1, 5, 0), wheels(0.1, 1, 5, 1), wheels(0.2, 2, 5, 1), wheels(0.3, 2, 5, 1)]
    rows = run(plan, frames).rows
    assert kept(rows) == [(0.0, {"Speed": 1, "Accel": 5, "Counter": 0}), (0.1, {"Counter": 1}),
                          (0.2, {"Speed": 2})]
    assert rows[1].categories == frozenset({"unclassified"})
    assert rows[2].categories == frozenset({"driving"})


def test_max_rate_keeps_at_most_one_sample_per_interval():
    plan = single_rule('{match: "Vehicle.Speed", max_rate_hz: 4}')
    rows = run(plan, [wheels(i * 0.125, i) for i in range(10)]).rows
    assert [r.timestamp for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [r.values["Speed"] for r in rows] == [0, 2, 4, 6, 8]


def test_max_rate_with_irregular_frames():
    plan = single_rule('{match: "Vehicle.Speed", max_rate_hz: 2}')
    times = [0.0, 0.25, 0.5, 0.625, 1.0, 1.25, 1.5, 3.0]
    rows = run(plan, [wheels(t, 7) for t in times]).rows
    assert [r.timestamp for r in rows] == [0.0, 0.5, 1.0, 1.5, 3.0]


def test_on_change_with_max_rate_delays_a_change_to_after_the_gap():
    plan = single_rule('{match: "Vehicle.Speed", on_change: true, max_rate_hz: 2}')
    values = [1, 2, 2, 2, 2, 3, 3, 3]  # every 0.125 s
    rows = run(plan, [wheels(i * 0.125, v) for i, v in enumerate(values)]).rows
    # 2 appears at 0.125, inside the 0.5 s gap: kept at 0.5, the first sample after the gap.
    # 3 appears at 0.625, inside the next gap (until 1.0): the log ends at 0.875, so it is never kept...
    assert kept(rows) == [(0.0, {"Speed": 1}), (0.5, {"Speed": 2})]
    # ...unless a frame arrives after the gap.
    rows = run(plan, [wheels(i * 0.125, v) for i, v in enumerate([*values, 3])]).rows
    assert kept(rows)[-1] == (1.0, {"Speed": 3})


def test_max_rate_after_a_clock_reset():
    plan = single_rule('{match: "Vehicle.Speed", max_rate_hz: 1}')
    times = [10.0, 10.5, 10.25, 11.0, 0.0, 0.5, 1.0]
    rows = run(plan, [wheels(t, 1) for t in times]).rows
    # 10.25 is a late frame (no reset); 0.0 is 11 s back: a clock reset, kept at once
    assert [r.timestamp for r in rows] == [10.0, 11.0, 0.0, 1.0]


# -- matching ---------------------------------------------------------------------------


def test_first_matching_rule_wins_within_a_campaign_and_campaigns_overlap():
    plan = plan_of("""
        collection:
          campaigns:
            - name: one
              stream: fast
              signals:
                - "Vehicle.Speed"
                - {match: "Wheels.*", period_ms: 1000}
            - name: two
              stream: slow
              signals: [{match: "Vehicle.*", on_change: true}]
        """)
    rows = run(plan, [wheels(0.0, 1, 2, 3), wheels(0.5, 1, 2, 4)]).rows
    summary = sorted((r.stream, r.timestamp, tuple(sorted(r.values.items()))) for r in rows)
    assert summary == [
        ("fast", 0.0, (("Speed", 1),)),
        ("fast", 0.5, (("Accel", 2), ("Counter", 4))),  # period rule takes what the first rule left
        ("fast", 0.5, (("Speed", 1),)),
        ("slow", 0.0, (("Accel", 2), ("Speed", 1))),  # Vehicle.* does not match Wheels.Counter
    ]


def test_default_stream_gets_what_no_campaign_names():
    plan = plan_of("""
        collection:
          default_stream: rest
          default_priority: 2
          campaigns:
            - name: c
              signals: ["Vehicle.Speed"]
        """)
    rows = run(plan, [wheels(0.0, 1, 2, 3), frame(0.1, "Battery", Soc=100, Temp=60)]).rows
    assert [(r.stream, r.priority, r.values) for r in rows] == [
        ("telemetry", 0, {"Speed": 1}),
        ("rest", 2, {"Accel": 2, "Counter": 3}),
        ("rest", 2, {"Soc": 100, "Temp": 60}),
    ]


def test_campaigns_drop_the_rest_by_default_and_disabled_campaigns_do_nothing():
    plan = plan_of("""
        collection:
          campaigns:
            - name: kept
              signals: ["Battery.*"]
            - name: idle
              enabled: false
              signals: ["Vehicle.Speed"]
        """)
    assert plan.default_stream is None and [c.name for c in plan.campaigns] == ["kept"]
    rows = run(plan, [wheels(0.0, 1), frame(0.1, "Battery", Soc=1, Temp=2)]).rows
    assert [(r.message, r.values) for r in rows] == [("Battery", {"Soc": 1, "Temp": 2})]
    assert plan.wants(SPECS["Battery.Soc"]) and not plan.wants(SPECS["Wheels.Speed"])


def test_rules_matching_nothing_are_warnings():
    plan = single_rule('{match: "Vehicle.Nothing.*"}')
    collector = Collector(plan, SPECS, ListSink())
    assert collector.warnings == [
        "agent.yaml:9: collection.campaigns[0].signals[0]: match 'Vehicle.Nothing.*' names no signal of the "
        "loaded DBCs"]


# -- config errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('{match: "x", period: 5}', "agent.yaml:9: collection.campaigns[0].signals[0].period: unknown key"),
        ('{match: "x", period_ms: 0}', "agent.yaml:9: collection.campaigns[0].signals[0].period_ms: must be a finite "
                                       "number between 0 (excluded) and 86400000, got 0"),
        ('{match: "x", period_ms: 100, aggregate: median}', "signals[0].aggregate: must be one of 'last'"),
        ('{match: "x", aggregate: mean}', "signals[0].aggregate: aggregate needs period_ms"),
        ('{match: "x", period_ms: 100, on_change: true}', "signals[0].on_change: on_change and period_ms exclude"),
        ('{match: "x", period_ms: 100, max_rate_hz: 1}', "signals[0].max_rate_hz: max_rate_hz has no meaning"),
        ('{match: "x", on_change: {abs: 1, rel: 0.1}}', "signals[0].on_change: give an absolute (abs) or a relative"),
        ('{match: "x", on_change: {abs: -1}}', "signals[0].on_change.abs: must be a finite number between 0 and"),
        ('{match: "x", on_change: {absolute: 1}}', "signals[0].on_change.absolute: unknown key"),
        ('{match: "x", on_change: 3}', "signals[0].on_change: expected true or a mapping"),
        ('{match: "x", max_rate_hz: -2}', "signals[0].max_rate_hz: must be a finite number between 0 (excluded) and"),
        ('{match: ""}', "signals[0].match: must name a signal"),
        ('{period_ms: 5}', "agent.yaml:9: collection.campaigns[0].signals[0]: missing required key 'match'"),
        ("[1, 2]", "agent.yaml:9: collection.campaigns[0].signals[0]: expected a mapping"),
    ],
)
def test_rule_errors_name_file_line_and_key(rule, message):
    with pytest.raises(ConfigError) as info:
        single_rule(rule)
    assert message in str(info.value)
    assert str(info.value).startswith("agent.yaml:")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("collection: [1]\n", "agent.yaml:1: collection: expected a mapping"),
        ("collection:\n  campaign: []\n", "agent.yaml:2: collection.campaign: unknown key"),
        ("collection:\n  campaigns:\n    - stream: x\n", "agent.yaml:3: collection.campaigns[0]: missing required key "
                                                        "'name'"),
        ("collection:\n  campaigns:\n    - {name: a, signals: [x]}\n    - {name: a, signals: [y]}\n",
         "agent.yaml:4: collection.campaigns[1].name: duplicate campaign name 'a'"),
        ("collection:\n  campaigns:\n    - {name: 'a b', signals: [x]}\n", "campaigns[0].name: campaign names are"),
        ("collection:\n  campaigns:\n    - {name: on, signals: [x]}\n",
         "agent.yaml:3: collection.campaigns[0].name: campaign names are text; quote 'True'"),
        ("collection:\n  campaigns:\n    - {name: a, stream: 'x/y', signals: [x]}\n",
         "agent.yaml:3: collection.campaigns[0].stream: stream names are"),
        ("collection:\n  campaigns:\n    - {name: a}\n", "campaigns[0].signals: a campaign without a trigger needs"),
        ("collection:\n  default_stream: 'a b'\n", "agent.yaml:2: collection.default_stream: stream names are"),
        ("collection:\n  clock_reset_s: 0\n",
         "agent.yaml:2: collection.clock_reset_s: must be a finite number between 0 (excluded)"),
        ("collection:\n  campaigns:\n    - name: a\n      priority: high\n      signals: [x]\n",
         "agent.yaml:4: collection.campaigns[0].priority: expected an integer"),
    ],
)
def test_section_errors(yaml_text, message):
    with pytest.raises(ConfigError) as info:
        plan_of(yaml_text)
    assert message in str(info.value)


# -- a real log ---------------------------------------------------------------------------


def _decoded(shared_data, log_name, dbc_name, wanted=None):
    from agent.dbc import load_dbc
    from agent.decode import Decoder
    from agent.sources.log import LogSource

    decoder = Decoder({"*": [load_dbc(shared_data / "dbc" / "kona-ev-dbc" / dbc_name)]}, wanted=wanted)
    frames = [f for bus, msg in LogSource(shared_data / "logs" / log_name) if (f := decoder.decode(msg, bus))]
    return decoder, frames


def _runs(frames, period_s):
    """Independent count: per (bus, message), the number of runs of consecutive frames in one period."""
    last: dict[tuple[str, str], int] = {}
    count = 0
    for item in frames:
        key = (item.bus, item.message)
        bucket = math.floor(item.timestamp / period_s)
        if last.get(key) != bucket:
            count += 1
            last[key] = bucket
    return count


def test_real_log_period_rule_row_count_and_mean(shared_data):
    plan = plan_of("""
        collection:
          campaigns:
            - name: wheels
              stream: slow
              signals:
                - {match: "IEB_386_WHEEL.WHL_SPD_F?", period_ms: 100, aggregate: mean}
                - {match: "*", period_ms: 250}
        """)
    decoder, frames = _decoded(shared_data, "kona_ev_2019_pcan_ccan_power_on_ready.log",
                               "derived/pcan.patched_BS_BU.dbc", wanted=plan.wants)
    assert len(frames) > 20000
    sink = ListSink()
    collector = Collector(plan, decoder.specs, sink)
    for item in frames:
        collector.on_frame(item)
    collector.flush()
    wheel_frames = [f for f in frames if f.message == "IEB_386_WHEEL"]
    other_frames = [f for f in frames if f.message != "IEB_386_WHEEL" and f.raw]
    wheel_rows = [r for r in sink.rows if r.message == "IEB_386_WHEEL" and not r.raw]
    assert len(wheel_frames) > 500
    assert len(wheel_rows) == _runs(wheel_frames, 0.1)
    assert len(sink.rows) == _runs(wheel_frames, 0.1) + _runs(wheel_frames, 0.25) + _runs(other_frames, 0.25)
    # the mean of the first wheel period, computed directly
    first = wheel_rows[0]
    scale = decoder.specs["IEB_386_WHEEL.WHL_SPD_FL"].scale
    in_period = [f.raw["WHL_SPD_FL"] * scale for f in wheel_frames
                 if f.bus == first.bus and math.floor(f.timestamp / 0.1) == round(first.timestamp / 0.1)]
    assert in_period and math.isclose(first.values["WHL_SPD_FL"], sum(in_period) / len(in_period))
    assert set(first.values) == {"WHL_SPD_FL", "WHL_SPD_FR"}


def test_real_log_with_a_clock_reset(shared_data):
    plan = plan_of("""
        collection:
          campaigns:
            - name: all
              signals: [{match: "*", period_ms: 1000, aggregate: max}]
        """)
    decoder, frames = _decoded(shared_data, "kona_ev_2020_comp_can_heating_clock_reset.log", "comp_can.dbc")
    sink = ListSink()
    collector = Collector(plan, decoder.specs, sink)
    for item in frames:
        collector.on_frame(item)
    collector.flush()
    with_signals = [f for f in frames if f.raw]
    assert len(sink.rows) == _runs(with_signals, 1.0)
    assert any(r.timestamp < 0 for r in sink.rows)  # the periods after the reset exist, stamped -1.0
