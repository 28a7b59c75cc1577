"""The composition root: every stage of the agent is made and joined here, and nowhere else.

``build(config, options)`` returns ``Stages``: the long-lived core (store,
consent, gate, writer, uplink) and the data path (decoder, collector, privacy
filter, batcher, pipeline, sidecars).  The service (``agent.runtime``),
``vehicle-agent replay`` and the demo each call it once; a reload makes a new
data path on the same core with ``build_data_path``.  The flow it joins::

    frames -> Decoder -> Collector -> PrivacyFilter -> Batcher --+
                                                                 |
    incident snapshots, camera events (Sidecars) ----------------+--> StoreWriter --ConsentGate.admit--> BatchStore
                                                                                                          |
    broker <--ConsentGate.release-- Uplink <--------------------------------------------------------------+

    ConsentPolicy.on_change --> purge (store, then uplink) --> Ledger
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.batch import Batcher, current_boot_id
from agent.buffer.store import BatchStore
from agent.camera.config import camera_config
from agent.collect import CollectionPlan, Collector
from agent.config import AgentConfig
from agent.decode import Decoder
from agent.flow.gate import ConsentGate
from agent.flow.parts import (
    Consent,
    build_consent,
    collection_plan,
    decoder_for,
    integrity_checker,
    open_store,
    state_dir_of,
    vehicle_identity,
)
from agent.flow.pipeline import BatchingOptions, Pipeline
from agent.flow.sidecars import Sidecars
from agent.flow.writer import StoreWriter
from agent.incident.config import incident_config
from agent.integrity.checker import TransportChecker
from agent.ledger import Ledger
from agent.model import SignalSpec
from agent.owner.archive import OwnerArchive
from agent.owner.recorder import ArchiveRecorder, trip_signal
from agent.ownerpage.config import archive_path, owner_page_config
from agent.privacy import ConsentPolicy, PrivacyFilter, Pseudonymizer
from agent.privacy.purge import consent_change_handler, purge_ungranted
from agent.uplink.config import uplink_config
from agent.uplink.mqtt import Uplink

log = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    """How the stages are made beyond what the configuration says."""

    live: bool = False  # the service on live buses: refuses bench mode, watches the camera spool and socket
    grant_all: bool = False  # bench mode (offline runs on logs only)
    consent_file: str | None = None  # run under this consent state instead of the state dir's
    buffer: Path | None = None  # the buffer database, instead of the state dir's
    decoder: Decoder | None = None  # a decoder made from command-line DBCs, instead of the config's
    batch_age_s: float | None = None  # batch time span, instead of the config's
    time_resolution_us: int | None = None  # batch timestamps' resolution, instead of the config's
    uplink: bool = False  # make the uplink stage when the config has an uplink section
    on_command: Callable[[bytes], None] | None = None  # the uplink's commands topic (MQTT network thread)
    health: Callable[[], dict] | None = None  # counters for the retained status message
    boot_id: str | None = None


@dataclass
class Core:
    """What lives as long as the process, across reloads of the configuration."""

    store: BatchStore
    consent: Consent
    vehicle_id: str
    gate: ConsentGate
    writer: StoreWriter
    uplink: Uplink | None
    state_dir: Path | None


@dataclass
class DataPath:
    """The CAN data path and its side inputs for one configuration."""

    config: AgentConfig | None
    plan: CollectionPlan
    decoder: Decoder
    privacy: PrivacyFilter
    batcher: Batcher
    collector: Collector
    pipeline: Pipeline
    sidecars: Sidecars
    integrity: TransportChecker | None = None  # counters and checksums checked in the car (agent.integrity)


@dataclass
class Stages:
    core: Core
    path: DataPath
    options: BuildOptions = field(default_factory=BuildOptions)


def build(config: AgentConfig | None, options: BuildOptions | None = None) -> Stages:
    options = options or BuildOptions()
    core = build_core(config, options)
    return Stages(core, build_data_path(config, core, options), options)


def build_core(config: AgentConfig | None, options: BuildOptions) -> Core:
    state_dir = state_dir_of(config) if config is not None else None
    consent = build_consent(config, grant_all=options.grant_all, consent_file=options.consent_file,
                            live=options.live)
    store = open_store(config, options.buffer)
    vehicle_id = vehicle_identity(config, consent.pseudonymizer)
    gate, writer = store_entry(store, consent.policy, consent.ledger, options.boot_id or current_boot_id())
    uplink = None
    settings = uplink_config(config) if options.uplink and config is not None else None
    if settings is not None:
        uplink = Uplink(settings, store, vehicle_id, on_command=options.on_command, health=options.health,
                        gate=gate)
        wake_on_write(writer, uplink)
    # Once per process, not per data path: a reload must not add a second purge handler.
    policy = consent.policy
    if not policy.bench:
        policy.on_change(consent_change_handler(store, uplink, consent.ledger))
        purge_ungranted(policy, store, uplink, consent.ledger)
    return Core(store, consent, vehicle_id, gate, writer, uplink, state_dir)


def build_data_path(config: AgentConfig | None, core: Core, options: BuildOptions) -> DataPath:
    """decode -> collect -> privacy -> batch -> the core's writer, and the sidecars beside them."""
    plan = collection_plan(config)
    # The owner archive (their trips, kept in the car) records on the live vehicle only.
    page = owner_page_config(config) if options.live and config is not None and core.state_dir else None
    archive = page.archive if page is not None and page.enabled else None
    if options.decoder is not None:
        decoder = options.decoder
    elif config is not None:
        decoder = decoder_for(config, plan, also=trip_signal if archive is not None else None)
    else:
        raise ValueError("a decoder needs DBC files: give --dbc FILE... or --config FILE")
    batching = BatchingOptions(config.batching.max_age_s, config.batching.max_bytes,
                               config.batching.time_resolution_us) if config is not None else BatchingOptions()
    if options.batch_age_s:
        batching.max_age_s = options.batch_age_s
    if options.time_resolution_us:
        batching.time_resolution_us = options.time_resolution_us
    policy, writer = core.consent.policy, core.writer
    collector, privacy, batcher = collect_to_store(plan, decoder.specs, policy, core.consent.pseudonymizer, writer,
                                                   core.vehicle_id, batching)
    pipeline = Pipeline(decoder, collector, privacy, batcher, writer, plan.clock_reset_s)
    sidecars = Sidecars(pipeline, writer, policy, core.vehicle_id)
    sidecars.attach_diagnostics(decoder)  # DTC answers on diagnostic ids, whoever asked for them
    integrity = integrity_checker(decoder)
    if integrity is not None:
        pipeline.raw_listeners.append(integrity.on_raw)
    if config is not None and config.incidents and core.state_dir is not None:
        sidecars.attach_incidents(incident_config(config), core.state_dir)
    if archive is not None:
        owner_archive = OwnerArchive(archive_path(core.state_dir), retention_days=archive.retention_days,
                                     max_bytes=int(archive.max_mb * 1_000_000))
        sidecars.attach_archive(ArchiveRecorder(owner_archive, decoder.specs, rate_hz=archive.rate_hz))
    camera = camera_config(config) if options.live and config is not None and config.camera else None
    if camera is not None and camera.enabled and core.state_dir is not None:
        sidecars.attach_camera(camera, core.state_dir)
    return DataPath(config, plan, decoder, privacy, batcher, collector, pipeline, sidecars, integrity)


def store_entry(store: BatchStore, policy: ConsentPolicy, ledger: Ledger | None,
                boot_id: str) -> tuple[ConsentGate, StoreWriter]:
    """The one way into ``store``: the writer, admitting each batch through the consent gate."""
    gate = ConsentGate(policy, ledger, store)
    return gate, StoreWriter(store, gate, boot_id)


def wake_on_write(writer: StoreWriter, uplink: Uplink) -> None:
    """The uplink looks at the store as soon as a batch is in it, not at its next poll."""
    writer.listeners.append(lambda _id, _batch: uplink.notify())


def collect_to_store(plan: CollectionPlan, specs: Mapping[str, SignalSpec], policy: ConsentPolicy,
                     pseudonymizer: Pseudonymizer | None, writer: StoreWriter, vehicle_id: str,
                     batching: BatchingOptions) -> tuple[Collector, PrivacyFilter, Batcher]:
    """collect -> privacy -> batch -> ``writer``, joined so that each batch carries exactly one consent
    version: a new version closes what is open first."""
    batcher = Batcher(specs, writer.write, vehicle_id, numbering=writer.numbers, max_age_s=batching.max_age_s,
                      max_bytes=batching.max_bytes, consent_version=policy.version, bench=policy.bench,
                      time_resolution_us=batching.time_resolution_us)
    privacy = PrivacyFilter(policy, specs, batcher, pseudonymizer,
                            on_version_change=lambda _changes: batcher.consent_changed(privacy.consent_version))
    return Collector(plan, specs, privacy), privacy, batcher


__all__ = ["BuildOptions", "Core", "DataPath", "Stages", "build", "build_core", "build_data_path", "collect_to_store",
           "store_entry", "wake_on_write"]
