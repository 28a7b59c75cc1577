"""Collect stage: campaigns of signal rules and condition triggers (``collection:`` in the config).

Wiring::

    plan = parse_collection(config)                      # ConfigError on bad rules
    decoder = Decoder(..., wanted=plan.wants)            # decode only what the plan reads
    collector = Collector(plan, decoder.specs, sink, on_trigger=listener)
    for bus, msg in source:
        frame = decoder.decode(msg, bus)
        if frame is not None:
            collector.on_frame(frame)
    collector.flush()
"""

from agent.collect.collector import Collector
from agent.collect.evaluate import CompiledExpression, SignalHistory, SignalIndex, compile_expression
from agent.collect.expr import ExprError, parse
from agent.collect.rules import Campaign, CollectionPlan, SignalRule, Trigger, parse_collection
from agent.collect.triggers import Condition, TriggerEvent, TriggerListener, WindowRecorder

__all__ = [
    "Campaign",
    "CollectionPlan",
    "Collector",
    "CompiledExpression",
    "Condition",
    "ExprError",
    "SignalHistory",
    "SignalIndex",
    "SignalRule",
    "Trigger",
    "TriggerEvent",
    "TriggerListener",
    "WindowRecorder",
    "compile_expression",
    "parse",
    "parse_collection",
]
