"""Writes batches into a BatchStore as fast as it can, reporting each commit on stdout.

Used by tests/test_buffer_crash.py, which kills this process with SIGKILL at
random moments.  Protocol, one line each, flushed after the fact it reports:

    C <id> <seq> <sha256>   batch committed (add() returned)
    d <id>                  about to mark delivered
    D <id>                  mark_delivered() returned

Usage: python -m tests.helpers.buffer_writer DB BOOT_ID SEED
"""

from __future__ import annotations

import random
import sys

import zstandard

from agent.batch import TableData, encode_batch
from agent.buffer import BatchStore


def main(db: str, boot_id: str, seed: int) -> None:
    rng = random.Random(seed)
    compressor = zstandard.ZstdCompressor(level=1)
    out = sys.stdout
    with BatchStore(db, quota_bytes=1 << 40) as store:
        out.write("ready\n")
        out.flush()
        while True:
            seq = store.next_seq(boot_id)
            rows = rng.randrange(10, 3000)
            table = TableData("can0", "M", True, ("a", "b"), [seq + i / 1000 for i in range(rows)],
                              [(rng.randrange(1 << 12), i % 7) for i in range(rows)], [0.5, 1], [0, 0])
            header = {"vehicle_id": "crash", "boot_id": boot_id, "seq": seq, "stream": rng.choice(["t", "i"]),
                      "priority": rng.randrange(3), "categories": ["driving"], "consent_version": 0,
                      "bench": True, "created": 0.0}
            batch = encode_batch(header, [table], compressor)
            batch_id = store.add(batch)
            out.write(f"C {batch_id} {seq} {batch.sha256}\n")
            out.flush()
            if rng.random() < 0.3:
                for stored in store.pending(limit=2):
                    out.write(f"d {stored.id}\n")
                    out.flush()
                    store.mark_delivered(stored.id)
                    out.write(f"D {stored.id}\n")
                    out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
