"""Fault injection: SPEC parsing, every fault kind on a synthetic stream, and replay with faults."""

from __future__ import annotations

import itertools
import logging
import queue
import re
import threading
import time

import can
import pytest

from simulator.cli import main as sim_main
from simulator.faults import FaultInjector, FaultReport, FaultSpec, FaultSpecError, TimedFault, parse_fault_spec
from simulator.replay import ReplayOptions, open_target, replay

logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)

STEP = 1 / 64  # exact in binary, so log positions add up without rounding: frame i is at i/64 s
START = 1_700_000_000.0
KONA_RESET = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"


def synthetic(count: int, buses: tuple[str, ...] = ("can0",)) -> list[tuple[str, can.Message]]:
    """Frame i: log time START + i/64, data = i as 4 bytes + 4 filler bytes (so every frame is recognisable)."""
    return [(buses[i % len(buses)],
             can.Message(timestamp=START + i * STEP, arbitration_id=0x100 + i % 7, is_extended_id=False,
                         data=i.to_bytes(4, "big") + b"\xa5\x5a\xff\x00"))
            for i in range(count)]


def seq(msg: can.Message) -> int:
    return int.from_bytes(bytes(msg.data[:4]), "big")


def run(spec: str, frames: list[tuple[str, can.Message]]) -> tuple[list[tuple[str, can.Message]], FaultReport]:
    injector = FaultInjector(parse_fault_spec(spec))
    out = list(injector.apply(frames))
    return out, injector.report


def balanced(report: FaultReport) -> bool:
    return report.frames_out == (report.frames_in - report.dropped - report.silenced + report.duplicated
                                 + report.error_frames)


# -- parsing ----------------------------------------------------------------------------------


def test_full_spec_parses_to_exact_values():
    spec = parse_fault_spec("drop=0.01, corrupt=0.5%:length, dup=0.01, reorder=0.02:3, delay=0.01:50ms, "
                            "errburst=20@10s, errburst=5@1min/30s, silence=5s@30s, jump=+1h@20s, jump=-250ms@40s, "
                            "seed=7")
    assert spec == FaultSpec(drop=0.01, corrupt=0.005, corrupt_mode="length", dup=0.01, reorder=0.02, reorder_depth=3,
                             delay=0.01, delay_seconds=0.05,
                             error_bursts=(TimedFault(20, 10.0), TimedFault(5, 60.0, 30.0)),
                             silences=(TimedFault(5.0, 30.0),),
                             jumps=(TimedFault(3600.0, 20.0), TimedFault(-0.25, 40.0)), seed=7)
    assert parse_fault_spec("delay=1:250us").delay_seconds == pytest.approx(250e-6)
    assert parse_fault_spec("drop=1").drop == 1.0 and parse_fault_spec("drop=1").seed == 0


@pytest.mark.parametrize(("text", "message"), [
    ("drop=2", "item 'drop=2': probability '2' is outside 0..1"),
    ("drop=-0.1", "item 'drop=-0.1': probability '-0.1' is outside 0..1"),
    ("drop=lots", "item 'drop=lots': expected a probability"),
    ("dup", "item 'dup': expected KIND=VALUE"),
    ("dup=", "item 'dup=': expected KIND=VALUE"),
    ("flip=0.1", "item 'flip=0.1': unknown fault 'flip'"),
    ("corrupt=0.1:bytes", "item 'corrupt=0.1:bytes': expected one of any, bits, length, got 'bytes'"),
    ("reorder=0.1:0", "item 'reorder=0.1:0': reorder depth must be >= 1"),
    ("reorder=0.1:x", "item 'reorder=0.1:x': reorder depth must be a whole number"),
    ("delay=0.1", "item 'delay=0.1': expected delay=P:DURATION"),
    ("delay=0.1:50", "item 'delay=0.1:50': expected a duration with a unit"),
    ("delay=0.1:-5ms", "item 'delay=0.1:-5ms': duration '-5ms' cannot have a sign"),
    ("errburst=20", "item 'errburst=20': expected errburst=AMOUNT@TIME"),
    ("errburst=0@1s", "item 'errburst=0@1s': error-frame count must be >= 1"),
    ("errburst=many@1s", "item 'errburst=many@1s': error-frame count must be a whole number"),
    ("errburst=2@10", "item 'errburst=2@10': expected a duration with a unit"),
    ("errburst=2@1s/0s", "item 'errburst=2@1s/0s': repeat period must be > 0"),
    ("silence=0s@1s", "item 'silence=0s@1s': silence must be > 0"),
    ("silence=5s@1s/5s", "item 'silence=5s@1s/5s': silence must be > 0 and shorter than its repeat period"),
    ("jump=3600s@1s", "item 'jump=3600s@1s': a clock jump needs a sign"),
    ("seed=x", "item 'seed=x': seed must be a whole number"),
    ("drop=0.1,drop=0.2", "item 'drop=0.2': given twice"),
    ("drop=0.1,,dup=0.1", "fault spec 'drop=0.1,,dup=0.1': empty item"),
    ("drop=0.1,", "fault spec 'drop=0.1,': empty item"),
    ("drop=0.6,dup=0.5", "add up to 1.1; at most 1"),
    ("", "fault spec is empty"),
])
def test_malformed_specs_name_the_bad_item(text, message):
    with pytest.raises(FaultSpecError) as caught:
        parse_fault_spec(text)
    assert message in str(caught.value)


# -- per-frame faults -----------------------------------------------------------------------------


def test_nothing_injected_passes_every_frame_through_unchanged():
    frames = synthetic(500)
    out, report = run("seed=3", frames)
    assert [(b, m) for b, m in out] == frames  # the very same objects, in order
    assert report.frames_in == report.frames_out == 500 and report.summary() == "faults: none injected"


def test_drop_loses_exactly_the_counted_frames_and_keeps_order():
    frames = synthetic(8000)
    out, report = run("drop=0.1,seed=11", frames)
    kept = [seq(m) for _, m in out]
    assert kept == sorted(kept)
    assert report.dropped == 8000 - len(kept)
    assert 700 < report.dropped < 900  # ~10%
    assert run("drop=1", frames)[1].dropped == 8000 and run("drop=1", frames)[0] == []
    assert balanced(report)


def test_corrupt_bits_flips_one_to_three_bits_and_keeps_the_length():
    frames = synthetic(1000)
    out, report = run("corrupt=1:bits,seed=2", frames)
    assert report.corrupted_bits == 1000 and report.corrupted_length == 0
    for (_, before), (_, after) in zip(frames, out):
        assert after.dlc == before.dlc == len(after.data) == 8
        flipped = sum(bin(a ^ b).count("1") for a, b in zip(before.data, after.data))
        assert 1 <= flipped <= 3
        assert after.arbitration_id == before.arbitration_id and after.timestamp == before.timestamp


def test_corrupt_length_cuts_the_data_and_the_dlc():
    frames = synthetic(1000)
    out, report = run("corrupt=1:length,seed=2", frames)
    assert report.corrupted_length == 1000 and report.corrupted_bits == 0
    for (_, before), (_, after) in zip(frames, out):
        assert len(after.data) == after.dlc < 8
        assert bytes(after.data) == bytes(before.data[: after.dlc])
    assert {m.dlc for _, m in out} == set(range(8))  # every shorter length occurs


def test_corrupt_any_splits_between_modes_and_skips_frames_without_data():
    frames = synthetic(2000)
    frames += [("can0", can.Message(timestamp=START + 40, arbitration_id=0x7FF, dlc=0)),
               ("can0", can.Message(timestamp=START + 40, arbitration_id=0x7DF, is_remote_frame=True, dlc=8))]
    out, report = run("corrupt=1,seed=5", frames)
    assert report.corrupted_bits + report.corrupted_length == 2000
    assert 900 < report.corrupted_bits < 1100
    changed = sum(bytes(a.data) != bytes(b.data) for (_, a), (_, b) in zip(frames, out))
    assert changed == 2000  # the empty frame and the remote frame pass unchanged, uncounted
    assert out[-1][1] is frames[-1][1] and out[-2][1] is frames[-2][1]


def test_dup_sends_an_identical_copy_right_after():
    frames = synthetic(3000)
    out, report = run("dup=0.2,seed=9", frames)
    assert len(out) == 3000 + report.duplicated and 500 < report.duplicated < 700
    pairs = sum(1 for (_, a), (_, b) in itertools.pairwise(out) if seq(a) == seq(b))
    assert pairs == report.duplicated
    twins = [(a, b) for (_, a), (_, b) in itertools.pairwise(out) if seq(a) == seq(b)]
    assert all(a is not b and a.equals(b) and a.data is not b.data for a, b in twins)
    assert balanced(report)


def overtaken(out: list[tuple[str, can.Message]]) -> int:
    """Frames that went out after a frame that came later in the input."""
    count, highest = 0, -1
    for _, msg in out:
        if seq(msg) < highest:
            count += 1
        highest = max(highest, seq(msg))
    return count


def test_reorder_holds_frames_back_by_the_depth_and_counts_each():
    frames = synthetic(4000)
    out, report = run("reorder=0.05:3,seed=4", frames)
    assert sorted(seq(m) for _, m in out) == list(range(4000))  # nothing lost or added
    assert report.reordered == overtaken(out) and 150 < report.reordered < 250
    positions = {seq(m): index for index, (_, m) in enumerate(out)}
    late = [positions[i] - i for i in range(4000) if positions[i] > i]
    assert max(late) <= 3 + 3  # held for 3 fresh frames; other released frames may slip in between
    held = [m for _, m in out if m.timestamp != START + seq(m) * STEP]
    assert held == []  # reordering keeps the timestamps: the receiver sees them step back


def test_delay_moves_the_timestamp_and_sends_the_frame_after_the_frames_sent_meanwhile():
    frames = synthetic(4000)
    out, report = run("delay=0.05:50ms,seed=8", frames)
    assert sorted(seq(m) for _, m in out) == list(range(4000))
    moved = [m for _, m in out if m.timestamp != START + seq(m) * STEP]
    assert len(moved) == report.delayed and 150 < report.delayed < 250
    assert all(m.timestamp == pytest.approx(START + seq(m) * STEP + 0.05) for m in moved)
    stamps = [m.timestamp for _, m in out]
    assert stamps == sorted(stamps)  # a delayed frame comes out where its new time belongs
    assert overtaken(out) >= report.delayed * 0.9  # 50 ms = 3 later frames, unless those were delayed too


# -- timed faults -----------------------------------------------------------------------------


def test_error_bursts_arrive_at_their_log_times_on_the_triggering_bus():
    frames = synthetic(8000, buses=("truck", "gps"))  # 125 s
    out, report = run("errburst=20@10.015625s,errburst=5@1s/30s", frames)
    errors = [(index, bus, m) for index, (bus, m) in enumerate(out) if m.is_error_frame]
    assert report.error_bursts == 1 + 5 and report.error_frames == len(errors) == 20 + 5 * 5  # 1, 31, 61, 91, 121 s
    first = errors[0][0]
    assert [seq(m) for _, m in out[first - 1: first]] == [63] and seq(out[first + 5][1]) == 64  # at 1 s = frame 64
    assert errors[0][1] == "truck"  # frame 64 is on the first bus (even frames)
    burst = [(bus, m) for _, bus, m in errors if m.timestamp == START + 641 * STEP]
    assert len(burst) == 20 and {bus for bus, _ in burst} == {"gps"}  # frame 641, at 10.015625 s, is on gps
    assert all(m.arbitration_id == 0x088 and m.timestamp == START + 1.0 for _, _, m in errors[:5])
    assert balanced(report)


def test_silence_swallows_every_frame_in_the_window_on_all_buses():
    frames = synthetic(8000, buses=("truck", "gps"))
    out, report = run("silence=5s@30s,silence=1s@100s/10s", frames)
    gone = sorted(set(range(8000)) - {seq(m) for _, m in out})
    windows = [(30, 35), (100, 101), (110, 111), (120, 121)]
    expected = [i for i in range(8000) if any(a <= i * STEP < b for a, b in windows)]
    assert gone == expected and report.silenced == len(expected) == 5 * 64 + 3 * 64
    assert report.silences == 4


def test_clock_jumps_shift_every_later_timestamp():
    frames = synthetic(8000)
    out, report = run("jump=+1h@20s,jump=-30s@60s", frames)
    assert report.clock_jumps == 2 and report.jumped_frames == 8000 - 20 * 64
    for _, msg in out:
        i = seq(msg)
        shift = 0.0 if i < 20 * 64 else 3600.0 if i < 60 * 64 else 3570.0
        assert msg.timestamp == START + i * STEP + shift
    assert frames[3000][1].timestamp == START + 3000 * STEP  # the input was not modified


def test_timed_faults_count_log_time_across_a_logger_clock_reset(shared_data):
    frames = [(msg.channel or "can0", msg) for msg in can.LogReader(str(shared_data / KONA_RESET))]
    reset = next(i for i in range(1, len(frames)) if frames[i][1].timestamp < frames[i - 1][1].timestamp - 1)
    out, report = run("errburst=3@40s", frames)  # the log's clock restarts at 22.36 s; 46.5 s of traffic in all
    assert report.error_bursts == 1 and report.error_frames == 3
    where = next(i for i, (_, m) in enumerate(out) if m.is_error_frame)
    assert where > reset + 1000
    assert len(out) == len(frames) + 3


def test_same_seed_same_faults_other_seed_other_faults():
    spec = "drop=0.02,corrupt=0.02,dup=0.02,reorder=0.02,delay=0.02:20ms,errburst=4@3s,jump=+5s@9s,seed="
    frames = synthetic(3000)
    first, report = run(spec + "1", frames)
    again, _ = run(spec + "1", frames)
    other, _ = run(spec + "2", frames)
    snapshot = [(m.timestamp, m.arbitration_id, bytes(m.data), m.is_error_frame) for _, m in first]
    assert snapshot == [(m.timestamp, m.arbitration_id, bytes(m.data), m.is_error_frame) for _, m in again]
    assert snapshot != [(m.timestamp, m.arbitration_id, bytes(m.data), m.is_error_frame) for _, m in other]
    assert balanced(report) and all(report.as_dict()[k] > 0 for k in (
        "dropped", "duplicated", "reordered", "delayed", "error_frames", "clock_jumps"))
    assert report.corrupted_bits + report.corrupted_length > 0
    assert [m.data for _, m in frames[:5]] == [m.data for _, m in synthetic(5)]  # inputs untouched


# -- replay ---------------------------------------------------------------------------------


def write_log(path, count: int) -> None:
    with can.Logger(str(path)) as logger:
        for _, msg in synthetic(count):
            msg.channel = "can0"
            logger.on_message_received(msg)


def drain(bus: can.BusABC) -> list[can.Message]:
    got = []
    while (msg := bus.recv(0)) is not None:
        got.append(msg)
    return got


def test_replay_with_faults_to_a_virtual_bus(tmp_path):
    log = tmp_path / "synthetic.log"
    write_log(log, 2000)  # 31 s of log time, replayed as fast as possible
    sink = can.Bus(interface="virtual", channel="faults-virtual")
    try:
        options = ReplayOptions(speed=float("inf"), faults=parse_fault_spec(
            "drop=0.05,corrupt=0.02:length,dup=0.03,errburst=10@5s,silence=2s@10s,jump=+1h@20s,seed=5"))
        before = time.time()
        report = replay(log, open_target("virtual://faults-virtual", options), options)
        got = drain(sink)
    finally:
        sink.shutdown()
    faults = report.faults
    assert faults is not None and balanced(faults)
    assert len(got) == report.total == faults.frames_out
    assert sum(m.is_error_frame for m in got) == faults.error_frames == 10
    assert sum(len(m.data) < 8 and not m.is_error_frame for m in got) == faults.corrupted_length > 0
    assert faults.silenced == 2 * 64 and faults.dropped > 0 and faults.duplicated > 0
    # Stamped at sending (the wall clock), plus the jump for everything after log time 20 s.
    shifted = [m.timestamp > before + 3500 for m in got]
    assert sum(shifted) == faults.jumped_frames > 0
    assert all(m.timestamp < before + 60 for m, late in zip(got, shifted) if not late)
    whole = [(m, late) for m, late in zip(got, shifted) if len(m.data) == 8 and not m.is_error_frame]
    assert all(late == (seq(m) >= 20 * 64) for m, late in whole)
    assert "faults: dropped" in report.summary()


def test_replay_with_faults_over_socketcand_carries_error_frames_and_jumps(tmp_path):
    log = tmp_path / "synthetic.log"
    write_log(log, 640)  # 10 s
    options = ReplayOptions(speed=float("inf"), wait_clients=1, wait_timeout=10,
                            faults=parse_fault_spec("errburst=7@2s,jump=+1h@5s"))
    ready: queue.Queue = queue.Queue()
    result: dict = {}

    def serve() -> None:
        target = open_target("socketcand://127.0.0.1:0", options, announce=ready.put)
        result["report"] = replay(log, target, options)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = int(re.search(r":(\d+)$", ready.get(timeout=10)).group(1))
    bus = can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel="can0")
    before = time.time()
    try:
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 647 and time.monotonic() < deadline:
            if (msg := bus.recv(0.2)) is not None:
                got.append(msg)
        thread.join(10)
    finally:
        bus.shutdown()
    assert result["report"].faults.error_frames == 7 and len(got) == 647
    assert sum(m.is_error_frame for m in got) == 7
    frames = [m for m in got if not m.is_error_frame]
    assert [seq(m) for m in frames] == list(range(640))
    assert all((m.timestamp > before + 3500) == (seq(m) >= 5 * 64) for m in frames)


def test_cli_faults_bad_spec_is_one_line_error_and_good_spec_is_reported(tmp_path, capsys):
    log = tmp_path / "synthetic.log"
    write_log(log, 300)
    assert sim_main(["replay", str(log), "--to", "virtual://faults-cli", "--speed", "max",
                     "--faults", "drop=0.1,dup=oops"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("vehicle-sim replay: error: fault spec item 'dup=oops': expected a probability "
                           "(0..1 or a percentage), got 'oops'")
    sink = can.Bus(interface="virtual", channel="faults-cli")
    try:
        assert sim_main(["replay", str(log), "--to", "virtual://faults-cli", "--speed", "max", "-q",
                         "--faults", "drop=0.1,errburst=3@1s,seed=1"]) == 0
        got = drain(sink)
    finally:
        sink.shutdown()
    out = capsys.readouterr().out
    dropped = int(re.search(r"faults: dropped (\d+), error_frames 3, error_bursts 1", out).group(1))
    assert len(got) == 300 - dropped + 3
