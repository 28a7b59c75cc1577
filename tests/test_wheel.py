"""The wheel carries what the commands need and nothing else at the top of site-packages; installed into a
fresh venv, `vehicle-agent demo` runs from an unrelated directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SHIPPED_IN_WHEEL = {
    "agent/shipped/dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc",
    "agent/shipped/dbc/css-electronics/canmod-gps.catalog.yaml",
    "agent/shipped/dbc/css-electronics/LICENSE",
    "agent/shipped/dbc/kona-ev/pcan.dbc",
    "agent/shipped/dbc/kona-ev/LICENSE",
    "agent/shipped/config/agent.yaml",
    "agent/shipped/config/vehicle-agent.service",
    "agent/vss_paths.yaml",
    "simulator/data/css_truck_j1939_and_canmod_gps.asc.gz",
    "simulator/data/LICENSE.css-api-examples.MIT",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Offline: the build backend [build-system] names comes with the test extra, so no isolated env is fetched.
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(out), str(REPO_ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (built,) = out.glob("vehicle_edge_agent-*.whl")
    return built


def test_the_wheel_holds_the_packages_and_their_data_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"agent", "simulator", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert set(names) >= SHIPPED_IN_WHEEL
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "dbc/", "config/", "docs/"))]
    assert not [n for n in names if "/copyleft/" in n or n.endswith((".pyc", ".sqlite"))]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel; its dependencies come from this interpreter's site-packages (offline),
    without this checkout's editable install (its finder lives in a .pth file a plain path entry does not run)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                             "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return venv


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_installed_package_uses_its_own_files_from_any_directory(installed, tmp_path):
    probe = ("import json, agent, simulator; from agent import shipped; "
             "print(json.dumps({'agent': agent.__file__, 'dbc': str(shipped.dbc_dir()), "
             "'unit': str(shipped.systemd_unit()), 'log': str(shipped.demo_log())}))")
    result = subprocess.run([str(installed / "bin" / "python"), "-c", probe], cwd=tmp_path, env=_clean_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    where = json.loads(result.stdout)
    for path in where.values():
        assert path.startswith(str(installed)), where  # nothing read from the checkout
    site = Path(where["agent"]).parents[1]
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith((".pth", ".dist-info"))
                  and not p.name.startswith(("_", "pip"))) == ["agent", "simulator"]


def test_vehicle_agent_demo_runs_from_an_empty_directory(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run([str(installed / "bin" / "vehicle-agent"), "demo", "--speed", "max",
                             "--report-json", "report.json"], cwd=work, env=_clean_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Demo log: css_truck_j1939_and_canmod_gps.asc.gz (57849 real CAN frames" in result.stdout
    report = json.loads((work / "report.json").read_text())
    assert report["sent"]["frames"] == 57849 and report["incident"]["verified"] is True
