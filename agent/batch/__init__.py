"""Batches: rows grouped per stream, columnar, zstd-compressed (docs/payload.md)."""

from agent.batch.batcher import Batcher, BatcherStats, current_boot_id
from agent.batch.format import (
    SCHEMA_VERSION,
    BatchError,
    DecodedBatch,
    DecodedTable,
    EncodedBatch,
    TableData,
    decode_batch,
    decode_envelope,
    dictionary_id,
    encode_batch,
    iter_samples,
    schema_dictionary,
)

__all__ = ["SCHEMA_VERSION", "BatchError", "Batcher", "BatcherStats", "DecodedBatch", "DecodedTable", "EncodedBatch",
           "TableData", "current_boot_id", "decode_batch", "decode_envelope", "dictionary_id", "encode_batch",
           "iter_samples", "schema_dictionary"]
