"""Column codecs of the batch body (see docs/payload.md, "Columns").

A column is one signal (or the timestamps) of one table, all rows of the batch.
Every encoding is plain msgpack data plus little-endian bytes, so another
language decodes it with a msgpack library and a few lines of code:

* a bare number ``N``            every row holds ``N``;
* ``["=", j]``                   the same values as column ``j`` of this table
                                 (DBCs with overlapping signals decode one bit range twice);
* ``["delta", first, step, mul, width, data]``
                                 ``v[0] = first``, ``v[i] = v[i-1] + step + mul * unzigzag(u[i-1])``;
* ``["plain", ref, mul, width, data]``
                                 ``v[i] = ref + mul * u[i]``;
* ``["f64", data]`` / ``["f32", data]``
                                 IEEE floats, little-endian, stored in byte planes.

``u`` are unsigned integers unpacked from ``data`` according to ``width``:
``0`` all zero (no data); ``-1``/``-2``/``-4`` bit-packed 1/2/4 bits each,
least significant bits first; ``1``/``2``/``4``/``8`` bytes each, little-endian,
in byte planes (first the lowest byte of every value, then the next byte...).
Byte planes put the rarely-changing high bytes together, which zstd shrinks
to almost nothing; bit packing keeps noisy 1-4 bit signals from spending a
whole byte each.  Both were measured on the shared real logs (docs/payload.md).

Everything here works on whole lists with C-speed builtins (map, zip, array,
bytes slicing): no per-sample Python objects beyond the lists themselves.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import accumulate, chain
from operator import sub

# array type codes for unsigned widths in bytes; checked at import so a
# platform with other C type sizes fails loudly instead of corrupting data.
_UNSIGNED = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FLOATS = {"f64": "d", "f32": "f"}
for _width, _code in _UNSIGNED.items():
    assert array(_code).itemsize == _width, f"array({_code!r}) is not {_width} bytes on this platform"
_BIG_ENDIAN = sys.byteorder == "big"
_BIT_WIDTHS = {1: 1, 2: 2, 3: 4, 4: 4}  # bits needed -> bits stored (1, 2 or 4 pack evenly into a byte)
_MAX_U64 = (1 << 64) - 1
# msgpack integers are int64 or uint64; ``first``, ``step`` and ``ref`` must fit.
_MSGPACK_MIN = -(1 << 63)


class ColumnError(ValueError):
    """A column that cannot be encoded or decoded; the caller adds which one."""


# -- unsigned integer packing ------------------------------------------------------------

def _planes(data: bytes, width: int) -> bytes:
    return b"".join(data[k::width] for k in range(width)) if width > 1 else data


def _unplanes(data: bytes, width: int, count: int) -> bytes:
    if width == 1:
        return data
    out = bytearray(count * width)
    for k in range(width):
        out[k::width] = data[k * count:(k + 1) * count]
    return bytes(out)


def _bitpack(values: list[int], bits: int) -> bytes:
    per_byte = 8 // bits
    padded = values + [0] * (-len(values) % per_byte)
    lanes = [padded[k::per_byte] for k in range(per_byte)]
    if bits == 4:
        return bytes(a | b << 4 for a, b in zip(*lanes))
    if bits == 2:
        return bytes(a | b << 2 | c << 4 | d << 6 for a, b, c, d in zip(*lanes))
    return bytes(a | b << 1 | c << 2 | d << 3 | e << 4 | f << 5 | g << 6 | h << 7
                 for a, b, c, d, e, f, g, h in zip(*lanes))


_UNPACK_TABLES: dict[int, list[tuple[int, ...]]] = {
    bits: [tuple((byte >> (k * bits)) & ((1 << bits) - 1) for k in range(8 // bits)) for byte in range(256)]
    for bits in (1, 2, 4)
}


def pack_unsigned(values: list[int]) -> tuple[int, bytes]:
    """(width, data) for non-negative ints below 2**64."""
    top = max(values)
    if top > _MAX_U64:
        raise ColumnError(f"value {top} does not fit 64 bits")
    bits = top.bit_length()
    if bits == 0:
        return 0, b""
    if bits <= 4:
        stored = _BIT_WIDTHS[bits]
        return -stored, _bitpack(values, stored)
    width = 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8
    packed = array(_UNSIGNED[width], values)
    if _BIG_ENDIAN:
        packed.byteswap()
    return width, _planes(packed.tobytes(), width)


def unpack_unsigned(width: int, data: bytes, count: int) -> list[int]:
    if width == 0:
        return [0] * count
    if not isinstance(data, bytes):
        raise ColumnError(f"packed data is {type(data).__name__}, not bytes")
    if width < 0:
        bits = -width
        if bits not in _UNPACK_TABLES or len(data) != -(-count * bits // 8):
            raise ColumnError(f"bad bit-packed data: width {width}, {len(data)} bytes for {count} values")
        return list(chain.from_iterable(map(_UNPACK_TABLES[bits].__getitem__, data)))[:count]
    code = _UNSIGNED.get(width)
    if code is None or len(data) != width * count:
        raise ColumnError(f"bad packed data: width {width}, {len(data)} bytes for {count} values")
    values = array(code, _unplanes(data, width, count))
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tolist()


def _zigzag(values: list[int]) -> list[int]:
    return [v << 1 if v >= 0 else (-v << 1) - 1 for v in values]


def _unzigzag(values: list[int]) -> list[int]:
    return [(u >> 1) ^ -(u & 1) for u in values]


def _cost(values: list[int], top: int) -> float:
    """Rough bits needed for a stored stream whose largest unsigned value is ``top``:
    bit-packed streams take their bit width per value (zstd cannot do much more with
    them); wider ones are scored by zero-order entropy, which zstd gets close to."""
    bits = top.bit_length()
    if bits <= 4:
        return len(values) * _BIT_WIDTHS.get(bits, 0)
    counts = Counter(values).values()
    total = len(values)
    return total * math.log2(total) - sum(c * math.log2(c) for c in counts)


def _fits_msgpack(value: int) -> bool:
    return _MSGPACK_MIN <= value <= _MAX_U64


# -- integer columns ------------------------------------------------------------------------

def encode_ints(values: list[int], timestamps: bool = False) -> int | list:
    """Encode one integer column.  ``timestamps`` forces delta mode with a step
    (the message period), which turns periodic timestamps into small jitter values."""
    first = values[0]
    count = len(values)
    if values.count(first) == count and not timestamps:
        return first
    deltas = list(map(sub, values[1:], values[:-1]))
    step = sorted(deltas)[(len(deltas) - 1) // 2] if timestamps and deltas else 0  # the low median
    if step:
        deltas = [d - step for d in deltas]
    low = min(values)
    lowest, highest = (min(deltas), max(deltas)) if deltas else (0, 0)  # each extreme once, not twice
    use_delta = timestamps or _cost(deltas, 2 * max(highest, -lowest)) < _cost(values, max(values) - low)
    if use_delta and deltas and not (_fits_msgpack(lowest << 1) and _fits_msgpack(highest << 1)):
        use_delta = False  # 64-bit swings: plain offsets from the minimum always fit
    if use_delta and _fits_msgpack(step) and _fits_msgpack(first):
        mul = math.gcd(*deltas) if deltas else 0
        if mul > 1:
            deltas = [d // mul for d in deltas]
        width, data = pack_unsigned(_zigzag(deltas)) if deltas else (0, b"")
        return ["d", first, step, mul or 1, width, data]
    if not _fits_msgpack(low):
        raise ColumnError(f"value {low} is outside the 64-bit range")
    offsets = [v - low for v in values]
    mul = math.gcd(*offsets) or 1
    if mul > 1:
        offsets = [o // mul for o in offsets]
    width, data = pack_unsigned(offsets)
    return ["p", low, mul, width, data]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_ints(column: object, count: int) -> list[int]:
    if isinstance(column, bool) or not isinstance(column, (int, list)):
        raise ColumnError(f"expected an integer column, got {type(column).__name__}")
    if isinstance(column, int):
        return [column] * count
    kind = column[0] if column else None
    if kind == "d" and len(column) == 6:
        _, first, step, mul, width, data = column
        if not all(map(_is_int, (first, step, mul, width))):
            raise ColumnError("delta column: first, step, mul and width must be integers")
        if count == 0:
            return []
        steps = _unzigzag(unpack_unsigned(width, data, count - 1))
        if mul != 1:
            steps = [s * mul for s in steps]
        if step:
            steps = [s + step for s in steps]
        return list(accumulate(steps, initial=first))
    if kind == "p" and len(column) == 5:
        _, ref, mul, width, data = column
        if not all(map(_is_int, (ref, mul, width))):
            raise ColumnError("plain column: ref, mul and width must be integers")
        offsets = unpack_unsigned(width, data, count)
        if mul == 1:
            return [ref + o for o in offsets]
        return [ref + mul * o for o in offsets]
    raise ColumnError(f"unknown integer column {str(column)[:60]}")


def capacity(column: object) -> tuple[int | None, bool]:
    """(how many values the column's data holds, exactly or at most).  ``None``: the column has no
    per-row data (a constant, an all-zero stream, a reference to another column) and stands for
    any number of rows; the caller bounds those by its own row limit.  Reads only lengths, so a
    declared row count can be checked against it before anything is allocated (docs/payload.md,
    "Decode limits"); a malformed column is left for the decoder to name."""
    if not isinstance(column, list) or not column:
        return None, True
    kind = column[0]
    if kind in _FLOATS and len(column) == 2 and isinstance(column[1], bytes):
        return len(column[1]) // array(_FLOATS[kind]).itemsize, True
    if kind in ("d", "p") and len(column) == (6 if kind == "d" else 5):
        width, data = column[-2], column[-1]
        if not _is_int(width) or not isinstance(data, bytes) or width == 0:
            return None, True
        extra = 1 if kind == "d" else 0  # a delta column stores one value fewer than it has rows
        if width < 0:
            return len(data) * (8 // -width if -width in _UNPACK_TABLES else 8) + extra, False
        return len(data) // width + extra, True
    return None, True


# -- float columns ---------------------------------------------------------------------------

def encode_floats(values: list[float]) -> float | list:
    first = values[0]
    # count() says 0.0 == -0.0: a constant zero column must also agree on the sign.
    if values.count(first) == len(values) and (first != 0.0 or len({math.copysign(1.0, v) for v in values}) == 1):
        return first
    single = array("f", values)
    # float32 when every value survives the round trip (NaN never compares equal: it stays float64).
    packed, kind = (single, "f32") if single.tolist() == values else (array("d", values), "f64")
    if _BIG_ENDIAN:
        packed.byteswap()
    return [kind, _planes(packed.tobytes(), packed.itemsize)]


def decode_floats(column: object, count: int) -> list[float]:
    if isinstance(column, float):
        return [column] * count
    if isinstance(column, list) and len(column) == 2 and column[0] in _FLOATS:
        code = _FLOATS[column[0]]
        width = array(code).itemsize
        data = column[1]
        if not isinstance(data, bytes):
            raise ColumnError(f"bad {column[0]} data: {type(data).__name__}, not bytes")
        if len(data) != width * count:
            raise ColumnError(f"bad {column[0]} data: {len(data)} bytes for {count} values")
        values = array(code, _unplanes(data, width, count))
        if _BIG_ENDIAN:
            values.byteswap()
        return values.tolist()
    raise ColumnError(f"unknown float column {str(column)[:60]}")


def encode_values(values: list) -> object:
    """Any value column: integers stay integers, anything with a float becomes floats."""
    types = set(map(type, values))
    if types <= {int, bool}:
        return encode_ints([int(v) for v in values] if bool in types else values)
    if types <= {int, bool, float}:
        return encode_floats(values if types == {float} else [float(v) for v in values])
    names = ", ".join(sorted(t.__name__ for t in types - {int, bool, float}))
    raise ColumnError(f"values must be numbers, got {names}")


def decode_values(column: object, count: int, earlier: list[list]) -> list:
    if isinstance(column, float) or (isinstance(column, list) and column and column[0] in _FLOATS):
        return decode_floats(column, count)
    if isinstance(column, list) and len(column) == 2 and column[0] == "=":
        index = column[1]
        if not isinstance(index, int) or not 0 <= index < len(earlier):
            raise ColumnError(f"column reference {index!r} points to no earlier column")
        return earlier[index]
    return decode_ints(column, count)


# -- timestamps ----------------------------------------------------------------------------

def quantize_us(micros: int, resolution_us: int) -> int:
    """``micros`` cut down to a whole multiple of ``resolution_us`` (floor: a frame never moves later,
    so a row stays inside the period or window that holds it)."""
    return micros - micros % resolution_us


def encode_times(timestamps: Sequence[float], base_us: int, resolution_us: int = 1) -> tuple[object, bool]:
    """(column, exact): integer microseconds relative to ``base_us`` when every
    timestamp survives the trip through ``us / 10**6`` bit for bit (candump, ASC
    and BLF logs do), else the float seconds themselves (exact=False).

    ``resolution_us`` > 1 keeps the timestamps only to that resolution (floored, see
    ``quantize_us``): always integers then, and exact=False.  The jitter below a
    millisecond is most of a batch's bytes on real logs (docs/payload.md, "Time resolution")."""
    micros = [round(t * 1e6) for t in timestamps]
    if resolution_us > 1:
        quantized = [m - m % resolution_us for m in micros]
        return encode_ints([m - base_us for m in quantized], timestamps=True), False
    timestamps = list(timestamps)  # the batcher's are an array('d'): compared and packed as a list below
    back = [m / 1_000_000 for m in micros]  # int / int: correctly rounded, as documented
    if back == timestamps:
        relative = [m - base_us for m in micros] if base_us else micros
        return encode_ints(relative, timestamps=True), True
    return encode_floats(timestamps), False


def decode_times(column: object, count: int, base_us: int) -> list[float]:
    if isinstance(column, float) or (isinstance(column, list) and column and column[0] in _FLOATS):
        return decode_floats(column, count)
    if not _is_int(base_us):
        raise ColumnError(f"t_base_us must be an integer, got {type(base_us).__name__}")
    return [(base_us + us) / 1_000_000 for us in decode_ints(column, count)]


def micros_of(timestamp: float) -> int:
    return round(timestamp * 1e6)


__all__ = ["ColumnError", "capacity", "decode_floats", "decode_ints", "decode_times", "decode_values", "encode_floats",
           "encode_ints", "encode_times", "encode_values", "micros_of", "pack_unsigned", "quantize_us",
           "unpack_unsigned"]
