"""Bad input gives decoded output or a one-line error naming the file: never a traceback."""

from __future__ import annotations

import json
import random
import re

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
    outcomes, strict_outcomes, errors = {}, {}, {}
    for path in files:
        out = tmp_path / (path.name + ".jsonl")
        for strict, seen in ((False, outcomes), (True, strict_outcomes)):
            code = main(["decode", str(path), "--dbc", str(shared_data / GPS_DBC), "--format", "jsonl", "-o",
                         str(out), *(["--strict"] if strict else [])])
            err = capsys.readouterr().err
            assert "Traceback" not in err
            assert code in (0, 1, 2), path
            if code != 0:
                assert str(path) in err or "no frame decoded" in err, err
            seen[path.name] = code
            if not strict:
                errors[path.name] = err
    damaged = ("kona_candump_truncated_midline.log", "css_nissan_leaf_blf_truncated_60pct.blf",
               "css_truck_asc_truncated_no_end_triggerblock.asc")
    # --strict: known damaged or unsupported inputs are errors (exit 2), truncated ones saying so ...
    for name in (*damaged, "LICENSE.txt", "kona_srscm_bench_gvret.csv", "css_nissan_leaf_blf_header_only.blf"):
        assert strict_outcomes[name] == 2, name
    # ... by default a damaged log is used up to the damage and the damage is a warning naming the file ...
    for name in damaged:
        assert "warning" in errors[name] and ("ended early" in errors[name] or "cut off" in errors[name]), name
        assert outcomes[name] in (0, 1) and "decoded 0 of 0 frames" not in errors[name], errors[name]
    assert outcomes["LICENSE.txt"] == 2  # not a log format at all
    assert outcomes["kona_srscm_bench_gvret.csv"] == 1 and "every line with content is damaged" in \
        errors["kona_srscm_bench_gvret.csv"]
    # ... logs without a single frame fail (exit 1), ...
    for name in ("empty.asc", "empty.blf", "empty.csv", "empty.log", "empty.trc"):
        assert outcomes[name] == strict_outcomes[name] == 1, name
    # ... and readable ones are read: exit 1 only because the GPS DBC decodes none of their frames, which is
    # said, not passed off as success.
    for name in ("issue_1256.asc", "test_CanFdMessage64.blf", "test_CanMessage_V2_1.trc"):
        assert outcomes[name] == 1 and "no frame decoded" in errors[name], name
        assert "decoded 0 of 0 " not in errors[name] and " of 0 frames" not in errors[name]


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


@pytest.mark.parametrize("strict", [False, True])
def test_truncated_log_decode_output_is_kept(shared_data, tmp_path, capsys, strict):
    path = shared_data / "edge_cases/derived_truncated/kona_candump_truncated_midline.log"
    out = tmp_path / "kept.jsonl"
    dbc = shared_data / "dbc/kona-ev-dbc/derived/pcan.patched_BS_BU.dbc"
    code = main(["decode", str(path), "--dbc", str(dbc), "--format", "jsonl", "-o", str(out),
                 *(["--strict"] if strict else [])])
    err = capsys.readouterr().err
    # --strict stops with an error; by default the cut last line is skipped, said, and the decode succeeds.
    assert code == (2 if strict else 0)
    assert f"{path}:1001" in err and ("cut off" in err or "damaged" in err), err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) > 1000  # samples of the 1000 good frames (several signals each)
    line_1000 = path.read_text().splitlines()[999]
    last_good = float(line_1000.split()[0].strip("()"))
    assert last_good - 0.01 < records[-1]["timestamp"] <= last_good


# -- logs that end early, or hold nothing: said on stderr, never a silent exit 0 --------------------------------
# Real logs are copied into tmp_path and the copy is cut or garbled; the shared data stays read-only.

TRUCK_ASC = "logs/css_truck_j1939_and_canmod_gps.asc"
NISSAN_BLF = "logs/css_nissan_leaf_uds_and_canmod_gps.blf"
KONA_LOG = "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"
J1939_DBC = "dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc"


def _copy(shared_data, name, target, keep=None):
    """A copy of a real log (all of it, or its first ``keep`` bytes) at ``target``."""
    data = (shared_data / name).read_bytes()
    target.write_bytes(data if keep is None else data[:keep])
    return target


def _decode(capsys, path, dbc, *extra):
    out = path.with_suffix(".jsonl")
    code = main(["decode", str(path), "--dbc", str(dbc), *extra, "--format", "jsonl", "-o", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return code, capsys.readouterr().err, records


def test_a_truncated_blf_says_what_was_read_and_where_it_ended(shared_data, tmp_path, capsys):
    dbc = shared_data / GPS_DBC
    full = _copy(shared_data, NISSAN_BLF, tmp_path / "full.blf")
    code, err, complete = _decode(capsys, full, dbc)
    assert code == 0 and "ended early" not in err
    size = full.stat().st_size
    cut = _copy(shared_data, NISSAN_BLF, tmp_path / "half.blf", keep=size // 2)
    code, err, records = _decode(capsys, cut, dbc, "--strict")
    assert code == 2 and "Traceback" not in err
    assert re.search(rf"{re.escape(str(cut))}: read (\d+) frames; the file ended early \(truncated BLF object at "
                     rf"byte \d+; the file ends at byte {size // 2}\)", err), err
    # What was read before the cut is kept, and it is exactly the beginning of the whole log.
    assert 0 < len(records) < len(complete) and records == complete[:len(records)]
    # Without --strict the same frames are decoded and the damage is a warning: a binary log cannot be read
    # past it, but what was read is used.
    code, err, lenient = _decode(capsys, cut, dbc)
    assert code == 0 and "warning:" in err and "the file ended early (truncated BLF object" in err, err
    assert lenient == records
    header_only = _copy(shared_data, NISSAN_BLF, tmp_path / "header_only.blf", keep=144)
    code, err, _ = _decode(capsys, header_only, dbc, "--strict")
    assert code == 2 and f"read 0 frames; the file ended early (its header says {size} bytes" in err
    torn_header = _copy(shared_data, NISSAN_BLF, tmp_path / "torn_header.blf", keep=100)
    code, err, _ = _decode(capsys, torn_header, dbc, "--strict")
    assert code == 2 and "the BLF file header is cut off at byte 100" in err


def test_a_truncated_asc_says_what_was_read_and_where_it_ended(shared_data, tmp_path, capsys):
    lines = (shared_data / TRUCK_ASC).read_bytes().splitlines(keepends=True)
    # Cut at a line end (the logger stopped between lines) and inside a frame's data bytes.
    whole_lines = tmp_path / "lines.asc"
    whole_lines.write_bytes(b"".join(lines[:3000]))
    mid_data = tmp_path / "mid_data.asc"
    mid_data.write_bytes(b"".join(lines[:3000]) + lines[3000][:-12])
    dbc = shared_data / J1939_DBC  # the first lines are the truck's J1939 bus
    code, err, first = _decode(capsys, whole_lines, dbc, "--j1939", "--strict")
    assert code == 2 and f"{whole_lines}: read 2995 frames; the file ended early (no 'End TriggerBlock' after " \
        "line 3000)" in err, err
    assert first
    code, err, again = _decode(capsys, mid_data, dbc, "--j1939", "--strict")
    assert code == 2 and f"{mid_data}: read 2995 frames; the file ended early (line 3001 cut off)" in err, err
    assert again == first  # the cut frame is not decoded from half its bytes
    code, err, lenient = _decode(capsys, mid_data, dbc, "--j1939")
    assert code == 0 and f"{mid_data}:3001: cut off" in err and "warning:" in err, err
    assert lenient == first


def test_garbage_and_other_formats_named_asc_say_so(shared_data, tmp_path, capsys):
    dbc = shared_data / GPS_DBC
    noise = tmp_path / "noise.asc"
    noise.write_bytes(random.Random(11).randbytes(4096))
    candump = _copy(shared_data, KONA_LOG, tmp_path / "candump.asc")  # a real log, in another format
    garbled = tmp_path / "garbled.asc"
    garbled.write_bytes(bytes(b ^ 0x5A for b in (shared_data / TRUCK_ASC).read_bytes()[:65536]))
    for path, size in ((noise, 4096), (candump, candump.stat().st_size), (garbled, 65536)):
        code, err, records = _decode(capsys, path, dbc)
        assert code == 1 and not records, path
        assert f"vehicle-agent decode: error: {path}: no CAN frames in {size} bytes (not an ASC log?)" in err, err
        assert main(["stats", str(path), "--dbc", str(dbc)]) == 1
        assert f"{path}: no CAN frames in {size} bytes" in capsys.readouterr().err
    # replay says it too (its exit code is the pipeline's)
    assert main(["replay", str(noise), "--dbc", str(dbc), "--buffer", str(tmp_path / "b.sqlite")]) == 0
    assert f"vehicle-agent replay: warning: {noise}: no CAN frames in 4096 bytes" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".asc", ".blf", ".log", ".trc", ".csv"])
def test_an_empty_log_of_each_format_fails_with_a_message(suffix, shared_data, tmp_path, capsys):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    dbc = shared_data / GPS_DBC
    code, err, _ = _decode(capsys, path, dbc)
    assert code == 1 and f"{path}: no CAN frames: the file is empty (0 bytes)" in err, err
    assert main(["stats", str(path), "--dbc", str(dbc), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].endswith("the file is empty (0 bytes)") and str(path) in captured.err


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
