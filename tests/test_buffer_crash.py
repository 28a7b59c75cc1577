"""Crash safety: a process writing batches is killed with SIGKILL at random moments;
after each kill the store opens cleanly and every batch it reported committed
(and not delivered) is there, intact and decodable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.batch import decode_batch
from agent.buffer import BatchStore

REPO = Path(__file__).resolve().parents[1]
KILLS = 12


def _run_and_kill(db: Path, boot_id: str, seed: int, delay: float) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.buffer_writer", str(db), boot_id, str(seed)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("ready"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(30), f"writer did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    reader.join(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    return lines


def test_sigkill_at_random_moments_never_loses_a_committed_batch(tmp_path):
    db = tmp_path / "buffer.db"
    rng = random.Random(20240611)
    committed: dict[int, tuple[int, str]] = {}  # id -> (seq, sha256)
    delivered: set[int] = set()
    maybe_delivered: set[int] = set()
    last_seq = -1
    epoch = None
    for kill in range(KILLS):
        lines = _run_and_kill(db, "boot-crash", kill, rng.uniform(0.05, 0.6))
        seqs = []
        for line in lines:
            kind, *rest = line.split()
            if kind == "C":
                committed[int(rest[0])] = (int(rest[1]), rest[2])
                seqs.append(int(rest[1]))
            elif kind == "d":
                maybe_delivered.add(int(rest[0]))
            elif kind == "D":
                delivered.add(int(rest[0]))
        assert seqs, f"kill {kill}: the writer committed nothing before the kill"
        assert seqs[0] > last_seq, "a restart reused a sequence number"
        assert seqs == sorted(seqs)
        last_seq = seqs[-1]

        with BatchStore(db) as store:  # opens cleanly after every kill, always the same store
            assert not store.created_new
            epoch = epoch or store.epoch
            assert store.epoch == epoch
            present = {b.id: b for b in store.pending(limit=1 << 30)}
            counters = store.counters()
        assert counters["quarantined"] == 0
        for batch_id, (seq, sha) in committed.items():
            if batch_id in delivered:
                assert batch_id not in present, f"batch {batch_id} delivered but still stored"
            elif batch_id not in maybe_delivered:
                assert batch_id in present, f"kill {kill}: committed batch {batch_id} (seq {seq}) is missing"
                stored = present[batch_id]
                assert (stored.seq, stored.sha256) == (seq, sha)
                assert decode_batch(stored.payload).header["seq"] == seq
        # ids the writer never reported may exist (killed between COMMIT and the print): they must be intact
        for batch_id, stored in present.items():
            if batch_id not in committed:
                assert decode_batch(stored.payload).header["boot_id"] == "boot-crash"
                committed[batch_id] = (stored.seq, stored.sha256)
                last_seq = max(last_seq, stored.seq)
    assert len(committed) > KILLS
