"""A batch's identity: which store numbered it (a random epoch per store), in which boot, and its numbers.

``(vehicle, store_epoch, boot_id, seq)`` is unique for ever: a replaced or
emptied buffer file is a new store with a new epoch, so its sequence numbers
restarting in the same boot cannot collide with batches already delivered.
``stream_seq`` numbers each stream's batches on their own, so a receiver can
find holes per stream (``seq`` is shared by all streams of a boot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BatchNumbers:
    store_epoch: str
    boot_id: str
    seq: int
    stream_seq: int | None = None

    def header_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"boot_id": self.boot_id, "seq": self.seq}
        if self.store_epoch:
            fields["store_epoch"] = self.store_epoch
        if self.stream_seq is not None:
            fields["stream_seq"] = self.stream_seq
        return fields


__all__ = ["BatchNumbers"]
