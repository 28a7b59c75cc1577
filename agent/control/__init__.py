"""Local control of the running agent: a Unix socket only its owner can use (JSON lines)."""

from agent.control.client import ControlClient, ControlError, agent_reachable
from agent.control.registry import CommandRegistry
from agent.control.server import CONTROL_SOCKET, ControlServer, control_socket_path

__all__ = ["CONTROL_SOCKET", "CommandRegistry", "ControlClient", "ControlError", "ControlServer",
           "agent_reachable", "control_socket_path"]
