"""Tamper evidence of the ledger (issue 11): deletions the head alone cannot see, anchors kept outside the
car, personal values refused by what they look like, and hostile JSON that must not crash ``verify``."""

from __future__ import annotations

import hashlib
import json
import logging
from types import SimpleNamespace

import pytest

from agent.cli.main import main
from agent.export.anchor import vehicle_anchor
from agent.export.signing import KEY_FILE, display_fingerprint, load_or_create_key
from agent.ledger import Ledger
from agent.ledger_chain import (
    GENESIS,
    anchor_from_document,
    canonical,
    check_fields,
    compare_anchor,
    loads_limited,
    looks_personal,
    sha256_hex,
)
from agent.privacy.consent import ConsentChange, ConsentError
from agent.privacy.policy import ConsentPolicy
from agent.privacy.store import ConsentStore
from tests.helpers.clock import FakeClock as Clock

pytestmark = pytest.mark.consent

T0 = 1_750_000_000.0
VIN = "1FUJGLDR9CLBP8834"
POSITION = "31.230416,121.473701"
DEEP = b"[" * 100_000 + b"]" * 100_000


def filled(state, count: int = 8) -> Ledger:
    """A state dir as the agent leaves it: consent changes (with their ledger entries) and uploads."""
    state.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.in_dir(state, Clock(T0, step=1.5))
    policy = ConsentPolicy(ConsentStore.in_dir(state), clock=ledger.clock)
    policy.on_change(ledger.record_consent_change)
    policy.grant("location", "90d", level="city", purpose="traffic map")
    for batch in range(count - 1):
        ledger.record_upload(batch + 1, bytes([batch]) * 50, ["location"], 10, (T0, T0 + 1), "city",
                             "mqtt.example.net:8883", policy.version, stream="telemetry")
    return ledger


def reopened(ledger: Ledger) -> Ledger:
    return Ledger.in_dir(ledger.path.parent, repair=False)


def cut(ledger: Ledger, keep: int) -> None:
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(b"".join(lines[:keep]))


def rewrite_head(ledger: Ledger) -> None:
    """What someone covering their tracks does after cutting the ledger: a head that matches it again."""
    lines = ledger.path.read_bytes().splitlines()
    ledger.head_path.write_bytes(canonical({"seq": len(lines), "line_sha256": sha256_hex(lines[-1])}) + b"\n")


# -- what survives which deletion ----------------------------------------------------------------

def test_the_first_entry_writes_the_created_marker_once(tmp_path):
    ledger = filled(tmp_path / "state")
    first = ledger.path.read_bytes().split(b"\n", 1)[0]
    marker = json.loads(ledger.created_path.read_bytes())
    assert marker == {"first_line_sha256": sha256_hex(first), "first_time": json.loads(first)["time"]}
    before = ledger.created_path.read_bytes()
    ledger.record_purge(["location"], [1], "revoke")
    assert ledger.created_path.read_bytes() == before and ledger.verify().ok


def test_head_deleted_together_with_the_tail_is_damage(tmp_path):
    ledger = filled(tmp_path / "state")
    cut(ledger, 5)
    ledger.head_path.unlink()
    result = reopened(ledger).verify()
    assert not result.ok  # before: "ledger intact: 5 entries"
    assert "the head file ledger.head is missing (deleted)" in result.problem
    assert "ledger.created says it has had entries since" in result.problem
    assert "entries after seq 5 may have been cut off" in result.problem


def test_ledger_and_head_both_deleted_is_damage(tmp_path):
    ledger = filled(tmp_path / "state")
    ledger.path.unlink()
    ledger.head_path.unlink()
    result = reopened(ledger).verify()
    assert not result.ok and result.entries == 0  # before: "ledger intact: 0 entries"
    assert result.problem.startswith("the ledger file is missing (deleted): ledger.created says")


def test_every_ledger_file_deleted_the_consent_file_still_says_it_existed(tmp_path):
    ledger = filled(tmp_path / "state")
    for path in (ledger.path, ledger.head_path, ledger.created_path):
        path.unlink()
    result = reopened(ledger).verify()
    assert not result.ok
    assert "consent.jsonl records 1 consent change(s), and every consent change is written to the ledger" in \
        result.problem


def test_a_ledger_deleted_and_started_again_is_not_the_one_that_was_created(tmp_path):
    ledger = filled(tmp_path / "state")
    ledger.path.unlink()
    ledger.head_path.unlink()
    fresh = Ledger.in_dir(ledger.path.parent, Clock(T0 + 100, step=1))
    fresh.record_purge(["driving"], [1], "test")  # the agent goes on writing: a new chain from seq 1
    result = reopened(ledger).verify()
    assert not result.ok and result.line == 1
    assert "not the entry the ledger started with" in result.problem


def test_a_head_missing_from_an_older_ledger_without_marker_is_damage(tmp_path):
    ledger = filled(tmp_path / "state")
    ledger.created_path.unlink()
    (tmp_path / "state" / "consent.jsonl").unlink()
    ledger.head_path.unlink()
    result = reopened(ledger).verify()
    assert not result.ok and "a ledger with entries always has one" in result.problem


def test_an_older_ledger_gets_its_marker_at_the_next_entry(tmp_path):
    ledger = filled(tmp_path / "state")
    ledger.created_path.unlink()
    later = reopened(ledger)
    later.record_purge(["location"], [3], "revoke")
    marker = json.loads(later.created_path.read_bytes())
    assert marker["marked_at_seq"] == 9
    assert marker["first_line_sha256"] == sha256_hex(ledger.path.read_bytes().split(b"\n", 1)[0])
    assert later.verify().ok


def test_a_new_state_dir_is_intact_and_empty(tmp_path):
    result = Ledger.in_dir(tmp_path).verify()
    assert result.ok and result.entries == 0
    (tmp_path / "ledger.jsonl").write_bytes(b"")
    assert Ledger.in_dir(tmp_path).verify().ok


def test_an_edited_marker_is_damage(tmp_path):
    ledger = filled(tmp_path / "state")
    ledger.created_path.write_bytes(b"{nope")
    assert "ledger.created is unreadable" in reopened(ledger).verify().problem
    ledger.created_path.write_bytes(DEEP)
    assert "ledger.created is unreadable" in reopened(ledger).verify().problem


# -- the anchor: the head, kept outside the car ----------------------------------------------------

def test_anchor_is_the_head_and_reads_the_file_when_another_process_wrote(tmp_path):
    ledger = filled(tmp_path / "state")
    head = json.loads(ledger.head_path.read_bytes())
    assert ledger.anchor() == head
    assert reopened(ledger).anchor() == head  # not written by this instance: read from the end of the file
    with ledger.path.open("ab") as handle:
        handle.write(b'{"seq": 9, "ti')  # a torn line was never anchored
    assert reopened(ledger).anchor() == head
    assert Ledger.in_dir(tmp_path / "empty").anchor() is None


def test_vehicle_anchor_carries_the_head_and_the_key_and_never_raises(tmp_path, caplog):
    ledger = filled(tmp_path / "state")
    with caplog.at_level(logging.WARNING, logger="agent.export.signing"):
        anchor = vehicle_anchor(ledger)
    assert anchor["ledger_head"] == ledger.head()
    assert anchor["signing_key"] == display_fingerprint(load_or_create_key(tmp_path / "state"))
    assert [r.getMessage() for r in caplog.records if "vehicle signing key created" in r.getMessage()]
    assert vehicle_anchor(None) == {"ledger_head": None, "signing_key": None}
    (tmp_path / "state" / KEY_FILE).chmod(0o644)
    (tmp_path / "state" / KEY_FILE).touch()  # changed: the cache is not used
    broken = vehicle_anchor(ledger)  # a key file others can read is refused: no fingerprint, no exception
    assert broken["signing_key"] is None and broken["ledger_head"] == ledger.head()


def test_compare_anchor_finds_rollback_and_rewrite(tmp_path):
    ledger = filled(tmp_path / "state")
    data = ledger.path.read_bytes()
    anchor = dict(ledger.head())
    assert compare_anchor(data, anchor) is None
    lines = data.splitlines(keepends=True)
    problem = compare_anchor(b"".join(lines[:5]), anchor)
    assert problem.startswith("rolled back or cut: the ledger has 5 entries, but seq 8 was anchored")
    older = {"seq": 3, "line_sha256": sha256_hex(lines[2].rstrip(b"\n"))}
    assert compare_anchor(data, older) is None  # the ledger went on after the anchor: fine
    assert compare_anchor(data, {"seq": 3, "line_sha256": "0" * 64}).startswith("rewritten: line 3")


@pytest.mark.parametrize("document", [
    {"seq": 4, "line_sha256": "a" * 64},
    {"vehicle": "v1", "seq": 4, "line_sha256": "a" * 64, "received": 1.0},
    {"ledger_head": {"seq": 4, "line_sha256": "a" * 64}},
    {"schema": "vehicle-status/1", "state": "online", "health": {"anchor": {
        "ledger_head": {"seq": 4, "line_sha256": "a" * 64}, "signing_key": "SHA256:" + "b" * 64}}},
])
def test_anchor_documents_the_verifier_reads(document):
    anchor = anchor_from_document(document)
    assert anchor["seq"] == 4 and anchor["line_sha256"] == "a" * 64


@pytest.mark.parametrize(("document", "reason"), [
    ({"state": "offline", "vehicle_id": "v1"}, "offline status message carries no ledger head"),
    ({"seq": True, "line_sha256": "a" * 64}, "no ledger head"),
    ({"seq": 0, "line_sha256": "a" * 64}, "no ledger head"),
    ({"seq": 3, "line_sha256": "xyz"}, "no ledger head"),
    ([1, 2], "not a JSON object"),
])
def test_documents_without_an_anchor_are_refused_with_a_reason(document, reason):
    with pytest.raises(ValueError, match=reason):
        anchor_from_document(document)


def test_cli_verify_against_an_anchor(tmp_path, capsys):
    state = tmp_path / "state"
    ledger = filled(state)
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"schema": "vehicle-status/1", "state": "online",
                                  "health": {"anchor": vehicle_anchor(ledger)}}))
    assert main(["ledger", "verify", "--state", str(state), "--against", str(status)]) == 0
    assert "ledger matches the anchor" in capsys.readouterr().out
    # Rolled back, and the head rewritten to match: the car alone cannot tell, the anchor can.
    cut(ledger, 4)
    rewrite_head(ledger)
    assert main(["ledger", "verify", "--state", str(state)]) == 0
    capsys.readouterr()
    assert main(["ledger", "verify", "--state", str(state), "--against", str(status)]) == 1
    out = capsys.readouterr().out
    assert "ledger intact: 4 entries" in out and "rolled back or cut: the ledger has 4 entries, but seq 8" in out
    assert main(["ledger", "verify", "--state", str(state), "--against", str(status), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["anchor"]["ok"] is False and report["anchor"]["seq"] == 8


def test_cli_anchor_of_another_key_and_unusable_anchor_files(tmp_path, capsys):
    state = tmp_path / "state"
    ledger = filled(state)
    load_or_create_key(state)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**ledger.head(), "signing_key": "SHA256:" + "c" * 64}))
    assert main(["ledger", "verify", "--state", str(state), "--against", str(other)]) == 1
    assert "the anchor was published with signing key SHA256:ccc" in capsys.readouterr().out
    for content, reason in ((b"", "not an anchor"), (b"[1]", "not a JSON object"),
                            (DEEP, "nested too deep"), (b'{"state": "offline"}', "offline status")):
        other.write_bytes(content)
        assert main(["ledger", "verify", "--state", str(state), "--against", str(other)]) == 2
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err
    assert main(["ledger", "verify", "--state", str(state), "--against", str(tmp_path / "nope.json")]) == 2
    assert "No such file" in capsys.readouterr().err


# -- personal values, by what they look like ---------------------------------------------------------

@pytest.mark.parametrize("value", [VIN, VIN.lower(), f"car {VIN} serviced", "LFV2A21K6A4001234", POSITION,
                                   "31.2304,121.4737", "31.23, 121.47", "at 31.23041 N", "-92.878535",
                                   "31°13'49\"N"])
def test_values_that_look_personal_are_refused(tmp_path, value):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    with pytest.raises(ValueError, match="looks like a personal value"):
        ledger.append("export", {"export": value})
    with pytest.raises(ValueError, match="looks like a personal value"):
        ledger.append("export", {"files": [{"note": value}]})
    with pytest.raises(ValueError, match="looks like a personal value"):
        ledger.append("export", {value: 1})  # in a field name too
    assert not ledger.path.exists()


def test_what_is_not_personal(tmp_path):
    for text in ("0123456789abcdef" * 4, "mqtt.example.net:8883", "127.0.0.1:1883", "ledger.torn-1750000000-0.bin",
                 "20250601T081200.123Z-hard_decel", "consent changed before publish", "ENOSPC", "v" + "ab12" * 8,
                 "traffic statistics", "rate_limited:12", "ABCDEFGHJKLMNPRST"):  # 17 letters, no digit
        assert looks_personal(text) is None, text


def test_free_text_only_where_declared(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    with pytest.raises(ValueError, match=r"fields.note is free text \(81 characters; at most 80 here\)"):
        ledger.append("export", {"note": "x" * 81})
    with pytest.raises(ValueError, match="nested too deep"):
        check_fields(json.loads("[" * 20 + "]" * 20))
    ledger.append("export", {"reason": "y " * 100, "purpose": "p" * 200, "broker": "b" * 250 + ":8883"})
    with pytest.raises(ValueError, match="at most 200 here"):
        ledger.append("export", {"purpose": "p" * 201})
    assert len(ledger.entries()) == 1 and ledger.verify().ok


def test_every_typed_helper_still_passes(tmp_path, monkeypatch):
    ledger = filled(tmp_path / "state")
    ledger.record_purge(["location", "driving"], [3, 1, 2], "consent changed before publish", 2, nbytes=900)
    ledger.record_may_have_left([4], ["location"], "handed to MQTT before the purge, acknowledgement not seen")
    ledger.record_remote_refused("grant", "location", "widens")
    ledger.record_remote_refused("other", None, "rate_limited:37")
    ledger.record_export(export="20250601T081200.123Z-hard_decel", files=17, samples=1200, frames=5000,
                         manifest_sha256="a" * 64, key_fingerprint="b" * 64)
    ledger.record_consent_change(SimpleNamespace(version=3, kind="zone_add", source="owner", category="location",
                                                 detail={"zone": "z1", "radius_m": 300.0}, purge={"location"}))
    ledger.record_consent_change(SimpleNamespace(version=4, kind="expire", source="clock", category=None,
                                                 detail={"ended": ["location"]}, purge={"location"}))
    with ledger.path.open("ab") as handle:
        handle.write(b'{"seq": 99')  # ledger_repair
    ledger.repair()
    from agent.privacy import durable
    real = durable.append_synced
    monkeypatch.setattr(durable, "append_synced", lambda *a: (_ for _ in ()).throw(OSError(28, "No space")))
    ledger.record_purge(["driving"], [9], "revoke")
    monkeypatch.setattr(durable, "append_synced", real)
    assert ledger.flush_deferred()  # ledger_gap, then the deferred purge
    kinds = [e.kind for e in ledger.entries()]
    assert kinds[-4:] == ["consent_change", "ledger_repair", "ledger_gap", "purge"]
    assert {"upload", "may_have_left", "remote_refused", "export"} <= set(kinds) and ledger.verify().ok


@pytest.mark.parametrize("purpose", [f"insurer, car {VIN}", f"home at {POSITION}"])
def test_an_owner_purpose_that_looks_personal_is_refused_or_withheld_never_written(tmp_path, purpose):
    state = tmp_path / "state"
    ledger = filled(state)
    policy = ConsentPolicy(ConsentStore.in_dir(state), clock=ledger.clock)
    policy.on_change(ledger.record_consent_change)
    before = len(ledger.entries())
    with pytest.raises(ConsentError, match="personal value"):  # refused at grant time, with the reason
        policy.grant("driving", "7d", purpose=purpose)
    assert len(ledger.entries()) == before and not policy.is_granted("driving")
    # A change that carries one all the same (a state written before this rule): on record, the words withheld.
    ledger.record_consent_change(ConsentChange(99, T0, "grant", "owner", "driving", {"purpose": purpose},
                                               frozenset()))
    entry = ledger.entries()[-1]
    assert entry.kind == "consent_change" and entry.fields["category"] == "driving"
    assert entry.fields["detail"]["purpose"] is None
    assert entry.fields["detail"]["purpose_withheld"] in ("a VIN", "coordinates")
    text = ledger.path.read_text()
    assert VIN not in text and "31.2304" not in text and ledger.verify().ok


# -- hostile JSON ------------------------------------------------------------------------------------------------

def test_loads_limited():
    assert loads_limited(b'{"a": [1, {"b": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}') == {
        "a": [1, {"b": "[" * 38}]}
    for data in (DEEP, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"[" * 33 + b"]" * 33):
        with pytest.raises(ValueError, match="nested too deep"):
            loads_limited(data)
    assert loads_limited(b"[" * 32 + b"]" * 32) is not None


def test_a_deeply_nested_line_is_reported_not_a_traceback(tmp_path, capsys):
    state = tmp_path / "state"
    ledger = filled(state)
    good = ledger.path.read_bytes()
    ledger.path.write_bytes(good + DEEP + b"\n")
    result = reopened(ledger).verify()
    assert not result.ok and result.line == 9 and result.problem == "not a valid ledger entry (nested too deep)"
    assert main(["ledger", "verify", "--state", str(state)]) == 1
    assert "ledger damaged at line 9: not a valid ledger entry (nested too deep)" in capsys.readouterr().out
    assert main(["ledger", "--state", str(state)]) == 0  # the readable entries are still listed
    assert len(capsys.readouterr().out.splitlines()) == 8
    with pytest.raises(ValueError, match="the last line is not a ledger entry"):
        reopened(ledger).record_purge(["location"], [1], "revoke")  # refused, never a RecursionError
    assert reopened(ledger).anchor() is None
    ledger.path.write_bytes(good)
    ledger.head_path.write_bytes(DEEP)
    assert reopened(ledger).verify().problem == "the head file is unreadable"


def test_ledger_show_survives_entries_with_unexpected_fields(tmp_path, capsys):
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1))
    # A well-formed, correctly hashed entry whose fields are not what an upload has (someone wrote it by hand).
    entry = {"seq": 1, "time": T0, "kind": "upload", "fields": {"signals": [1]}, "prev": GENESIS}
    line = canonical({**entry, "hash": hashlib.sha256(canonical(entry)).hexdigest()})
    ledger.path.write_bytes(line + b"\n")
    ledger.head_path.write_bytes(canonical({"seq": 1, "line_sha256": sha256_hex(line)}))
    assert main(["ledger", "--state", str(tmp_path)]) == 0
    assert "upload (unexpected fields)" in capsys.readouterr().out
