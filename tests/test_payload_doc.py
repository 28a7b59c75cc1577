"""docs/payload.md's reference decoder, run as written: every column form the encoder writes, real replayed batches.

The decoder is the one ```python block under "## Decoding without our code"; it is compared sample by sample
(values and timestamps bit for bit, with their types) against what the Batcher was given, against
``decode_batch``/``iter_samples`` and against the reference receiver, and a one-line mistake in it must show.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import struct
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import zstandard

from agent.batch import Batcher, BatchError, decode_batch, dictionary_id, iter_samples, schema_dictionary
from agent.batch.identity import BatchNumbers
from agent.buffer import BatchStore
from agent.cli.main import main as cli_main
from agent.model import UNCLASSIFIED, Row, SignalSpec
from agent.uplink.properties import parse_user_properties, user_properties
from simulator.receiver.decode import SQLITE_MAX, SQLITE_MIN, verify_batch
from tests.helpers.real_logs import REAL_LOGS, decoder_for

DOC = Path(__file__).resolve().parents[1] / "docs" / "payload.md"
NAN = float("nan")
# Raw signals of the "Forms" table: name -> (scale, offset, value of row i); each aims at one column form.
FORM_SIGNALS = {
    "zero": (1, 0, lambda r, i: 0),  # bare int
    "flag": (1, 0, lambda r, i: r.randint(0, 1)),  # bit-packed, 1 bit
    "gear": (1, 0, lambda r, i: r.randint(0, 3)),  # 2 bits
    "choice": (1, 0, lambda r, i: r.randint(0, 12)),  # 4 bits
    "byte": (1, 0, lambda r, i: r.choice((3, 17, 100, 200))),  # 1-byte planes
    "word": (0.1, -40, lambda r, i: r.choice((0, 1001, 60000))),  # 2 (few distinct values: plain)
    "dword": (1, 0, lambda r, i: r.choice((5, 2**20, 2**31))),  # 4
    "wide": (1, 0, lambda r, i: r.randint(0, 2**31)),  # all distinct: delta
    "qword": (1, 0, lambda r, i: r.choice((0, 2**64 - 1, r.randint(0, 2**64 - 1)))),  # 8, uint64
    "signed": (1, 0, lambda r, i: r.choice((-2**63, 2**63 - 1, r.randint(-2**63, 2**63 - 1)))),  # int64
    "ramp": (1, 0, lambda r, i: 7 * i * (i + 3) // 2),  # delta, mul 7
    "fifty": (1, 0, lambda r, i: -1000 + 50 * r.randint(0, 9)),  # plain, mul 50, negative ref
    "copy": (1, 0, None),  # = byte: ["=", 4]
    "ieee32": (0.5, 1, lambda r, i: r.randint(-64, 64) / 8),  # f32 in a raw table: scale/offset apply
    "ieee64": (2.0, -1.0, lambda r, i: r.choice((NAN, math.inf, -math.inf, -0.0, r.random()))),  # f64
    "fconst": (2, -1, lambda r, i: 2.5),  # bare float
    "intscale": (3, -7, lambda r, i: r.randint(0, 100)),  # int * int + int stays int
    "boolish": (1, 0, lambda r, i: bool(i % 3)),  # bools are stored as 0/1
}
# Every form the encoder writes: the every-form test proves its batches hold each of them.
REQUIRED_FORMS = {"int", "float", "=", "p-1", "p-2", "p-4", "p1", "p2", "p4", "p8", "p*mul", "d*mul", "f32", "f64",
                  "raw f32", "raw f64", "t:d0", "t:d", "t:f64", "t:f32", "t:float", "no signals", "one row",
                  "negative t_base_us", "zstd_dict"}


# -- the documented code --------------------------------------------------------------------------

def doc_source() -> str:
    section = DOC.read_text()[DOC.read_text().index("## Decoding without our code"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def load(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, str(DOC), "exec"), namespace)  # the documented code, run as written
    return namespace


def exact(value: object) -> object:
    """Equal only when bit for bit the same and of the same type (NaN equals NaN, -0.0 differs from 0.0)."""
    if isinstance(value, float):
        return "float", struct.pack("<d", value)
    return type(value).__name__, value


def exact_all(samples) -> list:
    return [tuple(map(exact, sample)) for sample in samples]


def spec(message: str, signal: str, scale=1, offset=0, category: str = UNCLASSIFIED) -> SignalSpec:
    return SignalSpec(f"{message}.{signal}", message, signal, scale, offset, isinstance(scale, float), True, 64,
                      None, None, "", {}, "", category)


# -- batches of every form --------------------------------------------------------------------------

def every_form_rows() -> tuple[dict[str, SignalSpec], list[Row]]:
    rng = random.Random(12)
    specs = {f"Forms.{name}": spec("Forms", name, scale, offset) for name, (scale, offset, _) in FORM_SIGNALS.items()}
    for message, signal, category in (("Late", "x", "location"), ("Mux", "sel", UNCLASSIFIED), ("Mux", "a", "dynamics"),
                                      ("Mux", "b", UNCLASSIFIED), ("Single", "x", UNCLASSIFIED),
                                      ("Back", "x", UNCLASSIFIED), ("Reset", "x", UNCLASSIFIED)):
        specs[f"{message}.{signal}"] = spec(message, signal, category=category)

    def row(t, bus, message, values, raw=True):
        return Row("telemetry", 1, t, bus, message, values, raw)

    timed = []
    for i in range(60):  # periodic at exactly 10 ms, from -0.25 s across zero
        values = {name: make(rng, i) if make else None for name, (_, _, make) in FORM_SIGNALS.items()}
        values["copy"] = values["byte"]
        timed.append(row((-250_000 + 10_000 * i) / 1_000_000, "can0", "Forms", values))
        timed.append(row((-240_000 + 20_000 * i + rng.randint(-300, 300)) / 1_000_000, "can0", "Mux",
                         {"sel": i % 2, "a" if i % 2 == 0 else "b": rng.randint(-5, 5)}))
    for i in range(20):  # physical values (aggregates, privacy transforms), jittery µs times
        timed.append(row((-200_000 + 100_000 * i + rng.randint(0, 999)) / 1_000_000, "can1", "Agg", {
            "mean": rng.random(), "count": rng.randint(0, 9), "lat": round(rng.uniform(40, 42), 2),
            "half": rng.randint(0, 8) / 2, "signed_zero": (-0.0, 0.0, 1.5)[i % 3], "nan_const": NAN, "seven": 7,
            "minus_zero": -0.0}, raw=False))
        timed.append(row((-100_000 + 50_000 * i) / 1_000_000 + 1e-9, "can1", "Inexact", {"v": i / 3}, raw=False))
        timed.append(row((2 * i + 1) * 2**-20, "can0", "Binary", {"v": float(i)}, raw=False))  # float32 times
    for _ in range(3):
        timed.append(row(0.1234567, "can0", "Same", {"v": 1.25}, raw=False))  # one inexact time: a bare float
        timed.append(row(0.15, "can1", "Empty", {}))  # a table without signals
    timed.sort(key=lambda r: r.timestamp)
    rows = [row(1.0, "can0", "Late", {"x": 3})]  # first row, but not the earliest: t_min is not the first time
    rows += timed
    rows += [row(0.5, "can0", "Single", {"x": -2**63})]
    rows += [row(t, "can0", "Back", {"x": k}) for k, t in enumerate((0.9, 0.3, 0.6, 0.4))]  # times step back
    rows += [row((-30_000_000 + 20_000 * i) / 1_000_000, "can0", "Reset", {"x": i % 4}) for i in range(30)]
    return specs, rows


def batches(specs, rows, dictionary=None, max_bytes=65536) -> tuple[list, Batcher]:
    out: list = []
    seq, stream_seq = itertools.count(), itertools.count()
    batcher = Batcher(specs, out.append, "car-1", max_bytes=max_bytes, dictionary=dictionary,
                      numbering=lambda _stream: BatchNumbers("e1", "boot-1", next(seq), next(stream_seq)))
    for r in rows:
        batcher.put(r)
    batcher.flush()
    return out, batcher


def expected_samples(specs, rows) -> Counter:
    out: Counter = Counter()
    for r in rows:
        for name, value in r.values.items():
            value = int(value) if isinstance(value, bool) else value
            if r.raw:
                physical = specs[f"{r.message}.{name}"].to_physical(value)
                out[tuple(map(exact, (r.timestamp, r.bus, f"{r.message}.{name}", physical, value)))] += 1
            else:
                out[tuple(map(exact, (r.timestamp, r.bus, f"{r.message}.{name}", value, None)))] += 1
    return out


def body_of(payload: bytes, dictionary: bytes | None) -> dict:
    body = msgpack.unpackb(payload)["body"]
    zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
    return msgpack.unpackb(zstandard.ZstdDecompressor(dict_data=zdict).decompress(body))


def forms_of(header: dict, content: dict) -> set[str]:
    """The column forms one batch uses, named as in REQUIRED_FORMS."""
    def name(column) -> str:
        if isinstance(column, (int, float)):
            return type(column).__name__
        if column[0] in ("=", "f32", "f64"):
            return column[0]
        mul, width = column[-3], column[-2]
        return f"{column[0]}*mul" if mul > 1 else f"{column[0]}{width}"

    found = {"zstd_dict"} if header["zstd_dict"] else set()
    if content["t_base_us"] < 0:
        found.add("negative t_base_us")
    for _message, signals, _scales, _offsets, _bus, raw, count, t, columns in content["tables"]:
        form = name(t)
        found.add("t:d0" if form == "d0" else "t:d" if form.startswith("d") else f"t:{form}")
        found.update(name(column) for column in columns)
        found.update(f"raw {name(column)}" for column in columns if raw and name(column) in ("f32", "f64"))
        found.update(label for label, present in (("no signals", not signals), ("one row", count == 1)) if present)
    return found


def stored_form(value: object) -> object:
    """What the receiver's database keeps: integers past SQLite's range as their decimal text."""
    if isinstance(value, int) and not SQLITE_MIN <= value <= SQLITE_MAX:
        return str(value)
    return value


def check_batch(decode, encoded, dictionary) -> list:
    """The documented decoder against decode_batch and the receiver on one batch; returns its samples."""
    header, samples = decode(encoded.payload, dictionary)
    dictionaries = {dictionary_id(dictionary): dictionary} if dictionary else {}
    ours = decode_batch(encoded.payload, dictionaries)
    assert header == ours.header == encoded.header
    assert exact_all(samples) == exact_all(iter_samples(ours))  # same samples, same order
    verified = verify_batch(header["vehicle_id"], header["stream"], encoded.payload,
                            parse_user_properties(user_properties(encoded)), 0.0, dictionaries)
    assert verified.row.key == (header["vehicle_id"], header.get("store_epoch", ""), header["boot_id"], header["seq"])
    received = [(t, bus, key, value, raw) for t, bus, key, _category, value, raw in verified.samples]
    assert exact_all(received) == exact_all((t, bus, key, stored_form(value), stored_form(raw))
                                            for t, bus, key, value, raw in samples)
    assert header["samples"] == len(samples) == verified.row.samples
    return samples


def test_doc_decoder_decodes_every_column_form_exactly():
    specs, rows = every_form_rows()
    decode = load(doc_source())["decode"]
    dictionary = schema_dictionary(specs)
    seen: set[str] = set()
    for zdict in (None, dictionary):
        encoded, batcher = batches(specs, rows, zdict)
        assert len(encoded) == 2 and batcher.stats.splits == 0  # the clock reset to -30 s starts a second batch
        got: Counter = Counter()
        for batch in encoded:
            samples = check_batch(decode, batch, zdict)
            got.update(exact_all(samples))
            header, content = batch.header, body_of(batch.payload, zdict)
            seen |= forms_of(header, content)
            times = [t for t, *_ in samples]
            assert (header["t_min"], header["t_max"]) == (min(times), max(times))  # earliest/latest, not first/last
            assert content["t_base_us"] == round(header["t_min"] * 1e6)
            assert header["rows"] == sum(table[6] for table in content["tables"])
            assert header["zstd_dict"] == (dictionary_id(zdict) if zdict else None)
        assert got == expected_samples(specs, rows)  # values, times, names, types: what the encoder was given
        assert sum(b.header["rows"] for b in encoded) == len(rows)
        assert encoded[0].header["t_min"] == -0.25 and encoded[1].header["t_max"] < -29.4
        assert encoded[0].header["categories"] == ["dynamics", "location", "unclassified"]
    missing = REQUIRED_FORMS - seen
    assert not missing, f"the encoder wrote none of {sorted(missing)}: the scenario no longer covers every form"


# One line of the documented decoder, each misread as a reader of the text could: every one must show.
MUTATIONS = {
    "zigzag sign": ("return (u >> 1) ^ -(u & 1)", "return (u >> 1) ^ (u & 1)"),
    "bit order": ("(i * bits % 8)", "(8 - bits - i * bits % 8)"),
    "byte planes": ("sum(data[k * count + i]", "sum(data[i * width + k]"),
    "float planes": ("planes[k * count + i]", "planes[i * size + k]"),
    "scale on integers only": ("if raw:  # every column", "if raw and isinstance(value, int):  # every column"),
    "float t relative": ("times = decode_column(t, count, [])", "times = [base_us / 1e6 + s for s in "
                                                                "decode_column(t, count, [])]"),
    "t_base_us ignored": ("(base_us + us) / 1_000_000", "us / 1_000_000"),
    "= one-based": ("return earlier[column[1]]", "return earlier[column[1] - 1]"),
    "delta without step": ("values[-1] + step + mul * unzigzag(u)", "values[-1] + mul * unzigzag(u)"),
    "plain without mul": ("[ref + mul * u for u", "[ref + u for u"),
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=str)
def test_a_wrong_line_in_the_doc_decoder_is_caught(mutation):
    old, new = MUTATIONS[mutation]
    source = doc_source()
    assert source.count(old) == 1, f"the documented decoder no longer has {old!r}"
    decode = load(source.replace(old, new))["decode"]
    specs, rows = every_form_rows()
    encoded, _ = batches(specs, rows)
    with pytest.raises((AssertionError, ValueError, IndexError, struct.error)):
        for batch in encoded:
            check_batch(decode, batch, None)


def test_doc_dictionary_is_byte_for_byte_the_encoders(shared_data):
    catalog_dictionary = load(doc_source())["catalog_dictionary"]
    truck = decoder_for(shared_data, REAL_LOGS[2]).specs
    for specs in (every_form_rows()[0], truck):
        rebuilt = catalog_dictionary((s.message, s.signal, s.scale, s.offset) for s in specs.values())
        assert rebuilt == schema_dictionary(specs)
    # The documented form: 0x99, the name as a msgpack str, arrays of names, scales (float64 0xcb), offsets.
    assert schema_dictionary(truck).startswith(b"\x99\xa5CCVS1\x91\xb6WheelBasedVehicleSpeed\x91\xcb")
    specs, rows = every_form_rows()
    encoded, _ = batches(specs, rows, schema_dictionary(specs))
    decode = load(doc_source())["decode"]
    with pytest.raises(ValueError, match="needs zstd dictionary sha256:"):
        decode(encoded[0].payload)
    with pytest.raises(ValueError, match="needs zstd dictionary"):
        decode(encoded[0].payload, b"another dictionary")


def test_split_batch_parts_take_consecutive_numbers_and_keep_every_sample():
    rng = random.Random(7)
    specs = {s.key: s for s in (spec("Noise", "a"), spec("Noise", "b"), spec("Gps", "lat", category="location"))}
    rows = [Row("telemetry", 1, i / 1000, "can0", "Noise", {"a": rng.getrandbits(32), "b": rng.getrandbits(31)})
            for i in range(2000)]
    rows.insert(5, Row("telemetry", 1, 0.0055, "can1", "Gps", {"lat": 41}))  # one row: in the first part only
    encoded, batcher = batches(specs, rows, max_bytes=1024)
    decode = load(doc_source())["decode"]
    assert batcher.stats.splits > 10
    assert [b.header["seq"] for b in encoded] == list(range(len(encoded)))  # in the order they reach the store
    assert [b.header["stream_seq"] for b in encoded] == list(range(len(encoded)))
    assert all(len(b.payload) <= 1024 for b in encoded)
    got: Counter = Counter()
    for batch in encoded:
        got.update(exact_all(check_batch(decode, batch, None)))
    assert got == expected_samples(specs, rows)
    assert sum(b.header["rows"] for b in encoded) == len(rows)
    # The parts of the first batch all list "location", the category of the whole batch before it was cut.
    first_batch = [b for b in encoded if b.header["t_min"] < 0.8]
    assert len(first_batch) > 1 and all(b.header["categories"] == ["location", "unclassified"] for b in first_batch)


def test_values_the_format_cannot_hold_are_refused():
    specs = {"Text.v": spec("Text", "v")}
    with pytest.raises(BatchError, match=r"Text\.v: values must be numbers, got str"):
        batches(specs, [Row("telemetry", 1, 0.0, "can0", "Text", {"v": "on"})])
    with pytest.raises(BatchError, match=r"Text\.v: values must be numbers, got NoneType"):
        batches(specs, [Row("telemetry", 1, 0.0, "can0", "Text", {"v": None}, raw=False)])


# -- batches of a real log, replayed into a buffer as the agent does ------------------------------------------

# log -> (DBCs per bus, "" for every bus; extra replay arguments), paths under the shared data
REPLAYS = {
    "logs/css_truck_j1939_and_canmod_gps.asc": ({"can0": "dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc",
                                                 "can1": "dbc/css-electronics/canmod-gps.dbc"}, ["--j1939", "can0"]),
    # its logger clock steps from 22.36 s to -0.36 s
    "logs/kona_ev_2020_comp_can_heating_clock_reset.log": ({"": "dbc/kona-ev-dbc/comp_can.dbc"}, []),
}


@pytest.mark.parametrize("log", REPLAYS, ids=lambda log: Path(log).stem)
def test_doc_decoder_matches_the_receiver_on_replayed_batches(shared_data, tmp_path, capsys, log):
    dbcs, extra = REPLAYS[log]
    dbc_args = [f"{bus}={shared_data / path}" if bus else str(shared_data / path) for bus, path in dbcs.items()]
    db = tmp_path / "buffer.db"
    assert cli_main(["replay", str(shared_data / log), "--dbc", *dbc_args, *extra, "--grant-all", "--buffer",
                     str(db), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    decode = load(doc_source())["decode"]
    with BatchStore(db, read_only=True) as store:
        stored = store.pending(10_000)
    assert len(stored) == summary["batches_written"] > 3
    samples = 0
    for batch in stored:
        assert batch.header["zstd_dict"] is None  # the agent's data path writes no dictionary
        samples += len(check_batch(decode, batch, None))
    assert samples == summary["samples_written"] > 50_000
    if "clock_reset" in log:  # its negative times are in batches (and decoded above), none refused
        assert any(b.header["t_min"] < 0 for b in stored) and summary["bad_timestamps"] == 0
