"""Transport signals (checksums, rolling counters): the catalog's ``role:``, left out of uploads by default."""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from agent.catalog import load_catalog
from agent.collect import CollectionPlan, Collector, parse_collection
from agent.yamlsrc import ConfigError, load_text
from tests.collect_support import ListSink, make_specs, wheels

SPECS = make_specs()
# Wheels.Counter is a rolling counter; the test catalog leaves it unclassified, so give it a category here
# to see that the role alone keeps it in the car.
SPECS["Wheels.Counter"] = replace(SPECS["Wheels.Counter"], role="counter", category="driving")


def plan_of(yaml_text: str) -> CollectionPlan:
    text = textwrap.dedent(yaml_text)
    return parse_collection(load_text(text, "agent.yaml"), source_text=text)


def rows(plan: CollectionPlan) -> list:
    sink = ListSink()
    collector = Collector(plan, SPECS, sink)
    for t in range(3):
        collector.on_frame(wheels(t * 0.1, speed=100 + t, accel=5, counter=t))
    collector.flush()
    return [(row.stream, row.values) for row in sink.rows], collector.warnings


def test_catalog_reads_role_and_refuses_unknown_ones(tmp_path):
    path = tmp_path / "x.catalog.yaml"
    path.write_text("signals:\n  A.Crc:\n    vss: Vehicle.Private.A.Crc\n    category: driving\n    role: checksum\n"
                    "  A.Speed:\n    vss: Vehicle.Speed\n    category: driving\n")
    catalog = load_catalog(path)
    assert catalog.entries["A.Crc"].role == "checksum" and catalog.entries["A.Speed"].role == "data"
    path.write_text("signals:\n  A.Crc:\n    category: driving\n    role: crc\n")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}:4: signals.A.Crc.role: unknown role 'crc'")


def test_default_stream_leaves_transport_signals_in_the_car():
    plan = CollectionPlan()
    got, _ = rows(plan)
    assert got == [("telemetry", {"Speed": 100 + t, "Accel": 5}) for t in range(3)]
    assert not plan.wants(SPECS["Wheels.Counter"]) and plan.wants(SPECS["Wheels.Speed"])


def test_a_glob_rule_skips_them_and_transport_true_keeps_them():
    base = """
        collection:
          campaigns:
            - name: c
              stream: s
              signals:
                - {match: "Wheels.*"%s}
        """
    got, _ = rows(plan_of(base % ""))
    assert [values for _, values in got] == [{"Speed": 100 + t, "Accel": 5} for t in range(3)]
    plan = plan_of(base % ", transport: true")
    got, _ = rows(plan)
    assert [values for _, values in got] == [{"Speed": 100 + t, "Accel": 5, "Counter": t} for t in range(3)]
    assert plan.wants(SPECS["Wheels.Counter"])


def test_a_rule_naming_only_a_counter_says_why_it_takes_nothing():
    plan = plan_of("""
        collection:
          campaigns:
            - name: c
              signals: ["Wheels.Counter"]
        """)
    got, warnings = rows(plan)
    assert got == []
    assert warnings == ["agent.yaml:5: collection.campaigns[0].signals[0]: match 'Wheels.Counter' names only "
                        "transport signals (checksums, counters), which stay in the car; add transport: true to "
                        "upload them"]


def test_catalog_init_proposes_roles_from_a_real_log(repo_root, shared_data, tmp_path, capsys):
    from agent.cli.main import main

    out = tmp_path / "pcan.catalog.yaml"
    log = shared_data / "logs/kona_ev_2019_pcan_ccan_power_on_ready.log"
    assert main(["catalog", "init", str(repo_root / "dbc/kona-ev/pcan.dbc"), "-o", str(out), "--log", str(log)]) == 0
    assert "24 proposed as transport signals (counters, checksums) from the log" in capsys.readouterr().out
    catalog = load_catalog(out)
    roles = {key: entry for key, entry in catalog.entries.items() if entry.role != "data"}
    assert len(roles) == 24
    assert (roles["Steering.Checksum"].role, roles["Steering.Checksum"].algorithm) == ("checksum", "nibble_xor")
    assert (roles["IEB_387_WHEEL.AliveCounterWHL_PUL"].role, roles["IEB_387_WHEEL.AliveCounterWHL_PUL"].modulus) \
        == ("counter", 15)
    # Named like a counter, but the frames say otherwise (always 0): stays data.
    assert catalog.entries["CGW_462.SometimesCounter"].role == "data"
    # Without a log, names alone: fewer, and no algorithm.
    assert main(["catalog", "init", str(repo_root / "dbc/kona-ev/pcan.dbc"), "-o", str(out), "--force"]) == 0
    by_name = load_catalog(out)
    assert by_name.entries["Steering.Checksum"].role == "checksum" and by_name.entries["Steering.Checksum"].algorithm \
        is None
