"""Replaying real logs: across processes over socketcand, in process over virtual buses, and pacing."""

from __future__ import annotations

import itertools
import logging
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import can
import pytest

from simulator.replay import Pacer, ReplayError, ReplayOptions, open_target, replay
from tests.helpers.clock import FakeClock

logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)

TRUCK = "logs/css_truck_j1939_and_canmod_gps.asc"
KONA = "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"
KONA_RESET = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"
NISSAN = "logs/css_nissan_leaf_uds_and_canmod_gps.blf"


def key(msg: can.Message) -> tuple:
    return msg.arbitration_id, msg.is_extended_id, msg.dlc, bytes(msg.data)


def original(path: Path) -> list[can.Message]:
    return list(can.LogReader(str(path)))


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def test_cross_process_socketcand_replay_delivers_every_frame_in_order(shared_data, repo_root, tmp_path):
    log_path = shared_data / TRUCK
    out = tmp_path / "recorded.log"
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "replay", str(log_path), "--to", "socketcand://127.0.0.1:0",
         "--speed", "max", "--wait-clients", "1", "--wait-timeout", "60"],
        cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(sim.stderr, stderr), daemon=True).start()
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = stderr.get(timeout=30)
            assert line is not None, "replay exited before listening"
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            port = int(match.group(1)) if match else None
        assert port, "replay never announced its port"
        record = subprocess.run(
            [sys.executable, "-m", "agent.cli.main", "record", "--bus", f"socketcand://127.0.0.1:{port}/can0",
             "-o", str(out), "--idle-timeout", "3"],
            cwd=repo_root, capture_output=True, text=True, timeout=180)
        sim_out, _ = sim.communicate(timeout=60)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    assert sim.returncode == 0, sim_out
    assert record.returncode == 0, record.stdout + record.stderr
    assert "recorded 57849 frames" in record.stdout and "dropped 0" in record.stdout
    match = re.search(r"replayed 57849 frames in ([\d.]+) s \((\d+) frames/s", sim_out)
    assert match, sim_out
    print(f"\nsocketcand --speed max: {match.group(2)} frames/s ({match.group(1)} s for 57849 frames)")

    sent = original(log_path)
    received = original(out)
    assert len(sent) == 57849
    assert len(received) == len(sent)
    assert [key(m) for m in received] == [key(m) for m in sent]
    assert sum(m.is_extended_id for m in received) == 45571
    assert all(m.channel == "can0" for m in received)
    stamps = [m.timestamp for m in received]
    assert stamps == sorted(stamps)  # stamped by the server as sent: never backwards


def test_virtual_replay_per_bus_in_order_with_bus_names(shared_data):
    log_path = shared_data / KONA
    receivers = {name: can.Bus(interface="virtual", channel=name) for name in ("pcan", "ccan")}
    try:
        options = ReplayOptions(speed=float("inf"), per_bus=True)
        report = replay(log_path, open_target("virtual://", options), options)
        got = {name: [] for name in receivers}
        for name, bus in receivers.items():
            while (msg := bus.recv(0)) is not None:
                got[name].append(msg)
    finally:
        for bus in receivers.values():
            bus.shutdown()
    frames = original(log_path)
    assert report.sent == {"pcan": 24263, "ccan": 15283}
    assert report.passes == 1 and report.dropped == 0 and not report.skipped
    for name in receivers:
        assert [key(m) for m in got[name]] == [key(m) for m in frames if m.channel == name]
        assert {m.channel for m in got[name]} == {name}


def test_bus_map_names_and_filters_channels_and_loop_repeats(shared_data):
    log_path = shared_data / NISSAN
    sink = can.Bus(interface="virtual", channel="gps")
    try:
        options = ReplayOptions(speed=float("inf"), bus_map={"1": "gps"}, loop=2)
        report = replay(log_path, open_target("virtual://gps", options), options)
        got = []
        while (msg := sink.recv(0)) is not None:
            got.append(msg)
    finally:
        sink.shutdown()
    gps = [key(m) for m in original(log_path) if m.channel == 1]
    assert len(gps) == 5367
    assert report.sent == {"gps": 2 * 5367} and report.passes == 2
    assert [key(m) for m in got] == gps + gps


def test_speed_10_replays_ten_seconds_in_about_one(shared_data):
    log_path = shared_data / KONA  # 10.84 s of log, timestamps step back 1845 times (two buses interleaved)
    sink = can.Bus(interface="virtual", channel="warp")
    try:
        options = ReplayOptions(speed=10)
        started = time.monotonic()
        report = replay(log_path, open_target("virtual://warp", options), options)
        took = time.monotonic() - started
        count = 0
        while sink.recv(0) is not None:
            count += 1
    finally:
        sink.shutdown()
    assert count == report.total == 39546
    assert 0.6 < took < 3.0, took
    assert report.elapsed >= 1.0  # never early: 10.84 s / 10


def test_pacer_never_sleeps_negative_and_survives_a_clock_reset(shared_data):
    frames = original(shared_data / KONA_RESET)
    stamps = [m.timestamp for m in frames]
    reset = next(i for i in range(1, len(stamps)) if stamps[i] < stamps[i - 1])
    assert stamps[reset - 1] - stamps[reset] > 22  # 22.36 s -> -0.36 s
    expected = (stamps[reset - 1] - stamps[0]) + (max(stamps[reset:]) - stamps[reset])
    fake = FakeClock(100.0)
    pacer = Pacer(speed=2.0, clock=fake.clock, sleep=fake.sleep)
    for stamp in stamps:
        pacer.wait(stamp)
    assert pacer.clock_resets == 1
    assert pacer.log_position == pytest.approx(expected)
    assert all(s > 0 for s in fake.sleeps)
    assert fake.now - 100.0 == pytest.approx(expected / 2.0, abs=0.001)


def test_pacer_sends_interleaved_backward_steps_at_once_without_drift(shared_data):
    stamps = [m.timestamp for m in original(shared_data / KONA)]
    assert sum(b < a for a, b in itertools.pairwise(stamps)) == 1845
    fake = FakeClock(100.0)
    pacer = Pacer(speed=1.0, clock=fake.clock, sleep=fake.sleep)
    for stamp in stamps:
        pacer.wait(stamp)
    assert pacer.clock_resets == 0
    assert fake.now - 100.0 == pytest.approx(max(stamps) - stamps[0], abs=0.001)


def test_frames_socketcand_cannot_carry_are_skipped_and_counted(shared_data):
    log_path = shared_data / "copyleft/python-can-testdata/logfile.asc"
    frames = original(log_path)
    carried = [m for m in frames if m.is_error_frame or not (m.is_fd or m.is_remote_frame)]
    options = ReplayOptions(speed=float("inf"), wait_clients=1, wait_timeout=10)
    ready: queue.Queue = queue.Queue()
    result: dict = {}

    def run() -> None:
        target = open_target("socketcand://127.0.0.1:0", options, announce=ready.put)
        result["report"] = replay(log_path, target, options)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    port = int(re.search(r":(\d+)$", ready.get(timeout=10)).group(1))
    bus = can.Bus(interface="socketcand", host="127.0.0.1", port=port, channel="can0")
    try:
        got = []
        deadline = time.monotonic() + 10
        while len(got) < len(carried) and time.monotonic() < deadline:
            if (msg := bus.recv(0.2)) is not None:
                got.append(msg)
        thread.join(10)
    finally:
        bus.shutdown()
    report = result["report"]
    assert report.total == len(carried) and report.total < len(frames)
    assert sum(report.skipped.values()) == len(frames) - len(carried)
    assert set(report.skipped) <= {"remote frames", "CAN FD frames"}
    assert [m.is_error_frame for m in got] == [m.is_error_frame for m in carried]
    assert [key(m) for m in got if not m.is_error_frame] == [key(m) for m in carried if not m.is_error_frame]


def run_cli(repo_root: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=repo_root, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("ftp://127.0.0.1:1", "unknown target scheme 'ftp'"),
        ("socketcand://192.168.1.20:29536", "refusing to bind 192.168.1.20: only loopback"),
        ("socketcand://0.0.0.0:29536", "refusing to bind 0.0.0.0: only loopback"),
        ("socketcand://127.0.0.1", "expected socketcand://127.0.0.1:PORT"),
        ("some_net://127.0.0.1", "unknown target scheme 'some_net'"),
    ],
)
def test_bad_targets_give_one_line_errors(shared_data, repo_root, target, message):
    result = run_cli(repo_root, "simulator.cli", "replay", str(shared_data / KONA), "--to", target)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("vehicle-sim replay: error: ")


def test_missing_log_and_bad_options_give_one_line_errors(repo_root, tmp_path):
    missing = tmp_path / "nope.log"
    result = run_cli(repo_root, "simulator.cli", "replay", str(missing), "--to", "virtual://x")
    assert result.returncode == 2
    assert result.stderr.strip() == f"vehicle-sim replay: error: {missing}: no such file"
    result = run_cli(repo_root, "simulator.cli", "replay", str(missing), "--to", "virtual://x", "--speed", "fast")
    assert result.returncode == 2 and "expected a number or 'max'" in result.stderr
    result = run_cli(repo_root, "agent.cli.main", "record", "--bus", "gopher://x", "-o", str(tmp_path / "r.log"))
    assert result.returncode == 2
    assert result.stderr.strip() == "vehicle-agent record: error: gopher://x: unknown bus URL scheme 'gopher'; " \
                                    "use virtual://, socketcand:// or socketcan://"
    assert "Traceback" not in result.stderr


def test_open_target_rejects_ambiguous_virtual_urls():
    with pytest.raises(ReplayError, match="either a channel name or --per-bus"):
        open_target("virtual://x", ReplayOptions(per_bus=True))
    with pytest.raises(ReplayError, match="expected virtual://CHANNEL"):
        open_target("virtual://", ReplayOptions())


# -- stopping: a flag set by SIGINT/SIGTERM, never an exception raised mid-instruction -------------------------


def test_setting_stop_ends_a_slow_replay_at_the_next_frame_and_reports_what_was_sent(shared_data):
    receiver = can.Bus(interface="virtual", channel="stop-test")
    try:
        options = ReplayOptions(speed=1.0)  # 127 s of log at real speed
        target = open_target("virtual://stop-test", options)
        threading.Timer(0.5, options.stop.set).start()
        started = time.monotonic()
        report = replay(shared_data / TRUCK, target, options)
        elapsed = time.monotonic() - started
        received = 0
        while receiver.recv(0) is not None:
            received += 1
    finally:
        receiver.shutdown()
    assert report.interrupted and elapsed < 3.0, elapsed
    assert 0 < sum(report.sent.values()) == received < 57849


def _start_sim(repo_root: Path, shared_data: Path, *extra: str) -> tuple[subprocess.Popen, int, queue.Queue]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "replay", str(shared_data / TRUCK), "--to",
         "socketcand://127.0.0.1:0", *extra], cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(sim.stderr, lines), daemon=True).start()
    while True:
        line = lines.get(timeout=30)
        assert line is not None, "replay exited before listening"
        if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
            return sim, int(match.group(1)), lines


def _rest(lines: queue.Queue) -> str:
    out = []
    while (line := lines.get(timeout=10)) is not None:
        out.append(line)
    return "".join(out)


def test_sigint_while_waiting_for_clients_stops_at_once_with_a_one_line_error(shared_data, repo_root):
    import signal

    sim, _port, lines = _start_sim(repo_root, shared_data, "--wait-clients", "2", "--wait-timeout", "60")
    try:
        time.sleep(0.3)
        started = time.monotonic()
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
        elapsed = time.monotonic() - started
    finally:
        if sim.poll() is None:
            sim.kill()
    err = _rest(lines)
    assert elapsed < 2.0 and sim.returncode != 0, (elapsed, sim.returncode, err)
    assert "stopped while waiting for clients (0 of 2 connected)" in err and "Traceback" not in err, err


def test_sigterm_with_a_client_that_stopped_reading_exits_130_with_the_report(shared_data, repo_root):
    import signal
    import socket

    sim, port, lines = _start_sim(repo_root, shared_data, "--speed", "max", "--wait-clients", "1")
    client = socket.create_connection(("127.0.0.1", port))
    try:
        assert client.recv(64).startswith(b"< hi >")
        client.sendall(b"< open can0 >< rawmode >")
        time.sleep(1.0)  # the server's queue for this client fills: the replay blocks on it
        started = time.monotonic()
        sim.send_signal(signal.SIGTERM)
        out, _ = sim.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        client.close()
        if sim.poll() is None:
            sim.kill()
    err = _rest(lines)
    assert sim.returncode == 130 and "Traceback" not in err, (sim.returncode, err)
    assert elapsed < 10.0, elapsed
    assert re.search(r"replayed \d+ frames", out), out
