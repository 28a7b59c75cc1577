"""The frame listener that fills the owner archive: trips, reduced-rate signals, full-rate positions.

The pipeline calls ``ArchiveRecorder(frame)`` for every decoded frame, on the hot
path, so per frame it only looks up the message's prepared plan, keeps the first
sample of each signal in every ``1/rate_hz`` window, and updates a few running
sums (distance, speeds, energy, fuel).  Rows are buffered and written in one
transaction every ~2 s of frame time or 500 rows.  A failing archive (disk
full) is counted in ``errors`` and logged once; it never raises into the pipeline.

Signal roles come from the specs: speed by VSS ``Vehicle.Speed`` or a ``speed``
name with a speed unit (vehicle speed preferred over GNSS and wheel speeds),
position by VSS ``Vehicle.CurrentLocation.Latitude/Longitude`` or a lat/lon name
in degrees, energy by a kWh counter (last - first) or integrated kW/W power, fuel
by a litre counter (last - first) or an integrated L/h rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from agent.model import DecodedFrame, SignalSpec
from agent.owner.archive import OwnerArchive, Trip

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 2.0
FLUSH_ROWS = 500
PRUNE_EVERY_S = 3600.0
MAX_INTEGRATION_GAP_S = 10.0  # a speed/power signal silent longer than this: the gap counts for nothing
EARTH_RADIUS_KM = 6371.0088
SPEED_UNITS = {"km/h": 1.0, "kph": 1.0, "kmh": 1.0, "m/s": 3.6, "mph": 1.609344}
_POWER_UNITS = {"kw": 1.0, "w": 0.001}
_DEGREES = {"deg", "degree", "degrees", "°"}
_NOT_A_VALUE = ("accuracy", "valid", "limit", "cruise", "target", "setpoint", "max", "min", "error")


def speed_rank(spec: SignalSpec) -> int | None:
    """0 best (VSS Vehicle.Speed) .. 3 (a wheel speed); None: not a speed signal."""
    factor = SPEED_UNITS.get(spec.unit.strip().lower())
    name = spec.signal.lower()
    if spec.vss_path == "Vehicle.Speed" and factor is not None:
        return 0
    if factor is None or "speed" not in name or any(word in name for word in _NOT_A_VALUE):
        return None
    if "vehiclespeed" in name.replace("_", ""):
        return 1
    return 3 if "wheel" in f"{name} {spec.message.lower()} {spec.vss_path.lower()}" else 2


def position_role(spec: SignalSpec) -> str | None:
    """``lat``, ``lon``, ``valid`` (a position-valid flag) or None."""
    vss = spec.vss_path
    if vss == "Vehicle.CurrentLocation.Latitude":
        return "lat"
    if vss == "Vehicle.CurrentLocation.Longitude":
        return "lon"
    name = spec.signal.lower()
    if vss == "Vehicle.CurrentLocation.PositionValid" or name == "positionvalid":
        return "valid"
    if spec.unit.strip().lower() not in _DEGREES and spec.category != "location":
        return None
    if any(word in name for word in (*_NOT_A_VALUE, "accel", "lateral", "longitudinal")):
        return None
    if name.startswith("lat") or "latitude" in name:
        return "lat"
    if name.startswith("lon") or "longitude" in name:
        return "lon"
    return None


def _role(spec: SignalSpec) -> tuple | None:
    """The running sum a signal feeds: (role, factor[, rank])."""
    rank = speed_rank(spec)
    if rank is not None:
        return ("speed", SPEED_UNITS[spec.unit.strip().lower()], rank)
    where = position_role(spec)
    if where is not None:
        return (where, 1.0)
    unit = spec.unit.strip().lower()
    if unit == "kwh":
        return ("energy", 1.0)
    if unit in _POWER_UNITS:
        return ("power", _POWER_UNITS[unit])
    if unit in ("l", "liter", "litre", "liters", "litres"):
        return ("fuel", 1.0)
    if unit in ("l/h", "lph"):
        return ("fuel_rate", 1.0)
    return None


def trip_signal(spec: SignalSpec) -> bool:
    """True for signals the trip summary is made from (speed, position, energy, fuel): a decoder filter
    (``wanted``) must let at least these through for distances and tracks to be recorded."""
    return _role(spec) is not None


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class _Integral:
    """Trapezoid integral of one signal over time (hours), plus first/last/max/count."""

    __slots__ = ("first", "last", "last_t", "max", "n", "rank", "sum", "time_h")

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.first = self.last = self.last_t = None
        self.sum = self.time_h = 0.0
        self.max = -math.inf
        self.n = 0

    def add(self, t: float, value: float) -> None:
        last_t = self.last_t
        if last_t is not None:
            dt = t - last_t
            if dt < 0:
                return  # out of order: ignore rather than integrate backwards
            if dt <= MAX_INTEGRATION_GAP_S:
                self.sum += (self.last + value) * dt / 7200.0
                self.time_h += dt / 3600.0
        else:
            self.first = value
        self.last, self.last_t = value, t
        if value > self.max:
            self.max = value
        self.n += 1


class _TripState:
    __slots__ = ("fix_km", "fix_t", "integrals", "lat", "lon", "pos_km", "pos_last", "pos_max", "pos_time_h",
                 "trip", "valid")

    def __init__(self, start: float) -> None:
        self.trip = Trip(None, start, start)
        self.integrals: dict[tuple[str, str], _Integral] = {}  # (role, key) -> running sum
        self.lat = self.lon = None
        self.valid = True
        self.pos_last: tuple[float, float, float] | None = None
        self.pos_km = self.pos_time_h = self.pos_max = 0.0
        self.fix_t: float | None = None  # start of the current >= 1 s segment for the max speed from fixes
        self.fix_km = 0.0


class ArchiveRecorder:
    """Frame listener: ``recorder(frame)`` for every ``DecodedFrame``; ``flush()`` when the pipeline stops.

    Call it from one thread (the pipeline's); the archive itself may be read from others."""

    def __init__(self, archive: OwnerArchive, specs: Mapping[str, SignalSpec], rate_hz: float = 1.0,
                 trip_gap_s: float = 300.0) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz: expected a positive number of samples per second, got {rate_hz!r}")
        if not trip_gap_s > 0:
            raise ValueError(f"trip_gap_s: expected a positive number of seconds, got {trip_gap_s!r}")
        self.archive = archive
        self.specs = specs
        self.period = 1.0 / rate_hz
        self.trip_gap_s = trip_gap_s
        self.errors = 0
        self.dropped_rows = 0  # rows lost to failed writes
        self._key_info = {key: (spec.unit, spec.category) for key, spec in specs.items()}
        self._plans: dict[str, tuple[dict[str, tuple], tuple]] = {}
        self._next: dict[str, float] = {}
        # Per message: no signal of it is due before this time (the least of its signals' next times; -inf while
        # one of them has not been kept yet).  At ~1 Hz kept of a 10-100 Hz message, most frames skip the walk.
        self._quiet: dict[str, float] = {}
        self._rows: list[tuple[float, str, float]] = []
        self._positions: list[tuple[float, float, float]] = []
        self._state: _TripState | None = None
        self._last_t = 0.0
        self._flush_at = 0.0
        self._prune_at: float | None = None
        self._generation = archive.generation

    # -- hot path --------------------------------------------------------------------
    def _plan(self, message: str) -> tuple[dict[str, tuple], tuple]:
        """Per message: signal name -> (key, scale, offset, role) and the names with a role."""
        signals: dict[str, tuple] = {}
        roles = []
        prefix = f"{message}."
        for key, spec in self.specs.items():
            if spec.message == message and key.startswith(prefix):
                role = _role(spec)
                signals[spec.signal] = (key, spec.scale, spec.offset, role)
                if role is not None:
                    roles.append(spec.signal)
        plan = (signals, tuple(roles))
        self._plans[message] = plan
        return plan

    def __call__(self, frame: DecodedFrame) -> None:
        t = frame.timestamp
        state = self._state
        if state is None or t - self._last_t > self.trip_gap_s or self._last_t - t > self.trip_gap_s:
            state = self._new_trip(t)
        self._last_t = t
        message = frame.message
        plan = self._plans.get(message) or self._plan(message)
        signals = plan[0]
        if t >= self._quiet.get(message, -math.inf):
            nxt = self._next
            rows = self._rows
            kept = False
            for name, raw in frame.raw.items():
                entry = signals.get(name)
                if entry is None:
                    continue
                key = entry[0]
                if t >= nxt.get(key, -math.inf):
                    nxt[key] = t + self.period
                    kept = True
                    value = raw * entry[1] + entry[2]
                    if value == value:  # NaN from an IEEE-float signal: nothing to keep
                        rows.append((t, key, float(value)))
            if kept:
                self._quiet[message] = min(nxt.get(entry[0], -math.inf) for entry in signals.values())
        if plan[1]:
            self._roles(state, t, frame.raw, signals, plan[1])
        if t > state.trip.end:
            state.trip.end = t
        if t - self._flush_at >= FLUSH_EVERY_S or len(self._rows) + len(self._positions) >= FLUSH_ROWS:
            self.flush()

    def _roles(self, state: _TripState, t: float, raw: Mapping, signals: dict, names: tuple) -> None:
        moved = False
        for name in names:
            value = raw.get(name)
            if value is None:
                continue
            key, scale, offset, role = signals[name]
            value = value * scale + offset
            kind = role[0]
            if kind == "lat":
                state.lat, moved = value, True
            elif kind == "lon":
                state.lon, moved = value, True
            elif kind == "valid":
                state.valid = bool(value)
            elif value == value:
                integral = state.integrals.get((kind, key))
                if integral is None:
                    integral = state.integrals[(kind, key)] = _Integral(role[2] if kind == "speed" else 0)
                integral.add(t, value * role[1])
        if moved and state.valid and state.lat is not None and state.lon is not None:
            self._fix(state, t, float(state.lat), float(state.lon))

    def _fix(self, state: _TripState, t: float, lat: float, lon: float) -> None:
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            return
        positions = self._positions
        last = state.pos_last
        if last is not None and last[0] == t:  # latitude and longitude in two frames of one instant
            if positions and positions[-1][0] == t:
                positions[-1] = state.pos_last = (t, lat, lon)
            return
        point = (t, lat, lon)
        positions.append(point)
        state.pos_last = point
        if last is None or t < last[0]:
            return
        step = haversine_km(last[1], last[2], lat, lon)
        dt_h = (t - last[0]) / 3600.0
        if dt_h * 3600.0 <= MAX_INTEGRATION_GAP_S:
            state.pos_km += step
            state.pos_time_h += dt_h
        if state.fix_t is None:
            state.fix_t, state.fix_km = last[0], 0.0
        state.fix_km += step
        if t - state.fix_t >= 1.0:  # speeds from fixes over >= 1 s, so GNSS jitter does not make a maximum
            state.pos_max = max(state.pos_max, state.fix_km / ((t - state.fix_t) / 3600.0))
            state.fix_t, state.fix_km = t, 0.0

    # -- trips -----------------------------------------------------------------------
    def _new_trip(self, t: float) -> _TripState:
        if self._state is not None:
            self.flush()
        self._state = _TripState(t)
        self._next.clear()
        self._quiet.clear()
        self._flush_at = t
        return self._state

    def _summarise(self, state: _TripState) -> Trip:
        trip = state.trip
        speeds = [(i.rank, key, i) for (kind, key), i in state.integrals.items() if kind == "speed" and i.n]
        if speeds:
            _, key, best = min(speeds)
            trip.speed_key = key
            trip.distance_km = best.sum
            trip.max_speed_kmh = max(best.max, 0.0)
            trip.mean_speed_kmh = best.sum / best.time_h if best.time_h > 0 else max(best.last, 0.0)
        elif state.pos_last is not None:
            trip.speed_key = None
            trip.distance_km = state.pos_km
            trip.mean_speed_kmh = state.pos_km / state.pos_time_h if state.pos_time_h > 0 else 0.0
            trip.max_speed_kmh = max(state.pos_max, trip.mean_speed_kmh)
        trip.energy_kwh = self._amount(state, "energy", "power")
        trip.fuel_l = self._amount(state, "fuel", "fuel_rate")
        return trip

    @staticmethod
    def _amount(state: _TripState, counter: str, rate: str) -> float | None:
        """A counter's last - first, else the integral of a rate; None when the trip has neither."""
        counters = sorted((key, i) for (kind, key), i in state.integrals.items() if kind == counter)
        if counters:
            integral = counters[0][1]
            return integral.last - integral.first
        rates = sorted((key, i) for (kind, key), i in state.integrals.items() if kind == rate)
        return rates[0][1].sum if rates else None

    # -- writing ---------------------------------------------------------------------
    def flush(self) -> None:
        """Write the buffered rows and the trip summary (one transaction); never raises."""
        state = self._state
        self._flush_at = self._last_t
        if state is None:
            return
        try:
            generation = self.archive.generation  # a forget() by this or another process (the owner page)
        except Exception as exc:  # closed, unreadable: counted like a failed write
            self.dropped_rows += len(self._rows) + len(self._positions)
            self._rows, self._positions = [], []
            self._failed(exc)
            return
        if generation != self._generation:  # forget(): nothing from before survives, not even here
            self._generation = generation
            self._rows.clear()
            self._positions.clear()
            self._state = None
            return
        rows, positions = self._rows, self._positions
        self._rows, self._positions = [], []
        try:
            trip = self._summarise(state)
            trip.id = self.archive.store(trip, rows, positions, self._key_info)
            trip.samples += len(rows)
        except Exception as exc:  # disk full, read-only, closed: the pipeline must go on
            self.dropped_rows += len(rows) + len(positions)
            self._failed(exc)
            return
        if self._prune_at is None or self._last_t - self._prune_at >= PRUNE_EVERY_S:
            self._prune_at = self._last_t
            try:
                self.archive.prune(keep=trip.id)
            except Exception as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            log.warning("owner archive %s: cannot write (%s); counting further failures silently",
                        self.archive.path, exc)
        else:
            log.debug("owner archive write failed again: %s", exc)

    close = flush
