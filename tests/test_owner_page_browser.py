"""The owner's page in a real browser (Debian's chromium driven by playwright), served by a real
`vehicle-agent run` (issue 13).

The world is real: a hard-brake drive from the scenario generator replayed into the agent's buffer (its
driving data waiting to be sent, an incident snapshot kept), and the drive in the owner archive.  The test
pairs with a code from `vehicle-agent owner pair`, grants location at city level, revokes driving and sees
the purge count, exports the incident and verifies the download, opens the trip and checks its plot, adds a
privacy zone, and finally hands the car over ("forget me").  Each page's screenshot goes to
``$OWNER_SCREENSHOTS`` when set (docs/owner/ is made that way), else into the test's temporary directory.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import pytest

from agent.buffer import BatchStore
from agent.cli.common import decoder_from_config
from agent.config import load_config
from agent.export.verify import verify_export
from agent.ledger import Ledger
from agent.owner.archive import OwnerArchive
from agent.owner.recorder import ArchiveRecorder
from agent.ownerpage.config import archive_path
from agent.privacy.config import ConsentConfig
from agent.privacy.gateway import call_direct
from agent.privacy.pseudonym import KEY_FILE
from agent.sources.log import LogSource
from simulator.scenario import build_scenario, write_scenario
from tests.e2e_support import agent_config, run_agent, start_agent, stop_agent

pytestmark = [pytest.mark.owner, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
INCIDENTS = """incidents:
  pre_s: 20
  post_s: 5
  triggers:
    - name: hard_decel
      when: "Vehicle.Acceleration.Longitudinal <= -7"
owner_page: {port: 0}
"""
BUS_MAP = {"can0": "truck", "can1": "gps"}


def _playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (scripts/setup installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the test extra installs it)")
    return sync_playwright


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("owner-world")
    truth = write_scenario(build_scenario("hard-brake", seed=3), base / "drive.log", base / "camera")
    config_path = agent_config(base, None, extra=INCIDENTS)
    state = base / "state"
    state.mkdir(mode=0o700)
    for category in ("driving", "vehicle_health"):  # as `vehicle-agent consent grant` does (ledger included)
        call_direct(state, ConsentConfig(), "consent.grant", {"category": category, "expiry": "7d"})
    replay = run_agent("replay", str(base / "drive.log"), "--config", str(config_path), "--bus-map",
                       "can0=truck,can1=gps", "--buffer", str(state / "buffer.sqlite"), "--json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["incidents"]["snapshots"] == 1
    # The drive in the owner archive, as the live agent's recorder keeps it.
    config = load_config(config_path)
    decoder = decoder_from_config(config)
    archive = OwnerArchive(archive_path(state), clock=lambda: truth["start_time"] + 3600)
    recorder = ArchiveRecorder(archive, decoder.specs)
    for bus, msg in LogSource(base / "drive.log", bus_map=BUS_MAP):
        frame = decoder.decode(msg, bus)
        if frame is not None:
            recorder(frame)
    recorder.flush()
    trips = archive.trips()
    assert len(trips) == 1 and archive.positions(trips[0].id)
    archive.close()
    return {"base": base, "config": config_path, "state": state, "truth": truth}


def _unsent_with(state: Path, category: str) -> int:
    with BatchStore(state / "buffer.sqlite", read_only=True) as store:
        return store.unsent_with(category)


def _page_url(log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"owner page on (http://127\.0\.0\.1:\d+/)", log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError("the agent did not start its owner page:\n" + log.read_text()[-3000:])


def _non_blank_png(data: bytes) -> None:
    from matplotlib.image import imread

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(io.BytesIO(data))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels.std() > 0.01  # not one colour


def test_the_owner_walks_through_their_page(world, tmp_path):
    sync_playwright = _playwright()
    shots = Path(os.environ.get("OWNER_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    state = world["state"]
    driving_waiting = _unsent_with(state, "driving")
    assert driving_waiting > 0
    log = world["base"] / "agent.log"
    agent = start_agent(world["config"], log)
    try:
        url = _page_url(log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)

            # Not paired: the page sends the browser to pairing.
            page.goto(url)
            assert page.url.endswith("/pair")
            page.screenshot(path=str(shots / "pair.png"), full_page=True)
            paired = run_agent("owner", "pair", "--config", str(world["config"]))
            assert paired.returncode == 0, paired.stderr
            code = re.search(r"pairing code: (\d{6})", paired.stdout).group(1)
            page.fill("#code", code)
            page.click("#pair")
            page.wait_for_url(url)
            assert "You share: driving, vehicle_health." in page.inner_text("main")
            assert page.inner_text("#ledger-status").startswith("ledger intact")
            page.screenshot(path=str(shots / "overview.png"), full_page=True)

            # Grant location at city level: in the table.
            page.click("text=Sharing")
            form = page.locator("#grant-location")
            form.locator("select[name=expiry]").select_option("7d")
            form.locator("select[name=level]").select_option("city")
            form.locator("input[name=purpose]").fill("find my parked car")
            form.locator("button").click()
            page.wait_for_selector("#message")
            assert "location shared at city (~10 km) for 7 days" in page.inner_text("#message")
            row = page.locator('tr[data-category="location"]')
            assert row.locator(".state").inner_text() == "granted"
            assert row.locator(".level").inner_text() == "city (~10 km)"
            assert "find my parked car" in row.inner_text()
            page.screenshot(path=str(shots / "sharing.png"), full_page=True)

            # Revoke driving: told what will be purged, then what was.
            page.click("#revoke-driving")
            assert page.inner_text("#will-purge").startswith(f"{driving_waiting} batch")
            page.screenshot(path=str(shots / "revoke.png"), full_page=True)
            page.click("#confirm-revoke")
            purged = page.inner_text("#purged")
            assert purged.startswith(f"Deleted {driving_waiting} unsent batch"), purged
            assert _unsent_with(state, "driving") == 0

            # A privacy zone.
            page.click("text=Sharing")
            page.fill("#zone-add input[name=lat]", "31.2304")
            page.fill("#zone-add input[name=lon]", "121.4737")
            page.fill("#zone-add input[name=radius]", "800")
            page.fill("#zone-add input[name=name]", "home")
            page.click("#zone-add button")
            page.wait_for_selector("#message")
            zones = page.inner_text("#zones")
            assert "home" in zones and "31.23040, 121.47370" in zones and "800 m" in zones

            # What left: the day's changes in words, the ledger verified.
            page.click("text=What left my car")
            text = page.inner_text("main")
            assert "grant location by owner" in text and "revoke driving by owner" in text
            assert f"deleted {driving_waiting} unsent batch(es) of driving" in text
            page.screenshot(path=str(shots / "left.png"), full_page=True)

            # The incident: a one-click signed export, verified, downloaded, verified again here.
            page.click("text=Incidents")
            assert page.inner_text("#fingerprint").startswith("SHA256:")
            page.screenshot(path=str(shots / "incidents.png"), full_page=True)
            page.click("button.export")
            assert page.inner_text("#verification").startswith("Verified")
            with page.expect_download() as download:
                page.click("#download")
            zipped = Path(download.value.path()).read_bytes()
            unpacked = tmp_path / "export"
            zipfile.ZipFile(io.BytesIO(zipped)).extractall(unpacked)
            (folder,) = unpacked.iterdir()
            result = verify_export(folder)
            assert result.ok and result.checked > 3, result.problems

            # The trip: its plot, and its files.
            page.click("text=My trips")
            page.screenshot(path=str(shots / "trips.png"), full_page=True)
            page.click("a.trip-link")
            page.wait_for_load_state("load")  # images included (the page's CSP allows no eval for polling)
            assert page.locator("#trip-plot").evaluate("img => img.complete ? img.naturalWidth : 0") > 300
            plot = page.request.get(url.rstrip("/") + page.locator("#trip-plot").get_attribute("src"))
            _non_blank_png(plot.body())
            gpx = page.request.get(page.url + "/trip.gpx").text()
            assert gpx.count("<trkpt") > 10
            page.screenshot(path=str(shots / "trip.png"), full_page=True)

            # Handing the car over.
            page.click("text=Hand the car over")
            page.screenshot(path=str(shots / "forget.png"), full_page=True)
            page.fill("#confirm", "forget me")
            page.click("#forget")
            assert "Stopped sharing 2 categories" in page.inner_text("#forgotten")
            page.goto(url)
            assert page.url.endswith("/pair")  # logged out
            browser.close()
    finally:
        assert stop_agent(agent) == 0, log.read_text()[-3000:]

    archive = OwnerArchive(archive_path(state))
    assert archive.trips() == []
    archive.close()
    assert not (state / KEY_FILE).exists()  # the next start makes a new key: a new pseudonym
    kinds = [e.kind for e in Ledger.in_dir(state).entries()]
    assert "forget_me" in kinds and kinds.index("forget_me") > kinds.index("purge")
