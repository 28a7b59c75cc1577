"""What a reload carries from the data path it replaces to the new one.

A reload (SIGHUP) rebuilds decode -> collect -> privacy -> batch and the
sidecars from the re-read configuration, on the same core.  Two things are the
agent's, not one data path's, and go on across it:

- the counters (frames in, decode outcomes, incident snapshots and camera
  events, and the transport checks' data-quality counts per message, with
  their counters' last values): status and the journal count over the agent's
  life, and a test or an operator waiting for "one snapshot" must not see it
  fall back to zero;
- the state of every trigger condition that is still configured unchanged
  (same name, same expression, same mode): a reload is not an edge, so a
  condition that is already true does not start a second incident or a second
  campaign window.
"""

from __future__ import annotations

from agent.flow.build import DataPath


def hand_over(old: DataPath, new: DataPath) -> int:
    """Carry counters and trigger states from ``old`` to ``new``; returns how many conditions continued."""
    new.pipeline.counters = old.pipeline.counters
    new.pipeline.decoder.counters = old.pipeline.decoder.counters
    new.pipeline.decoder.message_counts = old.pipeline.decoder.message_counts
    new.sidecars.counters = old.sidecars.counters
    if old.integrity is not None and new.integrity is not None:
        new.integrity.continue_from(old.integrity)
    continued = 0
    previous_campaigns = {trigger.campaign: trigger.condition for trigger in old.collector.triggers}
    for trigger in new.collector.triggers:
        previous = previous_campaigns.get(trigger.campaign)
        continued += previous is not None and trigger.condition.continue_from(previous)
    if old.sidecars.recorder is not None and new.sidecars.recorder is not None:
        previous_incidents = dict(old.sidecars.recorder.conditions)
        for name, condition in new.sidecars.recorder.conditions:
            previous = previous_incidents.get(name)
            continued += previous is not None and condition.continue_from(previous)
    return continued
