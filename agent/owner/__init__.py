"""The owner archive: the owner's own trips and signals, kept in the car and never uploaded.

``OwnerArchive`` is the owner-only SQLite file (trips, reduced-rate signal samples,
full-precision positions; retention by age and size; ``forget()``).
``ArchiveRecorder`` is the frame listener the pipeline calls for every decoded
frame to fill it, and ``trip_csv`` / ``trip_gpx`` / ``trip_json`` / ``trip_plot_png``
turn one trip into files for the owner's page.
"""

from agent.owner.archive import OwnerArchive, Trip, check_limits
from agent.owner.recorder import ArchiveRecorder, haversine_km, trip_signal
from agent.owner.trip_files import trip_csv, trip_gpx, trip_json, trip_plot_png

__all__ = [
    "ArchiveRecorder",
    "OwnerArchive",
    "Trip",
    "check_limits",
    "haversine_km",
    "trip_csv",
    "trip_gpx",
    "trip_json",
    "trip_plot_png",
    "trip_signal",
]
