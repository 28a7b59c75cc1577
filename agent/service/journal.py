"""Logging to stderr, in the journal's format when stderr is the journal.

systemd connects a service's stderr to journald and says so in ``$JOURNAL_STREAM``
(``DEVICE:INODE`` of that stream).  There each line starts with its syslog
priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug: sd-daemon(3)),
so that ``journalctl -p warning`` selects by it, and carries no timestamp of its
own (the journal stamps every line).  Every line of a multi-line record (a
traceback) gets the prefix, so none of it is filed at the default priority.
Anywhere else (a terminal, a file, a pipe) the format stays
``TIME LEVEL logger: message``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    """Python logging level -> syslog priority (2 crit, 3 err, 4 warning, 6 info, 7 debug)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def prefix_lines(text: str, priority: int) -> str:
    """``<P>`` in front of every line of ``text``."""
    prefix = f"<{priority}>"
    return "\n".join(prefix + line for line in (text.splitlines() or [""]))


class JournalFormatter(logging.Formatter):
    """``<P>LEVEL logger: message``, on every line of the record (message, traceback, stack)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return prefix_lines(super().format(record), syslog_priority(record.levelno))


def stderr_is_journal(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``$JOURNAL_STREAM`` names the device and inode of ``stream`` (stderr): systemd's own test,
    so that a child whose stderr was redirected elsewhere keeps the plain format."""
    environ = os.environ if environ is None else environ
    value = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        info = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (info.st_dev, info.st_ino)
    except (AttributeError, OSError, ValueError):
        return False


def configure_logging(level: int, stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Root logging to ``stream`` (stderr) at ``level``, unless the root logger has a handler already (as
    ``logging.basicConfig``); returns True when ``stream`` is the journal.

    In the journal's format, Python warnings and uncaught exceptions of other threads go through logging
    too, so that they arrive prefixed (as warning and error) rather than as bare lines.
    """
    stream = sys.stderr if stream is None else stream
    journal = stderr_is_journal(stream, environ)
    root = logging.getLogger()
    if root.handlers:  # configured already (the CLI called in-process, e.g. under pytest): as basicConfig
        return journal
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    if journal:
        logging.captureWarnings(True)
        threading.excepthook = _log_thread_exception
    return journal


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("agent").error("uncaught exception in thread %s", name,
                                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def error_line(text: str, journal: bool, stream: TextIO | None = None) -> None:
    """A one-line error for the user (``PROG COMMAND: error: ...``), at error priority in the journal."""
    stream = sys.stderr if stream is None else stream
    print(prefix_lines(text, 3) if journal else text, file=stream, flush=True)
