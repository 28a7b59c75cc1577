"""The session's view of a batch while its PUBACK is handed to the uplink (I/O thread).

Seen in CI: a PUBACK arrived while the sender thread was choosing the next batches;
the batch had already left the session's in-flight set but was not yet in the
uplink's ack queue, so the store handed it out again and it was sent twice.
"""

from __future__ import annotations

import threading

from agent.uplink.endpoint import Endpoint
from agent.uplink.session import Session, SessionHooks


class FakeReason:
    value = 0
    def __str__(self) -> str:
        return "Success"


def make_session(acked) -> Session:
    hooks = SessionHooks(connected=lambda *a: None, refused=lambda *a: None, disconnected=lambda *a: None,
                         acked=acked)
    return Session(Endpoint("127.0.0.1", 1, "test", False, None), "c1", 30, 5.0, "status",
                   lambda state: state.encode(), None, 10, hooks)


def test_a_batch_stays_in_flight_until_its_ack_is_handed_over():
    seen_during_hook: list[set[int]] = []
    session: Session

    def acked(ack):
        seen_during_hook.append(session.in_flight_ids())

    session = make_session(acked)
    with session._lock:
        session._by_mid[7] = 42
    session._on_publish(session.client, None, 7, FakeReason(), None)
    assert seen_during_hook == [{42}]
    assert session.in_flight_ids() == set()


def test_sender_never_sees_an_acked_batch_as_neither_in_flight_nor_acked():
    """Many PUBACKs race a sender that snapshots in-flight ids then the ack queue (the uplink's order)."""
    acks: list[int] = []
    lock = threading.Lock()
    session: Session

    def acked(ack):
        with lock:
            acks.append(ack.batch_id)

    session = make_session(acked)
    batches = range(1, 5_001)
    with session._lock:
        session._by_mid.update({b: b for b in batches})
    stop = threading.Event()
    lost: list[int] = []

    def sender():
        while not stop.is_set():
            busy = session.in_flight_ids()
            with lock:
                done = set(acks)
            gone = set(batches) - busy - done
            lost.extend(gone)

    thread = threading.Thread(target=sender)
    thread.start()
    for b in batches:
        session._on_publish(session.client, None, b, FakeReason(), None)
    stop.set()
    thread.join()
    assert lost == []
    assert len(acks) == len(batches)
