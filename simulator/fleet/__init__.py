"""A fleet of simulated vehicles, each running the agent's own data path and uplink (issue 14).

Per vehicle, what ``agent.flow.build`` makes for one car, minus the CAN bus: decoded frames ->
Collector -> PrivacyFilter -> Batcher -> StoreWriter --ConsentGate--> BatchStore (its own, in a
temporary directory) -> Uplink (its own MQTT client id, topics vehicles/<id>/v1/...) -> broker.  Each
has its own pseudonymous id (``vehicle_pseudonym`` of a fake VIN under a random key, as the agent
derives it), boot id and consent (granted categories and location level vary by ``seed``).

The data is real: the bundled CSS truck log (J1939 + GPS) and, with the shared data, the Kona EV
COMP-CAN log, decoded once per process with the shipped DBCs and catalogs.  Vehicles differ by log
and starting point; values are never altered.  A vehicle's clock starts at ``t0`` plus a stagger
below 1 s; steps back in a log's clock (the Kona logger resets) count as no time; at the end of its
log a vehicle goes on from the start.  ``speed`` inf (``--speed max``) runs as fast as it goes, the
data being "the last ``duration`` seconds"; a finite speed paces every vehicle (1: real time).
"""


from simulator.fleet.plan import FleetOptions, available_logs
from simulator.fleet.report import FleetReport, VehicleReport
from simulator.fleet.run import run_fleet
from simulator.fleet.vehicle import signal_categories

__all__ = ["FleetOptions", "FleetReport", "VehicleReport", "available_logs", "run_fleet", "signal_categories"]
