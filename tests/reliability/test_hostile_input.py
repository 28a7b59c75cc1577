"""Hostile input, fuzzed with Hypothesis (issue 7): never a crash or a hang, always a clear error.

Each entry point takes anything and either succeeds or raises its documented error type (a ValueError
subclass whose message says what was wrong): CAN frames into the running pipeline (any id, length, data,
flags, timestamp), agent config files, rule expressions, camera-event records, and batch payloads at the
reference receiver.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from pathlib import Path

import can
import msgpack
import paho.mqtt.client as mqtt
import pytest
import yaml
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.batch.format import SCHEMA_VERSION, BatchError, TableData, encode_batch
from agent.batch.reading import decode_batch, decode_envelope, iter_samples
from agent.camera.config import camera_config
from agent.camera.events import CameraEventError, parse_event
from agent.collect import Condition, ExprError, SignalIndex, compile_expression, parse
from agent.config import parse_config
from agent.flow.build import build
from agent.flow.parts import collection_plan
from agent.incident.config import incident_config
from agent.model import DecodedFrame
from agent.privacy.config import consent_config
from agent.uplink.config import uplink_config
from agent.uplink.properties import PROPERTY_FIELDS
from simulator.receiver.client import Receiver
from tests.e2e_support import grant
from tests.reliability.rig import GRANTS, LOG_FRAMES, STREAMS_AND_INCIDENTS, assert_decode_balance, offline_config

pytestmark = pytest.mark.reliability

# FUZZ_EXAMPLES=5000 for a deeper run by hand; CI runs the modest default.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- CAN frames into the pipeline ----------------------------------------------------------------------------

TIMESTAMPS = st.one_of(st.floats(1.6e9, 1.6e9 + 3600), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0.0, -1.0, 1e300, math.nan, math.inf, -math.inf]))
# Ids the bundled DBCs know (so random data reaches the decoders, collectors and triggers), and any other.
KNOWN_IDS = [0x0CF00400, 0x18FEF100, 0x18FEC100, 0x001, 0x002, 0x003, 0x004, 0x005, 0x006, 0x007, 0x008, 0x009]


@st.composite
def frames(draw) -> tuple[str, can.Message]:
    extended = draw(st.booleans())
    arbitration_id = draw(st.one_of(st.sampled_from(KNOWN_IDS), st.integers(0, 0x1FFFFFFF if extended else 0x7FF)))
    data = draw(st.binary(max_size=64))
    msg = can.Message(timestamp=draw(TIMESTAMPS), arbitration_id=arbitration_id, is_extended_id=extended,
                      is_error_frame=draw(st.booleans()) and draw(st.booleans()),
                      is_remote_frame=draw(st.booleans()) and draw(st.booleans()), is_fd=len(data) > 8,
                      dlc=draw(st.integers(0, 64)), data=data, check=False)
    return draw(st.sampled_from([*LOG_FRAMES, "unknown-bus"])), msg


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The agent's data path with the incident recorder, all categories of the test grants on."""
    tmp = tmp_path_factory.mktemp("fuzz-pipeline")
    grant(tmp / "state", GRANTS)
    config_path = offline_config(tmp, quota_mb=1)
    from agent.config import load_config

    config = load_config(config_path)
    config.batching.max_age_s, config.batching.max_bytes = 0.5, 4096
    stages = build(config)
    store = stages.core.store
    yield stages.path.pipeline, stages.path.sidecars, store
    store.close()


@FUZZ
@given(st.lists(frames(), max_size=60))
def test_any_frame_is_counted_never_fatal(pipeline, batch):
    pipe, sidecars, store = pipeline
    before = pipe.counters.frames_in
    for bus, msg in batch:
        pipe.feed(bus, msg)
    sidecars.poll(1.6e9 + 7200)
    pipe.flush()
    sidecars.flush()
    snapshot = pipe.snapshot()
    assert snapshot["frames_in"] == before + len(batch)
    assert_decode_balance(snapshot)
    assert snapshot["store_errors"] == 0
    for stored in store.pending(1000):  # whatever was batched reads back
        list(iter_samples(decode_batch(stored.payload, store.dictionaries())))
        store.mark_delivered(stored.id)


# -- config files ---------------------------------------------------------------------------------------------

def clear_error(exc: ValueError, source: str) -> None:
    text = str(exc)
    assert text.strip() and "Traceback" not in text, repr(exc)
    assert text.startswith(source), text


def parse_every_section(text: str, source: str = "fuzz.yaml") -> None:
    """What `vehicle-agent run` does with a config before anything starts."""
    config = parse_config(text, source, Path("/nonexistent-base"))
    collection_plan(config)
    uplink_config(config)
    incident_config(config)
    camera_config(config)
    consent_config(config)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["telemetry", "*", "EEC1.*", "1e999", "0x10", "-1"]))
KEYS = st.sampled_from(["vehicle", "id", "vin", "buses", "name", "interface", "channel", "dbc", "state", "dir",
                        "batching", "max_age_s", "max_bytes", "buffer", "quota_mb", "never_evict", "ttl_s",
                        "collection", "campaigns", "signals", "match", "period_ms", "trigger", "when", "uplink",
                        "broker", "host", "port", "tls", "consent", "profile", "incidents", "triggers", "camera",
                        "pre_s", "post_s", "priority", "stream", "on_change"]) | st.text(max_size=8)
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                         max_leaves=25)
SECTIONS = st.fixed_dictionaries({}, optional={key: DOCUMENTS for key in (
    "vehicle", "buses", "state", "batching", "buffer", "collection", "uplink", "consent", "camera", "incidents")})


@FUZZ
@given(st.text(max_size=300))
def test_any_config_text_parses_or_names_file_line_and_key(text):
    try:
        parse_every_section(text)
    except ValueError as exc:
        clear_error(exc, "fuzz.yaml")


@FUZZ
@given(SECTIONS)
def test_any_config_structure_parses_or_names_file_line_and_key(document):
    try:
        parse_every_section(yaml.safe_dump(document))
    except ValueError as exc:
        clear_error(exc, "fuzz.yaml")


@FUZZ
@given(st.text(max_size=200))
def test_a_hostile_collection_section_is_refused_clearly(text):
    try:
        parse_every_section(STREAMS_AND_INCIDENTS.replace("EEC1.*", text.replace('"', "'")[:60]))
    except ValueError as exc:
        clear_error(exc, "fuzz.yaml")


# -- rule expressions ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signal_index(pipeline) -> SignalIndex:
    return SignalIndex(pipeline[0].decoder.specs)


TOKENS = st.sampled_from(["EEC1.EngineSpeed", "Vehicle.Speed", "gnss_imu.AccelerationX", "gnss_odo.DistanceTrip",
                          "CCVS1.WheelBasedVehicleSpeed", "Nope.Signal", "and", "or", "not", "==", "!=", "<", "<=",
                          ">", ">=", "+", "-", "*", "/", "(", ")", ",", "abs(", "min(", "max(", "prev(", "change(",
                          "150ms", "2s", "1min", "0", "1", "-8", "0.5", "1e308", "1e999", "0x1F", '"P"', '"',
                          "nan", "inf"])
EXPRESSIONS = st.one_of(st.text(max_size=80), st.lists(TOKENS, max_size=25).map(" ".join),
                        st.integers(1, 200).map(lambda n: "(" * n + "1" + ")" * n),
                        st.integers(1, 500).map(lambda n: "-" * n + "1"))


@FUZZ
@given(EXPRESSIONS, st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**64), 2**64),
                             max_size=12))
def test_any_rule_expression_compiles_or_points_at_the_problem(signal_index, text, values):
    try:
        parse(text)
        compiled = compile_expression(text, signal_index)
    except ExprError as exc:
        assert 0 <= exc.position <= len(text) and str(exc).startswith("column "), str(exc)
        return
    # A compiled condition evaluates any values without raising (unknown is "not true", never an exception).
    condition = Condition(compiled, "rising_edge", 0.0)
    specs = [spec for group in compiled.sources.values() for spec in group]
    for step, value in enumerate(values):
        spec = specs[step % len(specs)] if specs else None
        if spec is not None:
            condition.feed(DecodedFrame(1.6e9 + step * 0.01, "truck", 0, spec.message, {spec.signal: value}))
    assert condition.fired <= len(values)


# -- camera-event records ---------------------------------------------------------------------------------------

VALID_EVENT = {"version": 1, "event_id": "evt-0001", "time": "2023-11-14T22:14:00.250Z", "camera": "front",
               "trigger": "collision",
               "clip": {"sha256": "ab" * 32, "size": 1234567, "duration_s": 30.0, "resolution": "1920x1080"},
               "faces": 2, "plates": 1, "anonymised": False, "location": {"lat": 31.23, "lon": 121.47}}
def nested(scalars: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=15)


JSON_VALUES = nested(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30))
# What msgpack can carry (64-bit integers, bytes too).
MSGPACK_VALUES = nested(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                        | st.text(max_size=30) | st.binary(max_size=30))


@st.composite
def camera_records(draw) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=400))
    record = json.loads(json.dumps(VALID_EVENT))
    if kind == 1:  # a valid record with some fields replaced, removed or added
        for key in draw(st.lists(st.sampled_from([*VALID_EVENT, "thumbnail", "clip.sha256", "clip.size",
                                                  "location.lat"]), max_size=4)):
            target, _, sub = key.partition(".")
            holder, name = (record.get(target), sub) if sub and isinstance(record.get(target), dict) else (record, key)
            if draw(st.booleans()):
                holder[name] = draw(JSON_VALUES)
            else:
                holder.pop(name, None)
        return json.dumps(record, allow_nan=True).encode()
    return json.dumps(draw(JSON_VALUES), allow_nan=True).encode()


@FUZZ
@given(camera_records())
def test_any_camera_record_is_accepted_or_refused_naming_the_field(data):
    try:
        event = parse_event(data, "spool/evt.json")
    except CameraEventError as exc:
        assert str(exc).startswith("spool/evt.json"), str(exc)
        return
    assert event.camera in ("front", "rear", "left", "right", "cabin") and math.isfinite(event.time)


# -- batch payloads at the receiver -----------------------------------------------------------------------------

def real_body() -> dict:
    """The body of a real batch (a raw and a physical table) as msgpack data, to be damaged field by field."""
    tables = [TableData("truck", "EEC1", True, ("EngineSpeed", "SrcAddrssOfCntrllngDvcFrEngnCntrl"),
                        [1.6e9, 1.6e9 + 0.01, 1.6e9 + 0.02], [(5200, 0), (5210, 0), (5230, 3)], [0.125, 1], [0, 0]),
              TableData("gps", "gnss_pos", False, ("Latitude",), [1.6e9 + 0.005], [(41.413,)])]
    payload = encode_batch({"vehicle_id": "v1", "boot_id": "b", "seq": 0, "stream": "telemetry"}, tables,
                           zstandard.ZstdCompressor()).payload
    return msgpack.unpackb(zstandard.ZstdDecompressor().decompress(decode_envelope(payload)[1]))


REAL_BODY = real_body()


@st.composite
def bodies(draw):
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(MSGPACK_VALUES)
    if kind == 1:
        return {"t_base_us": draw(st.integers(-(2**63), 2**63 - 1) | st.text(max_size=3)),
                "tables": draw(st.lists(st.lists(MSGPACK_VALUES, min_size=9, max_size=9), max_size=3))}
    body = copy.deepcopy(REAL_BODY)  # one to three fields of a real body replaced
    for _ in range(draw(st.integers(1, 3))):
        table = body["tables"][draw(st.integers(0, len(body["tables"]) - 1))]
        index = draw(st.integers(0, len(table) - 1))
        if isinstance(table[index], list) and table[index] and draw(st.booleans()):
            table[index][draw(st.integers(0, len(table[index]) - 1))] = draw(MSGPACK_VALUES)
        else:
            table[index] = draw(MSGPACK_VALUES)
    return body


@st.composite
def payloads(draw) -> bytes:
    """Random bytes, random msgpack, and envelopes with a correct body hash around random or damaged bodies."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=300))
    body_value = draw(bodies())
    if kind == 1:
        return msgpack.packb(body_value)
    body = zstandard.ZstdCompressor().compress(msgpack.packb(body_value))
    header = {"schema": SCHEMA_VERSION, "vehicle_id": "v1", "boot_id": draw(st.sampled_from(["b", 7, None])),
              "seq": draw(st.integers(-5, 5) | st.text(max_size=3)), "stream": "telemetry",
              "sha256": hashlib.sha256(body).hexdigest(), "categories": draw(st.lists(st.text(max_size=8), max_size=2)),
              "created": draw(st.floats(allow_nan=True) | st.text(max_size=3))}
    return msgpack.packb({"header": header, "body": body})


@FUZZ
@given(payloads())
def test_any_payload_decodes_or_raises_batch_error(payload):
    try:
        decoded = decode_batch(payload)
    except BatchError as exc:
        assert str(exc)
        return
    list(iter_samples(decoded))


TOPICS = st.sampled_from(["vehicles/v1/v1/data/telemetry", "vehicles/v1/v1/status", "vehicles/v1/v1/dictionary/ab",
                          "vehicles/../v1/data/x", "elsewhere/x", "vehicles/v1/v1/data/", ""]) | st.text(max_size=40)


class CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    receiver = Receiver("127.0.0.1", 1, tmp_path_factory.mktemp("fuzz-receiver") / "receiver.sqlite")
    handler = CountingHandler()
    logging.getLogger("simulator.receiver").addHandler(handler)
    yield receiver, handler
    logging.getLogger("simulator.receiver").removeHandler(handler)
    receiver.stop()


PROPERTIES = st.lists(st.tuples(st.sampled_from([*PROPERTY_FIELDS, "payload_sha256"]) | st.text(max_size=5),
                                st.text(max_size=10)), max_size=4)


def deliver(rx: Receiver, topic: str, payload: bytes, props: list[tuple[str, str]]) -> None:
    message = mqtt.MQTTMessage(topic=topic.encode("utf-8", "surrogatepass"))
    message.payload = payload
    message.properties = Properties(PacketTypes.PUBLISH)
    if props:
        message.properties.UserProperty = props
    rx._on_message(None, None, message)  # paho's callback, as the network thread calls it


def test_the_receiver_takes_the_real_batch_the_fuzzing_damages(receiver):
    rx, errors = receiver
    before = rx.report()["batches"]
    body = zstandard.ZstdCompressor().compress(msgpack.packb(REAL_BODY))
    header = {"schema": SCHEMA_VERSION, "vehicle_id": "v1", "boot_id": "real", "seq": 0, "stream": "telemetry",
              "sha256": hashlib.sha256(body).hexdigest()}
    deliver(rx, "vehicles/v1/v1/data/telemetry", msgpack.packb({"header": header, "body": body}), [])
    assert rx.report()["batches"] == before + 1 and not errors.records


@FUZZ
@given(TOPICS, payloads(), PROPERTIES)
def test_the_receiver_records_any_message_as_a_batch_or_a_clear_rejection(receiver, topic, payload, props):
    rx, errors = receiver
    before = rx.report()
    deliver(rx, topic, payload, props)
    after = rx.report()
    assert not errors.records, errors.records[-1].getMessage()
    outcomes = ("batches", "corrupt", "duplicates_dropped")
    assert sum(after[k] for k in outcomes) - sum(before[k] for k in outcomes) <= 1
    for detail in after["corrupt_details"][before["corrupt"]:]:
        assert detail["reason"].strip()
