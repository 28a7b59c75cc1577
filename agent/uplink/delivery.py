"""What happens when the broker acknowledges a batch: the owner's ledger entry first, then the delete.

An acknowledged batch whose ledger entry cannot be written yet (the ledger is
blocked: full disk) stays in the store and is not offered again; it is deleted
once the ledger has taken the entry (the gate says so with ``ready()``).  After
a power cut in between it is sent again - the receiver drops the duplicate -
and recorded then.  So a batch never leaves the store as delivered unrecorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.uplink.ports import BatchSource, ReleaseGate

log = logging.getLogger(__name__)


class DeliveryRecorder:
    def __init__(self, store: BatchSource, gate: ReleaseGate | None, broker: Callable[[], str]) -> None:
        self.store = store
        self.gate = gate
        self.broker = broker
        self._unrecorded: set[int] = set()  # sender thread only

    def delivered(self, batch_id: int) -> None:
        """Record the delivery, then delete the batch; keep it when the record could not be written."""
        if self._record(batch_id):
            self.store.mark_delivered(batch_id)
        else:
            self._unrecorded.add(batch_id)

    def settle(self) -> None:
        """Delete the acknowledged batches whose ledger entries have now been written."""
        if not self._unrecorded or self.gate is None or not self.gate.ready():
            return
        for batch_id in sorted(self._unrecorded):
            self.store.mark_delivered(batch_id)
        self._unrecorded.clear()

    def waiting(self) -> set[int]:
        """Acknowledged batches still in the store: never offered again."""
        return set(self._unrecorded)

    def _record(self, batch_id: int) -> bool:
        if self.gate is None:
            return True
        try:
            batch = self.store.get(batch_id)
            return batch is None or self.gate.record_delivery(batch, self.broker())
        except Exception:  # a bug in the record must not stop delivery bookkeeping
            log.exception("uplink: delivery record for batch %d failed", batch_id)
            return False


__all__ = ["DeliveryRecorder"]
