"""Condition triggers: firing rules, pre/post windows to the frame, events, located errors."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collect import CollectionPlan, Collector, Condition, TriggerEvent, WindowRecorder, parse_collection
from agent.collect.evaluate import SignalIndex, compile_expression
from agent.collect.samplers import Selection
from agent.model import DecodedFrame
from agent.yamlsrc import ConfigError, load_file, load_text
from tests.collect_support import ListSink, frame, make_specs, wheels

SPECS = make_specs()


def plan_of(yaml_text: str) -> CollectionPlan:
    text = textwrap.dedent(yaml_text)
    return parse_collection(load_text(text, "agent.yaml"), source_text=text)


def trigger_plan(when: str, pre_s: float = 0, post_s: float = 0, mode: str = "rising_edge",
                 min_interval_s: float = 0, signals: str = '["Battery.*", "Safety.AEB"]') -> CollectionPlan:
    return plan_of(f"""
        collection:
          campaigns:
            - name: brake
              stream: events
              priority: 5
              trigger:
                when: '{when}'
                mode: {mode}
                min_interval_s: {min_interval_s}
                pre_s: {pre_s}
                post_s: {post_s}
              signals: {signals}
        """)


class Run:
    def __init__(self, plan: CollectionPlan, frames) -> None:
        self.sink = ListSink()
        self.events: list[TriggerEvent] = []
        self.collector = Collector(plan, SPECS, self.sink, on_trigger=self.events.append)
        for item in frames:
            self.collector.on_frame(item)
        self.collector.flush()

    def rows(self, message: str | None = None):
        return [(r.timestamp, r.values) for r in self.sink.rows if message is None or r.message == message]


def battery_every(step: float, start: float, stop: float):
    count = round((stop - start) / step)
    return [frame(start + i * step, "Battery", Soc=i % 200, Temp=50) for i in range(count + 1)]


def merged(*streams):
    return sorted((item for stream in streams for item in stream), key=lambda f: f.timestamp)


# -- windows to the frame -----------------------------------------------------------------


def test_pre_and_post_windows_start_and_end_at_the_right_frames():
    battery = battery_every(0.125, 0.0, 20.0)
    safety = [frame(5.0, "Safety", AEB=0, Gear=3), frame(10.0, "Safety", AEB=1, Gear=3),
              frame(10.25, "Safety", AEB=0, Gear=3), frame(10.75, "Safety", AEB=0, Gear=3)]
    # Safety frames sort after the Battery frame of the same timestamp: the 10.0 Battery frame
    # is in the ring (pre window) when the trigger fires.
    result = Run(trigger_plan("Safety.AEB == 1", pre_s=1, post_s=0.5), merged(battery, safety))
    battery_times = [t for t, _ in result.rows("Battery")]
    assert battery_times == [9.0 + i * 0.125 for i in range(13)]  # 9.0 ... 10.5, both edges included
    assert result.rows("Safety") == [(10.0, {"AEB": 1}), (10.25, {"AEB": 0})]  # the triggering frame is in
    assert [r.timestamp for r in result.sink.rows][:10] == [9.0 + i * 0.125 for i in range(9)] + [10.0]
    assert {(r.stream, r.priority, r.raw) for r in result.sink.rows} == {("events", 5, True)}
    assert result.sink.rows[0].values == {"Soc": 72, "Temp": 50}  # raw values of the 9.0 frame
    assert result.sink.rows[0].categories == frozenset({"charging", "vehicle_health"})
    assert result.events == [TriggerEvent("brake", 10.0, "can0", "Safety", "events", 9.0, 10.5)]


def test_window_edges_with_zero_windows():
    battery = battery_every(0.25, 0.0, 3.0)
    safety = [frame(1.0, "Safety", AEB=1, Gear=0)]
    result = Run(trigger_plan("Safety.AEB", signals='["Battery.*"]'), merged(battery, safety))
    assert [t for t, _ in result.rows()] == [1.0]  # the frame at exactly T, from the ring


def test_a_firing_inside_a_window_extends_it_without_repeating_frames():
    battery = battery_every(0.125, 0.0, 6.0)
    aeb = [frame(t, "Safety", AEB=v, Gear=0) for t, v in [(1.0, 1), (1.5, 0), (2.0, 1), (2.0625, 0)]]
    result = Run(trigger_plan("Safety.AEB == 1", pre_s=0.5, post_s=0.75, signals='["Battery.*"]'),
                 merged(battery, aeb))
    times = [t for t, _ in result.rows()]
    assert times == [0.5 + i * 0.125 for i in range(19)]  # 0.5 ... 2.75 once each
    assert [e.timestamp for e in result.events] == [1.0, 2.0]


def test_windows_of_separate_firings():
    battery = battery_every(0.5, 0.0, 10.0)
    aeb = [frame(t, "Safety", AEB=v, Gear=0) for t, v in [(2.0, 1), (2.1, 0), (7.0, 1)]]
    result = Run(trigger_plan("Safety.AEB == 1", pre_s=1, post_s=1, signals='["Battery.*"]'),
                 merged(battery, aeb))
    assert [t for t, _ in result.rows()] == [1.0, 1.5, 2.0, 2.5, 3.0, 6.0, 6.5, 7.0, 7.5, 8.0]


def test_clock_reset_drops_the_ring_buffer():
    before = battery_every(0.5, 100.0, 101.0)
    after = battery_every(0.5, 0.0, 1.0)
    trigger = [frame(0.5, "Safety", AEB=1, Gear=0)]
    result = Run(trigger_plan("Safety.AEB == 1", pre_s=200, post_s=0, signals='["Battery.*"]'),
                 [*before, *merged(after, trigger)])
    assert [t for t, _ in result.rows()] == [0.0, 0.5]


def test_ring_buffer_is_bounded_and_counts_what_it_lost():
    sink = ListSink()
    selection = Selection.of("Battery", [SPECS["Battery.Soc"]], 2)
    recorder = WindowRecorder("s", 0, sink.put, pre_s=10, post_s=0, max_frames=4)
    for i in range(10):
        recorder.record(frame(i * 0.5, "Battery", Soc=i, Temp=0), selection)
    recorder.fire(4.5)
    assert [r.values for r in sink.rows] == [{"Soc": 6}, {"Soc": 7}, {"Soc": 8}, {"Soc": 9}]
    assert recorder.overflowed == 6


# -- firing rules -----------------------------------------------------------------------------


def fire_times(when: str, speeds_kmh, mode: str = "rising_edge", min_interval_s: float = 0.0):
    condition = Condition(compile_expression(when, SignalIndex(SPECS)), mode, min_interval_s)
    return [t for t, v in enumerate(speeds_kmh) if condition.feed(wheels(float(t), v * 100))]


SPEEDS = [90, 110, 120, 90, 130, 95, 140]


@pytest.mark.parametrize(
    ("mode", "min_interval_s", "expected"),
    [
        ("rising_edge", 0, [1, 4, 6]),
        ("rising_edge", 4, [1, 6]),  # the edge at 4 is 3 s after 1: dropped, not deferred
        ("level", 0, [1, 2, 4, 6]),
        ("level", 2, [1, 4, 6]),
    ],
)
def test_modes_and_minimum_interval(mode, min_interval_s, expected):
    assert fire_times("Vehicle.Speed > 100", SPEEDS, mode, min_interval_s) == expected


def test_first_true_evaluation_is_an_edge_and_unknown_is_false():
    assert fire_times("Vehicle.Speed > 100", [120, 130]) == [0]
    # prev() is unknown on the first sample, so the condition cannot be true there
    assert fire_times("Vehicle.Speed > prev(Vehicle.Speed)", [120, 130, 140, 100, 110]) == [1, 4]


def test_condition_only_sees_frames_it_reads():
    condition = Condition(compile_expression("Safety.AEB == 1", SignalIndex(SPECS)))
    assert set(condition.inputs) == {"Safety"}
    assert not condition.feed(frame(0.0, "Battery", Soc=1, Temp=1))
    assert condition.feed(frame(0.1, "Safety", AEB=1, Gear=0))
    assert condition.fired == 1


def test_hard_brake_expression_fires_at_the_exact_frame():
    plan = trigger_plan("change(Vehicle.Speed, 250ms) <= -8", pre_s=0.25, post_s=0.125, signals='["Vehicle.Speed"]')
    kmh = [60, 60, 59, 58, 55, 50, 45, 44, 44, 44]  # every 0.0625 s
    frames = [wheels(i * 0.0625, v * 100) for i, v in enumerate(kmh)]
    result = Run(plan, frames)
    # at 0.3125: 50 - value at 0.0625 (60) = -10 -> fires; at 0.25: 55 - 60 = -5
    assert [e.timestamp for e in result.events] == [0.3125]
    assert [t for t, _ in result.rows()] == [0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375]
    assert result.rows()[0][1] == {"Speed": 6000}


def test_label_comparison_in_a_trigger():
    plan = trigger_plan('Safety.Gear == "R" and Vehicle.Speed > 5', signals="[]")
    frames = [frame(0.0, "Safety", AEB=0, Gear=1), wheels(0.1, 300), wheels(0.2, 600),
              frame(0.3, "Safety", AEB=0, Gear=3), frame(0.4, "Safety", AEB=0, Gear=1)]
    result = Run(plan, frames)
    assert [e.timestamp for e in result.events] == [0.2, 0.4]
    assert result.sink.rows == []  # an event-only campaign


def test_listener_errors_do_not_stop_collection(caplog):
    def broken(event: TriggerEvent) -> None:
        raise RuntimeError("listener bug")

    sink = ListSink()
    collector = Collector(trigger_plan("Safety.AEB == 1"), SPECS, sink, on_trigger=broken)
    collector.on_frame(frame(0.0, "Safety", AEB=1, Gear=0))
    collector.on_frame(frame(0.0, "Battery", Soc=1, Temp=1))
    assert len(sink.rows) == 2
    assert "trigger listener failed for campaign brake" in caplog.text


def test_trigger_campaign_signals_are_not_in_the_default_stream():
    plan = plan_of("""
        collection:
          default_stream: telemetry
          campaigns:
            - name: t
              stream: events
              trigger: {when: "Safety.AEB == 1", post_s: 1}
              signals: ["Battery.Soc"]
        """)
    assert plan.wants(SPECS["Safety.AEB"]) and plan.wants(SPECS["Battery.Soc"])
    result = Run(plan, [frame(0.0, "Battery", Soc=1, Temp=2), frame(0.5, "Safety", AEB=1, Gear=0),
                        frame(1.0, "Battery", Soc=3, Temp=4)])
    assert [(r.stream, r.timestamp, r.values) for r in result.sink.rows] == [
        ("telemetry", 0.0, {"Temp": 2}),
        ("telemetry", 0.5, {"AEB": 1, "Gear": 0}),
        ("events", 1.0, {"Soc": 3}),
        ("telemetry", 1.0, {"Temp": 4}),
    ]


def test_wants_without_default_stream_covers_trigger_inputs():
    plan = trigger_plan("Vehicle.Speed > 1 or Safety.Gear == 3", signals='["Battery.Soc"]')
    wanted = sorted(key for key, spec in SPECS.items() if plan.wants(spec))
    assert wanted == ["Battery.Soc", "Safety.Gear", "Wheels.Speed"]


# -- configuration errors with positions ----------------------------------------------------


def error_of(yaml_text: str, check_names: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        plan = plan_of(yaml_text)
        if check_names:
            Collector(plan, SPECS, ListSink())
    return str(info.value)


def test_syntax_error_in_a_quoted_expression_names_line_and_column():
    message = error_of("""
        collection:
          campaigns:
            - name: t
              trigger:
                when: "Vehicle.Speed >> 3"
              signals: []
        """)
    # line 6 is `        when: "Vehicle.Speed >> 3"`; the second '>' is in column 31
    assert message == "agent.yaml:6:31: collection.campaigns[0].trigger.when: expected a value, got '>'"


def test_unknown_signal_is_reported_when_the_plan_meets_the_dbcs():
    message = error_of("""
        collection:
          campaigns:
            - name: t
              trigger: {when: "change(Vehicle.Sped, 1s) < -3"}
              signals: []
        """, check_names=True)
    assert message == ("agent.yaml:5:31: collection.campaigns[0].trigger.when: unknown signal 'Vehicle.Sped' "
                       "(did you mean Vehicle.Speed?)")


def test_error_in_a_folded_multi_line_expression():
    message = error_of("""
        collection:
          campaigns:
            - name: t
              trigger:
                when: >-
                  change(Vehicle.Speed, 150ms) <= -8
                  or Safety.AEB == 1
                  or Safety.Gear == "X"
              signals: []
        """, check_names=True)
    assert message == ("agent.yaml:9:29: collection.campaigns[0].trigger.when: Safety.Gear has no value label 'X' "
                       "(labels: D, N, P, R)")


def test_error_falls_back_to_the_expression_column_when_the_text_is_not_found():
    text = 'collection:\n  campaigns:\n    - name: t\n      trigger: {when: "a \\u003e\\u003e b"}\n'
    with pytest.raises(ConfigError) as info:
        parse_collection(load_text(text, "agent.yaml"), source_text=text)
    assert str(info.value) == ("agent.yaml:4: collection.campaigns[0].trigger.when: expression column 4: "
                               "expected a value, got '>'")


def test_errors_read_the_config_file_for_columns(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("collection:\n  campaigns:\n    - name: t\n      trigger:\n        when: Vehicle.Speed > (1\n")
    with pytest.raises(ConfigError) as info:
        parse_collection(load_file(path))
    assert str(info.value) == (f"{path}:5:33: collection.campaigns[0].trigger.when: expected ')' to close the '(' "
                               "at column 31, got the end")


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ("{when: a, pre_s: -1}", "agent.yaml:5: collection.campaigns[0].trigger.pre_s: must be a finite number"),
        ("{when: a, mode: edge}", "agent.yaml:5: collection.campaigns[0].trigger.mode: must be one of"),
        ("{pre_s: 1}", "agent.yaml:5: collection.campaigns[0].trigger: missing required key 'when'"),
        ("{when: a, after: 1}", "agent.yaml:5: collection.campaigns[0].trigger.after: unknown key"),
    ],
)
def test_trigger_key_errors(trigger, message):
    assert message in error_of(f"""
        collection:
          campaigns:
            - name: t
              trigger: {trigger}
              signals: []
        """)


def test_trigger_campaign_signals_take_only_match():
    assert "agent.yaml:7: collection.campaigns[0].signals[0].period_ms: a trigger campaign records" in error_of("""
        collection:
          campaigns:
            - name: t
              trigger: {when: Safety.AEB}
              signals:
                - {match: "Battery.*", period_ms: 100}
        """)


# -- robustness ---------------------------------------------------------------------------------

ALL_KINDS = """
collection:
  default_stream: rest
  campaigns:
    - name: sampled
      signals:
        - {match: "Vehicle.Speed", period_ms: 250, aggregate: mean}
        - {match: "Wheels.Accel", on_change: {rel: 0.1}, max_rate_hz: 8}
        - {match: "Battery.*", period_ms: 100}
    - name: brake
      stream: events
      trigger:
        when: "change(Vehicle.Speed, 100ms) / prev(Wheels.Counter) < -1 or not Safety.Gear != 'D'"
        mode: level
        pre_s: 0.5
        post_s: 0.25
      signals: ["Wheels.*", "Battery.Temp"]
"""


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(
    st.one_of(st.floats(-5, 5, allow_nan=False), st.sampled_from([float("nan"), float("inf"), 0.0, 0.1])),
    st.sampled_from(["Wheels", "Safety", "Battery", "Unknown"]),
    st.integers(0, 255), st.integers(-1000, 1000),
), max_size=60))
def test_any_frame_sequence_is_handled_without_exceptions(items):
    plan = plan_of(ALL_KINDS)
    sink = ListSink()
    events: list[TriggerEvent] = []
    collector = Collector(plan, SPECS, sink, on_trigger=events.append)
    for t, message, a, b in items:
        if message == "Wheels":
            item = wheels(t, a * 100, b, a)
        elif message == "Safety":
            item = frame(t, "Safety", AEB=a & 1, Gear=a & 7)
        elif message == "Battery":
            item = frame(t, "Battery", Soc=a, Temp=b & 255)
        else:
            item = DecodedFrame(t, "can1", 0x7FF, "Unknown", {"X": a})
        collector.on_frame(item)
    collector.flush()
    for row in sink.rows:
        assert row.stream in ("telemetry", "events", "rest") and row.values
    assert all(event.campaign == "brake" for event in events)
