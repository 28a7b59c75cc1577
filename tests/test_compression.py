"""The batch compressor's memory is bounded, and costs no bytes on real batches (issue 16: RSS <= 60 MB)."""

from __future__ import annotations

import itertools
import random

import msgpack
import pytest
import zstandard

from agent.batch import Batcher, schema_dictionary
from agent.batch.compression import MAX_WINDOW_LOG, batch_compressor, bounded_parameters
from agent.batch.format import DEFAULT_LEVEL
from tests.helpers.real_logs import REAL_LOGS, decoded_frames, rows_of

pytestmark = pytest.mark.transport


def _body(size: int) -> bytes:
    """A msgpack body like a big batch's: columns of small noisy integers, some repeats."""
    rng = random.Random(7)
    columns, total = [], 0
    while total < size:
        column = [rng.randint(480, 540) for _ in range(5000)]
        columns.append(column)
        total += len(msgpack.packb(column))
    return msgpack.packb({"t_base_us": 0, "tables": columns})


def test_a_level_19_context_stays_small_for_a_megabyte_body():
    body = _body(1_000_000)
    stock = zstandard.ZstdCompressor(level=DEFAULT_LEVEL)
    ours = batch_compressor(DEFAULT_LEVEL)
    stock_out, ours_out = stock.compress(body), ours.compress(body)
    # The stock context is sized for a many-megabyte input; ours for the bodies the agent makes.
    assert stock.memory_size() > 12_000_000, stock.memory_size()
    assert ours.memory_size() < 4_500_000, ours.memory_size()
    assert zstandard.ZstdDecompressor().decompress(ours_out) == body
    assert len(ours_out) <= len(stock_out) * 1.01, (len(ours_out), len(stock_out))
    frame = zstandard.get_frame_parameters(ours_out)
    assert frame.content_size == len(body) and not frame.has_checksum
    assert frame.window_size <= 1 << MAX_WINDOW_LOG


def test_caps_never_raise_a_low_level_and_keep_its_strategy():
    for level in (1, 3, 9, 19):
        stock, capped = zstandard.ZstdCompressionParameters.from_level(level), bounded_parameters(level)
        assert capped.window_log == min(stock.window_log, 20)
        assert capped.hash_log == min(stock.hash_log, 17) and capped.chain_log == min(stock.chain_log, 18)
        assert (capped.strategy, capped.search_log, capped.min_match, capped.target_length) == \
            (stock.strategy, stock.search_log, stock.min_match, stock.target_length)
    assert bounded_parameters(1).hash_log == 14  # level 1's own, not the cap


def test_real_batches_cost_the_same_bytes_as_stock_level_19(shared_data):
    """Every shared log's 10 s batches with the catalog dictionary: within 0.2 % of the stock compressor."""
    ours_total = stock_total = 0
    for log in REAL_LOGS:
        decoder, pairs = decoded_frames(shared_data, log)
        dictionary = schema_dictionary(decoder.specs)
        payloads: list[bytes] = []
        batcher = Batcher(decoder.specs, lambda b, out=payloads: out.append(b.payload), "v", "b",
                          itertools.count().__next__, dictionary=dictionary, time_resolution_us=1000)
        for row in rows_of(pairs):
            batcher.put(row)
        batcher.flush()
        stock = zstandard.ZstdCompressor(level=DEFAULT_LEVEL, dict_data=zstandard.ZstdCompressionDict(dictionary))
        plain = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
        for payload in payloads:
            body = msgpack.unpackb(payload)["body"]
            ours_total += len(body)
            stock_total += len(stock.compress(plain.decompress(body)))
    assert stock_total > 50_000  # the logs were read
    assert abs(ours_total - stock_total) <= stock_total * 0.002, (ours_total, stock_total)
