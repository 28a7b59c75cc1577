"""CAN transports of our own, as python-can interfaces (registered under ``can.interface`` in pyproject.toml).

``socketcand_lean`` (``agent.canio.socketcand.LeanSocketcandBus``): a client for socketcand's raw mode that
reads in large chunks and parses bytes in bulk, for the rates where python-can's stock ``socketcand`` client
spends most of the agent's CPU.  A ``socketcand`` bus in the agent's config or on its command line uses
it unless it asks for the stock client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Which python-can interface serves a ``socketcand`` bus: ours unless the bus asks for python-can's own
# (``client: stock`` in a bus's options, ``?client=stock`` on a socketcand:// URL): the fallback, kept working.
SOCKETCAND_CLIENTS = {"lean": "socketcand_lean", "stock": "socketcand"}
DEFAULT_SOCKETCAND_CLIENT = "lean"


def socketcand_client_problem(kwargs: Mapping[str, Any]) -> str | None:
    """Why the ``client`` argument of a bus cannot be used (None when it can, or when there is none)."""
    if "client" not in kwargs:
        return None
    if kwargs.get("interface") != "socketcand":
        return f"client {kwargs['client']!r} applies to interface socketcand only"
    if kwargs["client"] not in SOCKETCAND_CLIENTS:
        return f"client {kwargs['client']!r}: expected one of {', '.join(SOCKETCAND_CLIENTS)}"
    return None


def resolve_socketcand_client(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """python-can ``Bus`` arguments with ``interface: socketcand`` mapped to the chosen client's interface.

    :raises ValueError: a ``client`` the bus cannot use (``socketcand_client_problem``).
    """
    problem = socketcand_client_problem(kwargs)
    if problem is not None:
        raise ValueError(problem)
    resolved = dict(kwargs)
    if resolved.get("interface") == "socketcand":
        resolved["interface"] = SOCKETCAND_CLIENTS[resolved.pop("client", DEFAULT_SOCKETCAND_CLIENT)]
    return resolved
