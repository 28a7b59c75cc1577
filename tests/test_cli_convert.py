"""`vehicle-agent convert IN OUT` round trips on real logs: frames, ids, data, buses and timestamps survive."""

from __future__ import annotations

import pytest

from agent.cli.main import main
from agent.sources.log import LogSource

KONA_2019 = "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"  # buses pcan/ccan, interleaved timestamps
KONA_2020 = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"  # clock reset: 13,541 frames before the first
TRUCK_ASC = "logs/css_truck_j1939_and_canmod_gps.asc"  # numbered channels, 29-bit ids
# Time resolution each format keeps (seconds); offsets from the earliest frame must agree within it.
PRECISION = {".log": 1e-6, ".asc": 1e-6, ".blf": 1e-8, ".trc": 1e-6, ".csv": 1e-9, ".log.gz": 1e-6,
             ".asc.gz": 1e-6, ".trc.gz": 1e-6, ".csv.gz": 1e-9}


def frames(path) -> list[tuple[str, int, bool, bytes, float]]:
    read = [(bus, m.arbitration_id, m.is_extended_id, bytes(m.data), m.timestamp) for bus, m in LogSource(path)]
    earliest = min(f[4] for f in read)
    return [(*f[:4], f[4] - earliest) for f in read]


def assert_same(original, back, precision: float, buses: dict[str, str] | None = None) -> None:
    assert len(back) == len(original)
    mapped = [((buses or {}).get(f[0], f[0]), *f[1:4]) for f in original]
    assert [f[:4] for f in back] == mapped
    assert max(abs(a[4] - b[4]) for a, b in zip(original, back)) <= precision


@pytest.mark.parametrize("suffix", sorted(PRECISION))
def test_clock_reset_log_survives_every_format(shared_data, tmp_path, suffix, capsys):
    source = shared_data / KONA_2020
    out = tmp_path / f"kona{suffix}"
    assert main(["convert", str(source), str(out)]) == 0
    report = capsys.readouterr().out
    assert f"converted 27982 frames from {source} to {out}" in report
    assert "13541 frames are stamped before the first one" in report
    assert_same(frames(source), frames(out), PRECISION[suffix])


@pytest.mark.parametrize("suffix", [".asc", ".blf", ".trc"])
def test_named_buses_get_channel_numbers_in_numbered_formats(shared_data, tmp_path, suffix, capsys):
    source = shared_data / KONA_2019
    out = tmp_path / f"kona{suffix}"
    assert main(["convert", str(source), str(out)]) == 0
    assert "channels: pcan -> can0, ccan -> can1" in capsys.readouterr().out
    original = frames(source)
    assert {f[0] for f in original} == {"pcan", "ccan"}
    assert_same(original, frames(out), PRECISION[suffix], {"pcan": "can0", "ccan": "can1"})
    back_again = tmp_path / "again.log"
    assert main(["convert", str(out), str(back_again)]) == 0
    assert_same(original, frames(back_again), PRECISION[suffix], {"pcan": "can0", "ccan": "can1"})


def test_asc_with_extended_ids_to_candump_and_back(shared_data, tmp_path, capsys):
    source = shared_data / TRUCK_ASC
    original = frames(source)
    assert sum(1 for f in original if f[2]) == 45571
    out = tmp_path / "truck.log.gz"
    assert main(["convert", str(source), str(out)]) == 0
    assert "converted 57849 frames" in capsys.readouterr().out
    assert_same(original, frames(out), 1e-6)


def test_csv_says_buses_are_merged(shared_data, tmp_path, capsys):
    out = tmp_path / "kona.csv"
    assert main(["convert", str(shared_data / KONA_2019), str(out)]) == 0
    assert "buses pcan, ccan are merged" in capsys.readouterr().err
    assert len(frames(out)) == 39546


def test_refuses_same_file_existing_output_and_unknown_extensions(shared_data, tmp_path, capsys):
    log = tmp_path / "a.log"
    log.write_bytes((shared_data / KONA_2020).read_bytes())
    assert main(["convert", str(log), str(tmp_path / "." / "a.log")]) == 2
    assert "OUT is the input file" in capsys.readouterr().err
    existing = tmp_path / "b.asc"
    existing.write_text("keep me")
    assert main(["convert", str(log), str(existing)]) == 2
    assert f"{existing}: exists; use --force to replace it" in capsys.readouterr().err
    assert existing.read_text() == "keep me"
    assert main(["convert", str(log), str(existing), "--force"]) == 0
    assert len(frames(existing)) == 27982
    assert main(["convert", str(log), str(tmp_path / "c.xyz")]) == 2
    err = capsys.readouterr().err
    assert "c.xyz: unknown log format '.xyz'; known: .asc, .blf, .csv" in err and ".log.gz" in err
    assert main(["convert", str(log), str(tmp_path / "c.blf.gz")]) == 2  # python-can cannot gzip BLF
    assert "unknown log format '.blf.gz'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "b.asc"]  # nothing half-written left


def test_missing_empty_and_truncated_input(shared_data, tmp_path, capsys):
    assert main(["convert", str(tmp_path / "none.log"), str(tmp_path / "out.asc")]) == 2
    assert f"{tmp_path / 'none.log'}: no such file" in capsys.readouterr().err
    empty = shared_data / "edge_cases/derived_truncated/empty.log"
    assert main(["convert", str(empty), str(tmp_path / "out.asc")]) == 2
    assert "the file is empty (0 bytes); nothing to convert" in capsys.readouterr().err
    assert not (tmp_path / "out.asc").exists()
    cut = shared_data / "edge_cases/derived_truncated/kona_candump_truncated_midline.log"
    out = tmp_path / "cut.asc"
    assert main(["convert", str(cut), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{cut}:1001: log damaged after 1000 frames" in err and "the 1000 frames before the damage" in err
    assert len(frames(out)) == 1000
