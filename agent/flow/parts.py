"""The parts ``agent.flow.build`` joins, each made from the configuration (or command-line options).

Nothing here joins two stages; ``build`` does that, in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.buffer.store import BatchStore
from agent.catalog import load_catalogs
from agent.collect import CollectionPlan, SignalIndex, parse_collection
from agent.config import AgentConfig
from agent.dbc import load_dbc
from agent.decode import Decoder, SignalFilter
from agent.diag.config import diagnostics_config
from agent.incident.config import incident_config
from agent.integrity.checker import TransportChecker
from agent.ledger import Ledger
from agent.model import DATA_ROLE, SignalSpec
from agent.privacy import ConsentPolicy, ConsentStore, Pseudonymizer, consent_config
from agent.privacy.store import load_state_file
from agent.service.statedir import prepare_state_dir
from agent.transport_decode import wrap_for_transport

log = logging.getLogger(__name__)


def state_dir_of(config: AgentConfig) -> Path:
    """The configured state directory, created (0700) and checked on first use (``prepare_state_dir``)."""
    path = config.resolve(config.state.dir)
    report = prepare_state_dir(path)
    for line in report.repairs:
        log.warning("state dir: %s", line)
    return path


def vehicle_identity(config: AgentConfig | None, pseudonymizer: Pseudonymizer | None) -> str:
    """The id in topics and headers: a keyed pseudonym of the VIN when one is configured."""
    if config is None:
        return "bench"
    if config.vehicle.vin:
        if pseudonymizer is None:
            pseudonymizer = Pseudonymizer.in_dir(state_dir_of(config))
        return "v" + pseudonymizer.vehicle_pseudonym(config.vehicle.vin)[:32]
    return config.vehicle.id


def decoder_from_config(config: AgentConfig, wanted: Callable[[SignalSpec], bool] | None = None) -> Decoder:
    """A decoder for the configured buses: their DBCs, and the catalogs beside them."""
    bus_dbcs = {bus.name: [load_dbc(config.resolve(path)) for path in bus.dbc] for bus in config.buses}
    catalog = load_catalogs(bus_dbcs, [])
    # Messages longer than a CAN frame (UDS responses) are reassembled from ISO-TP first (agent/transport_decode),
    # and so are the answers to the agent's own diagnostic requests, DBC or not (a DTC list has no DBC).
    answers = {rid for spec in diagnostics_config(config).requests for rid in spec.resolved_response_ids}
    return wrap_for_transport(Decoder(bus_dbcs, catalog, wanted=wanted,
                                      j1939_buses=[b.name for b in config.buses if b.j1939]), bus_dbcs,
                              ids=answers)


def decoder_for(config: AgentConfig, plan: CollectionPlan, also: SignalFilter | None = None) -> Decoder:
    """The live pipeline's decoder: the signals the collection plan reads, those ``also`` admits (the owner
    archive's trip signals) and, with incidents configured, the signals their triggers read and every signal
    of their categories (a snapshot keeps those whether or not a campaign collects them; filtered out, a
    trigger would silently never fire)."""
    extra = also or _nothing
    if not config.incidents:
        return decoder_from_config(config, wanted=plan.wants if also is None else
                                   lambda spec: plan.wants(spec) or extra(spec))
    incidents = incident_config(config)
    categories = frozenset(incidents.categories)
    trigger_keys: set[str] = set()
    decoder = decoder_from_config(
        config, wanted=lambda spec: plan.wants(spec) or extra(spec) or spec.category in categories
        or spec.key in trigger_keys)
    # The filter is first consulted on a bus's first frame, so the trigger signals can be filled in now.
    index = SignalIndex(decoder.specs)
    for item in incidents.triggers:
        sources = item.trigger.compile(index).sources
        trigger_keys.update(spec.key for specs in sources.values() for spec in specs)
    return decoder


def integrity_checker(decoder: Decoder) -> TransportChecker | None:
    """The checks of the transport signals (the catalogs' ``role: counter | checksum``) of the decoder's DBCs;
    None when no message has one."""
    plain = getattr(decoder, "decoder", decoder)  # a TransportDecoder wraps the Decoder
    catalog = plain._catalog

    def entry(message: str, signal: str):
        return catalog.lookup(f"{message}.{signal}")

    checker = TransportChecker.from_dbcs(
        plain._bus_dbcs, lambda m, s: getattr(entry(m, s), "role", DATA_ROLE),
        algorithm=lambda m, s: getattr(entry(m, s), "algorithm", None),
        counter_modulus=lambda m, s: getattr(entry(m, s), "modulus", None))
    return None if checker.empty else checker


def _nothing(spec: SignalSpec) -> bool:
    return False


def open_store(config: AgentConfig | None, path: Path | None = None) -> BatchStore:
    if config is None:
        if path is None:
            raise ValueError("a buffer path is needed without a config")
        return BatchStore(path)
    buffer = config.buffer
    if path is None:
        state_dir_of(config)  # created and checked first
        path = config.buffer_path()
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


def build_consent(config: AgentConfig | None, grant_all: bool = False, consent_file: str | None = None,
                  live: bool = False) -> Consent:
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
    state = state_dir_of(config)
    return Consent(
        ConsentPolicy(ConsentStore.in_dir(state), section),
        ledger=Ledger.in_dir(state),
        pseudonymizer=Pseudonymizer.in_dir(state),
    )


__all__ = ["Consent", "build_consent", "collection_plan", "decoder_for", "decoder_from_config", "integrity_checker",
           "open_store",
           "state_dir_of", "vehicle_identity"]
