"""Where a truncated MF4 file ended: asammdf reads a cut CANedge file without a word, so LogSource asks here
(the data blocks that run past the end of the file, or the record cut off in an unfinalised file)."""

from __future__ import annotations

import struct
from pathlib import Path

MF4_LIST_BLOCKS = {b"##DL", b"##HL", b"##LD"}  # blocks that list data blocks (their links); the rest hold data


class _Cut(Exception):
    pass


def mf4_detail(path: Path) -> str | None:
    """Where an MF4 file ended early, which asammdf reads without a word as far as the data goes: a block of
    a data group that runs past the end of the file, or (an unfinalised file, like a CANedge's, whose last
    data block runs to the end of the file) a record cut off by the end of the file."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    size = len(data)

    def block(address: int) -> tuple[bytes, int, tuple[int, ...]]:
        head = data[address:address + 24]
        if len(head) < 24 or head[:2] != b"##":
            raise _Cut(f"an MF4 block at byte {address} is cut off: the file ends at byte {size}")
        length, count = struct.unpack("<QQ", head[8:24])
        if address + max(length, 24 + 8 * count) > size:
            raise _Cut(f"an MF4 block at byte {address} runs past the end of the file at byte {size}")
        return head[:4], length, struct.unpack_from(f"<{count}Q", data, address + 24)

    unfinished = data[:8] == b"UnFinMF "
    try:
        group = block(64)[2][0]  # the header block follows the 64-byte identification; its first link: groups
        while group:
            _, _, links = block(group)
            record_id_len = data[group + 24 + 8 * len(links)]
            pending = [links[2]] if links[2] else []
            while pending:
                address = pending.pop()
                ident, length, children = block(address)
                if ident in MF4_LIST_BLOCKS:
                    pending.extend(child for child in children if child)
                elif unfinished and ident == b"##DT" and length == 24:  # runs to the end of the file
                    _walk_records(data, address + 24, record_id_len, _record_sizes(block, data, links[1]))
            group = links[0]
    except _Cut as cut:
        return str(cut)
    except (struct.error, IndexError, KeyError):
        return None
    return None


def _record_sizes(block, data: bytes, cg: int) -> dict[int, int | None]:
    """Record id -> record size (None: a variable-length record, its size in a 4-byte prefix)."""
    sizes: dict[int, int | None] = {}
    while cg:
        _, _, links = block(cg)
        at = cg + 24 + 8 * len(links)
        record_id, _, flags = struct.unpack_from("<QQH", data, at)
        samples, invalidation = struct.unpack_from("<II", data, at + 24)
        sizes[record_id] = None if flags & 1 else samples + invalidation
        cg = links[0]
    return sizes


def _walk_records(data: bytes, at: int, id_len: int, sizes: dict[int, int | None]) -> None:
    size = len(data)
    form = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[id_len]
    while at < size:
        start = at
        if at + id_len > size:
            raise _Cut(f"an MF4 record at byte {start} is cut off: the file ends at byte {size}")
        length = sizes[struct.unpack_from(form, data, at)[0]]
        at += id_len
        if length is None:
            if at + 4 > size:
                raise _Cut(f"an MF4 record at byte {start} is cut off: the file ends at byte {size}")
            length = struct.unpack_from("<I", data, at)[0] + 4
        at += length
        if at > size:
            raise _Cut(f"an MF4 record at byte {start} is cut off: the file ends at byte {size}")
