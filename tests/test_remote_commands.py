"""The commands topic (agent/privacy/remote.py): refusals in a fixed vocabulary, never the payload's text;
at most a few ledger entries a minute for refusals, the rest counted and summarised; narrowings still apply."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from agent.ledger import Ledger
from agent.model import ALL_CATEGORIES
from agent.privacy.policy import ConsentPolicy
from agent.privacy.remote import ACTIONS, MAX_PAYLOAD, REASONS, RemoteCommands, classify, handle_remote_command
from tests.helpers.clock import FakeClock

VIN = "LFV2A21K6A4001234"
LAT, LON = "31.230416", "121.473701"
SECRETS = (VIN, LAT, LON, VIN.lower())


@pytest.fixture
def policy():
    return ConsentPolicy(None, clock=FakeClock())


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger.jsonl", FakeClock(step=0.001))


# Payloads an attacker might send, each carrying their text somewhere, and the reason each must get.
HOSTILE = [
    ({"action": "grant", "category": "location", "level": "round3", "vin": VIN, "lat": LAT, "lon": LON}, "widens"),
    ({"action": f"grant {VIN}", "category": "location"}, "unknown_action"),
    ({"action": "revoke", "category": f"location@{LAT},{LON}"}, "unknown_category"),
    ({"action": "narrow", "category": "location", "level": f"{LAT},{LON}"}, "unknown_level"),
    ({"action": "narrow", "category": "driving", "level": "city"}, "level_not_location"),
    ({"action": "narrow", "category": "driving", "expires_at": VIN}, "bad_expiry"),
    ({"action": "narrow", "category": "driving", "expires_at": 10 ** 400}, "bad_expiry"),
    ({"action": "narrow", "category": "driving", "expires_at": True}, "bad_expiry"),
    ({"action": "narrow", "category": "driving", "note": VIN}, "incomplete"),
    ({"action": "revoke", "purpose": VIN}, "incomplete"),
    ({"action": "zone_remove", "category": "location", "zone": {"lat": LAT, "lon": LON}}, "widens"),
    ({"action": "extend", "category": "driving", "expires_at": 4e9}, "widens"),
    ({"action": ["grant"], "category": VIN}, "unknown_action"),
]
RAW = [
    (f"grant location {VIN} {LAT} {LON}".encode(), "not_json"),
    (json.dumps([VIN, LAT]).encode(), "not_json"),
    (b"[" * 3000 + b"]" * 3000, "too_large"),
    (b"[" * 2000 + b"]" * 2000, "not_json"),  # deeper than Python's recursion limit
    (b'{"action": "narrow", "category": "driving", "expires_at": NaN}', "bad_expiry"),
    (b"\xff\xfe" + VIN.encode("utf-16-le"), "not_json"),
    (json.dumps({"action": "grant", "pad": VIN * 300}).encode(), "too_large"),
]


def _cases():
    return [(json.dumps(p).encode(), r) for p, r in HOSTILE] + RAW


@pytest.mark.parametrize(("payload", "reason"), _cases(), ids=[str(i) for i in range(len(_cases()))])
def test_refusals_are_recorded_in_a_fixed_vocabulary(payload, reason, policy, ledger, caplog):
    with caplog.at_level(logging.DEBUG):
        accepted, code = RemoteCommands().handle(payload, policy, ledger)
    assert (accepted, code) == (False, reason)
    [entry] = ledger.entries()
    assert entry.kind == "remote_refused" and set(entry.fields) == {"action", "category", "reason", "bytes"}
    assert entry.fields["action"] in ACTIONS and entry.fields["reason"] in REASONS
    assert entry.fields["category"] in (*ALL_CATEGORIES, "other", None)
    assert entry.fields["bytes"] == len(payload)
    stored = ledger.path.read_text()
    for secret in SECRETS:
        assert secret not in stored and secret not in caplog.text
    assert "refused consent command from the network" in caplog.text and f"{len(payload)} bytes" in caplog.text
    assert policy.version == 0 and ledger.verify().ok


def test_the_compatible_entry_point_returns_fixed_words(policy):
    assert handle_remote_command(json.dumps({"action": "grant", "category": VIN}).encode(), policy) == \
        (False, REASONS["unknown_category"])
    assert handle_remote_command(b'{"action": "narrow", "category": "location", "level": "city"}', policy) == \
        (False, REASONS["not_narrower"])  # location is not granted: nothing to narrow
    assert classify(b"x" * (MAX_PAYLOAD + 1)).reason == "too_large"


def test_refusals_beyond_the_rate_are_counted_and_summarised(policy, ledger, caplog):
    clock = FakeClock(now=100.0)
    commands = RemoteCommands(per_minute=10, clock=clock)
    payload = json.dumps({"action": "grant", "category": "location", "vin": VIN, "at": [LAT, LON]}).encode()
    with caplog.at_level(logging.INFO):
        for _ in range(20_000):
            commands.submit(payload)
        events = commands.process(policy, ledger)
        assert len(events) == 10 and len(ledger.entries()) == 10  # the burst the bucket allows
        clock.advance(1.0)
        assert commands.process(policy, ledger) == []  # still within the flood's pause: nothing yet
        clock.advance(6.0)  # the flood paused, and the bucket has a token again
        [summary] = commands.process(policy, ledger)
    entries = ledger.entries()
    assert len(entries) == 11 and entries[-1].fields == {"action": "other", "category": None,
                                                         "reason": "rate_limited:19990", "bytes": 19990 * len(payload)}
    assert summary == (False, "19990 more refused, not recorded one by one (widens 19990)")
    assert commands.counters() == {"received": 20_000, "accepted": 0, "refused": 20_000, "rate_limited": 19_990,
                                   "pending": 0, "reasons": {"widens": 20_000}}
    # The log got as few lines as the ledger got entries.
    assert caplog.text.count("refused consent command") == 10 and caplog.text.count("more consent commands") == 1
    assert VIN not in ledger.path.read_text() + caplog.text and ledger.path.stat().st_size < 5000


def test_a_sustained_flood_gets_a_few_entries_a_minute(policy, ledger):
    clock = FakeClock(now=100.0)
    commands = RemoteCommands(per_minute=10, clock=clock)
    for _second in range(600):  # ten minutes, 100 refused commands a second, processed once a second
        for _ in range(100):
            commands.submit(b'{"action": "grant", "category": "driving"}')
        clock.advance(1.0)
        commands.process(policy, ledger)
    entries = ledger.entries()
    assert len(entries) <= 10 + 11 * 10  # the first burst, then at most ten plus one summary a minute
    recorded = sum(1 for e in entries if not e.fields["reason"].startswith("rate_limited:"))
    summarised = sum(int(e.fields["reason"].split(":")[1]) for e in entries
                     if e.fields["reason"].startswith("rate_limited:"))
    commands.flush(ledger)
    summarised += sum(int(e.fields["reason"].split(":")[1]) for e in ledger.entries()[len(entries):])
    assert recorded + summarised == 60_000 == commands.counters()["refused"]


def test_narrowings_still_apply_during_a_flood(ledger):
    policy = ConsentPolicy(None, clock=FakeClock())
    policy.grant("driving", "90d")
    policy.grant("location", "90d", level="round3")
    commands = RemoteCommands(clock=FakeClock())
    for _ in range(5000):
        commands.submit(b'{"action": "grant", "category": "cabin"}')
    commands.submit(b'{"action": "revoke", "category": "driving"}')
    commands.submit(b'{"action": "narrow", "category": "location", "level": "city"}')
    commands.submit(b'{"action": "narrow", "category": "location", "level": "round3"}')  # finer: refused
    events = commands.process(policy, ledger)
    assert (True, "driving revoked") in events and (True, "location narrowed to city") in events
    assert not policy.is_granted("driving") and policy.level("location") == "city"
    counters = commands.counters()
    assert counters["accepted"] == 2 and counters["refused"] == 5001
    assert counters["reasons"] == {"widens": 5000, "not_narrower": 1}


def test_a_full_queue_refuses_as_busy(policy, ledger):
    commands = RemoteCommands(queue_size=3, clock=FakeClock())
    for _ in range(5):
        commands.submit(b'{"action": "revoke", "category": "driving"}')
    assert commands.counters()["pending"] == 3 and commands.counters()["reasons"] == {"busy": 2}
    commands.process(policy, ledger)
    assert commands.counters()["accepted"] == 3  # revoking what is not granted is accepted (and changes nothing)
    assert [e.fields["reason"] for e in ledger.entries()] == ["busy", "busy"]


def test_submit_is_safe_from_several_threads(policy, ledger):
    commands = RemoteCommands(clock=FakeClock())
    payloads = [b'{"action": "grant", "category": "location"}', b"garbage", b'{"action": "revoke"}']

    def flood(payload: bytes) -> None:
        for _ in range(2000):
            commands.submit(payload)

    threads = [threading.Thread(target=flood, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    commands.flush(ledger)
    counters = commands.counters()
    assert counters["received"] == counters["refused"] == 6000
    assert counters["reasons"] == {"widens": 2000, "not_json": 2000, "incomplete": 2000}
    entries = ledger.entries()
    assert len(entries) == 11 and entries[-1].fields["reason"] == "rate_limited:5990" and ledger.verify().ok
