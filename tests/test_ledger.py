"""The hash-chained ledger: what it records, and that verify catches every edit, deletion and reordering."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import stat

import pytest

from agent.cli.main import main
from agent.ledger import GENESIS, Ledger, verify_bytes
from agent.privacy.policy import ConsentPolicy
from agent.privacy.store import ConsentStore

pytestmark = pytest.mark.consent

T0 = 1_750_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.5
        return self.now


def filled(path, count: int = 12) -> Ledger:
    ledger = Ledger(path, Clock())
    policy = ConsentPolicy(ConsentStore(path.parent / "consent.jsonl"), clock=ledger.clock)
    policy.on_change(ledger.record_consent_change)
    policy.grant("location", "90d", level="city", purpose="traffic map")
    policy.add_zone(41.4129, -92.8785, 300, name="home")
    for batch in range(count - 4):
        payload = bytes([batch]) * (100 + batch)
        ledger.record_upload(batch + 1, payload, ["location", "driving"], 40 + batch, (T0 + batch, T0 + batch + 5.25),
                             "city", "mqtt.example.net:8883", policy.version, stream="telemetry")
    ledger.record_purge(["location"], [9, 10], "revoke", 3)
    ledger.record_may_have_left([10], ["location"], "in flight")
    return ledger


def test_entries_are_chained_with_sha256(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl")
    lines = ledger.path.read_bytes().splitlines()
    assert len(lines) == 12
    previous = GENESIS
    for seq, line in enumerate(lines, 1):
        entry = json.loads(line)
        assert entry["seq"] == seq and entry["prev"] == previous
        content = {k: v for k, v in entry.items() if k != "hash"}
        assert entry["hash"] == hashlib.sha256(
            json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        previous = hashlib.sha256(line).hexdigest()
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    assert json.loads(ledger.head_path.read_bytes()) == {"seq": 12, "line_sha256": previous}
    assert ledger.verify().ok and ledger.verify().entries == 12


def test_what_an_upload_entry_holds(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl")
    upload = next(e for e in ledger.entries() if e.kind == "upload")
    payload = bytes([0]) * 100
    assert upload.fields == {"batch": 1, "stream": "telemetry", "categories": ["driving", "location"], "signals": 40,
                             "first": T0, "last": T0 + 5.25, "level": "city", "bytes": 100,
                             "sha256": hashlib.sha256(payload).hexdigest(), "broker": "mqtt.example.net:8883",
                             "consent_version": 2, "bench": False}
    kinds = [e.kind for e in ledger.entries()]
    assert kinds == ["consent_change"] * 2 + ["upload"] * 8 + ["purge", "may_have_left"]
    text = ledger.path.read_text()
    assert "41.41" not in text and "-92.87" not in text  # the zone centre never enters the ledger


def test_ledger_refuses_personal_values(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for fields in ({"latitude": 41.4}, {"detail": {"VIN": "LFV2A21K6A4001234"}}, {"rows": [{"values": [1]}]}):
        with pytest.raises(ValueError, match="looks like a personal value"):
            ledger.append("export", fields)
    with pytest.raises(ValueError, match="unknown entry kind"):
        ledger.append("note", {})
    assert not ledger.path.exists()


def test_every_single_byte_edit_is_detected(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl", count=6)
    data = ledger.path.read_bytes()
    head = ledger.head()
    line_starts = [0, *[i + 1 for i, b in enumerate(data) if b == 10][:-1]]
    for position in range(len(data)):
        replacement = b"0" if data[position:position + 1] != b"0" else b"1"
        result = verify_bytes(data[:position] + replacement + data[position + 1:], head)
        assert not result.ok, f"edit at byte {position} not detected"
        edited_line = sum(1 for start in line_starts if start <= position)
        # Reported at the edited line, or (for an edit that still parses to the same content,
        # or breaks the newline) at the line right after it.
        assert result.line in (edited_line, edited_line + 1, None), (position, result)


def test_edit_is_reported_at_its_line(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl")
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"signals":42', b'"signals":12')
    ledger.path.write_bytes(b"".join(lines))
    result = ledger.verify()
    assert not result.ok and result.line == 5 and result.seq == 5
    assert "does not match its own hash (edited)" in result.problem
    # Recomputing the edited entry's own hash moves the break to the next line's link.
    entry = json.loads(lines[4])
    content = {k: v for k, v in entry.items() if k != "hash"}
    entry["hash"] = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    lines[4] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    ledger.path.write_bytes(b"".join(lines))
    result = ledger.verify()
    assert not result.ok and result.line == 6 and "does not chain to the line before" in result.problem


@pytest.mark.parametrize("index", [0, 5, 11])
def test_deleted_line_is_detected(tmp_path, index):
    ledger = filled(tmp_path / "ledger.jsonl")
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    del lines[index]
    ledger.path.write_bytes(b"".join(lines))
    result = ledger.verify()
    assert not result.ok
    if index < 11:
        assert result.line == index + 1 and f"seq {index + 1} missing before this line (deleted)" in result.problem
    else:
        assert result.line is None and "seq 12..12 are missing at the end (deleted)" in result.problem
    assert str(result).startswith("ledger damaged at ")


@pytest.mark.parametrize(("a", "b"), [(0, 1), (3, 8), (10, 11)])
def test_swapped_lines_are_detected(tmp_path, a, b):
    ledger = filled(tmp_path / "ledger.jsonl")
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    lines[a], lines[b] = lines[b], lines[a]
    ledger.path.write_bytes(b"".join(lines))
    result = ledger.verify()
    assert not result.ok and result.line == a + 1
    assert f"entry seq {b + 1} where seq {a + 1} was expected (lines reordered)" == result.problem


def test_truncated_and_torn_files(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl")
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[:-20])
    result = ledger.verify()
    assert not result.ok and result.line == 12 and "incomplete" in result.problem
    ledger.path.write_bytes(b"")
    assert "seq 1..12 are missing at the end" in ledger.verify().problem
    ledger.path.unlink()
    assert "missing but 12 entries were written" in ledger.verify().problem


def _append_many(path: str, tag: int) -> None:
    ledger = Ledger(path)
    for i in range(25):
        ledger.record_purge(["driving"], [tag * 100 + i], "test")


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = tmp_path / "ledger.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(path), tag)) for tag in (1, 2, 3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    result = Ledger(path).verify()
    assert result.ok and result.entries == 75
    assert sorted(e.fields["batch_ids"][0] for e in Ledger(path).entries()) == sorted(
        t * 100 + i for t in (1, 2, 3) for i in range(25))


def test_cli_show_and_verify(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    filled(state / "ledger.jsonl")
    assert main(["ledger", "--state", str(state)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 12
    assert out[0].startswith("#1 ") and "consent v1: grant location by owner" in out[0]
    assert "sent 40 values of driving,location" in out[2] and "to mqtt.example.net:8883" in out[2]
    assert "purged 2 unsent batch(es) of location (revoke)" in out[10]
    assert "may already have left" in out[11]
    assert main(["ledger", "verify", "--state", str(state)]) == 0
    assert "ledger intact: 12 entries" in capsys.readouterr().out
    lines = (state / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    lines[6], lines[7] = lines[7], lines[6]
    (state / "ledger.jsonl").write_bytes(b"".join(lines))
    assert main(["ledger", "verify", "--state", str(state)]) == 1
    assert "ledger damaged at line 7: entry seq 8 where seq 7 was expected (lines reordered)" in \
        capsys.readouterr().out
    assert main(["ledger", "--state", str(state), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out.strip() == "the ledger is empty for that period"
    assert main(["ledger", "--state", str(state), "--since", "soon"]) == 2
    assert "--since: expected 7d" in capsys.readouterr().err
