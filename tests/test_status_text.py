"""`vehicle-agent status` shows people local ISO times and a readable uptime, never epoch floats."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from agent.cli.status import _human
from agent.timespec import iso_local

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


def _status(last_puback):
    return {
        "vehicle": "v1234", "uptime_s": 3725.4, "resources": {"rss_bytes": 42e6, "cpu_seconds": 12.5},
        "pipeline": {"frames_in": 100, "batches_written": 3, "samples_written": 900, "decode": {}},
        "buses": {}, "buffer": {"backlog": [], "counters": {"pending_batches": 0}},
        "uplink": {"state": "connected", "acked": 3, "in_flight": 0, "last_puback_time": last_puback},
        "consent": {"version": 2, "granted": ["driving"]},
    }


def test_last_puback_and_start_are_local_iso_times():
    puback = 1_717_228_800.25
    text = _human(_status(puback))
    shown = re.search(rf"last PUBACK ({ISO})", text).group(1)
    assert datetime.fromisoformat(shown).timestamp() == pytest.approx(puback, abs=1)
    assert shown == iso_local(puback)
    assert "1717228800" not in text
    since = re.search(rf"up 1h 2m \(since ({ISO})\)", text).group(1)
    assert datetime.fromisoformat(since).timestamp() == pytest.approx(time.time() - 3725.4, abs=5)


def test_no_puback_yet_is_a_dash_not_none():
    assert "last PUBACK -" in _human(_status(None))
