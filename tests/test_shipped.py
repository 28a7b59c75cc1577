"""agent.shipped finds every file the product ships, and `vehicle-agent shipped` hands them out."""

from __future__ import annotations

import subprocess
import sys

import cantools
import pytest
import yaml

from agent import shipped
from agent.cli.main import main
from agent.sources.log import LogSource


def test_every_shipped_file_is_found_and_is_what_it_says():
    files = shipped.listing()
    assert {"config/agent.yaml", "config/vehicle-agent.service", "dbc/kona-ev/pcan.dbc", "dbc/kona-ev/LICENSE",
            "dbc/css-electronics/canmod-gps.catalog.yaml", "demo/css_truck_j1939_and_canmod_gps.asc.gz"} <= set(files)
    for name, path in files.items():
        assert path.is_file() and path.stat().st_size > 0, name
    assert len(cantools.database.load_file(shipped.dbc_file("css-electronics/canmod-gps.dbc")).messages) == 9
    assert "[Service]" in shipped.systemd_unit().read_text()
    assert yaml.safe_load(shipped.example_config().read_text())["buses"]
    assert sum(1 for _ in LogSource(shipped.demo_log())) == 57849


def test_a_file_that_is_not_shipped_is_named():
    with pytest.raises(shipped.ShippedFileMissing, match=r"nope\.dbc: not among the shipped files"):
        shipped.dbc_file("nope.dbc")


def test_the_command_lists_prints_and_refuses(capsys):
    assert main(["shipped"]) == 0
    listing = capsys.readouterr().out
    assert "config/vehicle-agent.service" in listing and "dbc/kona-ev/pcan.dbc" in listing
    assert main(["shipped", "config/vehicle-agent.service"]) == 0
    assert capsys.readouterr().out == shipped.systemd_unit().read_text()
    assert main(["shipped", "dbc/kona-ev/pcan.dbc", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(shipped.dbc_file("kona-ev/pcan.dbc"))
    assert main(["shipped", "config/nope"]) == 2
    assert "config/nope: not a shipped file" in capsys.readouterr().err


def test_the_example_config_loads_from_wherever_the_files_are(tmp_path):
    # Relative DBC paths in the example config resolve against the config's own folder, in a checkout
    # and in an installed wheel alike (both keep config/ and dbc/ side by side).
    result = subprocess.run([sys.executable, "-c", "from agent import shipped; from agent.config import load_config;"
                             "c = load_config(shipped.example_config()); print(len(c.buses))"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 2
