"""The socketcand raw-mode protocol as python-can's stock ``socketcand`` client speaks it.

(https://github.com/linux-can/socketcand.)  The server greets with ``< hi >``;
the client sends ``< open CHANNEL >`` and ``< rawmode >`` and expects
``< ok >`` to each, read with one ``recv`` apiece and compared exactly.  Then
the server streams ``< frame ID SEC.USEC HEXDATA >`` (standard ids as 3 hex
digits, extended as 8: the client tells them apart by the id's width) and
``< error ID SEC.USEC >``; the client sends ``< send ID DLC B0 B1 ... >``.
The client has no remote or CAN FD frames, so those are refused
(``UnsupportedFrameError``), never mangled.
"""

from __future__ import annotations

import ipaddress
import time

import can

_LOOPBACK_NAMES = {"localhost": "127.0.0.1"}


class UnsupportedFrameError(ValueError):
    """A frame the socketcand raw protocol cannot carry; ``kind`` is "remote frames" or "CAN FD frames"."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"socketcand raw mode (python-can client) cannot carry {kind}")
        self.kind = kind


def loopback_host(host: str) -> str:
    """The numeric loopback address for ``host``; ValueError for anything else."""
    numeric = _LOOPBACK_NAMES.get(host.lower(), host)
    try:
        address = ipaddress.ip_address(numeric)
    except ValueError:
        raise ValueError(f"socketcand server: host {host!r} is not an IP address; only loopback is allowed") from None
    if not address.is_loopback:
        raise ValueError(f"socketcand server: refusing to bind {host}: only loopback (127.0.0.1, ::1) is allowed")
    return numeric


def frame_line(msg: can.Message, timestamp: float) -> bytes:
    """One server-to-client line for ``msg`` in the format python-can's client parses."""
    if msg.is_error_frame:
        return f"< error {msg.arbitration_id & 0x1FFFFFFF:08X} {timestamp:.6f} >".encode("ascii")
    if msg.is_remote_frame:
        raise UnsupportedFrameError("remote frames")
    if msg.is_fd:
        raise UnsupportedFrameError("CAN FD frames")
    ident = f"{msg.arbitration_id & 0x1FFFFFFF:08X}" if msg.is_extended_id else f"{msg.arbitration_id & 0x7FF:03X}"
    return f"< frame {ident} {timestamp:.6f} {bytes(msg.data).hex().upper()} >".encode("ascii")


def parse_send(body: str) -> can.Message:
    """Parse the body of ``< send ID DLC B0 B1 ... >`` (without the brackets and keyword)."""
    parts = body.split()
    if len(parts) < 2:
        raise ValueError(f"malformed send {body!r}: expected ID DLC BYTES")
    ident, dlc = int(parts[0], 16), int(parts[1], 16)
    data = bytes(int(part, 16) for part in parts[2:])
    if dlc != len(data) or dlc > 8:
        raise ValueError(f"malformed send {body!r}: dlc {dlc} but {len(data)} data bytes")
    extended = len(parts[0]) > 3 or ident > 0x7FF
    if ident > (0x1FFFFFFF if extended else 0x7FF):
        raise ValueError(f"malformed send {body!r}: id out of range")
    return can.Message(arbitration_id=ident, is_extended_id=extended, data=data, timestamp=time.time(), is_rx=True)
