"""Replay keeps what the log holds: a logger clock that starts at 0, resets, or goes negative.

The shared Kona 2020 log's logger clock resets to negative times part-way (217 frames before 0); the replay
once refused them as bad timestamps (27,765 of 27,982 kept) while the demo, which re-stamps live, kept all.
Only what cannot be placed in time (NaN, inf) is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import can
import pytest

from agent.batch.reading import decode_batch, iter_samples
from agent.buffer import BatchStore
from agent.cli.main import main
from agent.flow.pipeline import Pipeline
from simulator.receiver.decode import verify_batch

REPO = Path(__file__).resolve().parents[1]
KONA_2020 = "logs/kona_ev_2020_comp_can_heating_clock_reset.log"
KONA_FRAMES = 27_982


def _negative_frames(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.startswith("(-"))


def test_replay_keeps_every_frame_of_a_log_whose_clock_resets_negative(shared_data, tmp_path, capsys):
    log = shared_data / KONA_2020
    negative = _negative_frames(log)
    assert negative == 217, "the shared log's clock reset (the case this test is about)"
    buffer = tmp_path / "replay.sqlite"
    assert main(["replay", str(log), "--dbc", str(REPO / "dbc/kona-ev/comp_can.dbc"), "--buffer", str(buffer),
                 "--grant-all", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames_in"] == KONA_FRAMES
    assert summary["bad_timestamps"] == 0
    assert sum(summary["decode"][bus]["frames"] for bus in summary["decode"]) == KONA_FRAMES
    assert sum(summary["clock_jumps"].values()) >= 1, summary["clock_jumps"]

    # The negative times reach the batches as they are in the log.
    with BatchStore(buffer) as store:
        batches, dictionaries = store.pending(100_000), store.dictionaries()
    times = [t for batch in batches for t, *_ in iter_samples(decode_batch(batch.payload, dictionaries))]
    assert times and min(times) < 0 and max(times) > 0
    assert summary["samples_written"] == len(times)
    # ... and the reference receiver takes the batches whose times are negative.
    negative_batches = [b for b in batches if b.header["t_min"] < 0]
    assert negative_batches
    for batch in negative_batches:
        verified = verify_batch(batch.header["vehicle_id"], batch.stream, batch.payload, {}, 0.0, dictionaries)
        assert verified.row.t_first == batch.header["t_min"] < 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_only_what_cannot_be_placed_is_refused(bad, tmp_path):
    frames: list = []

    class Decoder:
        counters: dict = {}

        def decode(self, msg, bus):
            frames.append(msg.timestamp)
            return None

    pipeline = Pipeline(Decoder(), collector=None, privacy=None, batcher=None, writer=None, clock_reset_s=1.0)
    for t in (-5.0, 0.0, bad, 3.0):
        pipeline.feed("can0", can.Message(timestamp=t, arbitration_id=1, data=b"\x00"))
    assert frames == [-5.0, 0.0, 3.0]
    assert pipeline.counters.bad_timestamps == 1 and pipeline.counters.frames_in == 4
