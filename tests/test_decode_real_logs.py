"""`vehicle-agent decode` must agree with a direct cantools decode, value for value."""

from __future__ import annotations

import json

import can
import cantools
import pytest
from cantools.j1939 import pgn_from_frame_id

from agent.cli.main import main
from tests.real_pairs import REAL_PAIRS


def reference_samples(log_path, dbc_paths):
    """Independent decode: python-can LogReader + cantools, nothing of ours."""
    databases = [cantools.database.load_file(str(p), strict=False) for p in dbc_paths]
    by_id, by_pgn = {}, {}
    for db in databases:
        for message in db.messages:
            by_id.setdefault((message.frame_id, message.is_extended_frame), message)
            if message.protocol == "j1939":
                by_pgn.setdefault(pgn_from_frame_id(message.frame_id), message)
    samples = []
    with can.LogReader(str(log_path)) as reader:
        for msg in reader:
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            message = by_id.get((msg.arbitration_id, msg.is_extended_id))
            if message is None and msg.is_extended_id:
                message = by_pgn.get(pgn_from_frame_id(msg.arbitration_id))
            if message is None or len(msg.data) < message.length:
                continue
            try:
                values = message.decode(bytes(msg.data), decode_choices=True)
            except Exception:
                continue
            for name, value in values.items():
                label = getattr(value, "name", None)
                number = value.value if label is not None else value
                samples.append((msg.timestamp, f"{message.name}.{name}", number, label))
    return samples


@pytest.mark.parametrize("log,dbcs", REAL_PAIRS, ids=[p[0].rsplit("/", 1)[-1] for p in REAL_PAIRS])
def test_decode_equals_cantools(shared_data, tmp_path, log, dbcs, capsys):
    out = tmp_path / "out.jsonl"
    dbc_paths = [shared_data / d for d in dbcs]
    code = main(["decode", str(shared_data / log), "--dbc", *map(str, dbc_paths), "--format", "jsonl", "-o", str(out)])
    assert code == 0
    ours = []
    for line in out.read_text().splitlines():
        record = json.loads(line)
        ours.append((record["timestamp"], record["signal"], record["value"], record.get("label")))
    expected = reference_samples(shared_data / log, dbc_paths)
    assert len(ours) == len(expected) > 1000
    mismatches = [(a, b) for a, b in zip(ours, expected) if a != b]
    assert mismatches == []


def test_multiplexed_and_choices_match(shared_data, tmp_path):
    """Multiplexed messages (Model3CAN has 36) decode with the mux's own signals only."""
    log = shared_data / REAL_PAIRS[4][0]
    dbc = shared_data / REAL_PAIRS[4][1][0]
    out = tmp_path / "m.jsonl"
    assert main(["decode", str(log), "--dbc", str(dbc), "--format", "jsonl", "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    labelled = [r for r in records if "label" in r]
    assert labelled, "Model3CAN has value tables; some samples must carry labels"
    db = cantools.database.load_file(str(dbc), strict=False)
    mux_messages = {m.name for m in db.messages if m.is_multiplexed()}
    mux_records = [r for r in records if r["signal"].split(".")[0] in mux_messages]
    assert mux_records, "the bench log contains multiplexed messages"
