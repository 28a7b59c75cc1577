"""`vehicle-agent plot`: PNGs from a real log, a buffer DB and a receiver DB, read back pixel by pixel."""

from __future__ import annotations

import sqlite3

import pytest
from matplotlib.image import imread

from agent.cli.main import main
from simulator.receiver.store import ReceiverStore

KONA_2019 = "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"
PCAN_DBC = "dbc/kona-ev/pcan.dbc"
GPS_ASC = "logs/css_truck_j1939_and_canmod_gps.asc"
GPS_DBC = "dbc/css-electronics/canmod-gps.dbc"


def pixels(png) -> tuple[tuple[int, int], int, int]:
    """(width, height), non-white pixels, coloured pixels (the lines: axes, grid and text are grey)."""
    image = (imread(png)[:, :, :3] * 255).round().astype(int)
    non_white = int((image < 250).any(axis=2).sum())
    coloured = int((image.max(axis=2) - image.min(axis=2) > 60).sum())
    return (image.shape[1], image.shape[0]), non_white, coloured


def test_log_to_png_one_panel_per_unit(shared_data, tmp_path, capsys):
    out = tmp_path / "range.png"
    assert main(["plot", str(shared_data / KONA_2019), "--dbc", f"pcan={PCAN_DBC}", "--signals", "VCU_200.Range",
                 "VCU_291.Speed_signed", "VCU_200.CURRENT_GEAR", "-o", str(out), "--size", "8x6", "--dpi", "50"]) == 0
    assert capsys.readouterr().out == f"plotted 3 signals (3250 samples) in 3 panels to {out}\n"
    size, non_white, blue = pixels(out)
    assert size == (400, 300)
    assert 3_000 < non_white < 400 * 300 // 2  # axes, labels and lines; not a blank nor a filled image
    assert blue > 200  # the lines themselves


def test_log_report_counts_samples_and_panels(shared_data, tmp_path, capsys):
    out = tmp_path / "gps.png"
    assert main(["plot", str(shared_data / GPS_ASC), "--dbc", f"can1={GPS_DBC}", "--signals", "gnss_speed.Speed",
                 "gnss_pos.Latitude", "gnss_pos.Longitude", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    # 12,278 CANmod.gps frames; Speed at 10 Hz, position at 10 Hz: two units (m/s, deg), two panels.
    assert "plotted 3 signals" in captured.out and "in 2 panels" in captured.out
    assert "(345 samples)" in captured.out  # 115 fixes (1 Hz) of each
    size, non_white, blue = pixels(out)
    assert size == (1200, 800) and non_white > 10_000 and blue > 500


def test_buffer_db_filled_by_replay(shared_data, tmp_path, capsys):
    db = tmp_path / "buffer.db"
    assert main(["replay", str(shared_data / GPS_ASC), "--dbc", f"can1={GPS_DBC}", "--buffer", str(db),
                 "--grant-all"]) == 0
    capsys.readouterr()
    out = tmp_path / "buffer.png"
    assert main(["plot", str(db), "--dbc", f"can1={GPS_DBC}", "--signals", "Vehicle.GNSSSpeed", "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert "plotted 1 signals" in report and "in 1 panels" in report
    size, non_white, blue = pixels(out)
    assert size == (1200, 800) and non_white > 5_000 and blue > 500
    # Without --dbc the keys still match (no VSS paths then, no units: one panel per signal).
    assert main(["plot", str(db), "--signals", "gnss_pos.*", "-o", str(tmp_path / "pos.png")]) == 0
    assert "in 4 panels" in capsys.readouterr().out
    assert main(["plot", str(db), "--signals", "Nothing.*", "-o", str(tmp_path / "none.png")]) == 2
    err = capsys.readouterr().err
    assert "--signals 'Nothing.*' matched no signal of" in err and "(buffer database)" in err
    assert "(buffer database); 39 signals there, e.g. gnss_altitude.Altitude, " in err


def test_receiver_db(tmp_path, capsys):
    db = tmp_path / "receiver.db"
    ReceiverStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO samples VALUES ('car', 'e', 'b', 0, ?, 'can1', ?, 'driving', ?, NULL)",
                         [(1_700_000_000 + i / 10, "gnss_speed.Speed", (i % 50) / 5) for i in range(500)])
    out = tmp_path / "receiver.png"
    assert main(["plot", str(db), "--signals", "gnss_speed.*", "-o", str(out)]) == 0
    assert "plotted 1 signals (500 samples) in 1 panels" in capsys.readouterr().out
    _size, non_white, blue = pixels(out)
    assert non_white > 5_000 and blue > 1_000


def test_no_signal_matched_names_globs_and_lists_signals(shared_data, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["plot", str(shared_data / KONA_2019), "--dbc", PCAN_DBC, "--signals", "Zzz*", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--signals 'Zzz*' matched no signal of the DBC(s); 445 signals there, e.g. AAF_584." in err
    assert not out.exists()


def test_dbc_bound_to_a_bus_the_log_does_not_have(shared_data, tmp_path, capsys):
    assert main(["plot", str(shared_data / KONA_2019), "--dbc", f"0={PCAN_DBC}", "--signals", "VCU_200.*",
                 "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no frame of VCU_200 decoded; the log's buses: pcan (24263 frames), ccan (15283 frames)" in err
    assert f"--dbc 0={PCAN_DBC}" in err


def test_unmatched_glob_beside_matched_ones_is_warned(shared_data, tmp_path, capsys):
    assert main(["plot", str(shared_data / KONA_2019), "--dbc", PCAN_DBC, "--signals", "VCU_200.Range",
                 "Nope*", "-o", str(tmp_path / "x.png")]) == 0
    assert "--signals 'Nope*' matched nothing" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "expected"), [
    ("edge_cases/derived_truncated/empty.log", "no CAN frames: the file is empty (0 bytes)"),
    ("edge_cases/derived_truncated/kona_candump_truncated_midline.log",
     "kona_candump_truncated_midline.log:1001: log damaged after 1000 frames"),
    ("edge_cases/derived_truncated/css_nissan_leaf_blf_truncated_60pct.blf", "the file ended early"),
])
def test_bad_logs_name_the_file(shared_data, tmp_path, capsys, name, expected):
    assert main(["plot", str(shared_data / name), "--dbc", PCAN_DBC, "--signals", "*", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_missing_unreadable_and_foreign_inputs(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "none.log"), "--dbc", PCAN_DBC, "--signals", "*", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert f"{tmp_path / 'none.log'}: no such file" in capsys.readouterr().err
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (x)")
    assert main(["plot", str(other), "--signals", "*", "-o", str(tmp_path / "x.png")]) == 2
    assert "neither a buffer (tables meta, batches) nor a receiver database" in capsys.readouterr().err
    log = tmp_path / "a.log"
    log.write_text("(1.0) can0 123#00\n")
    assert main(["plot", str(log), "--dbc", str(tmp_path / "no.dbc"), "--signals", "*", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "no.dbc: cannot read DBC" in capsys.readouterr().err
