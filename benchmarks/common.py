"""Shared by the benchmarks: where the real data is and which DBC decodes which log."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(REPO_ROOT))

from tests.real_pairs import REAL_PAIRS  # noqa: E402

__all__ = ["REAL_PAIRS", "REPO_ROOT", "SHARED_DATA"]
