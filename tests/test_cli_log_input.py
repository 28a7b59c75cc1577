"""The engineers' commands read logs as the field's tools do, and say what they could not use.

- ``decode -`` reads candump text from standard input (``candump -L`` and the screen form), like
  ``candump | cantools decode``; ``--format wide-csv`` writes one column per signal, checked against cantools.
- Damaged lines are skipped and counted with file:line (unless ``--strict``), in every text format.
- ``--dbc BUS=FILE`` naming no bus of the log and ``--signals`` globs matching nothing are said, with what
  the log's buses and the DBC's signals are; nothing decoded is exit 1.
- A progress bar on a terminal.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import can
import cantools
import pytest

from agent.cli.main import main
from agent.sources.log import LogError, LogSource

REPO = Path(__file__).resolve().parents[1]
KONA_LOG = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"
KONA_DBC = REPO / "dbc/kona-ev/comp_can.dbc"
LINES = 3000  # the first lines of the Kona log: 22.2 s .. , all on can0, no clock reset yet


@pytest.fixture
def kona_head(shared_data, tmp_path) -> Path:
    lines = (shared_data / KONA_LOG).read_text().splitlines(keepends=True)[:LINES]
    path = tmp_path / "kona_head.log"
    path.write_text("".join(lines))
    return path


def _decode_rows(capsys, *args: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, list[dict], str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["decode", *args])
    captured = capsys.readouterr()
    return code, list(csv.DictReader(io.StringIO(captured.out))), captured.err


def _screen_form(line: str, timestamps: bool) -> str:
    """A candump -L line as candump prints it on the screen (``-t a`` with timestamps)."""
    stamp, channel, frame = line.split()
    can_id, data = frame.split("#")
    pairs = " ".join(data[i:i + 2] for i in range(0, len(data), 2))
    body = f"  {channel}  {can_id:>3}   [{len(data) // 2}]  {pairs}"
    return (f" {stamp} " + body if timestamps else body) + "\n"


# -- decode - (standard input) ---------------------------------------------------------------------------------

def test_decode_reads_candump_log_form_from_stdin_like_the_file(kona_head, capsys, monkeypatch):
    code, from_file, _ = _decode_rows(capsys, str(kona_head), "--dbc", str(KONA_DBC))
    assert code == 0 and len(from_file) > 5_000
    code, from_stdin, err = _decode_rows(capsys, "-", "--dbc", str(KONA_DBC), stdin=kona_head.read_text(),
                                         monkeypatch=monkeypatch)
    assert code == 0, err
    assert from_stdin == from_file


def test_decode_reads_candump_screen_form_from_stdin(kona_head, capsys, monkeypatch):
    code, from_file, _ = _decode_rows(capsys, str(kona_head), "--dbc", str(KONA_DBC))
    lines = kona_head.read_text().splitlines()
    timed = "".join(_screen_form(line, timestamps=True) for line in lines)
    code, rows, err = _decode_rows(capsys, "-", "--dbc", str(KONA_DBC), stdin=timed, monkeypatch=monkeypatch)
    assert code == 0, err
    assert [(r["signal"], r["value"]) for r in rows] == [(r["signal"], r["value"]) for r in from_file]
    assert [float(r["timestamp"]) for r in rows] == pytest.approx([float(r["timestamp"]) for r in from_file],
                                                                   abs=1e-6)
    # Without -t: the same values, stamped as they are read (a live pipe), in order.
    untimed = "".join(_screen_form(line, timestamps=False) for line in lines)
    code, rows, err = _decode_rows(capsys, "-", "--dbc", str(KONA_DBC), stdin=untimed, monkeypatch=monkeypatch)
    assert code == 0, err
    assert [(r["signal"], r["value"]) for r in rows] == [(r["signal"], r["value"]) for r in from_file]
    stamps = [float(r["timestamp"]) for r in rows]
    assert stamps == sorted(stamps) and stamps[0] > 1_600_000_000


def test_stdin_lines_that_are_not_candump_are_counted_or_stop_with_strict(kona_head, capsys, monkeypatch):
    lines = kona_head.read_text().splitlines(keepends=True)
    damaged = [*lines[:100], "this is no frame\n", *lines[100:200], "(1.0) can0 12#ABC\n", *lines[200:]]
    _, from_file, _ = _decode_rows(capsys, str(kona_head), "--dbc", str(KONA_DBC))
    code, rows, err = _decode_rows(capsys, "-", "--dbc", str(KONA_DBC), stdin="".join(damaged),
                                   monkeypatch=monkeypatch)
    assert code == 0 and rows == from_file  # the two extra lines cost nothing of what is around them
    assert "skipped 2 damaged lines" in err and "<stdin>:101:" in err and "<stdin>:202:" in err, err
    assert f"of {LINES} frames" in err
    code, _rows, err = _decode_rows(capsys, "-", "--dbc", str(KONA_DBC), "--strict", stdin="".join(damaged),
                                   monkeypatch=monkeypatch)
    assert code == 2 and "<stdin>:101: log damaged after 100 frames" in err, err


# -- wide CSV -----------------------------------------------------------------------------------------------------

def test_wide_csv_has_a_column_per_signal_and_agrees_with_cantools(kona_head, capsys):
    code, rows, err = _decode_rows(capsys, str(kona_head), "--dbc", str(KONA_DBC), "--format", "wide-csv")
    assert code == 0, err
    db = cantools.database.load_file(KONA_DBC)
    signals = [f"{m.name}.{s.name}" for m in db.messages for s in m.signals]
    assert list(rows[0].keys()) == ["timestamp", "bus", "message", *signals]
    frames = {(round(m.timestamp, 6), m.arbitration_id): bytes(m.data) for _, m in LogSource(kona_head)}
    checked = 0
    for row in rows:
        message = db.get_message_by_name(row["message"])
        data = frames[(round(float(row["timestamp"]), 6), message.frame_id)]
        expected = message.decode(data, decode_choices=False)
        filled = {key: value for key, value in row.items() if value and key not in ("timestamp", "bus", "message")}
        assert filled == {f"{message.name}.{name}": repr(value) for name, value in expected.items()}
        checked += 1
    assert checked == len(rows) > 1000
    # The samples are those of the long form.
    code, long_rows, _ = _decode_rows(capsys, str(kona_head), "--dbc", str(KONA_DBC))
    assert sum(len([v for k, v in r.items() if v and k not in ("timestamp", "bus", "message")]) for r in rows) \
        == len(long_rows)


def test_wide_csv_with_signal_globs_has_only_those_columns(kona_head, capsys):
    code, rows, err = _decode_rows(capsys, str(kona_head), "--dbc", str(KONA_DBC), "--format", "wide-csv",
                                   "--signals", "Heater*")
    assert code == 0, err
    columns = list(rows[0].keys())[3:]
    assert columns and all(c.startswith("Heater") for c in columns)
    assert {r["message"] for r in rows} <= {c.split(".")[0] for c in columns}


# -- damaged lines in every text format ---------------------------------------------------------------------------

DAMAGE = {
    ".log": lambda line: line.replace(" can0 1", " can0 G", 1),
    ".asc": lambda line: line.replace(" d 8 ", " d 8 ZZ ", 1),
    ".trc": lambda line: line.replace(" Rx -  8 ", " Rx -  X ", 1),
    ".csv": lambda line: line.replace(",0,0,0,", ",0,0,", 1),
}
WRITERS = {".asc": can.ASCWriter, ".trc": can.TRCWriter, ".csv": can.CSVWriter}
DAMAGED_LINES = (60, 700, 1500)  # 0-based indexes into the file's lines


def _frames(path: Path, **options) -> list[tuple]:
    return [(bus, m.arbitration_id, bytes(m.data), round(m.timestamp, 6)) for bus, m in LogSource(path, **options)]


@pytest.mark.parametrize("suffix", sorted(DAMAGE))
def test_damaged_lines_are_skipped_counted_and_named(kona_head, tmp_path, capsys, suffix):
    whole = kona_head if suffix == ".log" else tmp_path / f"whole{suffix}"
    if suffix != ".log":
        with WRITERS[suffix](str(whole)) as writer:
            for _, msg in LogSource(kona_head):
                writer.on_message_received(msg)
    lines = whole.read_text().splitlines(keepends=True)
    damaged_lines = []
    for index in DAMAGED_LINES:
        changed = DAMAGE[suffix](lines[index])
        assert changed != lines[index]
        lines[index] = changed
        damaged_lines.append(index + 1)
    damaged = tmp_path / f"damaged{suffix}"
    damaged.write_text("".join(lines))

    original = _frames(whole)
    source = LogSource(damaged, skip_damaged=True)
    kept = [(bus, m.arbitration_id, bytes(m.data), round(m.timestamp, 6)) for bus, m in source]
    assert source.stats.damaged == 3 and source.stats.error is None
    assert [place.split(": ")[0] for place in source.stats.damaged_at] == [f"{damaged}:{n}" for n in damaged_lines]
    # Exactly the frames of the damaged lines are missing; everything around them is as in the whole log
    # (the restarted reader keeps the header's state: ASC's base and trigger-block time, TRC's columns).
    assert len(kept) == len(original) - 3
    assert set(original) - set(kept) and all(frame in original for frame in kept)
    assert kept == [frame for frame in original if frame in set(kept)]

    assert main(["stats", str(damaged), "--dbc", str(KONA_DBC), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["reading"]["damaged_lines"] == 3
    assert sum(b["counters"]["frames"] for b in report["buses"].values()) == len(original) - 3
    assert f"{damaged}:{damaged_lines[0]}" in captured.err and "skipped 3 damaged lines" in captured.err

    with pytest.raises(LogError, match=rf"{damaged}:{damaged_lines[0]}: log damaged"):
        _frames(damaged)
    assert main(["stats", str(damaged), "--dbc", str(KONA_DBC), "--strict"]) == 2
    assert f"{damaged}:{damaged_lines[0]}" in capsys.readouterr().err


def test_a_file_of_nothing_but_damage_says_so_quickly(tmp_path, capsys):
    junk = tmp_path / "junk.log"
    junk.write_text("".join(f"({i}.0) can0 XYZ#00\n" for i in range(20_000)))
    assert main(["stats", str(junk), "--dbc", str(KONA_DBC)]) == 1
    err = capsys.readouterr().err
    assert "skipped 20000 damaged lines" in err and "and 19990 more" in err and "every line" in err


# -- bindings and filters that match nothing ----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["decode", "stats", "replay"])
def test_a_dbc_bound_to_a_bus_the_log_does_not_have_is_named(kona_head, tmp_path, capsys, command):
    extra = ["--buffer", str(tmp_path / "b.sqlite"), "--grant-all"] if command == "replay" else []
    if command == "decode":
        extra = ["-o", str(tmp_path / "out.csv")]
    assert main([command, str(kona_head), "--dbc", f"0={KONA_DBC}", *extra]) == 1
    err = capsys.readouterr().err
    assert "--dbc 0=...: the log has no bus '0'" in err and f"can0 ({LINES} frames)" in err, err
    # Bound to the log's bus it decodes.
    assert main([command, str(kona_head), "--dbc", f"can0={KONA_DBC}", *extra]) == 0
    assert "has no bus" not in capsys.readouterr().err


def test_signal_globs_that_match_nothing_are_named_with_the_signals_there_are(kona_head, tmp_path, capsys):
    out = ["-o", str(tmp_path / "out.csv")]
    assert main(["decode", str(kona_head), "--dbc", str(KONA_DBC), "--signals", "X*", *out]) == 1
    err = capsys.readouterr().err
    assert "decoded 0 of 3000 frames" in err
    assert "--signals 'X*' matches no signal of the DBCs" in err and "HeaterControl.OnOff" in err, err
    # One glob that matches and one that does not: decoded, with a warning for the other.
    assert main(["decode", str(kona_head), "--dbc", str(KONA_DBC), "--signals", "Heater*", "heater*", *out]) == 0
    err = capsys.readouterr().err
    assert "warning: --signals 'heater*' matches no signal" in err and "'Heater*'" not in err
    assert main(["decode", str(kona_head), "--dbc", str(KONA_DBC), "--bus", "can1", *out]) == 1
    assert "--bus can1: the log has no bus 'can1'; its buses are can0" in capsys.readouterr().err


# -- progress on a terminal -----------------------------------------------------------------------------------

def test_stats_shows_progress_with_total_rate_and_time_left_on_a_terminal(shared_data):
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.run([sys.executable, "-m", "agent.cli.main", "stats", str(shared_data / KONA_LOG),
                              "--dbc", str(KONA_DBC)], stdout=subprocess.PIPE, stderr=slave, env=env, timeout=120)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, screen
    assert "stats" in screen and "100%" in screen and "27,982 items" in screen and "left" in screen, screen
    assert b"bus can0: 27982 frames" in process.stdout
