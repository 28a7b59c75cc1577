"""Composition root: builds the stages from a config (or command-line options) and joins them.

The one place that knows every stage; the stages themselves import none of
each other.  Used by ``replay`` (offline), ``run`` (the service) and ``demo``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.buffer.store import BatchStore
from agent.cli.common import decoder_from_config
from agent.collect import CollectionPlan, SignalIndex, parse_collection
from agent.config import AgentConfig
from agent.decode import Decoder
from agent.incident.config import incident_config
from agent.ledger import Ledger
from agent.pipeline import BatchingOptions, Pipeline
from agent.privacy import ConsentPolicy, ConsentStore, PrivacyFilter, Pseudonymizer, consent_config
from agent.privacy.purge import consent_change_handler, consent_guarded_sink, purge_ungranted
from agent.privacy.store import load_state_file

log = logging.getLogger(__name__)


def ensure_state_dir(path: Path) -> Path:
    """The state directory holds keys, consent and the buffer: owner-only (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def state_dir_of(config: AgentConfig) -> Path:
    return config.resolve(config.state.dir)


def vehicle_identity(config: AgentConfig | None, pseudonymizer: Pseudonymizer | None) -> str:
    """The id in topics and headers: a keyed pseudonym of the VIN when one is configured."""
    if config is None:
        return "bench"
    if config.vehicle.vin:
        if pseudonymizer is None:
            pseudonymizer = Pseudonymizer.in_dir(ensure_state_dir(state_dir_of(config)))
        return "v" + pseudonymizer.vehicle_pseudonym(config.vehicle.vin)[:32]
    return config.vehicle.id


def decoder_for(config: AgentConfig, plan: CollectionPlan) -> Decoder:
    """The live pipeline's decoder: the signals the collection plan reads and, with incidents configured,
    the signals their triggers read and every signal of their categories (a snapshot keeps those whether
    or not a campaign collects them; filtered out, a trigger would silently never fire)."""
    if not config.incidents:
        return decoder_from_config(config, wanted=plan.wants)
    incidents = incident_config(config)
    categories = frozenset(incidents.categories)
    trigger_keys: set[str] = set()
    decoder = decoder_from_config(
        config, wanted=lambda spec: plan.wants(spec) or spec.category in categories or spec.key in trigger_keys)
    # The filter is first consulted on a bus's first frame, so the trigger signals can be filled in now.
    index = SignalIndex(decoder.specs)
    for item in incidents.triggers:
        sources = item.trigger.compile(index).sources
        trigger_keys.update(spec.key for specs in sources.values() for spec in specs)
    return decoder



def open_store(config: AgentConfig | None, path: Path | None = None) -> BatchStore:
    if config is None:
        if path is None:
            raise ValueError("a buffer path is needed without a config")
        return BatchStore(path)
    buffer = config.buffer
    if path is None:
        path = ensure_state_dir(state_dir_of(config)) / buffer.file
    return BatchStore(
        path,
        quota_bytes=int(buffer.quota_mb * 1024 * 1024),
        never_evict=buffer.never_evict,
        ttl_s=buffer.ttl_s,
        synchronous=buffer.synchronous,
    )


def collection_plan(config: AgentConfig | None) -> CollectionPlan:
    """No config, or no collection section: every signal at full rate into ``telemetry``."""
    if config is None or not config.collection:
        return CollectionPlan(campaigns=())
    return parse_collection(config)


@dataclass
class Consent:
    policy: ConsentPolicy
    ledger: Ledger | None = None
    pseudonymizer: Pseudonymizer | None = None


def build_consent(
    config: AgentConfig | None,
    grant_all: bool = False,
    consent_file: str | None = None,
    live: bool = False,
) -> Consent:
    """The owner's consent in force.

    * ``grant_all`` (bench mode, offline only): everything counts as granted and
      every batch is marked bench data; the live service refuses it.
    * ``consent_file``: run under a given consent state (``demo --consent``).
    * otherwise the durable state in ``state.dir`` (with a config), or the
      default profile: nothing granted.
    """
    if grant_all and live:
        raise ValueError("--grant-all is for offline bench runs on logs; the service on live buses refuses it")
    section = consent_config(config) if config is not None else None
    if grant_all:
        return Consent(ConsentPolicy(None, section, grant_all=True))
    if consent_file:
        return Consent(ConsentPolicy(None, section, state=load_state_file(consent_file)))
    if config is None:
        return Consent(ConsentPolicy(None, section))
    state = ensure_state_dir(state_dir_of(config))
    return Consent(
        ConsentPolicy(ConsentStore.in_dir(state), section),
        ledger=Ledger.in_dir(state),
        pseudonymizer=Pseudonymizer.in_dir(state),
    )


@dataclass
class Assembly:
    pipeline: Pipeline
    privacy: PrivacyFilter


def watch_consent(consent: Consent, store: BatchStore, uplink: Any = None) -> None:
    """Consent changes purge the store and the uplink and write the ledger; what is no longer
    granted at start-up is purged now.  Call once per process (not per pipeline)."""
    policy = consent.policy
    if policy.bench:
        return
    policy.on_change(consent_change_handler(store, uplink, consent.ledger))
    purge_ungranted(policy, store, uplink, consent.ledger)


def assemble(
    decoder: Decoder,
    plan: CollectionPlan,
    store: BatchStore,
    consent: Consent,
    vehicle_id: str,
    batching: BatchingOptions | None = None,
    on_trigger: Any = None,
) -> Assembly:
    """Join decode -> collect -> privacy -> batch -> store (see ``watch_consent`` for purges)."""
    policy = consent.policy
    batching = batching or BatchingOptions()
    batching.bench = policy.bench
    holder: dict[str, PrivacyFilter] = {}

    def privacy_stage(batcher) -> PrivacyFilter:
        def new_version(_changes: Any) -> None:
            # Each batch carries exactly one consent version: close what is open.
            batcher.flush()
            batcher.consent_version = holder["stage"].consent_version

        stage = PrivacyFilter(policy, decoder.specs, batcher, consent.pseudonymizer, on_version_change=new_version)
        holder["stage"] = stage
        batcher.consent_version = policy.version
        return stage

    pipeline = Pipeline(
        decoder,
        plan,
        store,
        vehicle_id,
        row_filter=privacy_stage,
        batching=batching,
        batch_guard=lambda sink: consent_guarded_sink(policy, sink),
        on_trigger=on_trigger,
    )
    return Assembly(pipeline, holder["stage"])
