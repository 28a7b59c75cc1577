"""CAN transports of our own, as python-can interfaces (registered under ``can.interface`` in pyproject.toml).

``socketcand_lean`` (``agent.canio.socketcand.LeanSocketcandBus``): a client for socketcand's raw mode that
reads in large chunks and parses bytes in bulk, for the rates where python-can's stock ``socketcand`` client
spends most of the agent's CPU.
"""
