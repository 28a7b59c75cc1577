"""The owner's data-access request (issue 13): `vehicle-sim cloud export` writes what the backend holds about
one car, `vehicle-agent ledger reconcile` compares it with the car's own ledger by payload SHA-256.

The data is real: the truck log is replayed into the agent's buffer, the agent (its own process) uploads
through a real Mosquitto to the reference receiver and writes its ledger as it goes.  That is done once for
the module; every test works on its own copy of the receiver database and the state directory."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from agent.buffer import BatchStore
from agent.cli.main import main as agent_cli
from agent.ledger import Ledger
from agent.reconcile import ExportError, read_export, reconcile_dir
from agent.timespec import iso_local
from simulator.cli import main as vehicle_sim
from simulator.receiver import ReceiverStore
from simulator.receiver.access import export_vehicle
from simulator.receiver.client import Receiver
from tests.broker import MosquittoBroker
from tests.e2e_support import TRUCK_LOG, agent_config, grant, run_agent, start_agent, stop_agent, store_samples
from tests.uplink_support import fill_store, store_as_received, wait_until

pytestmark = pytest.mark.owner

GRANTS = {"vehicle_health": None, "driving": None, "location": "round3"}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory, shared_data) -> Path:
    """A real upload: ``receiver.sqlite`` and the agent's ``state`` (with its ledger) in the returned dir."""
    base = tmp_path_factory.mktemp("uploaded")
    broker = MosquittoBroker(base / "mosquitto")
    broker.start()
    try:
        config = agent_config(base, broker.port, batch_age=2.0)
        grant(base / "state", GRANTS)
        buffer = base / "state" / "buffer.sqlite"
        result = run_agent("replay", str(shared_data / TRUCK_LOG), "--config", str(config), "--buffer", str(buffer))
        assert result.returncode == 0, result.stderr
        _samples, batches = store_samples(buffer)
        assert batches > 5
        receiver = Receiver(broker.host, broker.port, base / "receiver.sqlite")
        receiver.start()
        agent = start_agent(config, base / "agent.log")
        try:
            assert receiver.wait_for(batches=batches, timeout=60), (base / "agent.log").read_text()[-3000:]
            ledger = Ledger.in_dir(base / "state", repair=False)
            # The ledger entry is written once the PUBACK is in: wait for all of them.
            assert wait_until(lambda: sum(e.kind == "upload" for e in ledger.entries()) >= batches, 30)
        finally:
            assert stop_agent(agent) == 0, (base / "agent.log").read_text()[-3000:]
            receiver.stop()
    finally:
        broker.stop()
    return base


@pytest.fixture
def world(uploaded, tmp_path) -> dict:
    """This test's copy: the receiver DB, the state dir, the vehicle id and what the DB and ledger hold."""
    db = tmp_path / "receiver.sqlite"
    shutil.copyfile(uploaded / "receiver.sqlite", db)
    state = tmp_path / "state"
    shutil.copytree(uploaded / "state", state)
    with sqlite3.connect(db) as connection:
        vehicles = [v for (v,) in connection.execute("SELECT DISTINCT vehicle FROM batches")]
    assert len(vehicles) == 1
    uploads = [e for e in Ledger.in_dir(state, repair=False).entries() if e.kind == "upload"]
    return {"db": db, "state": state, "vehicle": vehicles[0], "uploads": uploads, "tmp": tmp_path}


def db_batches(db: Path, vehicle: str) -> dict[str, tuple]:
    """payload SHA-256 -> (boot_id, seq, stream, samples) of the vehicle's batches in the receiver DB."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT payload_sha256, boot_id, seq, stream, samples FROM batches "
                                  "WHERE vehicle=?", (vehicle,)).fetchall()
    return {sha: (boot_id, seq, stream, samples) for sha, boot_id, seq, stream, samples in rows}


def ingest(db: Path, shared_data: Path, tmp_path: Path, vehicle: str, boot_id: str, limit_rows: int = 3000,
           count: int | None = None) -> list:
    """Real batches of the routed Kona log (the first ``count``), made for ``vehicle`` and stored in the receiver
    DB as the receiver stores what it gets."""
    with BatchStore(tmp_path / f"forge-{boot_id}.sqlite", synchronous="NORMAL") as buffer:
        ids = fill_store(buffer, shared_data, boot_id=boot_id, limit_rows=limit_rows, vehicle=vehicle)
        stored = sorted(buffer.pending(len(ids)), key=lambda b: b.seq)[:count]
    store = ReceiverStore(db)
    try:
        store_as_received(store, vehicle, stored)
    finally:
        store.close()
    return stored


def export(world: dict, name: str = "access", vehicle: str | None = None) -> tuple[int, Path]:
    out = world["tmp"] / name
    code = vehicle_sim(["cloud", "export", "--vehicle", vehicle or world["vehicle"], "--out", str(out),
                        "--db", str(world["db"])])
    return code, out


def reconcile_json(world: dict, out: Path, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = agent_cli(["ledger", "reconcile", str(out), "--state", str(world["state"]), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_an_exact_backend_holds_every_batch_that_left_and_nothing_else(world, capsys):
    code, out = export(world)
    assert code == 0
    held = db_batches(world["db"], world["vehicle"])
    ledger_shas = {e.fields["sha256"] for e in world["uploads"]}
    assert len(held) == len(ledger_shas) == len(world["uploads"]) > 5
    assert set(held) == ledger_shas  # the receiver's payload hash is the ledger's, batch for batch

    lines = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    assert {line["payload_sha256"] for line in lines} == ledger_shas
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vehicle"] == world["vehicle"]
    assert manifest["counts"] == {"batches": len(held), "samples": sum(s for *_, s in held.values())}
    assert manifest["files"]["batches.jsonl"]["sha256"] == sha256_file(out / "batches.jsonl")
    assert manifest["files"]["samples.csv"]["sha256"] == sha256_file(out / "samples.csv")

    code, result = reconcile_json(world, out, capsys)
    assert code == 0
    assert result["counts"] == {"held": len(held), "missing": 0, "fabricated": 0, "unverifiable": 0,
                                "repeated_uploads": 0}
    assert {m["batch"]["payload_sha256"] for m in result["held"]} == ledger_shas
    assert all(m["upload"]["sha256"] == m["batch"]["payload_sha256"] for m in result["held"])
    assert agent_cli(["ledger", "reconcile", str(out), "--state", str(world["state"])]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"held by the backend: {len(held)} batches; left the car but not held: 0; held but never left this car: 0")


def test_a_batch_the_backend_lost_is_missing(world, capsys):
    held = db_batches(world["db"], world["vehicle"])
    upload = world["uploads"][len(world["uploads"]) // 2]
    sha = upload.fields["sha256"]
    boot_id, seq, _stream, _samples = held[sha]
    with sqlite3.connect(world["db"]) as connection:
        for table in ("batches", "samples"):
            connection.execute(f"DELETE FROM {table} WHERE vehicle=? AND boot_id=? AND seq=?",
                               (world["vehicle"], boot_id, seq))
    assert export(world)[0] == 0

    code, result = reconcile_json(world, world["tmp"] / "access", capsys)
    assert code == 1
    assert result["counts"]["held"] == len(held) - 1
    assert (result["counts"]["missing"], result["counts"]["fabricated"]) == (1, 0)
    missing = result["missing"][0]
    assert (missing["sha256"], missing["batch"], missing["stream"], missing["bytes"]) == (
        sha, upload.fields["batch"], upload.fields["stream"], upload.fields["bytes"])

    assert agent_cli(["ledger", "reconcile", str(world["tmp"] / "access"), "--state", str(world["state"])]) == 1
    text = capsys.readouterr().out
    assert "left the car but not held: 1; held but never left this car: 0" in text
    assert f"batch {upload.fields['batch']} ({upload.fields['stream']}), {iso_local(upload.fields['first'])} .. " \
           f"{iso_local(upload.fields['last'])}, {upload.fields['bytes']} bytes" in text


def test_a_batch_this_car_never_sent_is_fabricated(world, shared_data, capsys):
    before = db_batches(world["db"], world["vehicle"])
    forged = ingest(world["db"], shared_data, world["tmp"], world["vehicle"], "boot-forged", count=1)
    assert len(forged) == 1  # one real batch under this car's name that never left it
    assert export(world)[0] == 0

    code, result = reconcile_json(world, world["tmp"] / "access", capsys)
    assert code == 1
    assert result["counts"] == {"held": len(before), "missing": 0, "fabricated": 1, "unverifiable": 0,
                                "repeated_uploads": 0}
    fabricated = result["fabricated"][0]
    assert (fabricated["boot_id"], fabricated["seq"], fabricated["stream"]) == ("boot-forged", forged[0].seq,
                                                                                forged[0].stream)
    assert fabricated["payload_sha256"] == hashlib.sha256(forged[0].payload).hexdigest()

    assert agent_cli(["ledger", "reconcile", str(world["tmp"] / "access"), "--state", str(world["state"])]) == 1
    text = capsys.readouterr().out
    assert "left the car but not held: 0; held but never left this car: 1" in text
    assert f"boot boot-forged seq {forged[0].seq} ({forged[0].stream}), received " in text


def test_the_export_of_one_vehicle_holds_exactly_its_batches(world, shared_data):
    other = "another-vehicle-7"
    forged = ingest(world["db"], shared_data, world["tmp"], other, "boot-other")
    assert len(forged) > 1
    ours, theirs = db_batches(world["db"], world["vehicle"]), db_batches(world["db"], other)
    assert set(theirs) == {hashlib.sha256(b.payload).hexdigest() for b in forged}

    for vehicle, expected in ((world["vehicle"], ours), (other, theirs)):
        summary = export_vehicle(world["db"], vehicle, world["tmp"] / f"access-{vehicle}")
        out = summary.out_dir
        lines = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
        assert summary.batches == len(lines) == len(expected)
        assert {line["vehicle"] for line in lines} == {vehicle}
        assert {line["payload_sha256"]: (line["boot_id"], line["seq"], line["stream"], line["samples"])
                for line in lines} == expected
        with open(out / "samples.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert summary.samples == len(rows) == sum(s for *_, s in expected.values())
        assert {row["vehicle"] for row in rows} == {vehicle}
        with sqlite3.connect(world["db"]) as connection:
            (in_db,) = connection.execute("SELECT COUNT(*) FROM samples WHERE vehicle=?", (vehicle,)).fetchone()
        assert len(rows) == in_db
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"] == {"batches": len(expected), "samples": in_db}
        assert summary.batches_sha256 == manifest["files"]["batches.jsonl"]["sha256"] == \
            sha256_file(out / "batches.jsonl")
        assert summary.samples_sha256 == manifest["files"]["samples.csv"]["sha256"] == sha256_file(out / "samples.csv")
    # The car's own ledger against its own export: the other vehicle's batches are not in it.
    result = reconcile_dir(world["tmp"] / f"access-{world['vehicle']}", world["state"])
    assert (len(result.held), len(result.missing), len(result.fabricated)) == (len(ours), 0, 0)


def test_a_tampered_samples_file_is_named(world, capsys):
    assert export(world)[0] == 0
    samples = world["tmp"] / "access" / "samples.csv"
    lines = samples.read_text().splitlines(keepends=True)
    del lines[len(lines) // 2]  # one sample taken out of what the owner is shown
    samples.write_text("".join(lines))
    capsys.readouterr()
    assert agent_cli(["ledger", "reconcile", str(samples.parent), "--state", str(world["state"])]) == 2
    error = capsys.readouterr().err
    assert f"{samples}: SHA-256 {sha256_file(samples)} differs from the manifest's" in error
    with pytest.raises(ExportError, match=r"samples\.csv"):
        read_export(samples.parent)


def test_broken_json_is_named_by_file_and_line_and_a_missing_dir_is_bad_input(world, capsys):
    assert export(world)[0] == 0
    out = world["tmp"] / "access"
    lines = (out / "batches.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"
    (out / "batches.jsonl").write_text("".join(lines))
    manifest = json.loads((out / "manifest.json").read_text())  # re-hashed: only the JSON is wrong now
    manifest["files"]["batches.jsonl"]["sha256"] = sha256_file(out / "batches.jsonl")
    (out / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert agent_cli(["ledger", "reconcile", str(out), "--state", str(world["state"])]) == 2
    assert f"{out / 'batches.jsonl'}:3: broken JSON" in capsys.readouterr().err
    assert agent_cli(["ledger", "reconcile", str(world["tmp"] / "nowhere"), "--state", str(world["state"])]) == 2
    assert "no such directory" in capsys.readouterr().err
    (out / "batches.jsonl").unlink()
    assert agent_cli(["ledger", "reconcile", str(out), "--state", str(world["state"])]) == 2
    assert "no batches.jsonl" in capsys.readouterr().err


def test_a_non_empty_out_dir_is_refused(world, capsys):
    out = world["tmp"] / "access"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert export(world)[0] == 2
    assert f"--out {out}: directory is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_an_unknown_vehicle_exits_1_and_says_how_many_the_db_holds(world, capsys):
    capsys.readouterr()
    code, out = export(world, vehicle="no-such-car")
    assert code == 1
    assert f"no batches for vehicle no-such-car in DB {world['db']} (it holds batches of 1 vehicle)" in \
        capsys.readouterr().err
    assert not out.exists()


def test_the_owner_page_compares_the_backend_export_with_the_ledger(world, shared_data):
    """The same comparison on the owner's page: the three files of the backend's export uploaded in a
    paired browser session; counts shown for an exact backend, and for one holding a forged batch."""
    import io
    import re

    from agent.config import parse_config
    from agent.ownerpage.app import create_app
    from agent.ownerpage.backend import OwnerBackend
    from agent.ownerpage.config import owner_page_config
    from agent.ownerpage.pairing import Pairing

    config = parse_config(f"state: {{dir: '{world['state']}'}}", base_dir=world["tmp"])
    pairing = Pairing(world["state"])
    app = create_app(OwnerBackend(config), pairing, owner_page_config(config), 8765)
    browser = app.test_client()
    base = "http://127.0.0.1:8765"
    assert browser.post("/pair", data={"code": pairing.new_code()}, base_url=base).status_code == 302
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/backend", base_url=base).get_data(as_text=True))

    def counts(out: Path) -> tuple[int, int, int]:
        files = [(io.BytesIO((out / name).read_bytes()), name) for name in ("manifest.json", "batches.jsonl",
                                                                             "samples.csv")]
        answer = browser.post("/backend", data={"csrf": csrf.group(1), "files": files}, base_url=base,
                              content_type="multipart/form-data")
        html = answer.get_data(as_text=True)
        assert answer.status_code == 200, html
        return tuple(int(re.search(rf'id="{name}">(\d+)<', html).group(1)) for name in ("held", "missing",
                                                                                       "fabricated"))

    held = len(db_batches(world["db"], world["vehicle"]))
    assert export(world, "exact")[0] == 0
    assert counts(world["tmp"] / "exact") == (held, 0, 0)
    ingest(world["db"], shared_data, world["tmp"], world["vehicle"], "boot-forged", count=1)
    assert export(world, "forged")[0] == 0
    assert counts(world["tmp"] / "forged") == (held, 0, 1)
    # Without the samples file the page says what is missing.
    answer = browser.post("/backend", data={"csrf": csrf.group(1), "files": [
        (io.BytesIO(b"{}"), "manifest.json")]}, base_url=base, content_type="multipart/form-data")
    assert answer.status_code == 400 and "missing: batches.jsonl, samples.csv" in answer.get_data(as_text=True)
