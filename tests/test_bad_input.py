"""Bad input gives decoded output or a one-line error naming the file: never a traceback."""

from __future__ import annotations

import json

import pytest

from agent.cli.main import main
from agent.config import ConfigError, load_config, parse_config
from agent.dbc import DbcError, load_dbc
from agent.sources.log import LogError, LogSource

GPS_DBC = "dbc/css-electronics/canmod-gps.dbc"


def edge_logs(shared_data):
    files = sorted((shared_data / "edge_cases").rglob("*")) + sorted(
        (shared_data / "copyleft" / "python-can-testdata").glob("*")
    )
    return [f for f in files if f.is_file() and f.suffix != ".dbc"]


def test_every_edge_case_log_decodes_or_names_the_file(shared_data, tmp_path, capsys):
    files = edge_logs(shared_data)
    assert len(files) > 30
    outcomes = {}
    for path in files:
        out = tmp_path / (path.name + ".jsonl")
        code = main(["decode", str(path), "--dbc", str(shared_data / GPS_DBC), "--format", "jsonl", "-o", str(out)])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert code in (0, 2), path
        if code == 2:
            assert str(path) in err, err
        outcomes[path.name] = code
    # Known damaged or unsupported inputs are reported as errors ...
    for name in ("empty.blf", "kona_candump_truncated_midline.log", "LICENSE.txt",
                 "kona_srscm_bench_gvret.csv"):
        assert outcomes[name] == 2, name
    # ... and readable ones decode.
    for name in ("issue_1256.asc", "test_CanFdMessage64.blf", "test_CanMessage_V2_1.trc", "empty.log"):
        assert outcomes[name] == 0, name


def test_truncated_log_keeps_frames_before_the_damage(shared_data):
    path = shared_data / "edge_cases/derived_truncated/kona_candump_truncated_midline.log"
    source = LogSource(path)
    frames = []
    with pytest.raises(LogError) as info:
        for bus, msg in source:
            frames.append((bus, msg.arbitration_id))
    assert len(frames) == 1000
    # The damaged line is the one after the last good frame, and the message says so.
    assert f"{path}:1001:" in str(info.value)
    assert "after 1000 frames" in str(info.value)


def test_truncated_log_decode_output_is_kept(shared_data, tmp_path, capsys):
    path = shared_data / "edge_cases/derived_truncated/kona_candump_truncated_midline.log"
    out = tmp_path / "kept.jsonl"
    dbc = shared_data / "dbc/kona-ev-dbc/derived/pcan.patched_BS_BU.dbc"
    assert main(["decode", str(path), "--dbc", str(dbc), "--format", "jsonl", "-o", str(out)]) == 2
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) > 1000  # samples of the 1000 good frames (several signals each)
    line_1000 = path.read_text().splitlines()[999]
    last_good = float(line_1000.split()[0].strip("()"))
    assert last_good - 0.01 < records[-1]["timestamp"] <= last_good


def test_broken_dbcs_name_file_and_line(shared_data):
    broken = {
        "dbc/kona-ev-dbc/pcan.dbc": 6,
        "dbc/opendbc/honda_civic_touring_2016_can_generated.dbc": 153,
        "dbc/opendbc/hyundai_canfd.dbc": 661,
        "dbc/opendbc/psa_aee2010_r3.dbc": 165,
    }
    for relative, line in broken.items():
        path = shared_data / relative
        with pytest.raises(DbcError) as info:
            load_dbc(path)
        assert str(info.value).startswith(f"{path}:{line}: cannot load DBC"), str(info.value)


def test_dbc_without_line_in_cantools_error_points_at_the_message(shared_data):
    path = shared_data / "dbc/opendbc/chrysler_cusw.dbc"
    with pytest.raises(DbcError) as info:
        load_dbc(path)
    text = path.read_text(errors="replace").splitlines()
    line = int(str(info.value).split(":")[1])
    assert "BSM_LEFT" in text[line - 1]


def test_non_strict_dbc_loads_with_a_warning_naming_the_problem(shared_data):
    loaded = load_dbc(shared_data / "dbc/model3dbc/Model3CAN.dbc")
    assert loaded.strict is False
    assert len(loaded.database.messages) == 148
    assert any("strict=False" in w and "DI_lashAngle" in w for w in loaded.warnings)


def test_every_cantools_edge_case_dbc_loads_or_names_the_file(shared_data):
    failures = 0
    for path in sorted((shared_data / "edge_cases/cantools_test_dbc").iterdir()):
        if path.suffix.lower() != ".dbc":
            continue
        try:
            load_dbc(path)
        except DbcError as error:
            failures += 1
            assert str(error).startswith(str(path))
    assert failures == 2  # issue_199.dbc and issue_199_extended.dbc


def test_bad_yaml_names_file_line_and_key(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("vehicle:\n  id: car1\nbuses:\n  - name: pt\n    bitrate: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == f"{bad}:5: buses[0].bitrate: expected an integer, got 'fast'"

    bad.write_text("buses:\n  - name: pt\n    dbc: [x.dbc]\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == f"{bad}:3: buses[0].dbc[0]: no such file x.dbc"

    with pytest.raises(ConfigError) as info:
        parse_config("buses:\n  - name: pt\n    colour: red\n", source="a.yaml")
    assert str(info.value).startswith("a.yaml:3: buses[0].colour: unknown key")

    with pytest.raises(ConfigError) as info:
        parse_config("vehicle: {id: [1, 2\n", source="b.yaml")
    assert str(info.value).startswith("b.yaml:2: invalid YAML")
