"""Where a transport value (rolling counter or checksum) sits in a frame, read and written without cantools.

A ``Field`` is one value made of one DBC signal or of several (``WHL_SPD_Checksum_LSB`` and ``_MSB``:
Hyundai splits some counters and checksums in 2-bit pieces).  Reading one takes two big-integer shifts
instead of a cantools decode: the checker runs on every frame of a message that carries one.

Bit numbering is the DBC's, as cantools keeps it in ``Signal.start``: little-endian signals start at their
least significant bit (bit ``8 * byte + bit``, counting up); big-endian ones at their most significant
bit, in the same per-byte numbering (bit 7 of a byte is its MSB), and run on into the next byte's bit 7.
Raw bits only: sign, scale and offset do not matter to a counter or a checksum.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from cantools.database import Message, Signal

# Suffixes naming the pieces of a split field; the low piece comes first in the value.
_PIECE_RE = re.compile(r"^(?P<stem>.+?)_?(?P<piece>LSB|MSB|LO|HI|LOW|HIGH)$", re.IGNORECASE)
_LOW_PIECES = ("lsb", "lo", "low")


class _Piece:
    """One DBC signal of a field, as a shift and a mask of the frame read as one integer."""

    __slots__ = ("big_endian", "mask", "positions", "shift", "width")

    def __init__(self, signal: Signal, message_length: int) -> None:
        self.width = signal.length
        self.mask = (1 << signal.length) - 1
        self.big_endian = signal.byte_order == "big_endian"
        if self.big_endian:
            msb = (message_length - 1 - signal.start // 8) * 8 + signal.start % 8
            self.shift = msb - signal.length + 1
            # (byte, bit) of each bit, least significant first
            self.positions = tuple((message_length - 1 - index // 8, index % 8)
                                   for index in range(self.shift, msb + 1))
        else:
            self.shift = signal.start
            bits = range(signal.start, signal.start + signal.length)
            self.positions = tuple((index // 8, index % 8) for index in bits)
        if self.shift < 0 or max(byte for byte, _ in self.positions) >= message_length:
            raise ValueError(f"signal {signal.name} does not fit in {message_length} bytes")


class Field:
    """A counter or checksum of one message: its value, its bits, and a frame with it changed."""

    __slots__ = ("_big", "_little", "_pieces", "byte_indexes", "clear_mask", "length", "max", "message_length",
                 "modulus", "name", "signal_names")

    def __init__(self, name: str, signals: Sequence[Signal], message_length: int) -> None:
        if not signals:
            raise ValueError(f"field {name}: no signals")
        self.name = name
        self.signal_names = tuple(signal.name for signal in signals)
        self.message_length = message_length
        self._pieces = tuple(_Piece(signal, message_length) for signal in signals)
        self._little = any(not piece.big_endian for piece in self._pieces)
        self._big = any(piece.big_endian for piece in self._pieces)
        self.length = sum(piece.width for piece in self._pieces)
        self.modulus = 1 << self.length
        self.max = self.modulus - 1
        positions = [position for piece in self._pieces for position in piece.positions]
        self.byte_indexes = tuple(sorted({byte for byte, _ in positions}))
        mask = bytearray(b"\xff" * message_length)
        for byte, bit in positions:
            mask[byte] &= ~(1 << bit) & 0xFF
        self.clear_mask = bytes(mask)  # AND with a frame: the field's bits zeroed, every other bit kept

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.length} bits, bytes {list(self.byte_indexes)})"

    @property
    def first_byte(self) -> int:
        return self.byte_indexes[0]

    def fits(self, data: bytes) -> bool:
        return len(data) >= self.message_length

    def value(self, data: bytes) -> int:
        """The field's raw value; ``data`` must hold at least ``message_length`` bytes (``fits``)."""
        head = data[: self.message_length]
        little = int.from_bytes(head, "little") if self._little else 0
        big = int.from_bytes(head, "big") if self._big else 0
        value = 0
        offset = 0
        for piece in self._pieces:
            word = big if piece.big_endian else little
            value |= ((word >> piece.shift) & piece.mask) << offset
            offset += piece.width
        return value

    def with_value(self, data: bytes, value: int) -> bytes:
        """A copy of ``data`` with the field set to ``value`` (modulo its range); every other bit kept."""
        length = self.message_length
        out = bytes(data)
        value %= self.modulus
        for piece in self._pieces:
            order = "big" if piece.big_endian else "little"
            word = int.from_bytes(out[:length], order)
            word = (word & ~(piece.mask << piece.shift)) | ((value & piece.mask) << piece.shift)
            out = word.to_bytes(length, order) + out[length:]
            value >>= piece.width
        return out

    def cleared(self, data: bytes) -> bytes:
        """``data`` with the field's bits zeroed (what sum and CRC checksums run over)."""
        mask = self.clear_mask
        return bytes(byte & mask[index] for index, byte in enumerate(data[: len(mask)])) + bytes(data[len(mask):])


def group_fields(message: Message, names: Iterable[str]) -> list[Field]:
    """Fields from signal names: ``X_LSB`` + ``X_MSB`` (or LO/HI, LOW/HIGH) become one field ``X``."""
    wanted = [message.get_signal_by_name(name) for name in names]
    pieces: dict[str, dict[str, Signal]] = {}
    singles: list[Signal] = []
    for signal in wanted:
        match = _PIECE_RE.match(signal.name)
        if match:
            pieces.setdefault(match.group("stem"), {})[match.group("piece").lower()] = signal
        else:
            singles.append(signal)
    fields = [Field(signal.name, [signal], message.length) for signal in singles]
    for stem, parts in pieces.items():
        if len(parts) == 2 and any(key in _LOW_PIECES for key in parts):
            low = next(signal for key, signal in parts.items() if key in _LOW_PIECES)
            high = next(signal for key, signal in parts.items() if key not in _LOW_PIECES)
            fields.append(Field(stem, [low, high], message.length))
        else:  # a lone piece is a field of its own
            fields.extend(Field(signal.name, [signal], message.length) for signal in parts.values())
    return fields
