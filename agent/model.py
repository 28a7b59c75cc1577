"""Records passed between pipeline stages.

The stages are joined by these small types only, so each stage can be tested
alone.  On the hot path there is one object per CAN frame (``DecodedFrame``),
never one per signal sample: a frame's signals travel together in one dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Privacy categories from the design card; ``unclassified`` is what any signal
# without a catalog entry gets (fail closed: it can never be uploaded).
CATEGORIES = (
    "vehicle_health",
    "driving",
    "location",
    "charging",
    "identity",
    "cabin",
    "camera",
    "incident",
)
UNCLASSIFIED = "unclassified"
ALL_CATEGORIES = (*CATEGORIES, UNCLASSIFIED)

# What a signal is for.  ``data`` is a measurement; ``counter`` (rolling/alive counters) and ``checksum``
# (CRCs) are transport signals: they protect the frame on the wire, are checked in the car
# (agent.integrity) and left out of uploads unless a collection rule asks for them (``transport: true``).
DATA_ROLE = "data"
TRANSPORT_ROLES = ("counter", "checksum")
ROLES = (DATA_ROLE, *TRANSPORT_ROLES)


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """Everything later stages need to know about one DBC signal.

    ``key`` is ``Message.Signal``, the name used by catalogs, rules and batches.
    ``scale``/``offset`` are the DBC's linear conversion: physical = raw * scale + offset.
    """

    key: str
    message: str
    signal: str
    scale: float
    offset: float
    is_float: bool
    is_signed: bool
    length: int
    minimum: float | None
    maximum: float | None
    unit: str
    choices: dict[int, str]
    vss_path: str
    category: str
    role: str = DATA_ROLE  # data | counter | checksum (ROLES)

    def to_physical(self, raw: int | float) -> int | float:
        # Same expression as cantools' LinearConversion.raw_to_scaled, so the
        # result is bit-identical to a direct cantools decode.
        return raw * self.scale + self.offset

    def label(self, raw: int | float) -> str | None:
        if not self.choices:
            return None
        return self.choices.get(int(raw)) if float(raw).is_integer() else None


@dataclass(slots=True)
class DecodedFrame:
    """One decoded CAN frame: the requested signals of one message, raw values.

    ``raw`` maps signal name (not key) to the DBC raw value (integer, or float for
    IEEE-float signals).  It may be shared with the decoder's cache: never mutate it.
    """

    timestamp: float
    bus: str
    frame_id: int
    message: str
    raw: dict[str, int | float]


@dataclass(slots=True)
class BusCounters:
    """Per-bus counters of the decode stage.  Every frame lands in exactly one of
    decoded / unknown_id / filtered / wrong_length / decode_errors / error_frames /
    remote_frames, so ``frames`` always equals their sum."""

    frames: int = 0
    decoded: int = 0
    unknown_id: int = 0
    filtered: int = 0
    wrong_length: int = 0
    decode_errors: int = 0
    error_frames: int = 0
    remote_frames: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class Row:
    """Output of the collect stage: the chosen signals of one frame for one stream.

    ``raw`` is True when ``values`` hold DBC raw values (lossless; the batch stores
    integers with scale/offset), False when they are physical values (aggregates,
    privacy transforms) which the batch stores as floats.
    """

    stream: str
    priority: int
    timestamp: float
    bus: str
    message: str
    values: dict[str, int | float]
    raw: bool = True
    categories: frozenset[str] = field(default_factory=frozenset)


class RowSink(Protocol):
    """Anything that accepts collected rows (the consent filter, the batcher)."""

    def put(self, row: Row) -> None: ...
