"""Client side of the control socket (used by ``vehicle-agent consent`` and later ``status``/``reload``)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from agent.control.server import MAX_LINE


class ControlError(ValueError):
    """The agent answered with an error (its message is meant for the user)."""


class ControlClient:
    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, cmd: str, **args: Any) -> Any:
        """Send one command, return its result; raises ControlError for an error answer and
        OSError (PermissionError, ConnectionRefusedError, FileNotFoundError) when unreachable."""
        request = json.dumps({"cmd": cmd, "args": args}, separators=(",", ":")).encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(str(self.path))
            sock.sendall(request)
            with sock.makefile("rb") as reader:
                line = reader.readline(MAX_LINE + 1)
        if not line:
            raise ControlError("the agent closed the connection without answering")
        try:
            response = json.loads(line)
        except ValueError:
            raise ControlError("the agent sent an unreadable answer") from None
        if not response.get("ok"):
            raise ControlError(str(response.get("error") or "the agent refused the command"))
        return response.get("result")


def agent_reachable(path: str | Path) -> bool:
    """True when an agent listens on ``path``; False when there is no socket or nobody behind it.
    A socket owned by another user raises PermissionError (do not fall back to editing files then)."""
    path = Path(path)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


__all__ = ["ControlClient", "ControlError", "agent_reachable"]
