"""Checksum algorithms of DBC families, and which one a message uses.

Every algorithm is ``compute(address, data, field) -> expected value``: ``address`` the frame id, ``data``
the frame as received, ``field`` the checksum's ``Field`` (where it sits; the algorithms leave its bits
out).  They follow opendbc (``opendbc/can/common.cc`` and its Python successor ``_checksums.py``, the
``opendbc/car/*/`` packers, and the panda safety code under ``opendbc/safety/modes``), which is where
the car families' checksums are documented:

* ``toyota``: byte sum of the length, the address bytes and every byte but the last (checksum in the last byte).
* ``honda``: nibble sum of the address and the data without the checksum nibble (low nibble of the last byte),
  ``8 - sum`` (+3 for 29-bit ids), 4 bits.
* ``subaru``: byte sum of the address bytes and every byte after the first (checksum in the first byte).
* ``chrysler``: CRC-8/SAE-J1850 (poly 0x1D, init 0xFF, xor-out 0xFF) over every byte but the last; the
  bit-by-bit loop opendbc took from the "Remote Car Hacking" paper computes exactly this CRC.
* ``vw_mqb``: AUTOSAR E2E profile 2: CRC-8H2F (poly 0x2F) over bytes 1.. plus a per-message, per-counter
  "data ID" byte (``VW_MQB_DATA_IDS``); a message without a known data ID is not checked.
* ``tesla``: byte sum of the two address bytes and every byte but the checksum's.
* ``xor``: XOR of every byte but the checksum's (VW PQ).
* ``hkg_can_fd``: Hyundai/Kia CAN FD: CRC-16/XMODEM over bytes 2.., then the address low and high byte,
  XORed with a constant for the frame length.
* Hyundai/Kia classic CAN, per message (panda ``hyundai_compute_checksum``, opendbc ``hyundaican.py``):
  ``hkg_nibble_sum`` (16 - nibble sum of the frame without the checksum; EMS16 0x260, SCC12 0x421),
  ``hkg_tcs13`` (the same without byte 7; TCS13 0x394), ``hkg_whl_spd`` (count of one bits without the
  counter and checksum bits, XOR 9; WHL_SPD11 0x386), ``hkg_crc8`` (crcmod ``mkCrcFun(0x11D,
  initCrc=0xFD, xorOut=0xDF)`` over every byte but the checksum's: register starts at 0xFD ^ 0xDF; FCA11,
  LKAS11 on most cars).
* ``byte_sum``: sum of every byte but the checksum's, in the checksum's width: opendbc's LKAS11 checksum
  for most Hyundai/Kia (``create_lkas11``, the "first 6 bytes and the last" branch); the 2019 Kona EV's
  LKAS11 (0x340), MDPS11 (0x381) and WHL_PUL11 (0x387) frames all carry it.
* Measured on the 2019 Kona EV's frames, not in opendbc: ``nibble_sum`` (nibble sum, 4 bits; its VCU
  0x109 and SCU 0x10C) and ``nibble_xor`` (XOR of the nibbles; SAS11 0x2B0).

Which algorithm a checksum gets (``algorithm_for``), first answer wins:

1. an explicit setting (``checksum: ALGORITHM`` for the message), any name of ``ALGORITHMS``;
2. the DBC family from the DBC's file name, as opendbc tells them apart (``FAMILY_PATTERNS``:
   ``toyota_*``, ``honda_*``, ``hyundai_canfd*``, ``hyundai_*``, ``vw_mqb*`` ...), and within the
   Hyundai classic family the message address;
3. none: the checksum is counted as "not checked", never as a failure.

``detect_algorithm`` tries every algorithm on recorded frames instead (``catalog init`` with a log).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.integrity.fields import Field

Compute = Callable[[int, bytes, Field], int]


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for index in range(256):
        crc = index << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return tuple(table)


CRC8_J1850 = _crc_table(0x1D, 8)
CRC8_H2F = _crc_table(0x2F, 8)
CRC16_XMODEM = _crc_table(0x1021, 16)


def crc8(table: tuple[int, ...], data: Iterable[int], init: int, xor_out: int) -> int:
    crc = init
    for byte in data:
        crc = table[crc ^ byte]
    return crc ^ xor_out


def crc16(table: tuple[int, ...], data: Iterable[int], init: int) -> int:
    crc = init
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def _address_bytes(address: int) -> int:
    total = 0
    while address:
        total += address & 0xFF
        address >>= 8
    return total


def _nibbles(data: Iterable[int]) -> int:
    return sum((byte >> 4) + (byte & 0xF) for byte in data)


def _without_field_bytes(data: bytes, field: Field) -> list[int]:
    skip = field.byte_indexes
    return [byte for index, byte in enumerate(data) if index not in skip]


def toyota(address: int, data: bytes, field: Field) -> int:
    return (len(data) + _address_bytes(address) + sum(data[:-1])) & 0xFF


def honda(address: int, data: bytes, field: Field) -> int:
    total = 0
    extended = address > 0x7FF
    while address:
        total += address & 0xF
        address >>= 4
    total += _nibbles(data[:-1]) + (data[-1] >> 4)
    total = 8 - total + (3 if extended else 0)
    return total & 0xF


def subaru(address: int, data: bytes, field: Field) -> int:
    return (_address_bytes(address) + sum(data[1:])) & 0xFF


def chrysler(address: int, data: bytes, field: Field) -> int:
    return crc8(CRC8_J1850, data[:-1], 0xFF, 0xFF)


def tesla(address: int, data: bytes, field: Field) -> int:
    return ((address & 0xFF) + ((address >> 8) & 0xFF) + sum(_without_field_bytes(data, field))) & 0xFF


def xor(address: int, data: bytes, field: Field) -> int:
    result = 0
    for byte in _without_field_bytes(data, field):
        result ^= byte
    return result


# AUTOSAR E2E profile 2 data IDs by message address, one per counter value 0..15 (opendbc _checksums.py);
# a single byte: the same ID for every counter value.
_VW_MQB_DATA_IDS_HEX: dict[int, str] = {
    0x40: "40", 0x86: "86", 0x9F: "F5", 0xAD: "3F6939DC94F91464D86A34CEA255B52C",
    0xDB: "09FACA8E62D5D1F031A0AFDA4D1A0A97", 0xFC: "775CA0894B7CBBD61F6C4FF6202B43DD",
    0xFD: "B4EFF8491EE5C2C097193CC9F198D661", 0x101: "AA", 0x102: "D712857E0B34FA167A252D8F048E5D35",
    0x106: "07", 0x10B: "775CA0894B7CBBD61F6C4FF6202B43DD", 0x116: "AC", 0x117: "16",
    0x120: "C4E24FE4F82F56819FE58344053F97DF", 0x121: "E965AE6B7B35E55F4EC786A2BBDDEBB4",
    0x122: "377DF3A918466D4D3D71929CE53210B9", 0x126: "DA", 0x12B: "6A38B42722EFE1BBF8808449C79E1E2B",
    0x12E: "F8E597C9D607472166DDCF6FA1947463", 0x139: "ED031C13C623787A8B401451BF6832BA",
    0x13D: "20CA68D51B31E2DA080AD4DE9CE4355B", 0x14C: "163559159A2A97B80E4E30CCB30701AD",
    0x14D: "1A658196C0DF1192D361C6958C2921B5", 0x187: "7FED17C27CEB442101FADB154A6B2305",
    0x1A4: "69BB54E64E468D7BEA87E9B363CEF8BF", 0x1AB: "13219B6A9A62D46518F1AB163289E726",
    0x1F0: "2F3C226018EB6376C5910F2734047F02", 0x20A: "9DE836A1CA3B1D33E0D5BB5FAE3C319F",
    0x26B: "CECCBD69A13C18760F04F23A93241951", 0x30C: "0F", 0x30F: "0C", 0x324: "27",
    0x3BE: "1F28C685E6F8B0195B643521E4F79C24", 0x3C0: "C3", 0x3D5: "C539C7F992D824CEF1B57AC4BC60E3D1",
    0x65D: "ACB3ABEB7AE13BF773BA7C9E065F02D9",
}
VW_MQB_DATA_IDS: dict[int, bytes] = {address: bytes.fromhex(ids) * (16 if len(ids) == 2 else 1)
                                     for address, ids in _VW_MQB_DATA_IDS_HEX.items()}


def vw_mqb(address: int, data: bytes, field: Field) -> int:
    crc = 0xFF
    for byte in data[1:]:
        crc = CRC8_H2F[crc ^ byte]
    crc = CRC8_H2F[crc ^ VW_MQB_DATA_IDS[address][data[1] & 0x0F]]
    return crc ^ 0xFF


_CAN_FD_XOR = {8: 0x5F29, 16: 0x041D, 24: 0x819D, 32: 0x9F5B}


def hkg_can_fd(address: int, data: bytes, field: Field) -> int:
    crc = crc16(CRC16_XMODEM, data[2:], 0)
    crc = crc16(CRC16_XMODEM, (address & 0xFF, (address >> 8) & 0xFF), crc)
    return crc ^ _CAN_FD_XOR.get(len(data), 0)


def hkg_nibble_sum(address: int, data: bytes, field: Field) -> int:
    return (16 - _nibbles(field.cleared(data)) % 16) % 16


def hkg_tcs13(address: int, data: bytes, field: Field) -> int:
    return (16 - _nibbles(field.cleared(data)[:7]) % 16) % 16


# WHL_SPD11: bits 6 and 7 of bytes 1, 3, 5 and 7 hold the split counter and checksum.
_WHL_SPD_KEEP = bytes((0xFF, 0x3F, 0xFF, 0x3F, 0xFF, 0x3F, 0xFF, 0x3F))


def hkg_whl_spd(address: int, data: bytes, field: Field) -> int:
    ones = sum(bin(byte & keep).count("1") for byte, keep in zip(data, _WHL_SPD_KEEP))
    return (ones ^ 9) & 0xF


def hkg_crc8(address: int, data: bytes, field: Field) -> int:
    return crc8(CRC8_J1850, _without_field_bytes(data, field), 0xFD ^ 0xDF, 0xDF)


def nibble_sum(address: int, data: bytes, field: Field) -> int:
    return _nibbles(field.cleared(data)) % 16


def nibble_xor(address: int, data: bytes, field: Field) -> int:
    result = 0
    for byte in field.cleared(data):
        result ^= (byte >> 4) ^ (byte & 0xF)
    return result


def byte_sum(address: int, data: bytes, field: Field) -> int:
    return sum(field.cleared(data)) & field.max


def _in_last_byte(field: Field, low_nibble: bool = False) -> bool:
    last = field.message_length - 1
    return field.byte_indexes == (last,) and (not low_nibble or field.clear_mask[last] == 0xF0)


@dataclass(frozen=True)
class Algorithm:
    name: str
    compute: Compute
    bits: int | None  # width of the value it yields; None: the checksum field's width
    fits: Callable[[Field], bool] = lambda field: True  # where the checksum must sit for it to apply
    addresses: frozenset[int] | None = None  # None: any message

    def applies(self, address: int, field: Field) -> bool:
        return ((self.bits is None or self.bits == field.length) and self.fits(field)
                and (self.addresses is None or address in self.addresses))


ALGORITHMS: dict[str, Algorithm] = {algorithm.name: algorithm for algorithm in (
    Algorithm("toyota", toyota, 8, _in_last_byte),
    Algorithm("honda", honda, 4, lambda field: _in_last_byte(field, low_nibble=True)),
    Algorithm("subaru", subaru, 8, lambda field: field.byte_indexes == (0,)),
    Algorithm("chrysler", chrysler, 8, _in_last_byte),
    Algorithm("vw_mqb", vw_mqb, 8, lambda field: field.byte_indexes == (0,), frozenset(VW_MQB_DATA_IDS)),
    Algorithm("tesla", tesla, 8, lambda field: len(field.byte_indexes) == 1),
    Algorithm("xor", xor, 8, lambda field: len(field.byte_indexes) == 1),
    Algorithm("hkg_can_fd", hkg_can_fd, 16, lambda field: field.byte_indexes == (0, 1)),
    Algorithm("hkg_nibble_sum", hkg_nibble_sum, 4),
    Algorithm("hkg_tcs13", hkg_tcs13, 4, lambda field: field.message_length == 8),
    Algorithm("hkg_whl_spd", hkg_whl_spd, 4, lambda field: field.message_length == 8),
    Algorithm("hkg_crc8", hkg_crc8, 8),
    Algorithm("nibble_sum", nibble_sum, 4),
    Algorithm("nibble_xor", nibble_xor, 4),
    Algorithm("byte_sum", byte_sum, None),
)}

# DBC file name (lower case) -> family, first match wins; the patterns opendbc's dbc.py tells families by.
FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("honda_*", "honda"), ("acura_*", "honda"), ("toyota_*", "toyota"), ("lexus_*", "toyota"),
    ("hyundai_canfd*", "hkg_can_fd"), ("hyundai_*", "hyundai"), ("kia_*", "hyundai"),
    ("vw_mqb*", "vw_mqb"), ("vw_meb*", "vw_mqb"), ("vw_pq*", "xor"), ("subaru_global_*", "subaru"),
    ("chrysler_*", "chrysler"), ("tesla_model3_party*", "tesla"),
)

# Hyundai/Kia classic CAN: the checksum differs per message.
HYUNDAI_BY_ADDRESS: dict[int, str] = {
    0x260: "hkg_nibble_sum",  # EMS16 (panda)
    0x421: "hkg_nibble_sum",  # SCC12 (panda, opendbc create_acc_commands)
    0x394: "hkg_tcs13",  # TCS13 (panda); 339 of 339 frames of the 2019 Kona EV log
    0x386: "hkg_whl_spd",  # WHL_SPD11 (panda); 542 of 542 frames of the 2019 Kona EV log
    0x38D: "hkg_crc8",  # FCA11 (opendbc create_acc_commands)
    # Not in opendbc's tables; measured on the 2019 Kona EV log, every frame on both of its buses.
    0x2B0: "nibble_xor",  # SAS11 (steering angle): 863 of 863 frames
    0x387: "byte_sum",  # WHL_PUL11 (wheel pulses), opendbc's LKAS11 sum: 542 of 542 frames
}


def family_of(dbc_path: str | Path) -> str | None:
    name = Path(dbc_path).name.lower()
    return next((family for pattern, family in FAMILY_PATTERNS if fnmatch.fnmatchcase(name, pattern)), None)


def known(name: str) -> Algorithm:
    """The algorithm called ``name``; ValueError naming the known ones otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown checksum algorithm {name!r}; known: {', '.join(ALGORITHMS)}") from None


def algorithm_for(address: int, field: Field, dbc_path: str | Path | None = None,
                  explicit: str | None = None) -> Algorithm | None:
    """The algorithm of a checksum field: the explicit setting, else the DBC family's, else None (not checked).

    An explicit or family algorithm that cannot apply to this field (another width or place) is None too:
    a wrong guess must show as "not checked", not as a failure on every frame."""
    if explicit:
        algorithm = known(explicit)
        return algorithm if algorithm.applies(address, field) else None
    family = family_of(dbc_path) if dbc_path is not None else None
    if family is None:
        return None
    name = HYUNDAI_BY_ADDRESS.get(address) if family == "hyundai" else family
    algorithm = ALGORITHMS.get(name) if name else None
    return algorithm if algorithm is not None and algorithm.applies(address, field) else None


def matches(algorithm: Algorithm, address: int, field: Field, payloads: Iterable[bytes]) -> tuple[int, int]:
    """(frames whose checksum is what ``algorithm`` computes, frames tried); short frames are left out."""
    hits = tried = 0
    compute = algorithm.compute
    for data in payloads:
        if not field.fits(data):
            continue
        tried += 1
        hits += compute(address, data, field) == field.value(data)
    return hits, tried


def detect_algorithm(address: int, field: Field, payloads: Iterable[bytes], min_share: float = 0.95,
                     min_frames: int = 8) -> str | None:
    """The algorithm that computes the recorded checksum in at least ``min_share`` of the frames (the best one
    if several do), or None.  Fewer than ``min_frames`` frames prove nothing: None."""
    frames = [bytes(data) for data in payloads]
    best: tuple[float, str] | None = None
    for algorithm in ALGORITHMS.values():
        if not algorithm.applies(address, field):
            continue
        hits, tried = matches(algorithm, address, field, frames)
        if tried >= min_frames and hits / tried >= min_share and (best is None or hits / tried > best[0]):
            best = (hits / tried, algorithm.name)
    return best[1] if best else None
