"""One trip of the owner archive as files the owner can take away: CSV, GPX, JSON and a PNG plot.

Times for people are local clock times (``agent.timespec.iso_local``); files for
machines carry epoch seconds beside them.  Positions keep full float precision
(``repr``), in GPX too.  A trip that does not exist or has no data is a
ValueError saying so.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime, timezone
from xml.etree import ElementTree

from agent.export.gpx import GPX_NS
from agent.owner.archive import OwnerArchive, Trip
from agent.owner.recorder import SPEED_UNITS
from agent.timespec import iso_local


def _trip(archive: OwnerArchive, trip_id: int) -> Trip:
    trip = archive.trip(trip_id)
    if trip is None:
        raise ValueError(f"trip {trip_id}: no such trip in the owner archive")
    return trip


def _with_data(archive: OwnerArchive, trip_id: int):
    trip = _trip(archive, trip_id)
    samples, positions = archive.samples(trip_id), archive.positions(trip_id)
    if not samples and not positions:
        raise ValueError(f"trip {trip_id}: no samples and no positions recorded")
    return trip, samples, positions


def _local(t: float) -> str:
    try:
        return iso_local(t, "milliseconds")
    except (TypeError, ValueError):
        return iso_local(t)


def trip_csv(archive: OwnerArchive, trip_id: int) -> str:
    """The trip's samples: ``timestamp,time_local,key,value``, one line per sample, in time order."""
    _, samples, _ = _with_data(archive, trip_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("timestamp", "time_local", "key", "value"))
    for t, key, value in samples:
        writer.writerow((repr(t), _local(t), key, repr(value)))
    return out.getvalue()


def _utc(t: float) -> str:
    moment = datetime.fromtimestamp(t, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def trip_gpx(archive: OwnerArchive, trip_id: int) -> str:
    """GPX 1.1 track of the trip's positions (full precision); ValueError when it has none."""
    trip = _trip(archive, trip_id)
    positions = archive.positions(trip_id)
    if not positions:
        raise ValueError(f"trip {trip_id}: no positions recorded, so no track")
    # Plain tags under an explicit default namespace: no change to ElementTree's global prefix registry.
    root = ElementTree.Element("gpx", {"xmlns": GPX_NS, "version": "1.1",
                                       "creator": "vehicle-edge-agent owner archive"})
    track = ElementTree.SubElement(root, "trk")
    ElementTree.SubElement(track, "name").text = f"Trip {trip_id} from {_local(trip.start)}"
    segment = ElementTree.SubElement(track, "trkseg")
    for t, lat, lon in positions:
        point = ElementTree.SubElement(segment, "trkpt", {"lat": repr(lat), "lon": repr(lon)})
        ElementTree.SubElement(point, "time").text = _utc(t)
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"


def _summary(trip: Trip) -> dict:
    return {
        "id": trip.id, "start": trip.start, "end": trip.end,
        "start_local": _local(trip.start), "end_local": _local(trip.end), "duration_s": trip.duration_s,
        "distance_km": trip.distance_km, "max_speed_kmh": trip.max_speed_kmh, "mean_speed_kmh": trip.mean_speed_kmh,
        "energy_kwh": trip.energy_kwh, "fuel_l": trip.fuel_l, "samples": trip.samples, "speed_key": trip.speed_key,
    }


def trip_json(archive: OwnerArchive, trip_id: int) -> dict:
    """Summary, units, samples ``[timestamp, key, value]`` and positions ``[timestamp, lat, lon]``."""
    trip, samples, positions = _with_data(archive, trip_id)
    keys = sorted({key for _, key, _ in samples})
    return {
        "trip": _summary(trip),
        "units": archive.signal_units(keys),
        "sample_columns": ["timestamp", "key", "value"],
        "samples": [list(row) for row in samples],
        "position_columns": ["timestamp", "lat", "lon"],
        "positions": [list(row) for row in positions],
    }


# -- plot ------------------------------------------------------------------------
def _local_times(times: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t).astimezone() for t in times]


def _time_axis(ax, tz) -> None:
    from matplotlib import dates

    ax.xaxis.set_major_locator(dates.AutoDateLocator(tz=tz))
    ax.xaxis.set_major_formatter(dates.DateFormatter("%H:%M:%S", tz=tz))
    offset = datetime.now(tz).strftime("%z")  # tz is the fixed offset at the trip's start
    ax.set_xlabel(f"local time (UTC{offset[:3]}:{offset[3:]})")
    ax.grid(True, alpha=0.3)


def _series(archive: OwnerArchive, trip: Trip, keys: list[str] | None) -> list[tuple[str, str, list, list]]:
    """(label, unit, times, values) per plotted signal; speed in km/h."""
    units = archive.signal_units()
    chosen = keys if keys is not None else ([trip.speed_key] if trip.speed_key else [])
    series = []
    for key in chosen:
        rows = archive.samples(trip.id, [key])
        if not rows:
            continue
        unit = units.get(key, "")
        factor = SPEED_UNITS.get(unit.strip().lower()) if keys is None else None
        values = [v * factor for _, _, v in rows] if factor else [v for _, _, v in rows]
        series.append((key, "km/h" if factor else unit, [t for t, _, _ in rows], values))
    return series


def _speed_from_positions(positions: list[tuple[float, float, float]]) -> tuple[list, list]:
    from agent.owner.recorder import haversine_km

    times, speeds = [], []
    anchor = positions[0] if positions else None
    for point in positions[1:]:
        dt = point[0] - anchor[0]
        if dt >= 1.0:
            times.append(point[0])
            speeds.append(haversine_km(anchor[1], anchor[2], point[1], point[2]) / (dt / 3600.0))
            anchor = point
    return times, speeds


def trip_plot_png(archive: OwnerArchive, trip_id: int, keys: list[str] | None = None) -> bytes:
    """PNG: speed (or the given signals, one panel per unit) over local time, and the track when
    the trip has positions.  Matplotlib's Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trip = _trip(archive, trip_id)
    positions = archive.positions(trip_id)
    series = _series(archive, trip, keys)
    if not series and keys is None and len(positions) > 1:
        times, speeds = _speed_from_positions(positions)
        if times:
            series = [("from GNSS positions", "km/h", times, speeds)]
    if not series and not positions:
        wanted = ", ".join(keys) if keys else "a speed signal"
        raise ValueError(f"trip {trip_id}: nothing to plot (no samples of {wanted} and no positions)")
    by_unit: dict[str, list] = {}
    for item in series:
        by_unit.setdefault(item[1], []).append(item)
    panels = len(by_unit) + (1 if positions else 0)
    figure = Figure(figsize=(10, 3.6 * panels), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
    tz = datetime.fromtimestamp(trip.start).astimezone().tzinfo
    figure.suptitle(f"Trip {trip_id}: {_local(trip.start)[:19].replace('T', ' ')}, {trip.duration_s / 60:.1f} min, "
                    f"{trip.distance_km:.2f} km")
    for ax, (unit, items) in zip(axes, by_unit.items()):
        for label, _, times, values in items:
            ax.plot(_local_times(times), values, label=label, linewidth=1.2)
        speed = keys is None
        name = f"Speed ({items[0][0]})" if speed else ", ".join(label for label, *_ in items)
        ax.set_title(name + (f" [{unit}]" if unit else ""))
        ax.set_ylabel(f"{'speed' if speed else 'value'} ({unit})" if unit else "value")
        if speed:  # from zero, and a standing car's line visible above the axis
            top = max(5.0, max(max(v) for *_, v in items) * 1.15)
            ax.set_ylim(bottom=-0.03 * top, top=top)
        if len(items) > 1 or not speed:
            ax.legend(loc="upper right", fontsize="small")
        _time_axis(ax, tz)
    if positions:
        _track(axes[-1], positions)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _track(ax, positions: list[tuple[float, float, float]]) -> None:
    from matplotlib.ticker import MaxNLocator

    lats = [p[1] for p in positions]
    lons = [p[2] for p in positions]
    ax.plot(lons, lats, "-", color="tab:blue", linewidth=1.5, label="track")
    ax.scatter(lons, lats, s=6, color="tab:blue", alpha=0.5)
    ax.scatter([lons[0]], [lats[0]], s=80, color="tab:green", marker="o", zorder=3, label="start")
    ax.scatter([lons[-1]], [lats[-1]], s=80, color="tab:red", marker="s", zorder=3, label="end")
    # Equal ground distance per degree on both axes, and a few metres of margin for a car that stood still.
    mid = math.radians(sum(lats) / len(lats))
    ax.set_aspect(1.0 / max(math.cos(mid), 0.01), adjustable="box")
    span = max(max(lats) - min(lats), max(lons) - min(lons), 2e-4)
    ax.set_xlim(min(lons) - span * 0.1, max(lons) + span * 0.1)
    ax.set_ylim(min(lats) - span * 0.1, max(lats) + span * 0.1)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.xaxis.set_major_locator(MaxNLocator(3))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.set_title(f"Track ({len(positions)} positions)")
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
