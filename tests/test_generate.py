"""Synthetic logs from DBCs: decodable, within range, at the cycle times, smooth, reproducible."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import can
import cantools
import pytest

from simulator.generate import GenerateOptions, generate_frames, write_log

GPS = "dbc/css-electronics/canmod-gps.dbc"
MUX = "edge_cases/cantools_test_dbc/multiplex_2.dbc"  # extended ids, nested and parallel multiplexers, floats
TIMING = "edge_cases/cantools_test_dbc/timing.dbc"  # Foo: GenMsgCycleTime 200 ms, Bar: none
GM_HV = "dbc/opendbc/gm_global_a_high_voltage_management.dbc"  # real, multiplexed, big-endian, scaled


def decode_all(dbc: Path, log: Path) -> tuple[list[can.Message], list[tuple[cantools.database.can.Message, dict]]]:
    db = cantools.database.load_file(str(dbc))
    frames = list(can.LogReader(str(log)))
    decoded = []
    for msg in frames:
        message = db.get_message_by_frame_id(msg.arbitration_id)
        assert message.is_extended_frame == msg.is_extended_id
        assert len(msg.data) == message.length
        decoded.append((message, message.decode(msg.data, decode_choices=False)))  # raises if it cannot
    return frames, decoded


def assert_in_range(decoded: list[tuple[cantools.database.can.Message, dict]]) -> int:
    checked = 0
    for message, values in decoded:
        for name, value in values.items():
            signal = message.get_signal_by_name(name)
            slack = abs(signal.scale) * 1e-6 + 1e-9 * abs(value)
            if signal.minimum is not None:
                assert value >= signal.minimum - slack, (message.name, name, value)
            if signal.maximum is not None:
                assert value <= signal.maximum + slack, (message.name, name, value)
            checked += 1
    return checked


@pytest.mark.parametrize("dbc", [GPS, MUX, GM_HV])
def test_every_frame_decodes_within_the_dbc_ranges(shared_data, tmp_path, dbc):
    out = tmp_path / "gen.log"
    counts = write_log([shared_data / dbc], out, GenerateOptions(duration=10, seed=7))
    frames, decoded = decode_all(shared_data / dbc, out)
    assert len(frames) == sum(counts.values()) > 0
    assert assert_in_range(decoded) > len(frames)
    stamps = [m.timestamp for m in frames]
    assert stamps == sorted(stamps)
    assert stamps[0] >= 1_700_000_000 and stamps[-1] < 1_700_000_010


def test_messages_follow_their_cycle_times_and_rate_scale(shared_data):
    db = cantools.database.load_file(str(shared_data / TIMING))
    normal = Counter(m.arbitration_id for m in generate_frames(db.messages, GenerateOptions(duration=10)))
    assert normal == {0x1: 50, 0x2: 100}  # 200 ms from GenMsgCycleTime; 100 ms default
    doubled = Counter(m.arbitration_id for m in generate_frames(db.messages, GenerateOptions(duration=10,
                                                                                             rate_scale=2)))
    assert doubled == {0x1: 100, 0x2: 200}
    foo = [m.timestamp for m in generate_frames(db.messages, GenerateOptions(duration=10)) if m.arbitration_id == 1]
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(foo)}
    assert gaps == {0.2}


def test_multiplexed_messages_cycle_through_every_mux_value(shared_data):
    db = cantools.database.load_file(str(shared_data / MUX))
    seen: dict[str, set] = defaultdict(set)
    for msg in generate_frames(db.messages, GenerateOptions(duration=5)):
        message = db.get_message_by_frame_id(msg.arbitration_id)
        values = message.decode(msg.data, decode_choices=False)
        if message.name == "Extended":
            seen["S0"].add(values["S0"])
            seen["S6"].add(values["S6"])
            if values["S0"] == 0:
                seen["S1"].add(values["S1"])
                assert ("S4" in values) == (values["S1"] == 2)
            else:
                assert "S5" in values and "S1" not in values
        if message.name == "Shared":
            seen["Shared.S0"].add(values["S0"])
    assert seen["S0"] == {0, 1} and seen["S6"] == {1, 2} and seen["S1"] == {0, 2}
    assert seen["Shared.S0"] == {1, 2, 3, 4, 5}


def test_values_move_smoothly(shared_data):
    db = cantools.database.load_file(str(shared_data / GPS))
    position = db.get_message_by_name("gnss_pos")
    latitudes = [position.decode(m.data)["Latitude"]
                 for m in generate_frames(db.messages, GenerateOptions(duration=60, seed=3))
                 if m.arbitration_id == position.frame_id]
    assert len(latitudes) == 600
    assert len(set(latitudes)) > 300  # it moves ...
    steps = [abs(b - a) for a, b in itertools.pairwise(latitudes)]
    assert max(steps) < 0.05 * 180  # ... but without jumps (range -90..90)
    assert max(latitudes) - min(latitudes) > 0.2 * 180


def test_same_seed_same_bytes_other_seed_other_bytes(shared_data, tmp_path):
    paths = [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"]
    for path, seed in zip(paths, (1, 1, 2)):
        write_log([shared_data / GM_HV], path, GenerateOptions(duration=3, seed=seed))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_cli_writes_a_candump_log_and_reports_errors_in_one_line(shared_data, repo_root, tmp_path):
    out = tmp_path / "gps.log"
    cmd = [sys.executable, "-m", "simulator.cli", "generate", "--dbc", str(shared_data / GPS), "--duration", "2",
           "--seed", "5", "-o", str(out)]
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    frames, _ = decode_all(shared_data / GPS, out)
    assert result.stdout.strip() == f"wrote {len(frames)} frames of 9 messages (2 s) to {out}"
    assert len(frames) == 9 * 20
    assert out.read_text().splitlines()[0].startswith("(1700000000.")

    missing = tmp_path / "missing.dbc"
    result = subprocess.run([*cmd[:5], str(missing), *cmd[6:]], cwd=repo_root, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"vehicle-sim generate: error: {missing}: cannot read DBC")
    result = subprocess.run([*cmd, "--rate-scale", "0"], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().endswith("--rate-scale must be > 0, got 0.0")
