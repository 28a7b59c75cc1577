"""Shared fixtures.  Helpers for real components (Mosquitto, simulator) live in their own modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.broker import mosquitto, mosquitto_tls  # noqa: F401
from tests.postgres import postgres  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.fail(f"shared test data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA
