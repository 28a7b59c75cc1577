"""Signal catalogs: VSS path, unit and category per Message.Signal; drafts from a DBC."""

from __future__ import annotations

import pytest

from agent.catalog import guess_category, load_catalog
from agent.cli.common import load_catalogs, load_dbcs
from agent.cli.main import main
from agent.decode import Decoder
from agent.yamlsrc import ConfigError


def test_shipped_catalog_classifies_and_unlisted_signals_are_unclassified(repo_root, tmp_path):
    bus_dbcs = load_dbcs([str(repo_root / "dbc/css-electronics/canmod-gps.dbc")])
    decoder = Decoder(bus_dbcs, load_catalogs(bus_dbcs, []))
    latitude = decoder.specs["gnss_pos.Latitude"]
    assert (latitude.vss_path, latitude.unit, latitude.category) == ("Vehicle.CurrentLocation.Latitude", "deg",
                                                                     "location")
    assert decoder.specs["gnss_speed.Speed"].category == "driving"
    # A DBC with no catalog: names stay DBC names, category fails closed.
    other = load_dbcs([str(repo_root / "dbc/kona-ev/comp_can.dbc")])
    bare = Decoder(other)
    spec = bare.specs["HeaterStatus.HeaterPower"]
    assert (spec.vss_path, spec.category, spec.unit) == ("HeaterStatus.HeaterPower", "unclassified", "W")


def test_every_shipped_dbc_has_a_catalog_covering_it(repo_root):
    dbcs = sorted((repo_root / "dbc").rglob("*.dbc"))
    assert len(dbcs) >= 4
    for dbc in dbcs:
        catalog = load_catalog(dbc.with_name(dbc.stem + ".catalog.yaml"))
        database = load_dbcs([str(dbc)])["*"][0].database
        keys = {f"{m.name}.{s.name}" for m in database.messages for s in m.signals}
        assert keys == set(catalog.entries), dbc


def test_catalog_init_drafts_units_and_guesses(repo_root, tmp_path, capsys):
    out = tmp_path / "gps.catalog.yaml"
    assert main(["catalog", "init", str(repo_root / "dbc/css-electronics/canmod-gps.dbc"), "-o", str(out)]) == 0
    catalog = load_catalog(out)
    assert len(catalog.entries) == 39
    assert all(entry.review for entry in catalog.entries.values())
    assert catalog.entries["gnss_pos.Latitude"].unit == "deg"
    assert catalog.entries["gnss_pos.Latitude"].category == "location"
    assert catalog.entries["gnss_imu.AccelerationX"].unit == "m/s^2"
    # Refuses to overwrite without --force.
    assert main(["catalog", "init", str(repo_root / "dbc/css-electronics/canmod-gps.dbc"), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_guesses_use_whole_words():
    assert guess_category("HeaterStatus", "SetpointRelated1") != "location"  # "related" is not "lat"
    assert guess_category("gnss_pos", "Latitude") == "location"
    assert guess_category("BMS", "StateOfCharge") == "charging"
    assert guess_category("Airbag", "DeployFlag") == "incident"
    assert guess_category("Foo", "Bar") == "unclassified"


def test_bad_catalog_names_file_line_key(tmp_path):
    path = tmp_path / "x.catalog.yaml"
    path.write_text("signals:\n  A.B:\n    vss: Vehicle.Speed\n    category: weather\n")
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}:4: signals.A.B.category: unknown category 'weather'")
