"""Per-series reads: a simulation's series with their stats, points after a step, and the
fleet's per-simulation loss stats."""

from convergence.models import (
    DEFAULT_METRIC,
    ConvergencePoint,
    ConvergenceRollup,
    ConvergenceSeries,
)
from convergence.selectors._common import STREAM_MAX_POINTS, TOP_LEVEL, simulation_status
from simulations.models import Simulation


def simulation_metrics(*, simulation_id: int) -> dict:
    """A simulation's series: for each, its points, first and last step, latest, min and max
    (from the coarsest rollup level: a few rows per series)."""
    status = simulation_status(simulation_id)
    series = {
        pk: {
            "metric": metric,
            "points": 0,
            "first_step": None,
            "last_step": None,
            "latest": None,
            "min": None,
            "max": None,
        }
        for pk, metric in ConvergenceSeries.objects.filter(simulation_id=simulation_id)
        .order_by("metric")
        .values_list("id", "metric")
    }
    rows = ConvergenceRollup.objects.filter(
        simulation_id=simulation_id, series_id__in=list(series), level=TOP_LEVEL
    ).order_by("series_id", "bucket")
    for row in rows:
        entry = series[row.series_id]
        if entry["first_step"] is None:
            entry.update(first_step=row.first_step, min=row.min_loss, max=row.max_loss)
        entry["points"] += row.count
        entry["min"] = min(entry["min"], row.min_loss)
        entry["max"] = max(entry["max"], row.max_loss)
        entry["last_step"], entry["latest"] = row.last_step, row.last_loss
    return {
        "simulation_id": simulation_id,
        "status": status,
        "metrics": [entry for entry in series.values() if entry["points"]],
    }


def points_since(
    *,
    simulation_id: int,
    metric: str = DEFAULT_METRIC,
    since_step: int = -1,
    limit: int = STREAM_MAX_POINTS,
) -> dict:
    """Points of one series after `since_step`, in step order, for clients that catch up
    incrementally."""
    status = simulation_status(simulation_id)
    rows = list(
        ConvergencePoint.objects.filter(
            simulation_id=simulation_id, series__metric=metric, step__gt=since_step
        )
        .order_by("step")
        .values("step", "loss_value", "timestamp")[: limit + 1]
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "simulation_id": simulation_id,
        "metric": metric,
        "status": status,
        "is_complete": status in Simulation.FINAL,
        "since_step": since_step,
        "last_step": rows[-1]["step"] if rows else since_step,
        "has_more": has_more,
        "points": [
            {"step": r["step"], "loss": r["loss_value"], "timestamp": r["timestamp"]} for r in rows
        ],
    }


def simulation_point_stats(simulation_ids) -> dict[int, dict]:
    """Points so far, latest and best loss per simulation (its `loss` series), from the
    coarsest rollup level."""
    stats: dict[int, dict] = {}
    rows = ConvergenceRollup.objects.filter(
        level=TOP_LEVEL, simulation_id__in=simulation_ids, series__metric=DEFAULT_METRIC
    )
    for row in rows.order_by("simulation_id", "bucket"):
        entry = stats.setdefault(
            row.simulation_id, {"points": 0, "best_loss": row.min_loss, "last_step": None}
        )
        entry["points"] += row.count
        entry["best_loss"] = min(entry["best_loss"], row.min_loss)
        entry["last_step"], entry["latest_loss"] = row.last_step, row.last_loss
    return stats


def series_positions(*, simulation_id: int) -> dict[int, int]:
    """Each series' next step (series id -> step): where a socket that joined now catches up
    from (`points_from`)."""
    return dict(
        ConvergenceSeries.objects.filter(simulation_id=simulation_id).values_list("id", "next_step")
    )


def points_from(
    *, simulation_id: int, positions: dict[int, int], limit: int = STREAM_MAX_POINTS
) -> list[dict]:
    """Points stored at or past `positions` (series id -> step; a series not in it from its
    start), as the socket sends them: the latest `limit`, in step order."""
    rows = []
    for series_id, metric in ConvergenceSeries.objects.filter(
        simulation_id=simulation_id
    ).values_list("id", "metric"):
        rows += [
            (step, metric, value, stamp)
            for step, value, stamp in ConvergencePoint.objects.filter(
                simulation_id=simulation_id, series_id=series_id,
                step__gte=positions.get(series_id, 0),
            )
            .order_by("-step")
            .values_list("step", "loss_value", "timestamp")[:limit]
        ]  # fmt: skip
    rows.sort(key=lambda row: (row[0], row[1]))
    return [
        {"step": step, "loss": value, "timestamp": stamp.isoformat(), "metric": metric}
        for step, metric, value, stamp in rows[-limit:]
    ]
