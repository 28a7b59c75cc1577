"""One reading of times and durations for every command, and local ISO times for people."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from agent.cli.main import build_parser
from agent.timespec import iso_local, parse_duration, parse_moment

NOW = 1_717_228_800.0  # 2024-06-01T08:00:00Z


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("7d", 604800.0), ("1w", 604800.0),
    ("1.5h", 5400.0), ("1h30m", 5400.0), ("2d 4h", 187200.0), ("7d ago", 604800.0), (" 3M ", 180.0),
])
def test_durations(text, seconds):
    assert parse_duration(text, "--duration") == seconds


@pytest.mark.parametrize("text", ["", "x", "5q", "90 2h", "h", "-5m", "inf", "nan", "1e400"])
def test_bad_durations_name_the_option_and_the_forms(text):
    with pytest.raises(ValueError) as refused:
        parse_duration(text, "--duration")
    assert str(refused.value) == f"--duration: expected a duration such as 90s, 15m, 2h, 7d, 1w or 1h30m, got {text!r}"


def test_moments_relative_absolute_and_named():
    assert parse_moment("now", now=NOW) == NOW
    assert parse_moment("7d", now=NOW) == NOW - 7 * 86400
    assert parse_moment("12h ago", now=NOW) == NOW - 12 * 3600
    assert parse_moment("3600", now=NOW) == NOW - 3600  # a small bare number: seconds ago
    assert parse_moment("1717228800", now=0) == NOW  # a large one: epoch seconds
    assert parse_moment("2024-06-01T08:00:00Z") == NOW
    assert parse_moment("2024-06-01T16:00:00+08:00") == NOW
    naive = datetime(2024, 6, 1, 8, 0).timestamp()  # no offset: the machine's local time
    assert parse_moment("2024-06-01T08:00") == naive
    assert parse_moment("2024-06-01") == datetime(2024, 6, 1).timestamp()


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset to switch the zone")
def test_today_and_yesterday_are_local_midnights_across_a_dst_change(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        # Clocks sprang forward at 02:00 on 2024-03-31: that day has 23 hours, so
        # midnight to midnight across it is 23 h, and "24 h ago" would not be a midnight at all.
        now = datetime(2024, 4, 1, 12, 0).timestamp()
        today, yesterday = parse_moment("today", now=now), parse_moment("yesterday", now=now)
        assert datetime.fromtimestamp(today).strftime("%Y-%m-%d %H:%M") == "2024-04-01 00:00"
        assert datetime.fromtimestamp(yesterday).strftime("%Y-%m-%d %H:%M") == "2024-03-31 00:00"
        assert today - yesterday == 23 * 3600
        assert iso_local(now) == "2024-04-01T12:00:00+02:00"
        assert iso_local(datetime(2024, 3, 30, 12, 0).timestamp()) == "2024-03-30T12:00:00+01:00"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.fixture
def berlin(monkeypatch):
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset to switch the zone")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def test_a_local_time_the_clocks_skip_is_refused_not_guessed(berlin):
    with pytest.raises(ValueError) as refused:
        parse_moment("2024-03-31T02:30", "--from")
    assert str(refused.value).startswith("--from: '2024-03-31T02:30' does not exist in local time")
    assert "give it with a UTC offset, e.g. 2024-03-31T02:30+0" in str(refused.value)


def test_a_local_time_shown_twice_is_refused_naming_both_offsets(berlin):
    with pytest.raises(ValueError) as refused:
        parse_moment("2024-10-27T02:30", "--to")
    assert str(refused.value) == ("--to: '2024-10-27T02:30' happens twice in local time (daylight saving time "
                                  "ends); give it with a UTC offset: 2024-10-27T02:30+02:00 or "
                                  "2024-10-27T02:30+01:00")
    # Either one, given with its offset, is read exactly; one hour apart.
    summer, winter = parse_moment("2024-10-27T02:30+02:00"), parse_moment("2024-10-27T02:30+01:00")
    assert winter - summer == 3600
    assert iso_local(summer) == "2024-10-27T02:30:00+02:00" and iso_local(winter) == "2024-10-27T02:30:00+01:00"


def test_local_times_either_side_of_a_dst_change_are_read_in_their_own_offset(berlin):
    assert parse_moment("2024-10-27T01:59:59") == datetime(2024, 10, 26, 23, 59, 59, tzinfo=timezone.utc).timestamp()
    assert parse_moment("2024-10-27T03:30") == datetime(2024, 10, 27, 2, 30, tzinfo=timezone.utc).timestamp()
    assert parse_moment("2024-03-31T03:00") == datetime(2024, 3, 31, 1, 0, tzinfo=timezone.utc).timestamp()
    assert parse_moment("2024-06-01") == datetime(2024, 5, 31, 22, 0, tzinfo=timezone.utc).timestamp()


def test_bad_moments_show_every_accepted_form():
    with pytest.raises(ValueError) as refused:
        parse_moment("soon", "--since")
    message = str(refused.value)
    assert message.startswith("--since: expected now, today, yesterday, a duration ago (7d, 12h, 30m)")
    assert "epoch seconds; got 'soon'" in message


def test_iso_local_round_trips_and_marks_missing_times():
    text = iso_local(NOW + 0.123456, "microseconds")
    assert datetime.fromisoformat(text).timestamp() == pytest.approx(NOW + 0.123456, abs=1e-6)
    assert datetime.fromisoformat(iso_local(NOW)).astimezone(timezone.utc).hour == 8
    assert iso_local(None) == "-" and iso_local(float("nan")) == "-"


@pytest.mark.parametrize(("argv", "dest", "expected"), [
    (["export", "--from", "7d", "--to", "now"], "start", -7 * 86400),
    (["ledger", "--since", "7d"], "since", -7 * 86400),
    (["record", "--bus", "virtual://x", "-o", "x.log", "--duration", "5m"], "duration", 300.0),
    (["record", "--bus", "virtual://x", "-o", "x.log", "--idle-timeout", "1m30s"], "idle_timeout", 90.0),
    (["monitor", "--log", "x.log", "--duration", "2m"], "duration", 120.0),
    (["consent", "history", "--state", "s", "--since", "2d"], "since", -2 * 86400),
    (["export", "--from", "1717228800", "--to", "now"], "start", NOW),
])
def test_every_command_takes_the_same_forms(argv, dest, expected):
    """`export --from 7d` was refused while `ledger --since 7d` took it: now one parser serves both."""
    args = build_parser().parse_args(argv)
    value = getattr(args, dest)
    if expected < 0:  # relative to now
        assert value == pytest.approx(time.time() + expected, abs=5)
    else:
        assert value == expected


def test_vehicle_sim_durations_use_the_same_parser():
    from agent.cli.framework import build_parser as frame
    from simulator.cli import SUBCOMMANDS

    parser = frame("vehicle-sim", "", SUBCOMMANDS)
    assert parser.parse_args(["cloud", "--duration", "10m"]).duration == 600.0
    assert parser.parse_args(["generate", "--dbc", "a.dbc", "-o", "x.log", "--duration", "1h"]).duration == 3600.0
    assert parser.parse_args(["replay", "x.log", "--to", "virtual://x", "--wait-timeout", "1m"]).wait_timeout == 60.0


def test_a_bad_time_on_the_command_line_exits_2_naming_the_option(capsys):
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["export", "--from", "next week", "--to", "now"])
    assert refused.value.code == 2
    assert "argument --from: expected now, today" in capsys.readouterr().err


