"""Location coarsening levels are exact, documented functions; zones use great-circle distance."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.privacy.transforms import (
    LOCATION_LEVELS,
    ZoneCircle,
    coarsen,
    distance_m,
    geohash_bits,
    geohash_decode,
    geohash_encode,
    in_any_zone,
    latitude_coarsener,
    level_rank,
    longitude_coarsener,
)

pytestmark = pytest.mark.consent

latitudes = st.floats(min_value=-89.999, max_value=89.999, allow_nan=False)
longitudes = st.floats(min_value=-179.999, max_value=179.999, allow_nan=False)


def reference_geohash(lat: float, lon: float, precision: int) -> str:
    """Independent encoder: quantise each coordinate to an integer cell index, interleave bits."""
    alphabet = "0123456789bcdefghjkmnpqrstuvwxyz"
    nbits = 5 * precision
    lat_bits, lon_bits = nbits // 2, nbits - nbits // 2
    # Exact rational arithmetic: no rounding at cell boundaries.
    lat_index = math.floor((Fraction(lat) + 90) / 180 * 2**lat_bits)
    lon_index = math.floor((Fraction(lon) + 180) / 360 * 2**lon_bits)
    bits = []
    for i in range(nbits):
        if i % 2 == 0:
            bits.append((lon_index >> (lon_bits - 1 - i // 2)) & 1)
        else:
            bits.append((lat_index >> (lat_bits - 1 - i // 2)) & 1)
    return "".join(alphabet[int("".join(map(str, bits[j:j + 5])), 2)] for j in range(0, nbits, 5))


def test_geohash_known_vectors():
    # Published examples (Wikipedia "Geohash"; geohash.org).
    assert geohash_encode(42.6, -5.6, 5) == "ezs42"
    assert geohash_decode("ezs42") == (42.60498046875, -5.60302734375)
    assert geohash_encode(57.64911, 10.40744, 11) == "u4pruydqqvj"
    lat, lon = geohash_decode("u4pruydqqvj")
    assert abs(lat - 57.64911) < 1e-5 and abs(lon - 10.40744) < 1e-5
    assert geohash_bits(5) == (12, 13) and geohash_bits(6) == (15, 15)


@settings(max_examples=400, deadline=None)
@given(latitudes, longitudes)
def test_geohash_levels_are_the_cell_centre(lat, lon):
    for precision in (5, 6):
        assert geohash_encode(lat, lon, precision) == reference_geohash(lat, lon, precision)
        centre = geohash_decode(geohash_encode(lat, lon, precision))
        assert coarsen(lat, lon, f"geohash{precision}") == centre
        # The centre's own cell is the same cell: coarsening is idempotent.
        assert geohash_encode(*centre, precision) == geohash_encode(lat, lon, precision)


@settings(max_examples=400, deadline=None)
@given(latitudes, longitudes)
def test_round3_and_city_definitions(lat, lon):
    assert coarsen(lat, lon, "round3") == (round(lat, 3), round(lon, 3))
    city = coarsen(lat, lon, "city")
    assert city == ((math.floor(lat * 10) + 0.5) / 10, (math.floor(lon * 10) + 0.5) / 10)
    assert abs(city[0] - lat) <= 0.05 + 1e-9 and abs(city[1] - lon) <= 0.05 + 1e-9


@settings(max_examples=300, deadline=None)
@given(latitudes, longitudes)
def test_every_level_is_idempotent_and_bounded(lat, lon):
    # Maximum distance from the true position: half the cell diagonal.
    bound_m = {"round3": 80, "geohash6": 700, "geohash5": 3500, "city": 7900}
    for level in LOCATION_LEVELS:
        once = coarsen(lat, lon, level)
        assert coarsen(*once, level) == once
        assert distance_m(lat, lon, *once) <= bound_m[level], level


def test_coordinates_coarsen_independently():
    # A DBC may carry latitude and longitude in different messages.
    for level in LOCATION_LEVELS:
        lat, lon = coarsen(41.412935, -92.878535, level)
        assert latitude_coarsener(level)(41.412935) == lat
        assert longitude_coarsener(level)(-92.878535) == lon


def test_levels_ordered_coarsest_first():
    assert [level_rank(x) for x in ("city", "geohash5", "geohash6", "round3")] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown location level 'exact'"):
        level_rank("exact")


def test_real_position_at_each_level():
    # A position from the CANmod.gps log (Iowa): values computed by hand from the definitions.
    lat, lon = 41.412935, -92.878535
    assert coarsen(lat, lon, "round3") == (41.413, -92.879)
    assert coarsen(lat, lon, "city") == (41.45, -92.85)
    assert geohash_encode(lat, lon, 6) == reference_geohash(lat, lon, 6) == "9zmgw6"
    assert coarsen(lat, lon, "geohash6") == geohash_decode("9zmgw6")
    assert coarsen(lat, lon, "geohash5") == geohash_decode("9zmgw")


def test_distance_and_zones():
    # One degree along a meridian is R * pi / 180 with the mean Earth radius 6371.0088 km.
    assert distance_m(0.0, 10.0, 1.0, 10.0) == pytest.approx(111_195.08, abs=0.01)
    # Half the equator.
    assert distance_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * 6_371_008.8, rel=1e-12)
    assert distance_m(41.0, -93.0, 41.0, -93.0) == 0.0
    home = ZoneCircle(41.412935, -92.878535, 500.0)
    assert home.contains(41.412935, -92.878535)
    assert home.contains(41.4165, -92.878535)  # ~397 m north
    assert not home.contains(41.4180, -92.878535)  # ~563 m north
    assert not in_any_zone((), 41.4, -92.8)
    assert in_any_zone((ZoneCircle(0, 0, 100), home), 41.413, -92.8785)
