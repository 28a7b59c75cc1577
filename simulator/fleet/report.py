"""What a simulated fleet did, per vehicle and in all."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class VehicleReport:
    vehicle_id: str
    log: str
    offset_s: float
    boot_id: str
    granted: list[str]
    location_level: str | None
    frames: int = 0
    batches_committed: int = 0
    batches_acked: int = 0
    batches_rejected: int = 0
    batches_unacked: int = 0
    samples: int = 0
    bytes: int = 0
    categories_sent: list[str] = field(default_factory=list)
    first_timestamp: float | None = None
    last_error: str | None = None


@dataclass
class FleetReport:
    vehicles: int
    processes: int
    speed: str
    duration_s: float
    batches_committed: int
    batches_acked: int
    batches_unacked: int
    batches_rejected: int
    samples: int
    bytes: int
    elapsed_s: float
    setup_s: float
    batches_per_s: float
    samples_per_s: float
    logs: list[str]
    per_vehicle: list[VehicleReport]

    @property
    def ok(self) -> bool:
        return self.batches_unacked == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"fleet: {self.vehicles} vehicles in {self.processes} process(es), speed {self.speed}, "
                 f"{self.duration_s:g} s of driving each ({', '.join(self.logs)})",
                 f"  batches committed {self.batches_committed}, acknowledged {self.batches_acked} (PUBACK), "
                 f"unacknowledged {self.batches_unacked}, rejected {self.batches_rejected}",
                 f"  samples {self.samples}, bytes {self.bytes}, elapsed {self.elapsed_s:.2f} s "
                 f"(setup {self.setup_s:.2f} s), {self.batches_per_s:.1f} batches/s, "
                 f"{self.samples_per_s:.0f} samples/s"]
        lines += [f"  unacknowledged: {v.vehicle_id} {v.batches_unacked} batch(es)"
                  + (f" ({v.last_error})" if v.last_error else "") for v in self.per_vehicle if v.batches_unacked]
        return "\n".join(lines)


