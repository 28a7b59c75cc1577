"""The one way a person's consent command reaches the consent policy, whoever asks (CLI or owner page).

With the agent running, the command goes to it over its control socket (only its own user can connect)
and takes effect from the next frame; with the agent stopped, it is applied to the state files directly,
and the ledger is written exactly as the agent would write it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from agent.control import ControlClient, agent_reachable, control_socket_path
from agent.ledger import Ledger
from agent.privacy import commands
from agent.privacy.config import ConsentConfig
from agent.privacy.policy import ConsentPolicy
from agent.privacy.purge import consent_change_handler
from agent.privacy.store import ConsentStore


def agent_running(state_dir: Path) -> bool:
    socket_path = control_socket_path(state_dir)
    try:
        return agent_reachable(socket_path)
    except PermissionError:
        raise ValueError(f"{socket_path}: permission denied (run this as the agent's user)") from None


def consent_call(state_dir: Path, config: ConsentConfig, cmd: str, request: dict[str, Any]) -> tuple[Any, bool]:
    """(the command's result, whether the running agent applied it)."""
    if agent_running(state_dir):
        return ControlClient(control_socket_path(state_dir)).call(cmd, **request), True
    return call_direct(state_dir, config, cmd, request), False


def call_direct(state_dir: Path, config: ConsentConfig, cmd: str, request: dict[str, Any]) -> Any:
    """Run a consent command on the state files (agent stopped), writing the ledger as the agent would."""
    policy = ConsentPolicy(ConsentStore.in_dir(state_dir), config, clock=time.time)
    if cmd == "consent.show" or cmd == "consent.zones.list":
        return commands.consent_commands(policy)[cmd](**request)
    # Buffered batches are purged by the agent at start-up (purge_ungranted).
    ledger = Ledger.in_dir(state_dir)
    policy.on_change(consent_change_handler(None, None, ledger))
    result = commands.consent_commands(policy)[cmd](**request)
    if not ledger.flush_deferred():  # this process ends now: what the ledger could not take would be lost
        print(f"vehicle-agent: warning: the change is in force, but the ledger ({ledger.path}) could not "
              f"be written; {ledger.deferred} entries are not recorded", file=sys.stderr)
    return result
