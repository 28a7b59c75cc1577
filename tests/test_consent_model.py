"""Consent model, durable versioned store, policy (expiry, ignition, bench), config and network commands."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat

import pytest

from agent.config import load_config
from agent.ledger import Ledger
from agent.model import ALL_CATEGORIES
from agent.privacy.config import ConsentConfig, consent_config
from agent.privacy.consent import DAY, EXPIRY_CHOICES, ConsentError, ConsentState
from agent.privacy.policy import NETWORK, ConsentPolicy
from agent.privacy.remote import handle_remote_command, narrow_config
from agent.privacy.store import ConsentStore
from agent.yamlsrc import ConfigError
from tests.helpers.clock import FakeClock as Clock

pytestmark = pytest.mark.consent

T0 = 1_750_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path) -> ConsentStore:
    return ConsentStore.in_dir(tmp_path / "state")


# -- defaults and rules ------------------------------------------------------------------

def test_default_is_nothing_granted(store, clock):
    policy = ConsentPolicy(store, clock=clock)
    assert policy.version == 0
    assert [c for c in ALL_CATEGORIES if policy.is_granted(c)] == []
    assert not store.path.exists()  # reading the default writes nothing


@pytest.mark.parametrize("category", ["cabin", "unclassified"])
def test_cabin_and_unclassified_can_never_be_granted(store, clock, category):
    policy = ConsentPolicy(store, clock=clock)
    with pytest.raises(ConsentError, match=f"{category} can never be uploaded"):
        policy.grant(category, "7d")
    assert policy.version == 0 and not store.path.exists()


def test_expiry_choices_are_exactly_drive_7d_90d_1y(store, clock):
    assert EXPIRY_CHOICES == ("drive", "7d", "90d", "1y")
    policy = ConsentPolicy(store, clock=clock)
    for bad in ("2y", "30d", "forever", "", "365d"):
        with pytest.raises(ConsentError, match="expiry must be one of drive, 7d, 90d, 1y"):
            policy.grant("driving", bad)
    with pytest.raises(ConsentError, match="unknown category 'gps'"):
        policy.grant("gps", "7d")
    with pytest.raises(ConsentError, match="level applies to location only"):
        policy.grant("driving", "7d", level="city")
    with pytest.raises(ConsentError, match="unknown location level 'exact'"):
        policy.grant("location", "7d", level="exact")


def test_grant_then_expiry_with_injected_clock(store, clock):
    policy = ConsentPolicy(store, clock=clock)
    seen = []
    policy.on_change(seen.append)
    change = policy.grant("location", "90d", purpose="traffic map")
    assert change.version == 1 and change.kind == "grant" and change.purge == frozenset()
    assert policy.level("location") == "city"  # default: the coarsest level
    assert policy.expires_at("location") == T0 + 90 * DAY
    assert policy.is_granted("location") and not policy.is_granted("driving")
    clock.now = T0 + 90 * DAY - 1
    assert policy.is_granted("location") and policy.expire_due() is None
    clock.now = T0 + 90 * DAY
    assert not policy.is_granted("location")  # already off, before anything is recorded
    expired = policy.expire_due()
    assert expired is not None and expired.kind == "expire" and expired.source == "clock"
    assert expired.purge == frozenset({"location"}) and expired.version == 2
    assert [c.version for c in seen] == [1, 2]
    assert policy.changes_since(1) == [expired]
    assert policy.expire_due() is None  # nothing left to expire


def test_store_is_durable_versioned_and_private(store, clock):
    policy = ConsentPolicy(store, clock=clock)
    policy.grant("driving", "7d")
    clock.now += 10
    policy.grant("location", "1y", level="geohash6")
    zone = policy.add_zone(41.41, -92.88, 300, name="home")
    policy.revoke("driving")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    lines = store.path.read_bytes().splitlines()
    assert [json.loads(line)["version"] for line in lines] == [1, 2, 3, 4]
    assert [c.kind for c in store.history()] == ["grant", "grant", "zone_add", "revoke"]
    reloaded = ConsentPolicy(ConsentStore(store.path), clock=clock)
    assert reloaded.version == 4
    assert reloaded.state == policy.state
    assert reloaded.state.zones == (zone,)
    assert reloaded.level("location") == "geohash6" and not reloaded.is_granted("driving")
    # The zone change never carries the centre (it ends up in the ledger).
    assert "41.41" not in json.dumps(store.history()[2].to_json())


def test_torn_last_line_fails_closed_then_recovers(store, clock):
    policy = ConsentPolicy(store, clock=clock)
    policy.grant("driving", "90d")
    policy.grant("location", "90d")
    with open(store.path, "ab") as handle:
        handle.write(b'{"change": {"kind": "revoke", "categ')  # power cut mid-write
    reread = ConsentStore(store.path)
    state = reread.load()
    assert reread.problem and "consent.jsonl:3" in reread.problem
    assert state.version == 2 and state.grants == {}  # fail closed: nothing granted
    policy2 = ConsentPolicy(reread, clock=clock)
    assert not policy2.is_granted("driving")
    seen = []
    policy2.on_change(seen.append)
    policy2.grant("charging", "7d")
    assert [c.kind for c in seen] == ["recover", "grant"]
    assert seen[0].purge >= {"driving", "location"}
    assert [c.version for c in ConsentStore(store.path).history()] == [1, 2, 3, 4]
    assert ConsentStore(store.path).load().grants.keys() == {"charging"}


def _grant_many(path: str, category: str, count: int) -> None:
    policy = ConsentPolicy(ConsentStore(path))
    for _ in range(count):
        policy.grant(category, "7d")


def test_two_writers_never_interleave(store):
    ConsentPolicy(store).grant("driving", "7d")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_grant_many, args=(str(store.path), c, 15)) for c in ("driving", "charging")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    versions = [json.loads(line)["version"] for line in store.path.read_bytes().splitlines()]
    assert versions == list(range(1, 32))
    assert ConsentStore(store.path).load().grants.keys() == {"driving", "charging"}


def test_policy_adopts_changes_written_by_another_process(store, clock):
    agent = ConsentPolicy(store, clock=clock)
    agent.grant("location", "90d", level="round3")
    seen = []
    agent.on_change(seen.append)
    assert agent.tick() == []  # its own write is not news
    ConsentPolicy(ConsentStore(store.path), clock=clock).revoke("location")  # the CLI, agent socket down
    [change] = agent.tick()
    assert change.kind == "reload" and change.purge == frozenset({"location"})
    assert agent.version == 2 and not agent.is_granted("location")
    assert seen == [change]
    assert agent.tick() == [] and agent.reload() is None
    agent.grant("driving", "7d")
    clock.now += 7 * DAY
    [expired] = agent.tick()  # expiry is recorded on the timer even when no frame arrives
    assert expired.kind == "expire" and expired.purge == frozenset({"driving"})


# -- drives --------------------------------------------------------------------------------

def test_drive_grants_end_at_ignition(store, clock):
    policy = ConsentPolicy(store, clock=clock)
    policy.grant("driving", "drive")
    policy.grant("charging", "90d")
    assert policy.expires_at("driving") == T0 + DAY  # a drive grant is capped at one day too
    change = policy.on_ignition()
    assert change is not None and change.kind == "ignition" and change.purge == frozenset({"driving"})
    assert not policy.is_granted("driving") and policy.is_granted("charging")
    assert policy.on_ignition() is None  # nothing more to end


def test_per_drive_location_option(store, clock):
    policy = ConsentPolicy(store, clock=clock)
    policy.grant("location", "90d", level="geohash5")
    policy.grant("driving", "90d")
    policy.set_location_off_at_ignition(True)
    change = policy.on_ignition()
    assert change is not None and change.purge == frozenset({"location"})
    assert not policy.is_granted("location") and policy.is_granted("driving")
    # The option set in the configuration applies even if the owner never switched it on.
    forced = ConsentPolicy(None, ConsentConfig(location_off_at_ignition=True), clock=clock)
    forced.grant("location", "7d")
    assert forced.on_ignition().purge == frozenset({"location"})


# -- bench mode -----------------------------------------------------------------------------

def test_bench_mode_grants_everything_and_changes_nothing(store, clock):
    policy = ConsentPolicy(store, clock=clock, grant_all=True)
    assert all(policy.is_granted(c) for c in ALL_CATEGORIES)
    assert policy.view.bench and policy.level("location") is None  # full precision
    with pytest.raises(ConsentError, match="bench mode"):
        policy.grant("driving", "7d")
    assert policy.on_ignition() is None and policy.expire_due(T0 + 10 * 365 * DAY) is None
    assert not store.path.exists()


# -- configuration --------------------------------------------------------------------------

def write_config(tmp_path, consent_yaml: str):
    path = tmp_path / "agent.yaml"
    path.write_text("vehicle:\n  id: truck-1\nconsent:\n" + consent_yaml)
    return path


def test_config_refuses_cabin_with_file_and_line(tmp_path):
    path = write_config(tmp_path, "  profile: china\n  grantable:\n    - driving\n    - cabin\n")
    with pytest.raises(ConfigError) as info:
        consent_config(load_config(path))
    assert str(info.value) == f"{path}:7: consent.grantable[1]: cabin can never be uploaded (China profile); remove it"


@pytest.mark.parametrize(("yaml", "line", "message"), [
    ("  grantable: [unclassified]\n", 4, "consent.grantable[0]: unclassified can never be uploaded"),
    ("  profile: eu\n", 4, "consent.profile: must be one of 'china'"),
    ("  max_expiry: 2y\n", 4, "consent.max_expiry: must be one of 'drive' | '7d' | '90d' | '1y'"),
    ("  grants: {location: 90d}\n", 4, "consent.grants: unknown key"),
])
def test_config_errors_name_the_line(tmp_path, yaml, line, message):
    path = write_config(tmp_path, yaml)
    with pytest.raises(ConfigError) as info:
        consent_config(load_config(path))
    assert str(info.value).startswith(f"{path}:{line}: {message}")


def test_config_only_narrows(tmp_path, clock):
    path = write_config(tmp_path, "  grantable: [driving, location]\n  max_expiry: 7d\n"
                                  "  finest_location_level: geohash5\n")
    config = consent_config(load_config(path))
    assert config == ConsentConfig(grantable=["driving", "location"], max_expiry="7d",
                                   finest_location_level="geohash5")
    policy = ConsentPolicy(None, config, clock=clock)
    with pytest.raises(ConsentError, match="charging is not grantable on this vehicle"):
        policy.grant("charging", "7d")
    with pytest.raises(ConsentError, match="longer than this vehicle allows"):
        policy.grant("driving", "90d")
    with pytest.raises(ConsentError, match="finer than this vehicle allows"):
        policy.grant("location", "7d", level="round3")
    # A grant stored under a wider configuration is narrowed when read under this one.
    state = ConsentPolicy(None, clock=clock)
    state.grant("location", "1y", level="round3")
    state.grant("charging", "1y")
    narrowed = ConsentPolicy(None, config, clock=clock, state=state.state)
    assert narrowed.level("location") == "geohash5"
    assert narrowed.expires_at("location") == T0 + 7 * DAY
    assert not narrowed.is_granted("charging")


def test_apply_config_narrowing_purges(clock):
    policy = ConsentPolicy(None, clock=clock)
    policy.grant("location", "90d", level="round3")
    policy.grant("driving", "90d")
    change = policy.apply_config(ConsentConfig(grantable=["location"], finest_location_level="city"))
    assert change is not None and change.purge == frozenset({"location", "driving"})
    assert policy.level("location") == "city" and not policy.is_granted("driving")
    assert policy.apply_config(policy.config) is None


# -- the network can only narrow ----------------------------------------------------------------

def test_network_cannot_grant(tmp_path, clock, caplog):
    policy = ConsentPolicy(None, clock=clock)
    ledger = Ledger(tmp_path / "ledger.jsonl", clock)
    payload = json.dumps({"action": "grant", "category": "location", "expiry": "1y", "level": "round3",
                          "vin": "LFV2A21K6A4001234"}).encode()
    with caplog.at_level(logging.WARNING):
        accepted, reason = handle_remote_command(payload, policy, ledger)
    assert not accepted and "only narrow" in reason
    assert not policy.is_granted("location") and policy.version == 0
    assert "refused consent command from the network" in caplog.text and "action=grant" in caplog.text
    assert "LFV2A21K6A4001234" not in caplog.text
    [entry] = ledger.entries()
    assert entry.kind == "remote_refused" and entry.fields["category"] == "location"
    assert "LFV2A21K6A4001234" not in ledger.path.read_text()
    with pytest.raises(ConsentError, match="network cannot grant"):
        policy.grant("location", "7d", source=NETWORK)


def test_network_can_narrow(clock, caplog):
    policy = ConsentPolicy(None, clock=clock)
    policy.grant("location", "90d", level="geohash6")
    policy.grant("driving", "90d")
    assert handle_remote_command(b'{"action": "narrow", "category": "location", "level": "round3"}', policy)[0] \
        is False  # finer = wider: refused
    assert policy.level("location") == "geohash6"
    assert handle_remote_command(b'{"action": "narrow", "category": "location", "level": "city"}', policy) == \
        (True, "location narrowed to city")
    assert policy.level("location") == "city"
    later = T0 + 200 * DAY
    assert not handle_remote_command(json.dumps({"action": "narrow", "category": "driving",
                                                 "expires_at": later}).encode(), policy)[0]
    assert handle_remote_command(json.dumps({"action": "narrow", "category": "driving",
                                             "expires_at": T0 + DAY}).encode(), policy)[0]
    assert policy.expires_at("driving") == T0 + DAY
    assert handle_remote_command(b'{"action": "revoke", "category": "driving"}', policy) == (True, "driving revoked")
    assert handle_remote_command(b'{"action": "revoke", "category": "driving"}', policy)[0]  # idempotent
    for bad in (b"not json", b"[1, 2]", b'{"action": "revoke", "category": "gps"}',
                b'{"action": "zone_remove", "category": "location"}', b"{" + b" " * 5000 + b"}"):
        assert handle_remote_command(bad, policy)[0] is False
    assert policy.is_granted("location")


def test_narrow_config_never_widens():
    local = ConsentConfig(grantable=["driving", "location"], max_expiry="90d", finest_location_level="geohash6")
    wider = narrow_config(local, {"grantable": ["driving", "location", "charging", "cabin"], "max_expiry": "1y",
                                  "finest_location_level": "round3", "location_off_at_ignition": False})
    assert wider == local
    narrower = narrow_config(local, {"grantable": ["location"], "max_expiry": "7d",
                                     "finest_location_level": "city", "location_off_at_ignition": True})
    assert narrower == ConsentConfig(grantable=["location"], max_expiry="7d", finest_location_level="city",
                                     location_off_at_ignition=True)


def test_state_file_refuses_forged_cabin_grant(store, clock):
    # Someone edits the state file by hand to grant cabin: the record is unreadable, so fail closed.
    policy = ConsentPolicy(store, clock=clock)
    policy.grant("driving", "7d")
    record = json.loads(store.path.read_bytes().splitlines()[-1])
    record["version"] = record["change"]["version"] = record["state"]["version"] = 2
    record["state"]["grants"]["cabin"] = {**record["state"]["grants"]["driving"], "category": "cabin"}
    with open(store.path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    state = ConsentStore(store.path).load()
    assert "cabin" not in state.grants and state.grants == {}
    assert os.path.getsize(store.path) > 0 and isinstance(state, ConsentState)


def test_batch_allowed_across_a_reload(store, clock):
    from agent.privacy.decision import batch_allowed

    agent = ConsentPolicy(store, clock=clock)
    agent.grant("driving", "90d")
    agent.grant("location", "90d")
    cli = ConsentPolicy(ConsentStore(store.path), clock=clock)
    cli.revoke("location")
    cli.grant("charging", "7d")
    [reload] = agent.tick()
    assert (reload.version, reload.detail["from_version"]) == (4, 2)
    assert batch_allowed(agent, ["driving"], 2) and batch_allowed(agent, ["driving"], 1)
    assert not batch_allowed(agent, ["location"], 2) and not batch_allowed(agent, ["driving", "location"], 2)
    assert batch_allowed(agent, ["charging"], 4)
    restarted = ConsentPolicy(ConsentStore(store.path), clock=clock)
    assert not batch_allowed(restarted, ["driving"], 2)  # no history back to version 2: fail closed
    assert batch_allowed(restarted, ["driving"], 4)
    assert not batch_allowed(restarted, ["cabin"], 4) and not batch_allowed(restarted, [], 4)


@pytest.mark.parametrize("purpose", ["send to 1FUJGLDR9CLBP8834", "home is 31.230416,121.473701"])
def test_a_purpose_holding_a_personal_value_is_refused_at_grant_time(store, clock, purpose):
    policy = ConsentPolicy(store, clock=clock)
    with pytest.raises(ConsentError, match="personal value"):
        policy.grant("driving", "7d", purpose=purpose)
    assert policy.version == 0 and not policy.is_granted("driving")
