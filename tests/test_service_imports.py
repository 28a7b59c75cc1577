"""The service process stays lean: python-can's eager MF4 import (asammdf, pandas, pyarrow) is kept out of ``run``."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.cli.main import keep_mf4_stack_out
from agent.export.signing import FINGERPRINT_FILE, KEY_FILE, fingerprint, load_private_key

pytestmark = pytest.mark.transport

PROBE = """
import sys
sys.argv = ["vehicle-agent", *{argv!r}]
from agent.cli.main import main
try:
    main()
except SystemExit:
    pass
import can
import json
heavy = ("asammdf", "pandas", "pyarrow", "numpy")
print(json.dumps(sorted(name for name in heavy if sys.modules.get(name) is not None)))
print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
"""


def _probe(argv: list[str]) -> tuple[list[str], int]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    return json.loads(out[-2]), int(out[-1])


def test_keep_mf4_stack_out_only_for_the_service_command():
    modules: dict = {}
    assert keep_mf4_stack_out(["-v", "run", "--config", "x.yaml"], modules) and modules == {"asammdf": None}
    for argv in (["replay", "run.asc"], ["-v", "convert", "a.mf4", "b.asc"], [], ["--help"]):
        modules = {}
        assert not keep_mf4_stack_out(argv, modules) and modules == {}
    loaded = {"asammdf": object()}
    assert not keep_mf4_stack_out(["run"], loaded) and loaded["asammdf"] is not None  # never unloaded


def test_a_run_process_loads_python_can_without_the_mf4_stack():
    heavy, rss_kb = _probe(["run", "--help"])
    assert heavy == []
    engineer, engineer_rss_kb = _probe(["convert", "--help"])
    if "asammdf" in engineer:  # installed here (the mf4 extra): the service saves what the engineer's tool loads
        assert {"asammdf", "pandas", "numpy"} <= set(engineer)
        assert engineer_rss_kb - rss_kb > 30_000, (rss_kb, engineer_rss_kb)


def _mapped(pid: int, fragment: str) -> bool:
    return fragment in Path(f"/proc/{pid}/maps").read_text()


CRYPTOGRAPHY_LIB = "cryptography/hazmat/bindings/_rust"  # the shared library `import cryptography...` maps
WEB_STACK_LIB = "markupsafe/_speedups"  # mapped by `import jinja2`, which Flask imports


@pytest.mark.owner
def test_an_idle_service_loads_neither_cryptography_nor_the_web_stack_until_asked(tmp_path):
    """The signing key's fingerprint is remembered beside the key, and the owner page's Flask is imported at
    its first visitor: ~14 MB of the 60 MB budget that a service nobody looks at does not spend."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/PID/maps (Linux)")
    from tests.e2e_support import agent_config, start_agent, stop_agent

    config = agent_config(tmp_path, None, extra="owner_page: {port: 0}\n")
    log = tmp_path / "agent.log"
    for attempt in ("first start: the key is made", "second start: the key exists"):
        process = start_agent(config, log)
        try:
            deadline = time.monotonic() + 60
            while not (found := re.findall(r"owner page on (http://127\.0\.0\.1:\d+/)", log.read_text())) or \
                    len(found) < (1 if attempt.startswith("first") else 2):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            time.sleep(0.5)
            memo = json.loads((tmp_path / "state" / FINGERPRINT_FILE).read_text())
            key = (tmp_path / "state" / KEY_FILE).read_bytes()
            assert memo["key_file_sha256"] == hashlib.sha256(key).hexdigest()
            assert memo["fingerprint"] == fingerprint(load_private_key(tmp_path / "state" / KEY_FILE))
            assert not _mapped(process.pid, WEB_STACK_LIB), attempt
            # Making the key needs cryptography; once it exists, the service never loads it.
            assert _mapped(process.pid, CRYPTOGRAPHY_LIB) == attempt.startswith("first"), attempt
            with urllib.request.urlopen(found[-1], timeout=30) as response:  # the first visitor
                assert response.status == 200 and response.url.endswith("/pair"), response.url
                assert b"<form" in response.read()
            assert _mapped(process.pid, WEB_STACK_LIB)
        finally:
            assert stop_agent(process) == 0, log.read_text()[-3000:]


def test_the_service_modules_import_no_stack_that_only_some_vehicles_use():
    """Diagnostics (udsoncan, can-isotp), the owner page (Flask) and signing (cryptography) are imported
    where they are used, not by the modules the service loads at start."""
    probe = ("import sys; sys.modules['asammdf'] = None\n"
             "import agent.runtime, agent.cli.run, agent.flow.build, agent.flow.sidecars, agent.transport_decode\n"
             "print(sorted({name.split('.')[0] for name in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().replace("'", '"')))
    assert {"agent", "can", "cantools", "paho"} <= loaded  # the probe imported the service
    assert loaded.isdisjoint({"udsoncan", "isotp", "flask", "werkzeug", "jinja2", "cryptography"}), loaded
