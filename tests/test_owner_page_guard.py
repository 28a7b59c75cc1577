"""Who gets into the owner's page, and who does not (issue 13): pairing is the only way in.

Driven through the app itself (Flask's test client: the real routes, guard, pairing store and consent
gateway on a real state directory); the browser walk-through is tests/test_owner_page_browser.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.ledger import Ledger
from agent.ownerpage.app import create_app
from agent.ownerpage.backend import OwnerBackend
from agent.ownerpage.config import owner_page_config
from agent.ownerpage.pairing import MAX_ATTEMPTS, Pairing
from agent.privacy.policy import ConsentPolicy
from agent.privacy.store import ConsentStore

pytestmark = pytest.mark.owner

PORT = 8765
HOST = f"127.0.0.1:{PORT}"


@pytest.fixture
def page(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = parse_config(f"state: {{dir: '{state}'}}", base_dir=tmp_path)
    pairing = Pairing(state)
    app = create_app(OwnerBackend(config), pairing, owner_page_config(config), PORT)
    app.testing = True
    return app, pairing, state


class Browser:
    """Flask's test client as a browser at ``remote`` asking for ``host`` (the Host header)."""

    def __init__(self, app, remote: str, host: str) -> None:
        self.client = app.test_client()
        self.client.environ_base["REMOTE_ADDR"] = remote
        self.base_url = f"http://{host}"

    def get(self, path: str, **kwargs):
        return self.client.get(path, base_url=self.base_url, **kwargs)

    def post(self, path: str, **kwargs):
        return self.client.post(path, base_url=self.base_url, **kwargs)

    def set_cookie(self, name: str, value: str) -> None:
        self.client.set_cookie(name, value, domain=self.base_url.split("//")[1].split(":")[0])


def client(app, remote: str = "127.0.0.1", host: str = HOST) -> Browser:
    return Browser(app, remote, host)


def paired(app, pairing):
    browser = client(app)
    answer = browser.post("/pair", data={"code": pairing.new_code()})
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return browser


def csrf_of(browser) -> str:
    html = browser.get("/sharing").get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def granted(state: Path) -> set[str]:
    policy = ConsentPolicy(ConsentStore.in_dir(state))
    return {c for c, g in policy.view.grants.items() if g.active(policy.clock())}


def test_without_pairing_nothing_is_shown_or_changed(page):
    app, _pairing, state = page
    browser = client(app)
    for path in ("/", "/sharing", "/left", "/trips", "/incidents", "/forget"):
        answer = browser.get(path)
        assert answer.status_code == 302 and answer.headers["Location"] == "/pair", path
    answer = browser.post("/sharing/grant", data={"category": "location", "expiry": "7d", "csrf": "x"})
    assert answer.status_code == 403 and "not paired" in answer.get_data(as_text=True)
    assert granted(state) == set()


def test_pairing_grants_a_session_and_the_grant_goes_through_the_policy_into_the_ledger(page):
    app, pairing, state = page
    browser = paired(app, pairing)
    answer = browser.post("/sharing/grant", data={"category": "location", "expiry": "7d", "level": "city",
                                                  "purpose": "find my car", "csrf": csrf_of(browser)})
    assert answer.status_code == 302
    assert granted(state) == {"location"}
    html = browser.get("/sharing").get_data(as_text=True)
    row = re.search(r'<tr data-category="location">(.*?)</tr>', html, re.S).group(1)
    assert "granted" in row and "city (~10 km)" in row and "find my car" in row
    changes = [e for e in Ledger.in_dir(state).entries() if e.kind == "consent_change"]
    assert [(e.fields["change"], e.fields["category"], e.fields["source"]) for e in changes] == \
        [("grant", "location", "owner")]


def test_a_wrong_or_missing_csrf_token_changes_nothing(page):
    app, pairing, state = page
    browser = paired(app, pairing)
    for token in ("", "wrong-token"):
        answer = browser.post("/sharing/grant", data={"category": "driving", "expiry": "7d", "csrf": token})
        assert answer.status_code == 403 and "security token" in answer.get_data(as_text=True)
    assert granted(state) == set()
    assert not [e for e in Ledger.in_dir(state).entries() if e.kind == "consent_change"]


def test_a_cross_origin_request_is_refused_even_with_the_token(page):
    app, pairing, state = page
    browser = paired(app, pairing)
    token = csrf_of(browser)
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        answer = browser.post("/sharing/grant", data={"category": "driving", "expiry": "7d", "csrf": token},
                              headers=headers)
        assert answer.status_code == 403, headers
    assert granted(state) == set()
    # The page itself as origin is fine.
    answer = browser.post("/sharing/grant", data={"category": "driving", "expiry": "7d", "csrf": token},
                          headers={"Origin": f"http://{HOST}"})
    assert answer.status_code == 302 and granted(state) == {"driving"}


def test_a_request_from_another_address_is_refused_when_the_page_is_on_loopback(page):
    app, pairing, _state = page
    code = pairing.new_code()
    phone = client(app, remote="192.168.4.20")
    answer = phone.post("/pair", data={"code": code})
    assert answer.status_code == 403 and "own screen only" in answer.get_data(as_text=True)
    assert phone.get("/").status_code == 403
    # The code was not spent by the refused request: the car's screen can still use it.
    assert client(app).post("/pair", data={"code": code}).status_code == 302


def test_an_unknown_host_name_is_refused(page):
    app, pairing, _state = page
    rebinding = client(app, host=f"evil.example:{PORT}")
    assert rebinding.post("/pair", data={"code": pairing.new_code()}).status_code == 400


def test_a_pairing_code_works_once_and_dies_after_wrong_guesses(page):
    app, pairing, _state = page
    code = pairing.new_code()
    assert client(app).post("/pair", data={"code": code}).status_code == 302
    again = client(app).post("/pair", data={"code": code})
    assert again.status_code == 403 and "no pairing code is waiting" in again.get_data(as_text=True)
    code = pairing.new_code()
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(MAX_ATTEMPTS):
        assert client(app).post("/pair", data={"code": wrong}).status_code == 403
    late = client(app).post("/pair", data={"code": code})
    assert late.status_code == 403 and "Set-Cookie" not in late.headers


def test_a_made_up_session_cookie_is_no_session(page):
    app, _pairing, _state = page
    browser = client(app)
    browser.set_cookie("owner_session", "forged-token-value")
    assert browser.get("/sharing").status_code == 302


def test_the_owner_chooses_how_long_and_how_much_the_archive_keeps(page):
    from agent.owner.archive import OwnerArchive
    from agent.ownerpage.config import archive_path

    app, pairing, state = page
    browser = paired(app, pairing)
    token = csrf_of(browser)
    answer = browser.post("/trips/limits", data={"days": "7", "mb": "2", "csrf": token})
    assert answer.status_code == 302 and "kept 7 days, at most 2 MB" in answer.headers["Location"].replace("+", " ")
    with OwnerArchive(archive_path(state)) as archive:
        assert (archive.retention_days, archive.max_bytes) == (7, 2_000_000)
    answer = browser.post("/trips/limits", data={"days": "0", "mb": "2", "csrf": token})
    assert "retention_days" in answer.headers["Location"]
    assert browser.post("/trips/limits", data={"days": "7", "mb": "2", "csrf": "wrong"}).status_code == 403
    html = browser.get("/trips").get_data(as_text=True)
    assert "at most 2 MB" in html and "for 7 days" in html
