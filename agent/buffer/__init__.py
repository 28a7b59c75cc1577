"""Durable store-and-forward buffer for encoded batches (docs/payload.md, "Durability")."""

from agent.buffer.schema import COUNTERS, StoredBatch, StoreError
from agent.buffer.store import BatchStore

__all__ = ["COUNTERS", "BatchStore", "StoreError", "StoredBatch"]
