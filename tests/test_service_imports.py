"""The service process stays lean: python-can's eager MF4 import (asammdf, pandas, pyarrow) is kept out of ``run``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.cli.main import keep_mf4_stack_out

pytestmark = pytest.mark.transport

PROBE = """
import sys
sys.argv = ["vehicle-agent", *{argv!r}]
from agent.cli.main import main
try:
    main()
except SystemExit:
    pass
import can
import json
heavy = ("asammdf", "pandas", "pyarrow", "numpy")
print(json.dumps(sorted(name for name in heavy if sys.modules.get(name) is not None)))
print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
"""


def _probe(argv: list[str]) -> tuple[list[str], int]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    return json.loads(out[-2]), int(out[-1])


def test_keep_mf4_stack_out_only_for_the_service_command():
    modules: dict = {}
    assert keep_mf4_stack_out(["-v", "run", "--config", "x.yaml"], modules) and modules == {"asammdf": None}
    for argv in (["replay", "run.asc"], ["-v", "convert", "a.mf4", "b.asc"], [], ["--help"]):
        modules = {}
        assert not keep_mf4_stack_out(argv, modules) and modules == {}
    loaded = {"asammdf": object()}
    assert not keep_mf4_stack_out(["run"], loaded) and loaded["asammdf"] is not None  # never unloaded


def test_a_run_process_loads_python_can_without_the_mf4_stack():
    heavy, rss_kb = _probe(["run", "--help"])
    assert heavy == []
    engineer, engineer_rss_kb = _probe(["convert", "--help"])
    if "asammdf" in engineer:  # installed here (the mf4 extra): the service saves what the engineer's tool loads
        assert {"asammdf", "pandas", "numpy"} <= set(engineer)
        assert engineer_rss_kb - rss_kb > 30_000, (rss_kb, engineer_rss_kb)
