"""Fixtures of the leak suite: a LogBook for the agent and simulator processes, and a cleanup stack.

``mosquitto`` (a real broker on a free loopback port) comes from tests/conftest.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.receiver.client import Receiver
from tests.broker import MosquittoBroker
from tests.leak.support import Sniffer
from tests.reliability.rig import LogBook


@pytest.fixture(scope="session")
def logbook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogBook]:
    yield LogBook(tmp_path_factory.mktemp("leak-logs"))


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    """Processes and clients registered here are stopped at the end of the test, pass or fail."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def subscribers(mosquitto: MosquittoBroker, tmp_path: Path, cleanup: contextlib.ExitStack
                ) -> tuple[Receiver, Sniffer]:
    """The reference receiver (its database in tmp_path) and the sniffer, both subscribed with a persistent
    session while the broker is up: stop and start the broker afterwards and nothing published meanwhile
    is lost for them."""
    receiver = Receiver(mosquitto.host, mosquitto.port, tmp_path / "receiver.sqlite", client_id="leak-receiver")
    receiver.start()
    cleanup.callback(receiver.stop)
    sniffer = Sniffer(mosquitto.host, mosquitto.port).start()
    cleanup.callback(sniffer.stop)
    return receiver, sniffer
