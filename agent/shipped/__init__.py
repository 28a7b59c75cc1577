"""Where the files the product ships live: the one place that knows.

The wheel carries them as package data (``setup.py`` maps the repository's
top-level ``dbc/`` and ``config/`` into ``agent.shipped.dbc`` and
``agent.shipped.config``; the demo log is ``simulator/data/``), found through
``importlib.resources``.  In a checkout, and in the editable install
``scripts/setup`` makes, the same files are read where they are in the
repository.  Everyone else asks here: ``dbc_file("kona-ev/pcan.dbc")``,
``example_config()``, ``systemd_unit()``, ``demo_log()``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEMO_LOG = "css_truck_j1939_and_canmod_gps.asc.gz"
EXAMPLE_CONFIG = "agent.yaml"
SYSTEMD_UNIT = "vehicle-agent.service"


class ShippedFileMissing(FileNotFoundError):
    """A file the package should carry is not there (a broken or partial installation)."""


def _checkout_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _directory(kind: str) -> Path:
    """``dbc`` or ``config``: the installed package data, else the repository's top-level folder."""
    installed = Path(os.fspath(resources.files(__name__))) / kind
    # Not installed from a wheel (a checkout, or the editable install): the folder at the top of the repository.
    path = installed if installed.is_dir() else _checkout_root() / kind
    if not path.is_dir():
        raise ShippedFileMissing(f"the shipped {kind}/ folder is missing (looked in {installed} and {path}); "
                                 "reinstall the package")
    return path


def _file(directory: Path, name: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise ShippedFileMissing(f"{name}: not among the shipped files in {directory}")
    return path


def dbc_dir() -> Path:
    return _directory("dbc")


def dbc_file(relative: str) -> Path:
    """A shipped DBC or catalog, e.g. ``css-electronics/canmod-gps.dbc``."""
    return _file(dbc_dir(), relative)


def config_dir() -> Path:
    return _directory("config")


def example_config() -> Path:
    return _file(config_dir(), EXAMPLE_CONFIG)


def systemd_unit() -> Path:
    return _file(config_dir(), SYSTEMD_UNIT)


def demo_log() -> Path:
    """The bundled real log (CSS Electronics, MIT) the demo replays."""
    return _file(Path(os.fspath(resources.files("simulator") / "data")), DEMO_LOG)


def listing() -> dict[str, Path]:
    """Every shipped file by its name as ``vehicle-agent shipped`` shows it."""
    files = {f"dbc/{p.relative_to(dbc_dir())}": p for p in sorted(dbc_dir().rglob("*")) if p.is_file()}
    files.update({f"config/{p.name}": p for p in sorted(config_dir().iterdir()) if p.is_file()})
    files[f"demo/{DEMO_LOG}"] = demo_log()
    return files
