"""Batches: rows grouped per stream, columnar, zstd-compressed (docs/payload.md)."""

from agent.batch.batcher import Batcher, BatcherStats, current_boot_id
from agent.batch.format import (
    SCHEMA_VERSION,
    BatchError,
    EncodedBatch,
    TableData,
    dictionary_id,
    encode_batch,
    schema_dictionary,
)
from agent.batch.reading import DecodedBatch, DecodedTable, decode_batch, decode_envelope, iter_samples

__all__ = ["SCHEMA_VERSION", "BatchError", "Batcher", "BatcherStats", "DecodedBatch", "DecodedTable", "EncodedBatch",
           "TableData", "current_boot_id", "decode_batch", "decode_envelope", "dictionary_id", "encode_batch",
           "iter_samples", "schema_dictionary"]
