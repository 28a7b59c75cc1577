"""The collect stage: decoded frames in, rows per stream out.

For each (bus, message) seen, the collector works out once which campaign
rules take which of the message's signals and builds the samplers for it;
after that a frame costs two dict look-ups plus the work of the samplers that
want it.  Per frame, trigger conditions are evaluated first, then trigger
recorders, then samplers, so a triggering frame is inside its own window.

Matching: within one campaign the first rule whose ``match`` fits a signal
takes it; several campaigns may take the same signal (each emits its own
rows).  Signals no campaign names (trigger campaigns included) go to the
default stream at full rate, or are dropped when there is none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from agent.collect.evaluate import SignalIndex
from agent.collect.rules import Campaign, CollectionPlan, SignalRule
from agent.collect.samplers import ChangeSampler, FullRate, PeriodSampler, Sampler, Selection
from agent.collect.triggers import CampaignTrigger, Condition, TriggerListener, WindowRecorder
from agent.model import DecodedFrame, RowSink, SignalSpec

log = logging.getLogger(__name__)

Handler = Callable[[DecodedFrame], None]


@dataclass(frozen=True)
class _Take:
    """One rule's share of one message, before any per-bus state exists."""

    campaign: Campaign
    rule: SignalRule
    selection: Selection


class Collector:
    """``on_frame`` for every decoded frame, ``flush`` at the end.

    ``specs`` must cover every signal the decoder emits (pass ``Decoder.specs``).
    Raises ``ExprError`` (a ConfigError, ``file:line:column: ...``) when a
    trigger names a signal the DBCs do not have.  ``warnings`` lists rules
    that match no signal (kept: another vehicle's DBC may have them).
    """

    def __init__(self, plan: CollectionPlan, specs: Mapping[str, SignalSpec], sink: RowSink,
                 on_trigger: TriggerListener | None = None) -> None:
        self.plan = plan
        self.specs = specs
        self._put = sink.put
        self._by_message: dict[str, list[SignalSpec]] = {}
        for spec in specs.values():
            self._by_message.setdefault(spec.message, []).append(spec)
        index = SignalIndex(specs)
        self.triggers: list[CampaignTrigger] = []
        for campaign in plan.campaigns:
            trigger = campaign.trigger
            if trigger is None:
                continue
            condition = Condition(trigger.compile(index), trigger.mode, trigger.min_interval_s, plan.clock_reset_s)
            recorder = WindowRecorder(campaign.stream, campaign.priority, self._put, trigger.pre_s, trigger.post_s,
                                      plan.clock_reset_s)
            self.triggers.append(CampaignTrigger(campaign.name, campaign.stream, condition, recorder, on_trigger))
        self.warnings = self._unmatched_rules()
        for warning in self.warnings:
            log.warning("%s", warning)
        self._takes: dict[str, tuple[tuple[_Take, ...], Selection | None]] = {}
        self._routes: dict[str, dict[str, tuple[Handler, ...]]] = {}
        self._samplers: list[Sampler] = []

    def _unmatched_rules(self) -> list[str]:
        warnings = []
        for campaign in self.plan.campaigns:
            for rule in campaign.rules:
                if any(rule.matches(spec) for spec in self.specs.values()):
                    continue
                transport = replace(rule, transport=True)
                if any(transport.matches(spec) for spec in self.specs.values()):
                    warnings.append(f"{rule.where}: match {rule.match!r} names only transport signals "
                                    "(checksums, counters), which stay in the car; add transport: true to upload them")
                else:
                    warnings.append(f"{rule.where}: match {rule.match!r} names no signal of the loaded DBCs")
        return warnings

    # -- hot path -------------------------------------------------------------------------
    def on_frame(self, frame: DecodedFrame) -> None:
        by_message = self._routes.get(frame.bus)
        if by_message is None:
            by_message = self._routes[frame.bus] = {}
        handlers = by_message.get(frame.message)
        if handlers is None:
            handlers = by_message[frame.message] = self._route(frame.bus, frame.message)
        for handler in handlers:
            handler(frame)

    def bus_handlers(self, bus: str) -> dict[str, tuple[Handler, ...]]:
        """What ``on_frame`` calls per message of ``bus`` (the messages seen so far), for a caller that feeds
        a block of one bus's frames itself: each handler of ``frame.message`` gets the frame, in order;
        ``learn_handlers`` gives (and adds) the handlers of a message not in it yet."""
        by_message = self._routes.get(bus)
        if by_message is None:
            by_message = self._routes[bus] = {}
        return by_message

    def learn_handlers(self, bus: str, message: str) -> tuple[Handler, ...]:
        handlers = self._routes.setdefault(bus, {})[message] = self._route(bus, message)
        return handlers

    def flush(self) -> None:
        """Emit what open periods hold (shutdown, end of a log)."""
        for sampler in self._samplers:
            sampler.flush()

    # -- routing, once per (bus, message) --------------------------------------------------
    def _message_takes(self, message: str) -> tuple[tuple[_Take, ...], Selection | None]:
        """Which rule takes which signals of ``message`` (same on every bus), and the default's share."""
        cached = self._takes.get(message)
        if cached is not None:
            return cached
        specs = self._by_message.get(message, [])
        takes: list[_Take] = []
        claimed: set[str] = set()
        for campaign in self.plan.campaigns:
            chosen: dict[int, list[SignalSpec]] = {}
            for spec in specs:
                for number, rule in enumerate(campaign.rules):
                    if rule.matches(spec):
                        chosen.setdefault(number, []).append(spec)
                        claimed.add(spec.signal)
                        break
            for number, taken in sorted(chosen.items()):
                selection = Selection.of(message, taken, len(specs))
                takes.append(_Take(campaign, campaign.rules[number], selection))
        rest = [spec for spec in specs if spec.signal not in claimed and self.plan.default_takes(spec)]
        default = Selection.of(message, rest, len(specs)) if rest and self.plan.default_stream else None
        result = (tuple(takes), default)
        self._takes[message] = result
        return result

    def _route(self, bus: str, message: str) -> tuple[Handler, ...]:
        takes, default = self._message_takes(message)
        handlers: list[Handler] = [trigger.on_condition_frame for trigger in self.triggers
                                   if message in trigger.condition.inputs]
        by_campaign = {trigger.campaign: trigger for trigger in self.triggers}
        for take in takes:
            trigger = by_campaign.get(take.campaign.name)
            if trigger is not None:
                handlers.append(_bind_record(trigger.recorder, take.selection))
        for take in takes:
            if take.campaign.trigger is None:
                sampler = self._sampler(take.campaign, take.rule, take.selection)
                self._samplers.append(sampler)
                handlers.append(sampler.on_frame)
        if default is not None and self.plan.default_stream is not None:
            sampler = FullRate(default, self.plan.default_stream, self.plan.default_priority, self._put)
            self._samplers.append(sampler)
            handlers.append(sampler.on_frame)
        return tuple(handlers)

    def _sampler(self, campaign: Campaign, rule: SignalRule, selection: Selection) -> Sampler:
        reset = self.plan.clock_reset_s
        if rule.period_ms is not None:
            return PeriodSampler(selection, campaign.stream, campaign.priority, self._put, period_ms=rule.period_ms,
                                 aggregate=rule.aggregate, clock_reset_s=reset)
        if rule.on_change or rule.max_rate_hz:
            return ChangeSampler(selection, campaign.stream, campaign.priority, self._put, on_change=rule.on_change,
                                 deadband_abs=rule.deadband_abs, deadband_rel=rule.deadband_rel,
                                 max_rate_hz=rule.max_rate_hz, clock_reset_s=reset)
        return FullRate(selection, campaign.stream, campaign.priority, self._put)


def _bind_record(recorder: WindowRecorder, selection: Selection) -> Handler:
    record = recorder.record

    def handler(frame: DecodedFrame) -> None:
        record(frame, selection)
    return handler
