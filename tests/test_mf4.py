"""CANedge / ASAM MDF4 logs (issue 15): read through python-can's MF4Reader (asammdf), written by `convert`.

The real MF4 is a CANedge file; the ASC beside it was converted from it with python-can (MF4Reader +
ASCWriter, MANIFEST.md).  The MF4 holds absolute times (its header's start time plus offsets); the ASC's
timestamps count from its first frame (its "date" header is not applied by the reader), so timestamps are
compared after aligning both logs by their first frame.  The MF4 numbers its bus channels from 1 as the ASC
does ("1" = J1939 truck bus, "2" = CANmod.gps): both read as can0 and can1.
"""

from __future__ import annotations

import json

import asammdf  # noqa: F401  (declared by the tools extra: missing is a failure, not a skip)
import pytest

from agent.cli.main import main
from agent.sources.log import LogError, LogSource

TRUCK_MF4 = "logs/css_truck_j1939_and_canmod_gps.MF4"
TRUCK_ASC = "logs/css_truck_j1939_and_canmod_gps.asc"
KONA_2020 = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"  # clock reset: 13,541 frames before the first
J1939_DBC = "dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc"
GPS_DBC = "dbc/css-electronics/canmod-gps.dbc"
MICROSECOND = 1e-6


def frames(path, align: str = "first") -> list[tuple[str, int, bool, bytes, float]]:
    """(bus, id, extended, data, time) per frame; time from the first frame (or from the earliest)."""
    read = [(bus, m.arbitration_id, m.is_extended_id, bytes(m.data), m.timestamp) for bus, m in LogSource(path)]
    zero = read[0][4] if align == "first" else min(f[4] for f in read)
    return [(*f[:4], f[4] - zero) for f in read]


def assert_same(original, back) -> None:
    assert len(back) == len(original)
    assert [f[:4] for f in back] == [f[:4] for f in original]
    assert max(abs(a[4] - b[4]) for a, b in zip(original, back)) <= MICROSECOND


@pytest.fixture(scope="module")
def truck_asc(shared_data):
    return frames(shared_data / TRUCK_ASC)


def test_real_canedge_mf4_reads_as_its_asc_conversion(shared_data, truck_asc):
    mf4 = frames(shared_data / TRUCK_MF4)
    assert len(mf4) == 57849
    assert_same(truck_asc, mf4)
    assert {bus for bus, *_ in mf4} == {"can0", "can1"}
    assert all(extended for bus, _, extended, *_ in mf4 if bus == "can0")  # J1939: 29-bit
    assert all(not extended and 1 <= can_id <= 9 for bus, can_id, extended, *_ in mf4 if bus == "can1")
    source = LogSource(shared_data / TRUCK_MF4)
    read = list(source)
    first = read[0][1]
    assert first.timestamp == pytest.approx(1635188455.02085, abs=MICROSECOND)  # absolute: 2021-10-25 UTC
    assert source.stats.error is None and source.stats.buses == {"can0": 45571, "can1": 12278}


def decoded(path, tmp_path, capsys) -> tuple[list[dict], str]:
    out = tmp_path / (path.name + ".jsonl")
    code = main(["decode", str(path), "--dbc", f"can0={J1939_DBC}", f"can1={GPS_DBC}", "--j1939", "can0",
                 "--format", "jsonl", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    return [json.loads(line) for line in out.read_text().splitlines()], err


def test_decode_of_the_mf4_gives_the_samples_of_the_asc(shared_data, tmp_path, capsys):
    mf4, mf4_err = decoded(shared_data / TRUCK_MF4, tmp_path, capsys)
    asc, _ = decoded(shared_data / TRUCK_ASC, tmp_path, capsys)
    assert "decoded 26269 of 57849 frames into 97177 samples" in mf4_err
    assert len(mf4) == len(asc) == 97177
    assert {s["signal"].split(".")[0] for s in mf4} >= {"EEC1", "CCVS1", "gnss_pos"}
    key = ("bus", "signal", "value", "unit", "label")
    assert [tuple(s.get(k) for k in key) for s in mf4] == [tuple(s.get(k) for k in key) for s in asc]
    zero = mf4[0]["timestamp"] - asc[0]["timestamp"]  # the ASC counts from its first frame
    assert max(abs(m["timestamp"] - zero - a["timestamp"]) for m, a in zip(mf4, asc)) <= MICROSECOND


@pytest.mark.parametrize("name", [KONA_2020, TRUCK_ASC, TRUCK_MF4])
def test_convert_to_mf4_and_back_keeps_every_frame(shared_data, tmp_path, capsys, name):
    source = shared_data / name
    out = tmp_path / "out.mf4"
    assert main(["convert", str(source), str(out)]) == 0
    report = capsys.readouterr().out
    original = frames(source, align="earliest")
    assert f"converted {len(original)} frames from {source} to {out}" in report
    if name == KONA_2020:  # the clock reset: frames stamped before the first keep their (negative) timestamps
        assert "13541 frames are stamped before the first one" in report and "kept with their timestamps" in report
        assert min(m.timestamp for _, m in LogSource(out)) == pytest.approx(-0.364210, abs=MICROSECOND)
    assert "channels:" not in report  # can0/can1 keep their numbers
    assert_same(original, frames(out, align="earliest"))


def test_convert_names_buses_it_renumbers_for_mf4(shared_data, tmp_path, capsys):
    out = tmp_path / "kona2019.mf4"
    assert main(["convert", str(shared_data / "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"), str(out)]) == 0
    assert "channels: pcan -> can0, ccan -> can1" in capsys.readouterr().out
    assert {bus for bus, _ in LogSource(out)} == {"can0", "can1"}


def truncated(shared_data, tmp_path):
    data = (shared_data / TRUCK_MF4).read_bytes()
    cut = tmp_path / "truck_first_half.mf4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_a_truncated_mf4_says_what_was_read_and_where_it_ended(shared_data, tmp_path, capsys):
    cut = truncated(shared_data, tmp_path)
    with pytest.raises(LogError, match=f"^{cut}: read .* the file ended early"):
        list(LogSource(cut))
    code = main(["decode", str(cut), "--dbc", f"can1={GPS_DBC}", "--format", "jsonl", "-o",
                 str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 0 and "warning:" in err and str(cut) in err and "ended early" in err, err
    code = main(["decode", str(cut), "--strict", "--dbc", f"can1={GPS_DBC}", "-o", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert code == 2 and str(cut) in err and "Traceback" not in err, err


@pytest.mark.parametrize("keep", [0, 40, 5000])
def test_an_mf4_cut_in_its_header_names_the_file(shared_data, tmp_path, capsys, keep):
    cut = tmp_path / "head.mf4"
    cut.write_bytes((shared_data / TRUCK_MF4).read_bytes()[:keep])
    source = LogSource(cut, strict=False)
    assert list(source) == []
    assert str(cut) in (source.stats.error or source.stats.warning or "")
    code = main(["decode", str(cut), "--dbc", GPS_DBC, "-o", str(tmp_path / "out.csv")])
    err = capsys.readouterr().err
    assert code in (1, 2) and str(cut) in err and "Traceback" not in err, err


def test_without_asammdf_reading_and_writing_mf4_say_what_is_missing(shared_data, tmp_path, monkeypatch, capsys):
    import can.io.mf4

    monkeypatch.setattr(can.io.mf4, "asammdf", None)
    with pytest.raises(LogError, match=f"^{shared_data / TRUCK_MF4}: .*asammdf"):
        list(LogSource(shared_data / TRUCK_MF4))
    out = tmp_path / "out.mf4"
    assert main(["convert", str(shared_data / KONA_2020), str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs an optional package" in err and "asammdf" in err and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.iterdir())
