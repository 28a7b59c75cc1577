"""People read local ISO times with their offset, never epoch floats: ledger, consent history, incidents,
export CSVs.  Each shown time is parsed back and compared with the epoch it stands for, in a zone with a
half-hour offset (Asia/Kolkata, +05:30) so that a UTC time or a dropped offset would show."""

from __future__ import annotations

import csv
import json
import re
import time
from datetime import datetime

import pytest

from agent.cli.main import main
from agent.export.writer import export_range
from agent.ledger import Ledger
from agent.privacy.policy import ConsentPolicy
from agent.privacy.store import ConsentStore
from agent.sources.log import LogSource
from simulator.scenario import TRUCK_DBC
from tests.helpers.clock import FakeClock
from tests.test_export import recorded  # noqa: F401  (module-scoped: a drive, its incident snapshot)
from tests.test_incident import BUS_MAP, make_decoder

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d:\d\d"
T0 = 1_750_000_000.0  # 2025-06-15T20:36:40+05:30


@pytest.fixture
def kolkata(monkeypatch):
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset to switch the zone")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _state(tmp_path) -> tuple:
    state = tmp_path / "state"
    state.mkdir()
    ledger = Ledger.in_dir(state, FakeClock(T0, step=60.0))
    policy = ConsentPolicy(ConsentStore.in_dir(state), clock=ledger.clock)
    policy.on_change(ledger.record_consent_change)
    policy.grant("location", "7d", level="city", purpose="traffic map")
    ledger.record_upload(1, b"x" * 120, ["location"], 40, (T0 + 1.25, T0 + 9.5), "city", "127.0.0.1:1883",
                         policy.version, stream="telemetry")
    policy.revoke("location")
    return state, ledger


def test_ledger_listing_shows_each_entry_and_upload_span_in_local_iso(kolkata, tmp_path, capsys):
    state, ledger = _state(tmp_path)
    entries = ledger.entries()
    assert main(["ledger", "--state", str(state)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(entries) == 3
    for line, entry in zip(lines, entries):
        shown = re.match(rf"#{entry.seq}\s+({ISO})  ", line).group(1)
        assert shown.endswith("+05:30") and _epoch(shown) == int(entry.time)
    first, last = re.search(rf"\(({ISO}) \.\. ({ISO})\)", lines[1]).groups()
    assert (_epoch(first), _epoch(last)) == (int(T0 + 1.25), int(T0 + 9.5))
    until = re.search(rf"until ({ISO})\)", lines[0]).group(1)
    grant = ConsentStore.in_dir(state).history()[0]
    assert _epoch(until) == int(grant.detail["expires_at"]) == int(grant.time + 7 * 86400)
    assert not re.search(r"\b1750\d{6}\b", "\n".join(lines))  # no epoch seconds for people


def test_ledger_since_takes_a_local_iso_time(kolkata, tmp_path, capsys):
    state, ledger = _state(tmp_path)
    second = ledger.entries()[1]
    since = datetime.fromtimestamp(second.time).isoformat(timespec="seconds")  # naive: read as local time
    assert main(["ledger", "--state", str(state), "--since", since]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["#2", "#3"]


def test_consent_history_lists_every_change_with_its_local_time(kolkata, tmp_path, capsys):
    state, _ = _state(tmp_path)
    changes = ConsentStore.in_dir(state).history()
    assert main(["consent", "history", "--state", str(state)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(changes) == 2
    assert "consent v1: grant location by owner (expiry 7d, level city, purpose traffic map, until " in lines[0]
    assert lines[1].endswith("consent v2: revoke location by owner")
    for line, change in zip(lines, changes):
        assert _epoch(re.match(rf"({ISO})  ", line).group(1)) == int(change.time)
    assert main(["consent", "history", "--state", str(state), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out.startswith("no consent changes in that period in ")


def test_consent_history_json_keeps_epoch_seconds(tmp_path, capsys):
    state, _ = _state(tmp_path)
    assert main(["consent", "history", "--state", str(state), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    changes = ConsentStore.in_dir(state).history()
    assert [(r["version"], r["kind"], r["time"]) for r in records] == [(1, "grant", changes[0].time),
                                                                      (2, "revoke", changes[1].time)]
    assert all(T0 < r["time"] < T0 + 1000 for r in records)


def test_consent_history_of_a_missing_state_dir_says_so(tmp_path, capsys):
    assert main(["consent", "history", "--state", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.strip() == f"no consent changes in {tmp_path / 'none'}"


def test_consent_history_refuses_a_bad_since(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["consent", "history", "--state", str(tmp_path), "--since", "last tuesday"])
    assert refused.value.code == 2
    assert "argument --since: expected now, today, yesterday" in capsys.readouterr().err


def test_incidents_listing_shows_the_trigger_time_in_local_iso(kolkata, recorded, capsys):  # noqa: F811
    assert main(["incidents", "--state", str(recorded["state"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "TRIGGER TIME (LOCAL)" in out[0] and len(out) == 2
    shown = re.search(rf"\s({ISO})\s", out[1]).group(1)
    info = recorded["store"].info(recorded["id"])
    assert shown.endswith("+05:30")
    assert _epoch(shown) == pytest.approx(info.trigger.timestamp, abs=1e-3)


def test_export_csv_iso_column_is_local_and_parses_back_to_the_epoch(kolkata, recorded, tmp_path):  # noqa: F811
    frames = list(LogSource(recorded["root"] / "drive.log", bus_map=BUS_MAP))
    start = recorded["truth"]["start_time"] + 5.0
    export_range(frames, make_decoder(), start, start + 3, tmp_path / "out", recorded["key"], [TRUCK_DBC])
    rows = [row for path in sorted((tmp_path / "out" / "samples").glob("*.csv"))
            for row in csv.DictReader(path.open())]
    assert len(rows) > 50
    for row in rows:
        assert row["time_local"].endswith("+05:30")
        assert _epoch(row["time_local"]) == pytest.approx(float(row["timestamp"]), abs=1e-6)
        assert start <= float(row["timestamp"]) <= start + 3
