"""A range export that finds nothing says why and exits 1; sample CSVs carry epoch and local ISO times."""

from __future__ import annotations

import csv
import json
from datetime import datetime

import pytest

from agent.cli.main import main as agent_main
from agent.export.writer import NothingToExport, export_range
from agent.sources.log import LogSource
from agent.timespec import iso_local
from simulator.scenario import GPS_DBC, TRUCK_DBC
from tests.test_export import recorded  # noqa: F401  (the module-scoped fixture: a drive, its snapshot, export)
from tests.test_incident import BUS_MAP, make_decoder

pytestmark = pytest.mark.incident


@pytest.fixture
def config(recorded, tmp_path):  # noqa: F811
    path = tmp_path / "agent.yaml"
    path.write_text(f"""\
vehicle: {{id: truck-cli}}
buses:
  - {{name: truck, dbc: [{TRUCK_DBC}], j1939: true, log_channel: can0}}
  - {{name: gps, dbc: [{GPS_DBC}], log_channel: can1}}
state: {{dir: {recorded['state']}}}
""")
    return path


def test_sample_csv_has_epoch_and_local_iso_columns_that_agree(recorded):  # noqa: F811
    rows = list(csv.DictReader((recorded["export"] / "samples" / "driving.csv").open()))
    assert list(rows[0]) == ["timestamp", "time_local", "bus", "signal", "vss", "value", "unit", "label"]
    assert len(rows) > 100
    for row in rows:
        assert datetime.fromisoformat(row["time_local"]).timestamp() == pytest.approx(float(row["timestamp"]),
                                                                                    abs=1e-6)
    assert rows[0]["time_local"] == iso_local(float(rows[0]["timestamp"]), "microseconds")


def test_a_range_before_every_frame_is_refused_with_the_span_available(recorded, config, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "nothing"
    code = agent_main(["export", "--config", str(config), "--from", "2001-01-01", "--to", "2001-01-02",
                       "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "nothing to export for 2001-01-01T00:00:00" in err
    assert "the range is before the first frames" in err and "incident snapshots available span" in err
    assert not out.exists()  # nothing written, nothing signed
    # The available span is named in local ISO times, and it is the snapshot's.
    info = recorded["store"].info(recorded["id"])
    assert iso_local(info.start)[:16] in err


def test_no_raw_frames_at_all_says_where_frames_come_from(recorded, tmp_path):  # noqa: F811
    with pytest.raises(NothingToExport, match=r"there are no raw frames at all .* --log FILE"):
        export_range([], make_decoder(), 0.0, 1e10, tmp_path / "x", recorded["key"], [TRUCK_DBC])
    assert not (tmp_path / "x").exists()


def test_frames_that_do_not_decode_or_a_category_filter_say_so(recorded, tmp_path):  # noqa: F811
    frames = list(LogSource(recorded["root"] / "drive.log", bus_map=BUS_MAP))
    start = recorded["truth"]["start_time"] + 10.0
    renamed = [("nowhere", msg) for _, msg in frames]  # no DBC serves bus "nowhere"
    with pytest.raises(NothingToExport, match=r"\d+ frames are in the range but none decodes"):
        export_range(renamed, make_decoder(), start, start + 1, tmp_path / "a", recorded["key"], [TRUCK_DBC])
    with pytest.raises(NothingToExport, match=r"no sample passes the filters asked for \(categories cabin\)"):
        export_range(frames, make_decoder(), start, start + 1, tmp_path / "b", recorded["key"], [TRUCK_DBC],
                     categories=["cabin"])


def test_a_good_range_summary_shows_local_iso_times(recorded, config, tmp_path, capsys):  # noqa: F811
    start = recorded["truth"]["brake_at"] - 1
    out = tmp_path / "ranged"
    assert agent_main(["export", "--config", str(config), "--from", str(start), "--to", str(start + 2),
                       "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert f"from {iso_local(start)} to {iso_local(start + 2)}" in line
    assert json.loads((out / "manifest.json").read_text())["counts"]["samples"] > 0


def _range_args(recorded, config, out, *extra):  # noqa: F811
    start = recorded["truth"]["brake_at"] - 1
    return ["export", "--config", str(config), "--from", str(start), "--to", str(start + 2), "--out", str(out),
            "--log", str(recorded["root"] / "drive.log"), *extra]


def test_signals_glob_keeps_only_matching_signals_and_the_manifest_says_so(recorded, config, tmp_path):  # noqa: F811
    out = tmp_path / "speed"
    assert agent_main(_range_args(recorded, config, out, "--signals", "EEC1.*")) == 0
    rows = list(csv.DictReader((out / "samples" / "vehicle_health.csv").open()))
    assert len(rows) > 10 and {row["signal"] for row in rows} == {"EEC1.EngineSpeed"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["vehicle_health.csv", "vehicle_health.jsonl"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["details"]["signals"] == "EEC1.*"
    assert manifest["counts"]["samples"] == len(rows)
    assert manifest["counts"]["frames"] > len(rows)  # the raw frames go in whole, GPS included


@pytest.mark.parametrize(("extra", "said"), [
    (["--signals", "Nope.*", "Nor*"], "no sample passes the filters asked for (signals Nope.* Nor*)"),
    (["--category", "cabin"], "no sample passes the filters asked for (categories cabin)"),
    (["--category", "driving", "--signals", "EEC1.*"],
     "no sample passes the filters asked for (categories driving; signals EEC1.*)"),
])
def test_filters_that_keep_nothing_exit_1_naming_them(recorded, config, tmp_path, capsys, extra, said):  # noqa: F811
    out = tmp_path / "filtered"
    assert agent_main(_range_args(recorded, config, out, *extra)) == 1
    err = capsys.readouterr().err
    assert said in err and "frames decode in the range" in err
    assert not out.exists()


def test_a_range_after_the_log_names_the_logs_span(recorded, config, tmp_path, capsys):  # noqa: F811
    frames = list(LogSource(recorded["root"] / "drive.log", bus_map=BUS_MAP))
    last = max(msg.timestamp for _, msg in frames)
    args = ["export", "--config", str(config), "--from", str(last + 3600), "--to", str(last + 7200),
            "--out", str(tmp_path / "late"), "--log", str(recorded["root"] / "drive.log")]
    assert agent_main(args) == 1
    err = capsys.readouterr().err
    assert f"the range is after the last frames; the {len(frames)} frames available span" in err
    shown_last = err.rstrip().rsplit(" .. ", 1)[1]
    assert datetime.fromisoformat(shown_last).timestamp() == pytest.approx(last, abs=1)


@pytest.mark.parametrize("extra", [["--signals", "EEC1.*"], ["--category", "driving"], ["--log", "drive.log"]])
def test_range_filters_are_refused_with_an_incident(recorded, config, tmp_path, capsys, extra):  # noqa: F811
    args = ["export", "--config", str(config), "--incident", recorded["id"], "--out", str(tmp_path / "i"), *extra]
    assert agent_main(args) == 2
    assert f"{extra[0]} goes with --from, not with --incident" in capsys.readouterr().err


def test_an_unknown_category_is_refused_by_the_parser(recorded, config, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as exit_:
        agent_main(_range_args(recorded, config, tmp_path / "x", "--category", "weather"))
    assert exit_.value.code == 2
    assert "invalid choice: 'weather'" in capsys.readouterr().err
