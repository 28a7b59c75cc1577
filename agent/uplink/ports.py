"""What the uplink needs of the rest of the agent, as small interfaces (the store, the consent gate)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from typing import Any, Protocol


class BatchSource(Protocol):
    """The part of ``agent.buffer.store.BatchStore`` the uplink uses."""

    def pending(self, limit: int, exclude: Collection[int] = ()) -> list[Any]: ...

    def mark_delivered(self, batch_id: int) -> None: ...

    def get(self, batch_id: int) -> Any: ...


class Release(enum.Enum):
    """What became of a batch at the last check before it is published."""

    SENT = "sent"  # handed to the MQTT client
    NOT_SENT = "not sent"  # the connection could not take it: stays pending
    REFUSED = "refused"  # consent no longer allows it: purged from the store
    HELD = "held"  # the owner's ledger cannot be written: nothing leaves until it can


class ReleaseGate(Protocol):
    """The part of ``agent.flow.gate.ConsentGate`` the uplink uses."""

    def release(self, batch: Any, publish: Callable[[], bool]) -> Release: ...

    def ready(self) -> bool: ...

    def record_delivery(self, batch: Any, broker: str) -> bool: ...


__all__ = ["BatchSource", "Release", "ReleaseGate"]
