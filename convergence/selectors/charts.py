"""Charts: a series downsampled from the rollup (first, min, max and last point per bucket),
several series of one run, one metric of several runs, and a socket's first snapshot."""

import math
from datetime import UTC, datetime, timedelta

from django.db import connection

from convergence.models import DEFAULT_METRIC, ROLLUP_FANOUT, ROLLUP_LEVELS, ConvergenceSeries
from convergence.selectors._common import (
    ERR_SIMULATION_NOT_FOUND,
    GRAPH_DEFAULT_POINTS,
    TOP_LEVEL,
    simulation_status,
)
from simsched.db import as_datetime, dictfetchall, is_postgres
from simsched.exceptions import NotFoundError
from simulations.models import Simulation


def _decompose(first: int, last: int, level: int) -> list[tuple[int, int, int]]:
    """Cover steps [first, last] with whole rollup buckets of `level` and below.

    Returns (level, lo, hi) ranges: buckets lo..hi of that level, or raw steps lo..hi for
    level 0. Only the two edges descend a level, so there are at most 2 * level + 1 ranges.
    """
    if first > last:
        return []
    if level == 0:
        return [(0, first, last)]
    width = ROLLUP_FANOUT**level
    lo, hi = -(-first // width), (last + 1) // width - 1
    if lo > hi:
        return _decompose(first, last, level - 1)
    return [
        *_decompose(first, lo * width - 1, level - 1),
        (level, lo, hi),
        *_decompose((hi + 1) * width, last, level - 1),
    ]


_RAW_PIECE = """
    SELECT step, loss_value, step, loss_value, step, loss_value, step, loss_value, 1,
        timestamp, timestamp
    FROM convergence_data
    WHERE simulation_id = %s AND series_id = %s AND step BETWEEN %s AND %s
"""
_ROLLUP_PIECE = """
    SELECT first_step, first_loss, last_step, last_loss, min_step, min_loss, max_step, max_loss,
        count, first_time, last_time
    FROM convergence_rollup
    WHERE simulation_id = %s AND series_id = %s AND level = %s AND bucket BETWEEN %s AND %s
"""
_BUCKETS = """
    WITH pieces(fs, fl, ls, ll, mins, minl, maxs, maxl, n, ft, lt) AS ({pieces}),
    ranked AS (
        SELECT fs / %s AS bucket,
            sum(n) OVER w AS n,
            first_value(fs) OVER (w ORDER BY fs) AS first_step,
            first_value(fl) OVER (w ORDER BY fs) AS first_loss,
            first_value(ls) OVER (w ORDER BY ls DESC) AS last_step,
            first_value(ll) OVER (w ORDER BY ls DESC) AS last_loss,
            first_value(mins) OVER (w ORDER BY minl, mins) AS min_step,
            first_value(minl) OVER (w ORDER BY minl, mins) AS min_loss,
            first_value(maxs) OVER (w ORDER BY maxl DESC, maxs) AS max_step,
            first_value(maxl) OVER (w ORDER BY maxl DESC, maxs) AS max_loss,
            first_value(ft) OVER (w ORDER BY fs) AS first_time,
            first_value(lt) OVER (w ORDER BY ls DESC) AS last_time,
            row_number() OVER (w ORDER BY fs) AS rn
        FROM pieces
        WINDOW w AS (PARTITION BY fs / %s)
    )
    SELECT bucket, n, first_step, first_loss, last_step, last_loss, min_step, min_loss,
        max_step, max_loss, first_time, last_time
    FROM ranked WHERE rn = 1 ORDER BY bucket
"""

# PostgreSQL: the same buckets by one GROUP BY, the extremes picked by min/max over [key,
# value] arrays (as the rollup itself is built, convergence/stores.py; steps are exact as
# float8), and the times as epoch microseconds: exact, and loaded without a datetime per value.
_US = "(extract(epoch FROM {0}) * 1000000)::bigint"
_RAW_PIECE_PG = _RAW_PIECE.replace(
    "timestamp, timestamp", f"{_US.format('timestamp')}, {_US.format('timestamp')}"
)
_ROLLUP_PIECE_PG = _ROLLUP_PIECE.replace(
    "count, first_time, last_time", f"count, {_US.format('first_time')}, {_US.format('last_time')}"
)
_BUCKETS_PG = """
    WITH pieces(fs, fl, ls, ll, mins, minl, maxs, maxl, n, ft, lt) AS ({pieces})
    SELECT fs / %s AS bucket, sum(n)::bigint AS n,
        min(fs) AS first_step, (min(ARRAY[fs::float8, fl]))[2] AS first_loss,
        max(ls) AS last_step, (max(ARRAY[ls::float8, ll]))[2] AS last_loss,
        (min(ARRAY[minl, mins::float8]))[2]::bigint AS min_step, min(minl) AS min_loss,
        -(max(ARRAY[maxl, -maxs::float8]))[2]::bigint AS max_step, max(maxl) AS max_loss,
        (min(ARRAY[fs, ft]))[2] AS first_time, (max(ARRAY[ls, lt]))[2] AS last_time
    FROM pieces GROUP BY 1 ORDER BY 1
"""


def _read_level(width: int) -> int:
    """The coarsest rollup level whose buckets tile chart buckets `width` steps wide: the same
    buckets, from the fewest rows (a 4096-step chart bucket is one level-3 row, not 16 of
    level 2)."""
    return max((lvl for lvl in ROLLUP_LEVELS if width % ROLLUP_FANOUT**lvl == 0), default=0)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _bounds(cursor, series: list[tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """The first and last step of each (simulation, series id), in one query: series id ->
    (first, last); a series with no points has no entry."""
    if not series:
        return {}
    pairs = ", ".join(["(%s, %s)"] * len(series))
    cursor.execute(
        f"""
        SELECT series_id, min(first_step), max(last_step) FROM convergence_rollup
        WHERE level = %s AND (simulation_id, series_id) IN ({pairs})
        GROUP BY series_id
        """,  # noqa: S608 - placeholders only
        [TOP_LEVEL, *(value for pair in series for value in pair)],
    )
    return {series_id: (first, last) for series_id, first, last in cursor.fetchall()}


def _bucket_rows(cursor, simulation_id, series_id, first, last, level, width) -> list[dict]:
    """The chart's buckets; their times are epoch microseconds on PostgreSQL, as SQLite stores
    them elsewhere (`_microseconds` takes either)."""
    postgres = is_postgres(connection)
    raw, rollup = (_RAW_PIECE_PG, _ROLLUP_PIECE_PG) if postgres else (_RAW_PIECE, _ROLLUP_PIECE)
    sql, params = [], []
    for range_level, lo, hi in _decompose(first, last, level):
        if range_level == 0:
            sql.append(raw)
            params += [simulation_id, series_id, lo, hi]
        else:
            sql.append(rollup)
            params += [simulation_id, series_id, range_level, lo, hi]
    pieces = " UNION ALL ".join(sql)
    if postgres:
        cursor.execute(_BUCKETS_PG.format(pieces=pieces), [*params, width])
    else:
        cursor.execute(_BUCKETS.format(pieces=pieces), [*params, width, width])
    return dictfetchall(cursor)


def _raw_points(cursor, simulation_id: int, series_id: int, first: int, last: int) -> list[dict]:
    cursor.execute(
        """
        SELECT step, loss_value AS loss, timestamp FROM convergence_data
        WHERE simulation_id = %s AND series_id = %s AND step BETWEEN %s AND %s ORDER BY step
        """,
        [simulation_id, series_id, first, last],
    )
    return dictfetchall(cursor)


def _bucket_points(bucket: dict) -> list[dict]:
    """A bucket's first, min, max and last point, in step order, each once. The first and last
    carry their own times; the min and max a time interpolated between those by step (the
    rollup keeps no more), or None where the bucket has no times (rows from before they were
    kept). Times are epoch microseconds, as every chart point carries them (`utc_iso`)."""
    extremes = {
        bucket["first_step"]: bucket["first_loss"],
        bucket["min_step"]: bucket["min_loss"],
        bucket["max_step"]: bucket["max_loss"],
        bucket["last_step"]: bucket["last_loss"],
    }
    first, last = _microseconds(bucket["first_time"]), _microseconds(bucket["last_time"])
    first_step = bucket["first_step"]
    span = bucket["last_step"] - first_step

    def time_at(step: int):
        if first is None or last is None:
            return None
        if step == first_step or span == 0:
            return first
        share = (step - first_step) / span  # timedelta * float: to the nearest microsecond
        return first + (timedelta(microseconds=last - first) * share) // _MICROSECOND

    return [
        {"step": step, "loss": extremes[step], "timestamp": time_at(step)}
        for step in sorted(extremes)
    ]


def _microseconds(value) -> int | None:
    """A time as epoch microseconds: as PostgreSQL's chart queries give it, or from what
    `as_datetime` reads."""
    if value is None or type(value) is int:
        return value
    return (as_datetime(value) - _EPOCH) // _MICROSECOND


_MICROSECOND = timedelta(microseconds=1)
_DAYS: dict[int, str] = {}


def utc_iso(microseconds: int) -> str:
    """Epoch microseconds as `datetime.isoformat()` writes the UTC time, with `Z` for
    `+00:00` (as the API writes times), at half the cost: thousands per chart."""
    seconds, fraction = divmod(microseconds, 1_000_000)
    day, second = divmod(seconds, 86_400)
    date = _DAYS.get(day)
    if date is None:
        if len(_DAYS) > 10_000:
            _DAYS.clear()
        date = _DAYS[day] = (_EPOCH + timedelta(days=day)).date().isoformat()
    hour, rest = divmod(second, 3600)
    minute, second = divmod(rest, 60)
    if fraction:
        return f"{date}T{hour:02d}:{minute:02d}:{second:02d}.{fraction:06d}Z"
    return f"{date}T{hour:02d}:{minute:02d}:{second:02d}Z"


def utc_datetime(microseconds: int) -> datetime:
    return _EPOCH + timedelta(microseconds=microseconds)


def _series_graph(
    cursor,
    simulation_id: int,
    series_id: int | None,
    max_points,
    from_step,
    to_step,
    rollups_only: bool,
    bounds: tuple[int, int] | None,
) -> dict:
    """One series' chart fields: see `convergence_graph`. A compacted series (`rollups_only`)
    has no raw points left: its window is widened to whole level-1 buckets and always drawn
    from rollup rows, however small. `bounds`: its first and last step (`_bounds`)."""
    result = {
        "rollups_only": rollups_only,
        "from_step": from_step,
        "to_step": to_step,
        "raw_points": 0,
        "returned_points": 0,
        "downsampled": False,
        "bucket_width": 1,
        "points": [],
    }
    if series_id is None or bounds is None:
        return result
    data_first, data_last = bounds
    first = max(from_step if from_step is not None else data_first, data_first)
    last = min(to_step if to_step is not None else data_last, data_last)
    result.update(from_step=first, to_step=last)
    if first > last:
        return result
    buckets_wanted = max(max_points // 4 - 1, 1)
    per_bucket = (last - first + 1) / buckets_wanted
    level = max((lvl for lvl in ROLLUP_LEVELS if ROLLUP_FANOUT**lvl <= per_bucket), default=0)
    if rollups_only:
        level = max(level, 1)
        first -= first % ROLLUP_FANOUT
        last += ROLLUP_FANOUT - 1 - last % ROLLUP_FANOUT
    level_width = ROLLUP_FANOUT**level
    width = level_width * max(math.ceil(per_bucket / level_width), 1)
    buckets = _bucket_rows(cursor, simulation_id, series_id, first, last, _read_level(width), width)
    raw_count = sum(b["n"] for b in buckets)
    result["raw_points"] = raw_count
    if rollups_only:
        points = [
            p
            for bucket in buckets
            for p in _bucket_points(bucket)
            if result["from_step"] <= p["step"] <= result["to_step"]
        ]
        result.update(downsampled=True, bucket_width=width)
    elif raw_count <= max_points:
        points = [
            {**point, "timestamp": _microseconds(point["timestamp"])}
            for point in _raw_points(cursor, simulation_id, series_id, first, last)
        ]
    else:
        points = [p for bucket in buckets for p in _bucket_points(bucket)]
        result.update(downsampled=True, bucket_width=width)
    result.update(points=points, returned_points=len(points))
    return result


def _series_ids(
    simulation_ids: list[int], metrics: list[str]
) -> dict[tuple[int, str], tuple[int, bool]]:
    """(simulation, metric) -> (series id, compacted?)."""
    rows = ConvergenceSeries.objects.filter(simulation_id__in=simulation_ids, metric__in=metrics)
    return {
        (sim, metric): (pk, compacted is not None)
        for sim, metric, pk, compacted in rows.values_list(
            "simulation_id", "metric", "id", "compacted_at"
        )
    }


def convergence_graph(
    *,
    simulation_id: int,
    metrics: tuple[str, ...] = (DEFAULT_METRIC,),
    max_points: int = GRAPH_DEFAULT_POINTS,
    from_step: int | None = None,
    to_step: int | None = None,
) -> dict:
    """Bare SQL by design: a chart of at most `max_points` points per series from the rollup.

    The window is cut into equal step buckets aligned to rollup buckets; each keeps its first,
    minimum, maximum and last point, so no spike is lost. Reads a few thousand rollup rows
    whatever the simulation's size. A window with no more than `max_points` raw points is
    returned as is. One metric: its chart fields at the top level, as before several metrics
    existed; several: one entry per metric under `series`.
    """
    status = simulation_status(simulation_id)
    result = {
        "simulation_id": simulation_id,
        "status": status,
        "is_complete": status in Simulation.FINAL,
    }
    ids = _series_ids([simulation_id], list(metrics))
    with connection.cursor() as cursor:
        bounds = _bounds(cursor, [(simulation_id, pk) for pk, _ in ids.values()])
        graphs = []
        for metric in metrics:
            series_id, compacted = ids.get((simulation_id, metric), (None, False))
            graph = _series_graph(
                cursor,
                simulation_id,
                series_id,
                max_points,
                from_step,
                to_step,
                compacted,
                bounds.get(series_id),
            )
            graphs.append({"metric": metric, **graph})
    if len(graphs) == 1:
        return {**result, **graphs[0]}
    return {**result, "series": graphs}


def convergence_compare(
    *,
    simulation_ids: list[int],
    metric: str = DEFAULT_METRIC,
    max_points: int = GRAPH_DEFAULT_POINTS,
    from_step: int | None = None,
    to_step: int | None = None,
) -> dict:
    """Bare SQL by design (see `convergence_graph`): one metric of several simulations, each
    downsampled the same way, with each simulation's name, status and machine. Raises
    NotFoundError naming the first unknown simulation."""
    simulations = {
        s.pk: s for s in Simulation.objects.select_related("machine").filter(pk__in=simulation_ids)
    }
    for simulation_id in simulation_ids:
        if simulation_id not in simulations:
            raise NotFoundError(ERR_SIMULATION_NOT_FOUND.format(simulation_id=simulation_id))
    ids = _series_ids(simulation_ids, [metric])
    runs = []
    with connection.cursor() as cursor:
        bounds = _bounds(cursor, [(sim, pk) for (sim, _), (pk, _) in ids.items()])
        for simulation_id in simulation_ids:
            simulation = simulations[simulation_id]
            series_id, compacted = ids.get((simulation_id, metric), (None, False))
            graph = _series_graph(
                cursor,
                simulation_id,
                series_id,
                max_points,
                from_step,
                to_step,
                compacted,
                bounds.get(series_id),
            )
            runs.append(
                {
                    "simulation_id": simulation_id,
                    "name": simulation.name,
                    "status": simulation.status,
                    "is_complete": simulation.status in Simulation.FINAL,
                    "machine": simulation.machine_id,
                    "machine_name": simulation.machine.name if simulation.machine else None,
                    **graph,
                }
            )
    return {"metric": metric, "max_points": max_points, "simulations": runs}


SNAPSHOT_MAX_POINTS = 2000


def convergence_snapshot(*, simulation_id: int) -> dict | None:
    """What a socket sends first: the simulation, its chart-ready loss history and the names
    of its series."""
    from simulations.events import simulation_payload

    simulation = Simulation.objects.select_related("machine").filter(pk=simulation_id).first()
    if simulation is None:
        return None
    graph = convergence_graph(simulation_id=simulation_id, max_points=SNAPSHOT_MAX_POINTS)
    metrics = ConvergenceSeries.objects.filter(simulation_id=simulation_id).order_by("metric")
    return {
        "type": "snapshot",
        "simulation": simulation_payload(simulation),
        "points": [_json_point(point) for point in graph["points"]],
        "raw_points": graph["raw_points"],
        "downsampled": graph["downsampled"],
        "last_step": graph["to_step"],
        "metrics": list(metrics.values_list("metric", flat=True)),
    }


def _json_point(point: dict) -> dict:
    stamp = point["timestamp"]
    return {**point, "timestamp": utc_datetime(stamp).isoformat() if stamp is not None else None}
