"""Batch timestamps to a configured resolution (batching.time_resolution_us, default 1 ms; issue 15's bytes).

Below a millisecond, a batch's time columns hold the bus's and the logger's jitter: 60-75 % of the bytes on the
shared logs.  The agent keeps its telemetry to 1 ms by default (floored, said in the header's ``t_res_us``);
``1`` keeps the frames' own microseconds bit for bit.  Incident snapshots always keep the frames' own.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from agent.batch import Batcher, BatchError, TableData, decode_batch, encode_batch, iter_samples
from agent.batch.columns import micros_of, quantize_us
from agent.batch.format import DEFAULT_TIME_RESOLUTION_US
from agent.buffer import BatchStore
from agent.cli.main import main
from agent.config import load_config
from agent.yamlsrc import ConfigError
from tests.helpers.agent_config import write_agent_config
from tests.helpers.real_logs import REAL_LOGS, decoded_frames, rows_of

pytestmark = pytest.mark.payload

REPO = Path(__file__).resolve().parents[1]
TESLA = next(log for log in REAL_LOGS if "tesla" in log.path)
TRUCK_LOG = "logs/css_truck_j1939_and_canmod_gps.asc"
FIELDS = {"vehicle_id": "v", "boot_id": "b", "seq": 3, "stream": "s", "priority": 2, "categories": ["driving"],
          "consent_version": 0, "bench": False, "created": 5.0}


def _table(timestamps: list[float]) -> TableData:
    return TableData(bus="can0", message="M", raw=False, signals=("a",), timestamps=timestamps,
                     rows=[(i,) for i in range(len(timestamps))])


def _encode(tables: list[TableData], resolution: int) -> bytes:
    return encode_batch(FIELDS, tables, zstandard.ZstdCompressor(level=3), time_resolution_us=resolution).payload


def test_timestamps_are_floored_to_the_resolution_and_the_header_says_so():
    times = [12.345678, 12.355001, 12.364999, 12.375]
    other = [12.3451, 12.3771]
    decoded = decode_batch(_encode([_table(times), _table(other)], 1000))
    assert [t.timestamps for t in decoded.tables] == [[12.345, 12.355, 12.364, 12.375], [12.345, 12.377]]
    assert decoded.header["t_res_us"] == 1000
    assert decoded.header["t_min"] == 12.345 and decoded.header["t_max"] == 12.377
    # Rows and values are untouched: only the times are coarser.
    assert [s[3] for s in iter_samples(decoded)] == [0, 1, 2, 3, 0, 1]


def test_negative_and_zero_times_floor_downwards_like_positive_ones():
    decoded = decode_batch(_encode([_table([-0.3642105, -0.0004, 0.0, 0.0019])], 1000))
    assert decoded.tables[0].timestamps == [-0.365, -0.001, 0.0, 0.001]
    assert decoded.header["t_min"] == -0.365 and decoded.header["t_max"] == 0.001


def test_resolution_one_keeps_every_timestamp_bit_for_bit_and_adds_no_header_field():
    times = [1641469577.02441, 1641469577.034409, 1641469577.0444]
    decoded = decode_batch(_encode([_table(times)], 1))
    assert decoded.tables[0].timestamps == times
    assert "t_res_us" not in decoded.header


def test_times_not_exact_at_a_microsecond_become_integers_at_a_coarser_resolution():
    # A live bus's time.time() stamps: at resolution 1 a float column (lossless), at 1 ms integers.
    times = [1796326897.5277393, 1796326897.5377401, 1796326897.547741]
    exact = decode_batch(_encode([_table(times)], 1))
    assert exact.tables[0].timestamps == times
    coarse = decode_batch(_encode([_table(times)], 1000))
    assert coarse.tables[0].timestamps == [1796326897.527, 1796326897.537, 1796326897.547]


@pytest.mark.parametrize("bad", [0, -5, 1_000_001, 1.5, "1000"])
def test_a_bad_resolution_is_refused_by_name(bad):
    with pytest.raises(BatchError, match=r"time_resolution_us must be an integer 1\.\.1000000"):
        _encode([_table([1.0])], bad)


def test_default_resolution_nearly_halves_the_tesla_log_losing_nothing_but_sub_millisecond_time(shared_data):
    decoder, pairs = decoded_frames(shared_data, TESLA)
    sizes, samples = {}, {}
    for resolution in (1, DEFAULT_TIME_RESOLUTION_US):
        payloads: list[bytes] = []
        batcher = Batcher(decoder.specs, lambda batch, out=payloads: out.append(batch.payload), "v", "b",
                          itertools.count().__next__, time_resolution_us=resolution)
        for row in rows_of(pairs):
            batcher.put(row)
        batcher.flush()
        sizes[resolution] = sum(map(len, payloads))
        samples[resolution] = Counter(s for p in payloads for s in iter_samples(decode_batch(p)))
    # Measured 2026-12-03: 21,504 -> 11,044 bytes (the +-60 us jitter of every frame is gone).
    assert sizes[DEFAULT_TIME_RESOLUTION_US] < 0.6 * sizes[1]
    expected = Counter()
    for _, frame in pairs:
        floored = quantize_us(micros_of(frame.timestamp), DEFAULT_TIME_RESOLUTION_US) / 1_000_000
        for name, raw in frame.raw.items():
            spec = decoder.specs[f"{frame.message}.{name}"]
            expected[(floored, frame.bus, spec.key, spec.to_physical(raw), raw)] += 1
    assert samples[DEFAULT_TIME_RESOLUTION_US] == expected
    assert sum(samples[1].values()) == sum(expected.values()) > 60_000


def test_config_key_default_and_errors(tmp_path):
    config = write_agent_config(tmp_path)
    assert load_config(config).batching.time_resolution_us == DEFAULT_TIME_RESOLUTION_US == 1000
    text = config.read_text().replace("batching: {max_age_s: 10.0}",
                                      "batching: {max_age_s: 10.0, time_resolution_us: 1}")
    config.write_text(text)
    assert load_config(config).batching.time_resolution_us == 1
    for bad, says in (("0", "between 1 and 1000000"), ("2.5", "integer"), ("fast", "integer")):
        config.write_text(text.replace("time_resolution_us: 1}", f"time_resolution_us: {bad}}}"))
        with pytest.raises(ConfigError) as caught:
            load_config(config)
        message = str(caught.value)
        assert f"{config}:" in message and "batching.time_resolution_us" in message, message
        assert says in message, message


def _replayed_times(shared_data, tmp_path: Path, name: str, *extra: str) -> tuple[list, list[dict]]:
    buffer = tmp_path / f"{name}.sqlite"
    assert main(["replay", str(shared_data / TRUCK_LOG), "--config", str(write_agent_config(tmp_path)),
                 "--buffer", str(buffer), "--grant-all", "--json", *extra]) == 0
    with BatchStore(buffer) as store:
        batches = store.pending(100_000)
    decoded = [decode_batch(batch.payload, {}) for batch in batches]
    return sorted(t for batch in decoded for t, *_ in iter_samples(batch)), [b.header for b in decoded]


def test_the_agent_keeps_its_config_resolution_and_replay_can_override_it(shared_data, tmp_path, capsys):
    coarse, headers = _replayed_times(shared_data, tmp_path, "default")
    capsys.readouterr()
    exact, exact_headers = _replayed_times(shared_data, tmp_path, "exact", "--time-resolution-us", "1")
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples_written"] == len(exact) == len(coarse) > 90_000
    assert {h.get("t_res_us") for h in headers} == {1000}
    assert {h.get("t_res_us") for h in exact_headers} == {None}
    assert all(micros_of(t) % 1000 == 0 for t in coarse)
    assert any(micros_of(t) % 1000 for t in exact)  # the ASC log's 10 us stamps
    assert coarse == sorted(quantize_us(micros_of(t), 1000) / 1_000_000 for t in exact)


def test_replay_refuses_a_bad_resolution_on_the_command_line(shared_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["replay", str(shared_data / TRUCK_LOG), "--config", str(write_agent_config(tmp_path)),
              "--buffer", str(tmp_path / "b.sqlite"), "--time-resolution-us", "0"])
    assert "--time-resolution-us: expected an integer 1..1000000, got '0'" in capsys.readouterr().err
