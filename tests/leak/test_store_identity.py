"""A batch's identity must survive the loss of the store that numbered it.

The receiver deduplicates on the batch's identity (vehicle, boot, sequence number).  The sequence numbers come
from the buffer database, so when buffer.sqlite is lost within one boot (replaced by an empty file: a
filesystem repair, a careless cleanup) a new store starts numbering again - from 0, under the same boot id -
and every new batch would look like one the receiver already has: dropped as a duplicate, although it carries
other data.  Batches therefore carry the store's epoch (``store_epoch``), a new one for each new store.

e) the agent runs and delivers a pass of the bundled log, is stopped, its buffer.sqlite (and -wal/-shm) is
   replaced by a 0-byte file, and it is started again in the same boot (the same /proc boot id) for another
   pass: the receiver must hold every batch delivered, drop none as a duplicate, and see no two different
   batches under one identity.
"""

from __future__ import annotations

import contextlib
import re

import pytest

from tests.leak.support import LOCATION, Expectations, grant, leak_config, settle, wait_drained
from tests.reliability.rig import AgentProcess, Simulator, wait_quiet

pytestmark = [pytest.mark.leak, pytest.mark.slow]

NEW_STORE = re.compile(r"new (buffer )?store|new (store )?epoch|store epoch", re.IGNORECASE)


def one_pass(tmp_path, logbook, broker, name: str, cleanup: contextlib.ExitStack) -> tuple[dict, AgentProcess]:
    """A fresh simulator and `vehicle-agent run` over one pass of the bundled log, drained to the broker."""
    sim = Simulator(logbook, name=f"{name}-sim")
    cleanup.callback(sim.kill)
    config = leak_config(tmp_path, sim.port, broker.port)
    agent = AgentProcess(config, logbook, name=name)
    cleanup.callback(lambda: agent.kill() if agent.alive else None)
    agent.wait_ready()
    sim.wait(timeout=90)
    wait_quiet(agent, quiet_s=1.0, timeout=30)
    settle(agent)
    drained, status = wait_drained(agent, timeout=60)
    assert drained, f"{name}: the backlog never drained: {status['buffer']['counters']}"
    return agent.stop(), agent


def test_a_store_replaced_mid_boot_starts_a_new_epoch_and_nothing_is_dropped_as_a_duplicate(
        tmp_path, logbook, mosquitto, subscribers, cleanup):
    receiver, sniffer = subscribers
    state = tmp_path / "state"
    config = leak_config(tmp_path, 1, mosquitto.port)  # for the grants; each pass writes its own
    grant(config, LOCATION, "round3")
    grant(config, "driving")
    first, _ = one_pass(tmp_path, logbook, mosquitto, "epoch-first", cleanup)
    receiver.wait_quiet(1.0, timeout=10)
    split = len(sniffer.messages())

    db = state / "buffer.sqlite"
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(b"")  # the store is gone; the boot goes on

    second, agent = one_pass(tmp_path, logbook, mosquitto, "epoch-second", cleanup)
    counts = [report["buffer"]["counters"] for report in (first, second)]
    written = sum(c["written"] for c in counts)
    delivered = sum(c["delivered"] for c in counts)
    receiver.wait_for(batches=delivered, timeout=20)
    receiver.wait_quiet(1.0, timeout=10)
    report = receiver.report()
    sniffed = sniffer.messages()
    resent = sum(r["uplink"]["resent"] for r in (first, second))

    payloads: dict[tuple, set[str]] = {}
    for message in sniffed:
        payloads.setdefault(message.key, set()).add(message.payload_sha256)
    conflicting = {key for key, hashes in payloads.items() if len(hashes) > 1}
    without_epoch = sum(1 for m in sniffed if m.header.get("store_epoch") in (None, ""))
    epochs = [{m.header.get("store_epoch") for m in part} for part in (sniffed[:split], sniffed[split:])]
    boots = {m.header.get("boot_id") for m in sniffed}
    log = agent.log_path.read_text(errors="replace")
    check = Expectations("store replaced mid-boot")
    check.note(agent={"written": [c["written"] for c in counts], "delivered": [c["delivered"] for c in counts],
                      "resent": resent},
               receiver={"batches": report["batches"], "duplicates_dropped": report["duplicates_dropped"],
                         "conflicts": receiver.store.counter("conflicts"), "gaps": report["gaps"]},
               sniffed={"messages": len(sniffed), "identities": len(payloads),
                        "identities_with_two_payloads": len(conflicting), "without_store_epoch": without_epoch,
                        "epochs": [sorted(map(str, e)) for e in epochs], "boot_ids": len(boots)},
               new_store_logged=bool(NEW_STORE.search(log)))
    check.check(len(boots) == 1, f"the two runs were not in one boot ({len(boots)} boot ids)")
    check.check(delivered == written, f"delivered {delivered} != committed {written}")
    check.check(report["batches"] == delivered, f"the receiver stored {report['batches']} of the {delivered} "
                                                "batches delivered")
    check.check(report["duplicates_dropped"] <= resent,
                f"{report['duplicates_dropped']} batches dropped as duplicates ({resent} were re-sent)")
    check.check(receiver.store.counter("conflicts") == 0,
                f"the receiver counted {receiver.store.counter('conflicts')} conflicts")
    check.check(not conflicting, f"{len(conflicting)} batch identities carried two different payloads")
    check.check(without_epoch == 0, f"{without_epoch} of {len(sniffed)} batches carry no store_epoch header")
    check.check(len(epochs[0]) == len(epochs[1]) == 1 and not epochs[0] & epochs[1],
                f"the replaced store did not start a new epoch: {epochs}")
    check.check(bool(NEW_STORE.search(log)), "the agent's log does not say it started a new store")
    check.verify()
