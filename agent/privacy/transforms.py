"""Location coarsening and privacy zones: the exact definitions the owner consents to.

Every level maps one coordinate to the centre of a fixed cell, so a value that
left the car is the same for every position inside that cell and a test (or a
regulator) can recompute it exactly:

* ``round3``   - ``round(value, 3)`` (Python's ``round``): a 0.001 degree grid, ~110 m.
* ``geohash6`` - the centre of the position's 6-character geohash cell
                 (15 latitude bits, 15 longitude bits: ~0.6 km x 1.2 km).
* ``geohash5`` - the centre of the 5-character geohash cell
                 (12 latitude bits, 13 longitude bits: ~4.9 km x 4.9 km).
* ``city``     - the centre of a 0.1 degree grid cell: ``(floor(value * 10) + 0.5) / 10``
                 (~11 km north-south).

A geohash interleaves latitude and longitude bits, but each coordinate's bits
depend on that coordinate alone, so each coordinate can be coarsened on its
own (a DBC may carry latitude and longitude in different messages).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# Coarsest first: a "narrower" level is one earlier in this tuple.
LOCATION_LEVELS = ("city", "geohash5", "geohash6", "round3")
APPROXIMATE_SIZE = {"city": "~10 km", "geohash5": "~5 km", "geohash6": "~1 km", "round3": "~110 m"}

_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)


def level_rank(level: str) -> int:
    """0 for the coarsest level; a larger rank is more precise."""
    try:
        return LOCATION_LEVELS.index(level)
    except ValueError:
        raise ValueError(f"unknown location level {level!r} (known: {', '.join(LOCATION_LEVELS)})") from None


def geohash_bits(precision: int) -> tuple[int, int]:
    """(latitude bits, longitude bits) of a geohash of ``precision`` characters."""
    total = 5 * precision
    return total // 2, total - total // 2


def _cell_centre(value: float, low: float, high: float, bits: int) -> float:
    # The geohash bisection itself, so boundaries fall exactly where a geohash
    # encoder puts them (value >= mid goes to the upper half).
    for _ in range(bits):
        mid = (low + high) / 2
        if value >= mid:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def geohash_encode(latitude: float, longitude: float, precision: int) -> str:
    lat_range, lon_range = [-90.0, 90.0], [-180.0, 180.0]
    chars, bits, char_bits, even = [], 0, 0, True
    while len(chars) < precision:
        span = lon_range if even else lat_range
        value = longitude if even else latitude
        mid = (span[0] + span[1]) / 2
        if value >= mid:
            char_bits = (char_bits << 1) | 1
            span[0] = mid
        else:
            char_bits <<= 1
            span[1] = mid
        even = not even
        bits += 1
        if bits == 5:
            chars.append(_BASE32[char_bits])
            bits, char_bits = 0, 0
    return "".join(chars)


def geohash_decode(code: str) -> tuple[float, float]:
    """Centre (latitude, longitude) of a geohash cell."""
    lat_range, lon_range = [-90.0, 90.0], [-180.0, 180.0]
    even = True
    for char in code:
        index = _BASE32.index(char)
        for shift in range(4, -1, -1):
            span = lon_range if even else lat_range
            mid = (span[0] + span[1]) / 2
            if (index >> shift) & 1:
                span[0] = mid
            else:
                span[1] = mid
            even = not even
    return (lat_range[0] + lat_range[1]) / 2, (lon_range[0] + lon_range[1]) / 2


def _geohash_latitude(precision: int) -> Callable[[float], float]:
    bits = geohash_bits(precision)[0]
    return lambda value: _cell_centre(value, -90.0, 90.0, bits)


def _geohash_longitude(precision: int) -> Callable[[float], float]:
    bits = geohash_bits(precision)[1]
    return lambda value: _cell_centre(value, -180.0, 180.0, bits)


def _round3(value: float) -> float:
    return round(value, 3)


def _city(value: float) -> float:
    return (math.floor(value * 10) + 0.5) / 10


_LATITUDE = {"round3": _round3, "geohash6": _geohash_latitude(6), "geohash5": _geohash_latitude(5), "city": _city}
_LONGITUDE = {"round3": _round3, "geohash6": _geohash_longitude(6), "geohash5": _geohash_longitude(5),
              "city": _city}


def latitude_coarsener(level: str) -> Callable[[float], float]:
    level_rank(level)
    return _LATITUDE[level]


def longitude_coarsener(level: str) -> Callable[[float], float]:
    level_rank(level)
    return _LONGITUDE[level]


def coarsen(latitude: float, longitude: float, level: str) -> tuple[float, float]:
    return latitude_coarsener(level)(latitude), longitude_coarsener(level)(longitude)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class ZoneCircle:
    """A privacy zone's geometry (the zone record with its name lives in ``consent``)."""

    latitude: float
    longitude: float
    radius_m: float

    def contains(self, latitude: float, longitude: float) -> bool:
        # Cheap bounding-box rejection first: this runs for every position row.
        dlat = abs(latitude - self.latitude) * 111_195.0
        if dlat > self.radius_m:
            return False
        return distance_m(self.latitude, self.longitude, latitude, longitude) <= self.radius_m


def in_any_zone(zones: tuple[ZoneCircle, ...], latitude: float, longitude: float) -> bool:
    return any(zone.contains(latitude, longitude) for zone in zones)
