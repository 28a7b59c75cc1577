"""Exit statuses of ``vehicle-agent`` (and ``vehicle-sim``), and which failure gets which.

The systemd unit restarts the service on every failure except a configuration
error (``RestartPreventExitStatus=2``): a bad YAML line stays bad, while a
full disk, a buffer locked by another process or a socket still held by the
previous instance may be gone five seconds later.  A CAN bus that cannot be
opened is not a failure at all: the agent runs on and retries it.

==  =====================================================================================
0   done (after SIGTERM: open batches closed into the buffer)
1   an unexpected error (a bug): the traceback is in the log; systemd restarts the agent
2   configuration error: bad YAML, an invalid value, a missing DBC, an unsafe state
    directory, a bus that can never work (not local, unknown interface), a bad command
    line; systemd does not restart it
75  temporary failure (EX_TEMPFAIL): disk full or failing, the buffer locked by another
    process, a socket still held by another agent; systemd restarts the agent
130 interrupted (Ctrl-C)
==  =====================================================================================
"""

from __future__ import annotations

import errno
import sqlite3

EXIT_OK = 0
EXIT_SOFTWARE = 1
EXIT_CONFIG = 2
EXIT_TEMPFAIL = 75
EXIT_INTERRUPTED = 130

EPILOG = """\
exit status:
  0    stopped cleanly (SIGTERM/SIGINT: open batches are closed into the buffer)
  1    unexpected error (a bug; the traceback is in the log): systemd restarts the agent
  2    configuration error (bad YAML, invalid value, missing file, unsafe state directory,
       a bus that can never work): systemd does not restart it (RestartPreventExitStatus=2)
  75   temporary failure (disk full, buffer locked, a socket held by another agent):
       systemd restarts the agent
A CAN bus that cannot be opened yet, or that goes away, is no failure: the agent keeps
running, retries it with backoff (1 s doubling to 60 s) and shows it in `vehicle-agent
status` as "waiting: REASON, retry in N s"."""

# Operating-system errors that may be gone on the next try: resources, the network, devices, locks.
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EIO", "EAGAIN", "EBUSY", "ETXTBSY", "EINTR", "ENOMEM", "ENOBUFS", "EMFILE", "ENFILE",
    "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ETIMEDOUT", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH",
    "ENETDOWN", "ENETRESET", "EADDRINUSE", "EADDRNOTAVAIL", "ENODEV", "ENXIO", "EPIPE", "ESTALE", "ENOLCK",
) if hasattr(errno, name))

# SQLite primary result codes of the same kind: BUSY, LOCKED, NOMEM, IOERR, FULL, PROTOCOL.
TRANSIENT_SQLITE_CODES = frozenset({5, 6, 7, 10, 13, 15})


def is_transient(exc: BaseException) -> bool:
    """True when retrying later may succeed: the exception says so (``transient = True``), or it is (or was
    raised from) an OS or SQLite error of a kind that passes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        flag = getattr(current, "transient", None)
        if flag is not None:
            return bool(flag)
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None:
                return (code & 0xFF) in TRANSIENT_SQLITE_CODES
            return isinstance(current, sqlite3.OperationalError)
        if isinstance(current, OSError):
            if isinstance(current, (TimeoutError, ConnectionError)):
                return True
            if current.errno in TRANSIENT_ERRNOS:
                return True
        current = current.__cause__
    return False


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an exception that ended a command (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if is_transient(exc):
        return EXIT_TEMPFAIL
    if isinstance(exc, (ValueError, OSError)):
        return EXIT_CONFIG
    return EXIT_SOFTWARE
