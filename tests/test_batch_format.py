"""Batch payload format: lossless round trips on every real log, column codecs, errors, docs decoder."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.batch import (
    Batcher,
    BatchError,
    TableData,
    decode_batch,
    dictionary_id,
    encode_batch,
    iter_samples,
    schema_dictionary,
)
from agent.batch.columns import decode_times, decode_values, encode_times, encode_values
from agent.batch.format import MAX_BODY_BYTES, MAX_ROWS
from agent.buffer import BatchStore
from agent.cli.main import main as cli_main
from agent.model import Row, SignalSpec
from tests.helpers.real_logs import REAL_LOGS, decoded_frames, rows_of

REPO = Path(__file__).resolve().parents[1]


def _expected(pairs, decoder) -> Counter:
    expected: Counter = Counter()
    for _, frame in pairs:
        for name, raw in frame.raw.items():
            spec = decoder.specs[f"{frame.message}.{name}"]
            expected[(frame.timestamp, frame.bus, spec.key, spec.to_physical(raw), raw)] += 1
    return expected


def _typed(value):
    """JSON turns 5.0 into 5.0 and 5 into 5: keep the type in comparisons too."""
    return (type(value).__name__, value)


@pytest.mark.parametrize("log", REAL_LOGS, ids=lambda log: Path(log.path).name)
def test_every_real_log_round_trips_through_store_and_inspect(shared_data, tmp_path, log):
    decoder, pairs = decoded_frames(shared_data, log)
    assert len(pairs) > 5000  # the log really decoded
    db = tmp_path / "buffer.db"
    with BatchStore(db) as store:
        batcher = Batcher(decoder.specs, store.add, "veh-1", "boot-a", lambda: store.next_seq("boot-a"))
        for row in rows_of(pairs):
            batcher.put(row)
        batcher.flush()
        stored = store.pending(limit=1000)
    assert all(len(b.payload) <= 65536 for b in stored)
    assert [b.seq for b in stored] == list(range(len(stored)))
    out = tmp_path / "samples.jsonl"
    assert cli_main(["inspect", str(db), "--format", "jsonl", "-o", str(out)]) == 0
    got: Counter = Counter()
    headers = []
    for line in out.read_text().splitlines():
        item = json.loads(line)
        if "header" in item:
            headers.append(item["header"])
        else:
            got[(item["t"], item["bus"], item["key"], _typed(item["value"]), _typed(item["raw"]))] += 1
    expected = Counter({(t, bus, key, _typed(value), _typed(raw)): n
                        for (t, bus, key, value, raw), n in _expected(pairs, decoder).items()})
    assert sum(got.values()) == sum(expected.values()) == sum(h["samples"] for h in headers)
    assert got == expected
    assert sum(h["rows"] for h in headers) == len(pairs)
    assert min(h["t_min"] for h in headers) == min(f.timestamp for _, f in pairs)
    assert max(h["t_max"] for h in headers) == max(f.timestamp for _, f in pairs)


def test_inspect_csv_of_a_batch_file_reproduces_values(shared_data, tmp_path):
    decoder, pairs = decoded_frames(shared_data, REAL_LOGS[3])
    payloads: list[bytes] = []
    batcher = Batcher(decoder.specs, lambda b: payloads.append(b.payload), "v", "b", itertools.count().__next__)
    for row in rows_of(pairs):
        batcher.put(row)
    batcher.flush()
    batch_file = tmp_path / "batches.bin"
    batch_file.write_bytes(b"".join(payloads))  # several payloads back to back
    out = tmp_path / "samples.csv"
    assert cli_main(["inspect", str(batch_file), "--format", "csv", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "stream,boot_id,seq,timestamp,bus,key,value,raw"
    got = Counter()
    for line in lines[1:]:
        _stream, _boot, _seq, t, bus, key, value, raw = line.split(",")
        got[(float(t), bus, key, float(value), int(raw))] += 1
    expected = Counter({(t, bus, key, float(v), r): n for (t, bus, key, v, r), n in _expected(pairs, decoder).items()})
    assert got == expected


def test_catalog_dictionary_shrinks_batches_and_is_required_to_decode(shared_data):
    decoder, pairs = decoded_frames(shared_data, REAL_LOGS[0])
    dictionary = schema_dictionary(decoder.specs)
    sizes = {}
    decoded = {}
    for mode, zdict in (("plain", None), ("dict", dictionary)):
        payloads: list[bytes] = []
        batcher = Batcher(decoder.specs, lambda b, p=payloads: p.append(b.payload), "v", "b",
                          itertools.count().__next__, dictionary=zdict)
        for row in rows_of(pairs):
            batcher.put(row)
        batcher.flush()
        sizes[mode] = sum(map(len, payloads))
        dicts = {dictionary_id(dictionary): dictionary}
        decoded[mode] = Counter(s for p in payloads for s in iter_samples(decode_batch(p, dicts)))
        if zdict is not None:
            with pytest.raises(BatchError, match="needs zstd dictionary sha256:"):
                decode_batch(payloads[0])
    assert decoded["plain"] == decoded["dict"] == _expected(pairs, decoder)
    assert sizes["dict"] < 0.85 * sizes["plain"]


def _table(**overrides) -> TableData:
    base = dict(bus="can0", message="M", raw=True, signals=("a", "b"), timestamps=[1.0, 1.01, 1.02],
                rows=[(1, 7), (2, 7), (3, 7)], scales=[0.5, 1], offsets=[-1.0, 0])
    base.update(overrides)
    return TableData(**base)


def _encode(tables, **header) -> bytes:
    fields = {"vehicle_id": "v", "boot_id": "b", "seq": 3, "stream": "s", "priority": 2, "categories": ["driving"],
              "consent_version": 0, "bench": False, "created": 5.0, **header}
    return encode_batch(fields, tables, zstandard.ZstdCompressor(level=3)).payload


def test_header_fields_and_samples():
    payload = _encode([_table(), _table(bus="can1", raw=False, rows=[(0.25, 1), (0.5, 2), (1.5, 3)])])
    decoded = decode_batch(payload)
    header = decoded.header
    assert header["schema"] == 1
    assert (header["boot_id"], header["seq"], header["stream"], header["priority"]) == ("b", 3, "s", 2)
    assert (header["t_min"], header["t_max"], header["rows"], header["samples"]) == (1.0, 1.02, 6, 12)
    envelope = msgpack.unpackb(payload)
    assert header["sha256"] == hashlib.sha256(envelope["body"]).hexdigest()
    samples = list(iter_samples(decoded))
    assert samples[:3] == [(1.0, "can0", "M.a", -0.5, 1), (1.01, "can0", "M.a", 0.0, 2), (1.02, "can0", "M.a", 0.5, 3)]
    assert (1.02, "can0", "M.b", 7, 7) in samples
    assert (1.01, "can1", "M.a", 0.5, None) in samples and (1.02, "can1", "M.b", 3, None) in samples


def test_decode_errors_are_clear():
    payload = _encode([_table()])
    envelope = msgpack.unpackb(payload)
    body = bytearray(envelope["body"])
    body[len(body) // 2] ^= 0x40
    tampered = msgpack.packb({"header": envelope["header"], "body": bytes(body)})
    with pytest.raises(BatchError, match="body SHA-256 mismatch"):
        decode_batch(tampered)
    with pytest.raises(BatchError, match="not a msgpack batch envelope"):
        decode_batch(b"\xc1garbage")
    with pytest.raises(BatchError, match="unsupported batch schema 99"):
        decode_batch(msgpack.packb({"header": {**envelope["header"], "schema": 99}, "body": envelope["body"]}))
    with pytest.raises(BatchError, match=r"M\.b: values must be numbers, got str"):
        _encode([_table(rows=[(1, "x"), (2, "y"), (3, "z")])])


def test_multiplexed_signal_sets_make_separate_tables():
    def spec(name, scale=1, offset=0):
        return SignalSpec(f"Mux.{name}", "Mux", name, scale, offset, False, False, 8, None, None, "", {}, "", "driving")

    specs = {s.key: s for s in (spec("sel"), spec("a", 0.1), spec("b", 2, 5))}
    payloads = []
    batcher = Batcher(specs, lambda b: payloads.append(b), "v", "b", itertools.count().__next__)
    for i in range(20):
        values = {"sel": 0, "a": i} if i % 2 == 0 else {"sel": 1, "b": 100 - i}
        batcher.put(Row("s", 1, 10.0 + i / 100, "can0", "Mux", values))
    batcher.flush()
    decoded = decode_batch(payloads[0].payload)
    assert sorted(tuple(t.signals) for t in decoded.tables) == [("sel", "a"), ("sel", "b")]
    samples = set(iter_samples(decoded))
    assert (10.02, "can0", "Mux.a", 2 * 0.1, 2) in samples
    assert (10.03, "can0", "Mux.b", 97 * 2 + 5, 97) in samples
    assert payloads[0].categories == ("driving",)


# -- column codecs ---------------------------------------------------------------------------

ints64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
uints64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(ints64, min_size=1, max_size=60), st.lists(uints64, min_size=1, max_size=60),
                 st.lists(st.integers(-3, 3), min_size=1, max_size=200)))
def test_integer_columns_round_trip(values):
    column = msgpack.unpackb(msgpack.packb(encode_values(values)))
    decoded = decode_values(column, len(values), [])
    assert decoded == values and all(type(v) is int for v in decoded)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=50))
def test_float_columns_round_trip_bit_for_bit(values):
    column = msgpack.unpackb(msgpack.packb(encode_values(values)))
    decoded = decode_values(column, len(values), [])
    assert [v.hex() if not math.isnan(v) else "nan" for v in decoded] == \
           [v.hex() if not math.isnan(v) else "nan" for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(10 ** 15), 10 ** 15), min_size=1, max_size=50))
def test_microsecond_timestamps_round_trip_exactly(micros):
    timestamps = [m / 1_000_000 for m in micros]
    column, exact = encode_times(timestamps, micros[0])
    assert exact
    assert decode_times(msgpack.unpackb(msgpack.packb(column)), len(micros), micros[0]) == timestamps


def test_timestamps_finer_than_a_microsecond_are_kept_as_floats():
    timestamps = [1.0000001, 1.0000002, 2.5]
    column, exact = encode_times(timestamps, 1_000_000)
    assert not exact and column[0] in ("f32", "f64")
    assert decode_times(column, 3, 1_000_000) == timestamps


def test_small_ranges_are_bit_packed_and_periodic_timestamps_are_tiny():
    flags = [i % 2 for i in range(800)]
    column = encode_values(flags)
    assert column[0] == "p" and column[3] == -1 and len(column[4]) == 100  # one bit per row
    column, _ = encode_times([i / 100 for i in range(1000)], 0)  # exactly 10 ms apart
    assert column[:6] == ["d", 0, 10_000, 1, 0, b""]  # step only, no data at all


# -- the plain-Python decoder in docs/payload.md ---------------------------------------------

def _docs_decoder() -> dict:
    text = (REPO / "docs" / "payload.md").read_text()
    section = text[text.index("## Decoding without our code"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/payload.md", "exec"), namespace)  # the documented code, run as written
    return namespace


def test_docs_reference_decoder_matches_on_real_batches(shared_data):
    decode = _docs_decoder()["decode"]
    decoder, pairs = decoded_frames(shared_data, REAL_LOGS[4])
    dictionary = schema_dictionary(decoder.specs)
    for zdict in (None, dictionary):
        payloads = []
        batcher = Batcher(decoder.specs, lambda b, out=payloads: out.append(b.payload), "v", "b",
                          itertools.count().__next__, dictionary=zdict)
        for row in rows_of(pairs):
            batcher.put(row)
        batcher.flush()
        for payload in payloads:
            header, samples = decode(payload, zdict)
            ours = decode_batch(payload, {dictionary_id(dictionary): dictionary})
            assert header == ours.header
            assert Counter(samples) == Counter(iter_samples(ours))
    # floats, constants and bit-packed columns too
    payload = _encode([_table(raw=False, rows=[(0.1, 1), (float("inf"), 1), (-0.0, 1)])])
    assert sorted(decode(payload)[1]) == sorted(iter_samples(decode_batch(payload)))


def test_payload_benchmark_runs_and_meets_the_json_target(shared_data, tmp_path):
    """Keeps benchmarks/payload.py working; guards the measured sizes against regressions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("payload_benchmark", REPO / "benchmarks" / "payload.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    decoder, pairs = decoded_frames(shared_data, REAL_LOGS[3])
    candump, jsonl = bench.baselines(pairs, decoder)
    plain = bench.run_one(pairs, decoder, None, 19, tmp_path)
    with_dict = bench.run_one(pairs, decoder, schema_dictionary(decoder.specs), 19, tmp_path)
    assert plain["lossless"] and with_dict["lossless"]
    assert plain["bytes"] / jsonl <= bench.TARGET_B
    assert with_dict["bytes"] / jsonl <= bench.STRETCH_B
    assert with_dict["bytes"] < plain["bytes"] < 0.5 * candump  # measured 0.39 / 0.47 (docs/payload.md)


def test_inspect_refuses_files_that_are_not_batches(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")  # every byte is a valid msgpack integer: must still be refused
    assert cli_main(["inspect", str(text)]) == 2
    assert "byte 0: not a batch payload" in capsys.readouterr().err
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(_encode([_table()])[:-10])
    assert cli_main(["inspect", str(truncated)]) == 2
    assert "truncated batch at byte 0" in capsys.readouterr().err


# -- decode limits (docs/payload.md, "Decode limits") ---------------------------------------------------------

def _rebuilt(payload: bytes, edit_body=None, header_fields: dict | None = None, raw_body: bytes | None = None,
             compressor: zstandard.ZstdCompressor | None = None) -> bytes:
    """The payload with its body edited (or replaced by ``raw_body``) and recompressed, hash updated."""
    envelope = msgpack.unpackb(payload)
    if raw_body is None:
        body = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(envelope["body"]))
        edit_body(body)
        raw_body = msgpack.packb(body)
    compressed = (compressor or zstandard.ZstdCompressor(level=19)).compress(raw_body)
    header = {**envelope["header"], **(header_fields or {}), "sha256": hashlib.sha256(compressed).hexdigest()}
    return msgpack.packb({"header": header, "body": compressed})


def _refused_quickly_and_small(payload: bytes, match: str) -> None:
    started = time.perf_counter()
    with pytest.raises(BatchError, match=match):
        decode_batch(payload)
    assert time.perf_counter() - started < 2.0
    tracemalloc.start()  # (it slows every allocation down: the time is taken without it)
    try:
        with pytest.raises(BatchError, match=match):
            decode_batch(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 1024 * 1024, f"{peak / 2**20:.0f} MiB to refuse a {len(payload)}-byte batch"


def _set(index: int, value):
    def edit(body):
        body["tables"][0][index] = value
    return edit


def test_a_small_batch_claiming_a_billion_rows_is_refused_fast_and_with_bounded_memory():
    jitter = [0, 113, 7, 190, 55, 161, 23, 99, 140, 3, 77, 181]  # microseconds: the deltas take 2 bytes each
    times = [(1_000_000 + 10_000 * i + us) / 1_000_000 for i, us in enumerate(jitter)]
    payload = _encode([_table(message="EEC1", timestamps=times, rows=[(i, 7) for i in range(12)])])
    assert len(payload) < 400
    body_only = _rebuilt(payload, _set(6, 10**9))
    _refused_quickly_and_small(body_only, r"^table 0 \(can0/EEC1\): declares 1000000000 rows but its time column "
                                          r"holds 12$")
    both = _rebuilt(payload, _set(6, 10**9), {"rows": 10**9, "samples": 2 * 10**9})
    _refused_quickly_and_small(both, "header declares 1000000000 rows, more than the limit of 4194304")
    # Timestamps exactly 10 ms apart take no data at all: such a column fits any count, the row limit bounds it.
    periodic = _encode([_table(timestamps=[1 + i / 100 for i in range(12)], rows=[(5, 7)] * 12)])
    _refused_quickly_and_small(_rebuilt(periodic, _set(6, 10**9)),
                               r"declares 1000000000 rows, which takes the batch past the limit of 4194304 rows")
    ten = _encode([_table(signals=tuple("abcdefghij"), timestamps=[1 + i / 100 for i in range(12)],
                          rows=[(5,) * 10] * 12, scales=[1] * 10, offsets=[0] * 10)])
    _refused_quickly_and_small(_rebuilt(ten, _set(6, MAX_ROWS)), f"declares {MAX_ROWS} rows of 10 signals, which "
                                                                 "takes the batch past the limit of 33554432 samples")
    # A value column is held to the count as well, and so is the header.
    _refused_quickly_and_small(_rebuilt(payload, _set(6, 13)), "declares 13 rows but its time column holds 12")
    wide = _rebuilt(periodic, _set(8, [["p", 0, 1, 1, b"\x01\x02"], 7]))
    _refused_quickly_and_small(wide, r"declares 12 rows but its column 0 \(a\) holds 2")
    _refused_quickly_and_small(_rebuilt(payload, _set(6, 11)), "declares 11 rows but")
    assert decode_batch(_rebuilt(payload, lambda body: None))  # re-encoding alone changes nothing
    with pytest.raises(BatchError, match="header declares 13 rows but the tables hold 12"):
        decode_batch(_rebuilt(payload, lambda body: None, {"rows": 13}))


def test_bodies_past_the_decompressed_limit_are_refused_without_inflating_them():
    payload = _encode([_table()])
    zeros = bytes(MAX_BODY_BYTES + 1)
    declared = _rebuilt(payload, raw_body=zeros, compressor=zstandard.ZstdCompressor(level=1))
    streamed = _rebuilt(payload, raw_body=zeros, compressor=zstandard.ZstdCompressor(level=1,
                                                                                   write_content_size=False))
    del zeros
    assert len(declared) < 10_000 and len(streamed) < 10_000
    _refused_quickly_and_small(declared, f"declares {MAX_BODY_BYTES + 1} bytes decompressed, more than the limit")
    _refused_quickly_and_small(streamed, f"decompresses to more than the limit of {MAX_BODY_BYTES} bytes")
    # Many tiny objects: 4 MiB of empty arrays would be ~250 MiB of Python lists.
    nested = msgpack.packb({"t_base_us": 0, "tables": [[[]] * 60000 for _ in range(70)]})
    _refused_quickly_and_small(_rebuilt(payload, raw_body=nested), "more than 524288 arrays, maps and items")
    envelope = msgpack.unpackb(payload)
    truncated = envelope["body"][:-3]
    cut = msgpack.packb({"header": {**envelope["header"], "sha256": hashlib.sha256(truncated).hexdigest()},
                         "body": truncated})
    with pytest.raises(BatchError, match="truncated zstd frame"):
        decode_batch(cut)


@pytest.mark.parametrize(("column", "message"), [
    (["d", 0, 1, "xx", 1, b"\x01\x02"], "delta column: first, step, mul and width must be integers"),
    (["p", 0, 1.5, 1, b"\x01\x02\x03"], "plain column: ref, mul and width must be integers"),
    (["p", 0, 1, 1, 3], "packed data is int, not bytes"),
    (["f64", "text"], "bad f64 data: str, not bytes"),
    (["=", 5], "column reference 5 points to no earlier column"),
])
def test_malformed_columns_are_named(column, message):
    payload = _rebuilt(_encode([_table()]), _set(8, [column, 7]))
    with pytest.raises(BatchError, match=re.escape(f"table 0 (can0/M): {message}")):
        decode_batch(payload)


def test_a_reference_column_stands_only_for_an_identical_one():
    """Python's == takes 1 and 1.0, or 0.0 and -0.0, as equal: such a column must not become ["=", j]
    (it would decode with the other column's types or sign)."""
    table = _table(raw=False, signals=("i", "f", "z", "nz", "same"), scales=None, offsets=None,
                   rows=[(1, 1.0, 0.0, -0.0, 1), (2, 2.0, 0.0, -0.0, 2), (3, 3.0, 0.0, -0.0, 3)])
    decoded = decode_batch(_encode([table]))
    values = {signal: [] for signal in table.signals}
    for _t, _bus, key, value, _raw in iter_samples(decoded):
        values[key.split(".", 1)[1]].append(value)
    assert [type(v) for v in values["i"]] == [int, int, int] and values["same"] == [1, 2, 3]
    assert [type(v) for v in values["f"]] == [float, float, float] and values["f"] == [1.0, 2.0, 3.0]
    assert [math.copysign(1, v) for v in values["nz"]] == [-1, -1, -1]
    assert [math.copysign(1, v) for v in values["z"]] == [1, 1, 1]
