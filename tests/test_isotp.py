"""ISO-TP reassembly (agent.isotp) and decoding of reassembled UDS responses (agent.transport_decode)."""

from __future__ import annotations

import can
import pytest

from agent.dbc import load_dbc
from agent.decode import Decoder
from agent.isotp import IsoTpReassembler
from agent.transport_decode import TransportDecoder, wrap_for_transport

LOG = "logs/css_nissan_leaf_uds_and_canmod_gps.blf"
DBC = "dbc/css-electronics/tp_uds_nissan.dbc"
REQ, RESP = 0x79B, 0x7BB


def feed_all(reassembler, frames):
    return [done for t, i, d in frames if (done := reassembler.feed(t, i, bytes(d))) is not None]


@pytest.fixture(scope="module")
def leaf(shared_data):
    frames = [m for m in can.LogReader(str(shared_data / LOG)) if m.channel == 0]
    assert frames
    return frames


@pytest.fixture(scope="module")
def leaf_dbc(shared_data):
    return load_dbc(shared_data / DBC)


def raw(frames):
    return [(m.timestamp, m.arbitration_id, bytes(m.data)) for m in frames]


# -- synthetic frames ---------------------------------------------------------------
def test_single_frame_strips_padding():
    r = IsoTpReassembler([RESP])
    assert r.feed(1.0, RESP, bytes.fromhex("03 62 f1 90 aa aa aa aa")) == (1.0, RESP, bytes.fromhex("62 f1 90"))
    c = r.counters[RESP]
    assert (c.completed, c.single, c.multi, c.padding_bytes) == (1, 1, 0, 4)


def test_can_fd_single_frame_escape_length():
    r = IsoTpReassembler([RESP])
    payload = bytes(range(20))
    frame = bytes([0x00, len(payload)]) + payload + b"\xcc" * 2  # 24-byte CAN FD frame
    assert r.feed(1.0, RESP, frame, is_fd=True) == (1.0, RESP, payload)
    assert r.counters[RESP].padding_bytes == 2


def test_multi_frame_sequence_wraps_and_flow_control_ignored():
    payload = bytes(i & 0xFF for i in range(6 + 7 * 20))  # 21 CFs: sequence 1..15, 0..5
    frames = [(0.0, RESP, bytes([0x10 | len(payload) >> 8, len(payload) & 0xFF]) + payload[:6]),
              (0.001, REQ, bytes.fromhex("30 00 00 00 00 00 00 00"))]
    rest = payload[6:]
    for n in range(20):
        frames.append((0.01 * (n + 1), RESP, bytes([0x20 | (n + 1) & 0xF]) + rest[7 * n:7 * n + 7]))
    r = IsoTpReassembler([RESP], request_ids={REQ: RESP})
    assert feed_all(r, frames) == [(0.2, RESP, payload)]
    c = r.counters[RESP]
    assert (c.completed, c.multi, c.flow_control_seen, c.out_of_order, c.padding_bytes) == (1, 1, 1, 0, 0)


def test_first_frame_32_bit_length():
    payload = bytes(range(256)) * 17  # 4352 bytes > 4095: escape length
    frames = [(0.0, RESP, bytes([0x10, 0x00]) + len(payload).to_bytes(4, "big") + payload[:2])]
    rest, seq, t = payload[2:], 1, 0.0
    while rest:
        t += 0.001
        chunk, rest = rest[:7], rest[7:]
        frames.append((t, RESP, bytes([0x20 | seq]) + chunk.ljust(7, b"\x55")))
        seq = (seq + 1) & 0xF
    r = IsoTpReassembler([RESP])
    assert [d[2] for d in feed_all(r, frames)] == [payload]
    assert r.counters[RESP].padding_bytes == (7 - (len(payload) - 2) % 7) % 7


def test_timeout_between_consecutive_frames():
    frames = [(0.0, RESP, bytes.fromhex("10 0a 01 02 03 04 05 06")),
              (1.5, RESP, bytes.fromhex("21 07 08 09 0a 55 55 55"))]  # 1.5 s later: past N_Cr
    r = IsoTpReassembler([RESP])
    assert feed_all(r, frames) == []
    c = r.counters[RESP]
    assert (c.timeouts, c.stray_cf, c.completed) == (1, 1, 0)
    r.feed(2.0, RESP, bytes.fromhex("10 0a 01 02 03 04 05 06"))
    assert r.expire(2.5) == 0 and r.expire(3.01) == 1
    assert r.counters[RESP].timeouts == 2


def test_invalid_frames_counted():
    r = IsoTpReassembler([RESP])
    assert r.feed(0.0, RESP, bytes.fromhex("45 00")) is None  # frame type 4 does not exist
    assert r.feed(0.0, RESP, b"") is None
    assert r.counters[RESP].invalid == 2


# -- the real Leaf log, with injected faults -----------------------------------------
def first_transfer_cfs(frames):
    """Indexes (in ``frames``) of the consecutive frames of the first multi-frame response."""
    start = next(i for i, (_, fid, d) in enumerate(frames) if fid == RESP and d[0] >> 4 == 1)
    cfs = []
    for i in range(start + 1, len(frames)):
        _, fid, d = frames[i]
        if fid == RESP:
            if d[0] >> 4 != 2:
                break
            cfs.append(i)
    return cfs


def test_leaf_log_reassembles_every_response(leaf):
    r = IsoTpReassembler([RESP])  # request id learnt from the first flow control frame
    done = feed_all(r, raw(leaf))
    c = r.counters[RESP]
    assert len(done) == c.completed == c.multi == 26
    assert c.flow_control_seen == 26 and r.request_ids == {REQ: RESP}
    assert (c.out_of_order, c.missing, c.timeouts, c.stray_cf, c.invalid) == (0, 0, 0, 0, 0)
    assert {d[2][:2] for d in done} == {b"\x61\x01", b"\x61\x04"}
    assert {len(d[2]) for d in done} == {0x35, 0x1F}  # padding stripped to the FF length


def test_leaf_log_dropped_middle_cf_is_out_of_order(leaf):
    frames = raw(leaf)
    cfs = first_transfer_cfs(frames)
    del frames[cfs[2]]
    r = IsoTpReassembler([RESP])
    assert len(feed_all(r, frames)) == 25
    c = r.counters[RESP]
    # the CF after the gap has the wrong number: dropped; the rest of that transfer is stray
    assert (c.out_of_order, c.missing, c.stray_cf) == (1, 0, len(cfs) - 3 - 1)


def test_leaf_log_dropped_last_cf_times_out(leaf):
    # the next request comes 2 s later: past N_Cr, so the unfinished transfer is a timeout
    frames = raw(leaf)
    del frames[first_transfer_cfs(frames)[-1]]
    r = IsoTpReassembler([RESP])
    assert len(feed_all(r, frames)) == 25
    c = r.counters[RESP]
    assert (c.out_of_order, c.missing, c.stray_cf, c.timeouts) == (0, 0, 0, 1)


def test_leaf_log_dropped_last_cf_then_quick_first_frame_is_missing(leaf):
    frames = raw(leaf)
    cfs = first_transfer_cfs(frames)
    last = frames[cfs[-1]][0]
    del frames[cfs[-1]]
    shift = next(t for t, fid, d in frames if t > last and fid == RESP) - last - 0.05
    frames = [(t - shift if t > last else t, fid, d) for t, fid, d in frames]  # next response 50 ms later
    r = IsoTpReassembler([RESP])
    assert len(feed_all(r, frames)) == 25
    c = r.counters[RESP]
    assert (c.out_of_order, c.missing, c.stray_cf, c.timeouts) == (0, 1, 0, 0)


def test_leaf_log_swapped_cfs_are_out_of_order(leaf):
    frames = raw(leaf)
    cfs = first_transfer_cfs(frames)
    a, b = cfs[1], cfs[2]
    frames[a], frames[b] = (frames[a][0], RESP, frames[b][2]), (frames[b][0], RESP, frames[a][2])
    r = IsoTpReassembler([RESP])
    assert len(feed_all(r, frames)) == 25
    c = r.counters[RESP]
    assert (c.out_of_order, c.missing, c.stray_cf) == (1, 0, len(cfs) - 2)


# -- decoding reassembled responses ---------------------------------------------------
def reference_payloads(frames):
    """A small independent reassembly: the CSS layout (FF data from byte 1 on, CF data from byte 1 on),
    cut to 1 + the FF length."""
    out, current = [], None
    for m in frames:
        if m.arbitration_id != RESP:
            continue
        d = bytes(m.data)
        if d[0] >> 4 == 1:
            length = (d[0] & 0xF) << 8 | d[1]
            current = bytearray(d[1:])
        elif d[0] >> 4 == 2 and current is not None:
            current += d[1:]
            if len(current) >= 1 + length:
                out.append((m.timestamp, bytes(current[:1 + length])))
                current = None
    return out


def test_leaf_log_decodes_reassembled_responses(leaf, leaf_dbc):
    bus_dbcs = {"*": [leaf_dbc]}
    plain = Decoder(bus_dbcs)
    assert sum(plain.decode(m, "can0") is not None for m in leaf) == 0  # without the transport layer
    decoder = wrap_for_transport(Decoder(bus_dbcs), bus_dbcs)
    assert isinstance(decoder, TransportDecoder)
    frames = [f for m in leaf if (f := decoder.decode(m, "can0")) is not None]

    message = leaf_dbc.database.get_message_by_frame_id(RESP)
    expected = [(t, message.decode(p, decode_choices=False, scaling=False, allow_truncated=True))
                for t, p in reference_payloads(leaf)]
    assert len(frames) == len(expected) == 26
    assert [(f.timestamp, f.raw) for f in frames] == expected
    assert {f.message for f in frames} == {"SoC_Temp"} and {f.frame_id for f in frames} == {RESP}

    socs = [decoder.physical(f)["SoC"] for f in frames if f.raw["response"] == 1]
    temps = [decoder.physical(f)["BatPackTemp1"] for f in frames if f.raw["response"] == 4]
    assert len(socs) == 13 and all(0 <= s <= 100 for s in socs) and 85 < socs[0] < 95
    assert len(temps) == 13 and all(-20 <= t <= 40 for t in temps)

    t = decoder.transport["can0"]
    assert (t.frames, t.transfers, t.decoded, t.negative, t.decode_errors) == (169, 26, 26, 0, 0)
    assert t.services == {0x61: 26}
    assert decoder.message_counts[("can0", "SoC_Temp")] == 26
    # the request id's frames still reach the wrapped decoder (unknown there), and its counters stay exact
    c = decoder.counters["can0"]
    assert (c.frames, c.unknown_id, c.wrong_length) == (52, 52, 0)
    assert decoder.snapshot()["can0"]["isotp"]["0x7BB"]["flow_control_seen"] == 26


def test_negative_response_counted_not_decoded(leaf_dbc):
    decoder = wrap_for_transport(Decoder({"*": [leaf_dbc]}), [leaf_dbc])
    msg = can.Message(timestamp=1.0, arbitration_id=RESP, is_extended_id=False,
                      data=bytes.fromhex("03 7f 21 12 ff ff ff ff"))
    assert decoder.decode(msg, "can0") is None
    t = decoder.transport["can0"]
    assert (t.transfers, t.negative, t.decoded) == (1, 1, 0)
    assert t.negative_codes == {"SubFunctionNotSupported": 1}


def test_wrap_is_identity_without_transport_messages(shared_data):
    gps = load_dbc(shared_data / "dbc/css-electronics/canmod-gps.dbc")
    decoder = Decoder({"*": [gps]})
    assert wrap_for_transport(decoder, {"*": [gps]}) is decoder
