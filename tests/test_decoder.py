"""The decode stage on its own: FD, multiplexing, choices, J1939 by PGN, filtering, and every reject counted."""

from __future__ import annotations

import can
import cantools
import pytest

from agent.dbc import load_dbc
from agent.decode import ALL_DBCS, Decoder

EDGE = "edge_cases/cantools_test_dbc"


def decoder_for(shared_data, name, **kwargs) -> tuple[Decoder, cantools.database.Database]:
    loaded = load_dbc(shared_data / EDGE / name)
    return Decoder({ALL_DBCS: [loaded]}, **kwargs), loaded.database


def test_can_fd_64_byte_frame_matches_cantools(shared_data):
    decoder, db = decoder_for(shared_data, "foobar.dbc")
    message = db.get_message_by_name("CanFd")
    data = message.encode({"Fie": 0x0123456789ABCDEF, "Fas": 42}, strict=False)
    frame = can.Message(arbitration_id=message.frame_id, is_extended_id=message.is_extended_frame,
                        is_fd=True, data=data)
    out = decoder.decode(frame, "fd")
    assert out is not None and decoder.physical(out) == message.decode(data, decode_choices=False)
    assert len(data) == 64 and decoder.counters["fd"].decoded == 1


def test_multiplexed_message_decodes_only_the_selected_branch_with_labels(shared_data):
    decoder, db = decoder_for(shared_data, "multiplex_choices.dbc")
    message = db.get_message_by_name("Message1")
    for mux in (8, 16, 24):
        values = {"Multiplexor": mux}
        values.update({s.name: 1 for s in message.signals if s.multiplexer_ids and mux in s.multiplexer_ids})
        data = message.encode(values, strict=False)
        out = decoder.decode(can.Message(arbitration_id=message.frame_id, is_extended_id=True, data=data), "b")
        expected = message.decode(data, decode_choices=True)
        assert set(out.raw) == set(expected)
        for name, value in expected.items():
            spec = decoder.specs[f"Message1.{name}"]
            raw = out.raw[name]
            if hasattr(value, "name"):  # a choice: we keep both the number and the label
                assert spec.label(raw) == value.name and spec.to_physical(raw) == value.value
            else:
                assert spec.to_physical(raw) == value


def test_j1939_matches_on_pgn_ignoring_source_address(shared_data):
    decoder, db = decoder_for(shared_data, "j1939.dbc", j1939_buses=["*"])
    message = db.get_message_by_name("Message1")
    data = message.encode({"Signal1": 5})
    other_source = (message.frame_id & ~0xFF) | 0x3A
    out = decoder.decode(can.Message(arbitration_id=other_source, is_extended_id=True, data=data), "truck")
    assert out is not None and out.message == "Message1" and out.raw == {"Signal1": 5}
    # Without J1939 matching the same frame is an unknown id.
    plain, _ = decoder_for(shared_data, "j1939.dbc")
    plain_db_protocol = {m.protocol for m in db.messages}
    if plain_db_protocol == {None}:
        assert plain.decode(can.Message(arbitration_id=other_source, is_extended_id=True, data=data), "t") is None
        assert plain.counters["t"].unknown_id == 1


def test_unrequested_messages_are_filtered_before_decoding(shared_data):
    decoder, db = decoder_for(shared_data, "foobar.dbc", wanted=lambda spec: spec.message == "Foo")
    foo, bar = db.get_message_by_name("Foo"), db.get_message_by_name("Bar")
    decoder.decode(can.Message(arbitration_id=bar.frame_id, is_extended_id=bar.is_extended_frame,
                               data=bytes(bar.length)), "x")
    out = decoder.decode(can.Message(arbitration_id=foo.frame_id, is_extended_id=foo.is_extended_frame,
                                     data=bytes(foo.length)), "x")
    assert out is not None and set(out.raw) == {s.name for s in foo.signals}
    assert decoder.counters["x"].filtered == 1 and decoder.counters["x"].decoded == 1


@pytest.mark.parametrize("frame,counter", [
    (can.Message(arbitration_id=0x7FF, is_extended_id=False, data=b"\x00" * 8), "unknown_id"),
    (can.Message(arbitration_id=0x1F0, is_extended_id=True, data=b"\x00" * 8), "unknown_id"),  # id matches, not std
    (can.Message(is_error_frame=True), "error_frames"),
    (can.Message(arbitration_id=0x1F0, is_extended_id=False, is_remote_frame=True, dlc=8), "remote_frames"),
    (can.Message(arbitration_id=0x1F0, is_extended_id=False, data=b"\x01\x02"), "wrong_length"),
])
def test_every_bad_frame_is_counted_never_fatal(shared_data, frame, counter):
    decoder, _ = decoder_for(shared_data, "motohawk.dbc")
    assert decoder.decode(frame, "pt") is None
    counts = decoder.counters["pt"].as_dict()
    assert counts[counter] == 1 and counts["frames"] == 1
    assert sum(v for k, v in counts.items() if k != "frames") == 1


def test_a_frame_cantools_cannot_decode_is_a_counted_decode_error(shared_data):
    decoder, db = decoder_for(shared_data, "multiplex_choices.dbc")
    message = db.get_message_by_name("Message1")
    bad_mux = can.Message(arbitration_id=message.frame_id, is_extended_id=True, data=bytes([0xFF] * 8))
    with pytest.raises(Exception):  # noqa: B017 - cantools itself refuses this multiplexer value
        message.decode(bytes(bad_mux.data))
    assert decoder.decode(bad_mux, "pt") is None
    assert decoder.counters["pt"].decode_errors == 1
    # ... and the next good frame still decodes.
    good = message.encode({"Multiplexor": 8, "BIT_J": 1, "BIT_C": 1, "BIT_G": 1, "BIT_L": 1}, strict=False)
    assert decoder.decode(can.Message(arbitration_id=message.frame_id, data=good), "pt") is not None
