"""The hash-chained ledger: what it records, that verify catches every edit, deletion and reordering,
that a torn last line is moved aside and recorded, and that a full disk defers entries instead of failing."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import re
import stat
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from agent.cli.main import main
from agent.ledger import GENESIS, Ledger, verify_bytes
from agent.privacy import durable
from agent.privacy.policy import ConsentPolicy
from agent.privacy.store import ConsentStore
from tests.helpers.clock import FakeClock as Clock

pytestmark = pytest.mark.consent

T0 = 1_750_000_000.0


def filled(path, count: int = 12) -> Ledger:
    ledger = Ledger(path, Clock(T0, step=1.5))
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
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal: usage, the option, the accepted forms
        main(["ledger", "--state", str(state), "--since", "soon"])
    assert refused.value.code == 2
    assert "argument --since: expected now, today, yesterday, a duration ago (7d" in capsys.readouterr().err


# -- a torn last line (power cut mid-append) --------------------------------------------------

TORN = b'{"seq": 9, "ti'


def test_torn_last_line_is_moved_aside_recorded_and_the_chain_goes_on(tmp_path, caplog):
    ledger = filled(tmp_path / "ledger.jsonl")
    good = ledger.path.read_bytes()
    with ledger.path.open("ab") as handle:
        handle.write(TORN)
    reopened = Ledger(ledger.path, Clock(T0, step=1.5))  # a new process after the power cut
    assert not reopened.verify().ok  # torn, until the next write repairs it
    with caplog.at_level(logging.WARNING, logger="agent.ledger"):
        purge = reopened.record_purge(["location"], [11], "revoke", 4)  # a revocation can be recorded
    assert purge is not None and purge.seq == 14
    repair = reopened.entries()[12]
    assert repair.kind == "ledger_repair" and repair.seq == 13
    side = tmp_path / repair.fields["moved_to"]
    assert repair.fields == {"moved_bytes": len(TORN), "moved_to": side.name, "after_seq": 12}
    assert re.fullmatch(r"ledger\.torn-\d+-0\.bin", side.name)
    assert side.read_bytes() == TORN  # byte for byte: never silently dropped
    assert stat.S_IMODE(side.stat().st_mode) == 0o600
    data = ledger.path.read_bytes()
    assert data.startswith(good) and TORN not in data  # never silently kept
    result = reopened.verify()
    assert result.ok and result.entries == 14, result
    assert reopened.head()["seq"] == 14
    assert any("last line was incomplete" in r.getMessage() for r in caplog.records)


def test_in_dir_repairs_on_open_and_records_a_head_that_was_ahead(tmp_path):
    filled(tmp_path / "ledger.jsonl")
    path = tmp_path / "ledger.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # the last line cut off although the head had counted it
    torn = data[data.rstrip(b"\n").rfind(b"\n") + 1:-20]
    ledger = Ledger.in_dir(tmp_path, Clock(T0, step=1.5))
    entries = ledger.entries()
    assert [e.kind for e in entries[-2:]] == ["purge", "ledger_repair"]
    repair = entries[-1]
    assert repair.seq == 12 and repair.fields["after_seq"] == 11 and repair.fields["head_seq"] == 12
    assert (tmp_path / repair.fields["moved_to"]).read_bytes() == torn
    assert ledger.head()["seq"] == 12 and ledger.verify().ok
    assert ledger.repair() is None  # nothing torn any more
    assert len(ledger.entries()) == 12
    assert Ledger.in_dir(tmp_path).verify().ok  # and reopening changes nothing


def test_a_second_torn_line_in_the_same_second_gets_its_own_side_file(tmp_path):
    clock = lambda: T0  # noqa: E731
    ledger = Ledger(tmp_path / "ledger.jsonl", clock)
    ledger.record_purge(["driving"], [1], "test")
    for attempt in range(2):
        with ledger.path.open("ab") as handle:
            handle.write(TORN + bytes([attempt]))
        repair = ledger.repair()
        assert repair is not None and repair.fields["moved_to"] == f"ledger.torn-{int(T0)}-{attempt}.bin"
        assert (tmp_path / repair.fields["moved_to"]).read_bytes() == TORN + bytes([attempt])
    assert ledger.verify().ok and len(ledger.entries()) == 3


def test_a_ledger_that_is_only_a_torn_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(TORN)
    ledger = Ledger(path, Clock(T0, step=1.5))
    entry = ledger.record_remote_refused("grant", "location", "network cannot widen consent")
    assert [e.kind for e in ledger.entries()] == ["ledger_repair", "remote_refused"] and entry.seq == 2
    assert ledger.entries()[0].fields["after_seq"] == 0 and ledger.verify().ok


def test_a_torn_line_on_a_full_disk_is_moved_and_its_repair_entry_waits_first(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5))
    ledger.record_purge(["driving"], [1], "first")
    with ledger.path.open("ab") as handle:
        handle.write(TORN)
    disk = FailingDisk(monkeypatch)
    assert ledger.record_purge(["driving"], [2], "second") is None
    side = next(tmp_path.glob("ledger.torn-*.bin"))
    assert side.read_bytes() == TORN and not ledger.path.read_bytes().endswith(TORN)
    disk.full = False
    assert ledger.flush_deferred()
    entries = ledger.entries()
    assert [e.kind for e in entries] == ["purge", "ledger_gap", "ledger_repair", "purge"]
    assert entries[2].fields["moved_to"] == side.name and "deferred_at" in entries[2].fields
    assert ledger.verify().ok


def test_opening_a_sound_ledger_writes_nothing(tmp_path, monkeypatch):
    ledger = filled(tmp_path / "ledger.jsonl")
    ledger.lock_path.unlink()
    before = ledger.path.read_bytes()
    assert Ledger.in_dir(tmp_path).repair() is None
    assert ledger.path.read_bytes() == before and not ledger.lock_path.exists()


def test_an_edited_last_line_is_not_repaired(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl")
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    lines[-1] = b"this is not json\n"
    ledger.path.write_bytes(b"".join(lines))
    before = ledger.path.read_bytes()
    for data in (before, before + TORN):  # a complete bad line, also with a torn one after it
        ledger.path.write_bytes(data)
        fresh = Ledger(ledger.path, Clock(T0, step=1.5))
        if data == before:
            assert fresh.repair() is None  # nothing torn: nothing to repair
        else:
            with pytest.raises(ValueError, match="the last line is not a ledger entry"):
                fresh.repair()
        with pytest.raises(ValueError, match="the last line is not a ledger entry"):
            fresh.record_purge(["driving"], [1], "test")
        assert ledger.path.read_bytes() == data and not list(tmp_path.glob("*.torn-*"))
    ledger.path.write_bytes(before)
    result = ledger.verify()
    assert not result.ok and result.line == 12 and "not a valid ledger entry" in result.problem
    Ledger.in_dir(tmp_path)  # opening does not raise (it logs), and changes nothing
    assert ledger.path.read_bytes() == before


# -- deferred writes (full disk, I/O errors, read-only file system) ---------------------------------

class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FailingDisk:
    """Replaces durable.append_synced: raises ``error`` while ``full``, counting the attempts."""

    def __init__(self, monkeypatch, error: int = errno.ENOSPC) -> None:
        self.full, self.error, self.attempts = True, error, 0
        self.real = durable.append_synced
        monkeypatch.setattr(durable, "append_synced", self)

    def __call__(self, path, data: bytes) -> None:
        self.attempts += 1
        if self.full:
            raise OSError(self.error, os.strerror(self.error))
        self.real(path, data)


def test_full_disk_defers_then_flush_writes_a_gap_and_the_entries_in_order(tmp_path, monkeypatch, caplog):
    ledger = filled(tmp_path / "ledger.jsonl", count=5)
    ledger.monotonic = Monotonic()
    disk = FailingDisk(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="agent.ledger"):
        assert ledger.record_purge(["location"], [3, 1], "revoke", 4) is None  # no exception: the purge goes on
        assert ledger.blocked and ledger.deferred == 1
        assert ledger.record_may_have_left([3], ["location"], "in flight") is None
        assert ledger.record_consent_change(SimpleNamespace(version=5, kind="revoke", source="owner",
                                                            category="driving", detail={}, purge={"driving"})) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write the ledger" in warnings[0].getMessage()
    assert ledger.deferred == 3 and len(ledger.entries()) == 5
    with pytest.raises(ValueError, match="looks like a personal value"):  # validation still raises
        ledger.append("export", {"vin": "x"})
    with pytest.raises(ValueError, match="unknown entry kind"):
        ledger.append("note", {})
    assert not ledger.flush_deferred() and ledger.blocked  # still full
    disk.full = False
    assert ledger.flush_deferred() and not ledger.blocked and ledger.deferred == 0
    assert ledger.flush_deferred()  # nothing waits: True, writes nothing
    entries = ledger.entries()
    assert [e.kind for e in entries[5:]] == ["ledger_gap", "purge", "may_have_left", "consent_change"]
    gap, purge = entries[5], entries[6]
    failed_at = purge.fields["deferred_at"]
    assert gap.fields == {"from": failed_at, "to": gap.fields["to"], "deferred": 3, "lost": 0, "error": "ENOSPC"}
    assert gap.fields["to"] > failed_at
    assert purge.fields["batch_ids"] == [1, 3] and failed_at > entries[4].time
    assert purge.time > failed_at  # written later; the original time is kept in deferred_at
    deferred_at = [e.fields["deferred_at"] for e in entries[6:]]
    assert deferred_at == sorted(set(deferred_at)) and deferred_at[-1] < gap.fields["to"]
    result = ledger.verify()
    assert result.ok and result.entries == 9, result
    assert ledger.head()["seq"] == 9


def test_appends_while_blocked_queue_behind_and_retry_at_most_once_a_second(tmp_path, monkeypatch):
    mono = Monotonic()
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5), monotonic=mono)
    disk = FailingDisk(monkeypatch, errno.EIO)
    ledger.record_purge(["driving"], [1], "a")
    for tag in "bcd":
        assert ledger.record_purge(["driving"], [1], tag) is None
    assert disk.attempts == 1  # no retry within the second
    mono.now += 1.0
    assert ledger.record_purge(["driving"], [1], "e") is None
    assert disk.attempts == 2  # one flush attempt, the gap entry failed again
    disk.full = False
    assert ledger.record_purge(["driving"], [1], "f") is None  # writable, but the second is not over: queued
    mono.now += 1.0
    last = ledger.record_purge(["driving"], [1], "g")  # flushes first, then itself
    assert last is not None and not ledger.blocked
    entries = ledger.entries()
    assert entries[0].kind == "ledger_gap" and entries[0].fields["error"] == "EIO"
    assert entries[0].fields["deferred"] == 6
    assert [e.fields["reason"] for e in entries[1:]] == list("abcdefg")
    assert "deferred_at" in entries[-2].fields and "deferred_at" not in last.fields
    assert ledger.verify().ok


def test_the_queue_is_bounded_and_the_lost_entries_are_counted(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5), max_deferred=3)
    disk = FailingDisk(monkeypatch, errno.EROFS)
    for i in range(4):
        ledger.record_upload(i, b"x", ["driving"], 1, (T0, T0), None, "broker", 1)
    ledger.record_purge(["driving"], [9], "revoke")
    assert ledger.deferred == 3 and ledger.lost == 2 and ledger.blocked
    disk.full = False
    assert ledger.flush_deferred()
    entries = ledger.entries()
    assert entries[0].fields == {"from": entries[0].fields["from"], "to": entries[0].fields["to"], "deferred": 3,
                                 "lost": 2, "error": "EROFS", "lost_kinds": {"purge": 1, "upload": 1}}
    assert [e.fields["batch"] for e in entries[1:]] == [0, 1, 2]
    assert ledger.lost == 0 and ledger.verify().ok


def test_defer_false_raises_and_does_not_jump_the_queue(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5))
    disk = FailingDisk(monkeypatch)
    with pytest.raises(OSError) as failure:
        ledger.append("export", {"files": 3}, defer=False)
    assert failure.value.errno == errno.ENOSPC and not ledger.blocked
    assert ledger.append("export", {"files": 4}) is None and ledger.blocked
    with pytest.raises(OSError, match=r"cannot be written now \(ENOSPC\)"):
        ledger.append("export", {"files": 5}, defer=False)
    disk.full = False
    entry = ledger.append("export", {"files": 6}, defer=False)  # flushes first, even within the second
    assert [e.kind for e in ledger.entries()] == ["ledger_gap", "export", "export"]
    assert entry.seq == 3 and ledger.verify().ok


def test_a_failure_in_the_middle_of_a_flush_opens_a_new_gap(tmp_path, monkeypatch):
    mono = Monotonic()
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5), monotonic=mono)
    disk = FailingDisk(monkeypatch)
    for i in range(3):
        ledger.record_purge(["driving"], [i], "revoke")
    real = disk.real
    writes = []

    def fail_after_two(path, data):
        writes.append(data)
        if len(writes) > 2:
            raise OSError(errno.EIO, "I/O error")
        real(path, data)

    disk.real, disk.full = fail_after_two, False
    assert not ledger.flush_deferred()  # the gap and the first entry written, then EIO
    assert ledger.deferred == 2 and ledger.blocked
    disk.real = real
    assert ledger.flush_deferred()
    entries = ledger.entries()
    assert [e.kind for e in entries] == ["ledger_gap", "purge", "ledger_gap", "purge", "purge"]
    assert (entries[0].fields["deferred"], entries[2].fields["deferred"], entries[2].fields["error"]) == (3, 2, "EIO")
    assert [e.fields["batch_ids"] for e in entries if e.kind == "purge"] == [[0], [1], [2]]
    assert ledger.verify().ok


def test_a_partly_written_line_is_cut_back_and_written_again_whole(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5))
    ledger.record_purge(["driving"], [1], "first")
    good = ledger.path.read_bytes()
    real = durable.append_synced

    def half_then_full(path, data):
        with open(path, "ab") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "append_synced", half_then_full)
    assert ledger.record_purge(["driving"], [2], "second") is None
    assert ledger.path.read_bytes() == good  # our own half line is not left behind
    monkeypatch.setattr(durable, "append_synced", real)
    assert ledger.flush_deferred()
    assert [e.kind for e in ledger.entries()] == ["purge", "ledger_gap", "purge"] and ledger.verify().ok


def test_a_head_that_cannot_be_written_does_not_defer_a_written_entry(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5))
    ledger.record_purge(["driving"], [1], "first")
    real = durable.write_replace

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "write_replace", no_space)
    entry = ledger.record_purge(["driving"], [2], "second")
    assert entry is not None and entry.seq == 2 and not ledger.blocked
    assert ledger.head()["seq"] == 1 and ledger.verify().ok  # a head behind the file still verifies
    monkeypatch.setattr(durable, "write_replace", real)
    ledger.record_purge(["driving"], [3], "third")
    assert ledger.head()["seq"] == 3 and ledger.verify().ok


def test_threads_appending_through_failures_keep_one_chain_and_every_entry(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.jsonl", Clock(T0, step=1.5), monotonic=lambda: time.monotonic() * 1000)
    disk = FailingDisk(monkeypatch)
    disk.full = False
    flips = threading.Event()

    def flipper() -> None:
        while not flips.is_set():
            disk.full = not disk.full
            time.sleep(0.002)

    def writer(tag: int) -> None:
        for i in range(40):
            ledger.record_purge(["driving"], [tag * 100 + i], "test")

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in range(4)]
    flip = threading.Thread(target=flipper)
    flip.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    flips.set()
    flip.join(5)
    disk.full = False
    assert ledger.flush_deferred()
    entries = ledger.entries()
    purged = [e.fields["batch_ids"][0] for e in entries if e.kind == "purge"]
    assert sorted(purged) == sorted(t * 100 + i for t in range(4) for i in range(40))
    assert any(e.kind == "ledger_gap" for e in entries) and any("deferred_at" in e.fields for e in entries)
    for tag in range(4):  # each thread's entries in its own order
        mine = [p for p in purged if p // 100 == tag]
        assert mine == sorted(mine)
    assert ledger.verify().ok


@pytest.fixture
def tiny_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a 64 KiB tmpfs")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk(tiny_tmpfs):
    ledger = Ledger(tiny_tmpfs / "ledger.jsonl", Clock(T0, step=1.5))
    ledger.record_purge(["driving"], [0], "before")
    filler = tiny_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    written = 1
    for i in range(1, 200):  # the ledger's last page may still have room for a few lines
        if ledger.record_purge(["driving"], [i], "while full") is None:
            break
        written += 1
    else:
        pytest.fail("the disk never filled up")
    assert ledger.blocked and written > 1
    assert ledger.record_purge(["driving"], [999], "queued") is None
    filler.unlink()
    assert ledger.flush_deferred() and not ledger.blocked
    entries = ledger.entries()
    assert [e.kind for e in entries[written:]] == ["ledger_gap", "purge", "purge"]
    assert entries[written].fields["error"] == "ENOSPC" and entries[written].fields["deferred"] == 2
    assert [e.fields["batch_ids"][0] for e in entries if e.kind == "purge"] == [*range(written), written, 999]
    assert ledger.verify().ok
