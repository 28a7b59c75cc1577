"""`vehicle-agent monitor`: the live view through a pseudo-terminal, the --once table, a live virtual bus."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time

import can
import cantools

from agent.cli.main import main
from agent.sources.log import LogSource
from tests.conftest import REPO_ROOT

KONA_2020 = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"
KONA_2019 = "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"
COMP_DBC = "dbc/kona-ev/comp_can.dbc"
PCAN_DBC = "dbc/kona-ev/pcan.dbc"
GPS_DBC = "dbc/css-electronics/canmod-gps.dbc"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class Terminal:
    """The monitor as a child process on a 60x200 pseudo-terminal; ``screen`` is what it drew, escapes removed."""

    def __init__(self, *argv: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
        self.before = termios.tcgetattr(slave)
        self.slave = slave
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "60"}
        self.process = subprocess.Popen([sys.executable, "-m", "agent.cli.main", "monitor", *argv], cwd=REPO_ROOT,
                                        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        self.raw = b""

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace")).replace("│", " ")  # rich's cell borders

    def read_until(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen)
            if match:
                return match
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.raw += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    break
        raise AssertionError(f"{pattern!r} not on the screen within {timeout} s; screen ends:\n{self.screen[-3000:]}")

    def quit(self, timeout: float = 10.0) -> int:
        """Press q; keep reading the terminal meanwhile (a full pty buffer would block the child's last draw)."""
        os.write(self.master, b"q")
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.raw += os.read(self.master, 65536)
                except OSError:
                    break
        assert self.process.wait(max(0.1, deadline - time.monotonic())) is not None
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


def test_live_view_of_a_replayed_log_quits_on_q_and_restores_the_terminal(shared_data):
    terminal = Terminal("--log", str(shared_data / KONA_2020), "--dbc", COMP_DBC)
    try:
        terminal.read_until(r"q quits")
        # Real message names with decoded values and the log's 100 Hz rate, as the table shows them.
        row = terminal.read_until(r"can0\s+120\s+CompressorStatus\s+(\d+)\s+(\d+\.\d)\s+CompressorPower=(\d+) W")
        assert int(row.group(1)) > 0 and 90 <= float(row.group(2)) <= 110 and 0 <= int(row.group(3)) <= 10_000
        terminal.read_until(r"can0\s+111\s+HeaterControl\s+\d+\s+[\d.]+\s+OnOff=\d")
        terminal.read_until(r"can0\s+141\s+-\s+\d+\s+[\d.]+\s+00 00 00 00 00 00 00 05")  # not in the DBC: raw hex
        assert terminal.quit() == 0
        assert termios.tcgetattr(terminal.slave) == terminal.before  # cbreak mode undone
    finally:
        terminal.close()


def test_view_stays_at_the_end_of_a_short_log_until_q(shared_data, tmp_path):
    short = tmp_path / "short.log"
    lines = (shared_data / KONA_2019).read_text().splitlines(keepends=True)[:2000]
    short.write_text("".join(lines))
    terminal = Terminal("--log", str(short), "--dbc", f"pcan={PCAN_DBC}", "--speed", "0")
    try:
        terminal.read_until(r"2000 frames, \d+ ids; end of log; q quits")
        terminal.read_until(r"pcan\s+200\s+VCU_200\s+\d+\s+[\d.]+\s+.*CURRENT_GEAR=[PDNR]\b")
        time.sleep(0.5)
        assert terminal.process.poll() is None  # still showing the last view
        assert terminal.quit() == 0
    finally:
        terminal.close()


def test_once_prints_the_table_with_real_counts(shared_data, capsys):
    log = shared_data / KONA_2019
    expected = sum(1 for bus, msg in LogSource(log) if bus == "pcan" and msg.arbitration_id == 0x200)
    assert main(["monitor", "--log", str(log), "--dbc", f"pcan={PCAN_DBC}", "--once", "--speed", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{log}: 39546 frames, 153 ids; end of input"
    row = next(line.split() for line in out if line.split()[:3] == ["pcan", "200", "VCU_200"])
    assert int(row[3]) == expected and 95 <= float(row[4]) <= 105
    assert any(cell.startswith("CURRENT_GEAR=") for cell in row[5:])
    ccan = [line.split() for line in out if line.startswith("ccan")]
    assert ccan and all(cells[2] == "-" for cells in ccan)  # no DBC bound to ccan: raw hex only
    assert sum(int(cells[3]) for cells in (line.split() for line in out[2:])) == 39546


def test_live_virtual_bus(capsys):
    gps = cantools.database.load_file(GPS_DBC)
    data = gps.encode_message("gnss_speed", {"SpeedValid": 1, "Speed": 12.345, "SpeedAccuracy": 0.5})

    def send() -> None:
        time.sleep(0.5)
        with can.Bus(interface="virtual", channel="monitor-test") as bus:
            for _ in range(20):
                bus.send(can.Message(arbitration_id=7, data=data, is_extended_id=False))
                time.sleep(0.01)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert main(["monitor", "--bus", "gps=virtual://monitor-test", "--dbc", GPS_DBC, "--once",
                     "--duration", "1.5"]) == 0
    finally:
        sender.join()
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.startswith("gps "))
    assert row[:4] == ["gps", "007", "gnss_speed", "20"]
    assert "Speed=12.345" in row and "SpeedValid=Valid" in row


def test_bad_input(shared_data, tmp_path, capsys):
    assert main(["monitor", "--log", str(tmp_path / "none.log"), "--once"]) == 2
    assert f"{tmp_path / 'none.log'}: no such file" in capsys.readouterr().err
    empty = shared_data / "edge_cases/derived_truncated/empty.log"
    assert main(["monitor", "--log", str(empty), "--once"]) == 1
    assert "no CAN frames: the file is empty (0 bytes)" in capsys.readouterr().err
    cut = shared_data / "edge_cases/derived_truncated/kona_candump_truncated_midline.log"
    assert main(["monitor", "--log", str(cut), "--once", "--speed", "0"]) == 2
    assert f"{cut}:1001: log damaged after 1000 frames" in capsys.readouterr().err
    assert main(["monitor", "--once"]) == 2
    assert "name a bus: -i INTERFACE -c CHANNEL" in capsys.readouterr().err
    assert main(["monitor", "--log", str(cut), "--speed", "-1"]) == 2
    assert "--speed must be >= 0" in capsys.readouterr().err
    broken = tmp_path / "broken.dbc"
    broken.write_text('BO_ 100 Msg: 8 Node\n SG_ Sig : 0|8@1+ (1,0) [0|255 "" Node\n')
    assert main(["monitor", "--log", str(cut), "--dbc", str(broken), "--once"]) == 2
    assert f"{broken}" in capsys.readouterr().err
