"""The receiver's decoded samples as Parquet for the data lake (DuckDB, Spark, Athena read it as it is).

Hive-style partitions by vehicle and UTC day: ``OUT/vehicle=<pseudonym>/day=<YYYY-MM-DD>/part-0.parquet``.
Columns: ``boot_id``, ``seq`` (the batch), ``timestamp`` (float seconds, as in the batch), ``time``
(timestamp[us, UTC], for SQL engines), ``bus``, ``key``, ``category``, ``value`` (float64) and ``raw``
(float64: DBC raw values are integers well below 2**53; one that is not a number, or a 64-bit value beyond
float64's exact range, goes to ``raw_text`` instead, so nothing is rounded silently).  Written per vehicle,
so memory holds one vehicle's samples at a time.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

EXACT_FLOAT = 2**53
SAMPLE_QUERY = ("SELECT boot_id, seq, timestamp, bus, key, category, value, raw FROM samples WHERE vehicle = ? "
                "ORDER BY timestamp, boot_id, seq")


@dataclass
class ParquetSummary:
    out_dir: Path
    vehicles: int = 0
    samples: int = 0
    files: list[Path] = field(default_factory=list)
    per_partition: dict[tuple[str, str], int] = field(default_factory=dict)


def _number(value: Any) -> tuple[float | None, str | None]:
    if isinstance(value, bool) or value is None:
        return (None if value is None else float(value)), None
    if isinstance(value, int):
        return (float(value), None) if -EXACT_FLOAT <= value <= EXACT_FLOAT else (None, str(value))
    if isinstance(value, float):
        return value, None
    try:
        number = int(value)
    except (TypeError, ValueError):
        try:
            return float(value), None
        except (TypeError, ValueError):
            return None, str(value)
    return _number(number)


def _day(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).date().isoformat()


def write_parquet(store: Any, out_dir: str | Path, vehicles: list[str] | None = None) -> ParquetSummary:
    """Every decoded sample the receiver store holds (or those of ``vehicles``) into ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: directory is not empty (a Parquet export starts from an empty one)")
    out.mkdir(parents=True, exist_ok=True)
    summary = ParquetSummary(out)
    names = vehicles if vehicles is not None else [v for (v,) in store.query(
        "SELECT DISTINCT vehicle FROM samples ORDER BY vehicle")]
    schema = pa.schema([("boot_id", pa.string()), ("seq", pa.int64()), ("timestamp", pa.float64()),
                        ("time", pa.timestamp("us", tz="UTC")), ("bus", pa.string()), ("key", pa.string()),
                        ("category", pa.string()), ("value", pa.float64()), ("raw", pa.float64()),
                        ("raw_text", pa.string())])
    try:
        for vehicle in names:
            by_day: dict[str, dict[str, list]] = {}
            for boot_id, seq, timestamp, bus, key, category, value, raw in store.query(SAMPLE_QUERY, (vehicle,)):
                columns = by_day.setdefault(_day(timestamp), {name: [] for name in schema.names})
                number, _ = _number(value)
                raw_number, raw_text = _number(raw)
                for name, item in (("boot_id", boot_id), ("seq", seq), ("timestamp", timestamp),
                                   ("time", datetime.fromtimestamp(timestamp, tz=timezone.utc)), ("bus", bus),
                                   ("key", key), ("category", category), ("value", number), ("raw", raw_number),
                                   ("raw_text", raw_text)):
                    columns[name].append(item)
            if not by_day:
                continue
            summary.vehicles += 1
            for day, columns in sorted(by_day.items()):
                folder = out / f"vehicle={vehicle}" / f"day={day}"
                folder.mkdir(parents=True)
                path = folder / "part-0.parquet"
                pq.write_table(pa.table(columns, schema=schema), path, compression="zstd")
                count = len(columns["seq"])
                summary.files.append(path)
                summary.samples += count
                summary.per_partition[(vehicle, day)] = count
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # half an export is worse than none: it would be read as whole
        raise
    return summary
