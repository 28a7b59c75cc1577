"""Fixtures of the reliability suite (issue 7): one session-wide LogBook for every agent process.

The permissions-and-secrets test scans every log line the suite made an agent write, so it runs last
(``pytest_collection_modifyitems`` moves it to the end of the run).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.rig import LogBook

SCAN_LAST = "test_permissions_and_secrets.py"


@pytest.fixture(scope="session")
def logbook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogBook]:
    yield LogBook(tmp_path_factory.mktemp("reliability-logs"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    last = [item for item in items if item.path.name == SCAN_LAST]
    if last:
        items[:] = [item for item in items if item.path.name != SCAN_LAST] + last
